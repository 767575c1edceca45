"""Images side by side, each scaled up (nearest) and labelled: the README's before/after pictures.

    python tools/side_by_side.py IMG... --labels "a|b|c" --scale 4 -o docs/picture.png
"""

from __future__ import annotations

import argparse

from PIL import Image, ImageDraw


def side_by_side(paths: list[str], labels: list[str], scale: int = 4, pad: int = 6, band: int = 16) -> Image.Image:
    if len(labels) != len(paths):
        raise SystemExit(f"--labels has {len(labels)} entries for {len(paths)} images")
    images = [Image.open(p).convert("RGB") for p in paths]
    images = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in images]
    width = sum(im.width for im in images) + pad * (len(images) + 1)
    sheet = Image.new("RGB", (width, max(im.height for im in images) + band + 2 * pad), "white")
    draw, x = ImageDraw.Draw(sheet), pad
    for im, label in zip(images, labels):
        draw.text((x, pad // 2), label, fill="black")
        sheet.paste(im, (x, pad + band))
        x += im.width + pad
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+")
    parser.add_argument("--labels", required=True, help="one label per image, separated by |")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    side_by_side(args.images, args.labels.split("|"), args.scale).save(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
