"""Community benchmarks: readers against hand-built rows in each published layout, metrics against direct
computations on the same arrays (tiny random CLIP and DINOv2 models), bad rows, resume, multi-turn, report."""

import json
import shutil
import types
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from editkit.evaluation.bench import run_benchmark
from editkit.evaluation.bench_metrics import Clip, Dino, score_row, to_tensor
from editkit.evaluation.datasets import load_row, pie_mask, read_rows
from editkit.evaluation.html_report import write_contact_sheet, write_html

TOKENIZER = Path(__file__).resolve().parents[1] / "editkit" / "models" / "instructcv-tiny" / "tokenizer"


def img(seed: int, size: int = 32) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def arr(image: PIL.Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255.0


def brighten(row, source, seed):  # a deterministic "editor": +10 on every pixel
    return PIL.Image.fromarray(np.clip(np.asarray(source, dtype=np.int16) + 10, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer, Dinov2Config, Dinov2Model

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    tok = CLIPTokenizer.from_pretrained(TOKENIZER)
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16))
    clip.save_pretrained(root / "clip")
    tok.save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                             patch_size=8)).save_pretrained(root / "dino")
    return Clip.load(str(root / "clip")), Dino.load(str(root / "dino")), root


def magicbrush_zip(root: Path) -> Path:
    """The test zip's layout: two sessions (one of two turns) and a third whose output file is missing."""
    sessions = {}
    for img_id, turns in (("30", 1), ("139", 2), ("7", 1)):
        folder = root / "images" / img_id
        folder.mkdir(parents=True)
        img(int(img_id)).save(folder / f"{img_id}-input.png")
        entries = []
        for k in range(1, turns + 1):
            if img_id != "7":
                img(int(img_id) * 10 + k).save(folder / f"{img_id}-output{k}.png")
            PIL.Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), 12)).save(folder / f"{img_id}-mask{k}.png")
            entries.append({"input": f"{img_id}-input.png" if k == 1 else f"{img_id}-output{k - 1}.png",
                            "mask": f"{img_id}-mask{k}.png", "output": f"{img_id}-output{k}.png", "instruction": f"edit {k} of {img_id}"})
        sessions[img_id] = entries
    (root / "edit_sessions.json").write_text(json.dumps(sessions))
    (root / "local_descriptions.json").write_text(json.dumps({"30": {"30-output1.png": "a red cat"}}))
    return root


def test_magicbrush_zip_layout_rows_and_metrics_match_direct_computation(tmp_path, models):
    clip, dino, _ = models
    rows = read_rows(magicbrush_zip(tmp_path / "mb"), "magicbrush")
    assert [(r.id, r.chain, r.turn) for r in rows] == [("30_1", "30", 1), ("139_1", "139", 1), ("139_2", "139", 2), ("7_1", "7", 1)]
    assert rows[2].source == "images/139/139-output1.png" and rows[0].output_caption == "a red cat"
    row = load_row(rows[0])
    assert row.mask.sum() == 64 and row.mask[12:20, 12:20].all()  # white = the region to edit
    out = brighten(row, row.source, 0).resize((48, 48))  # a different size: resized back to the target's
    m = score_row("magicbrush", row, out, clip, dino)
    back = arr(out.resize(row.target.size, PIL.Image.BICUBIC))
    assert m["l1"] == pytest.approx(np.abs(back - arr(row.target)).mean(), abs=1e-6)
    assert m["l2"] == pytest.approx(((back - arr(row.target)) ** 2).mean(), abs=1e-6)
    with torch.no_grad():
        px = clip.processor(images=[out, row.target], return_tensors="pt")["pixel_values"]
        e = clip.model.get_image_features(pixel_values=px).pooler_output
        t = clip.model.get_text_features(**clip.tokenizer(["a red cat"], return_tensors="pt")).pooler_output
        d = dino.model(pixel_values=dino.pixels([out, row.target])).pooler_output
    cos = torch.nn.functional.cosine_similarity
    assert m["clip_i"] == pytest.approx(float(cos(e[0:1], e[1:2])), abs=1e-5)
    assert m["clip_t"] == pytest.approx(float(cos(e[0:1], t)), abs=1e-5)
    assert m["dino"] == pytest.approx(float(cos(d[0:1], d[1:2])), abs=1e-5)


def test_single_turn_scores_every_turn_skips_bad_rows_and_resumes(tmp_path, models):
    clip, dino, _ = models
    rows = read_rows(magicbrush_zip(tmp_path / "mb"), "magicbrush")
    calls = []

    def editor(row, source, seed):
        calls.append(row.id)
        return brighten(row, source, seed)

    first = run_benchmark(editor, rows, "magicbrush", tmp_path / "run", clip=clip, limit=2, progress=False)
    assert first["n_scored"] == 2 and calls == ["30_1", "139_1"]
    s = run_benchmark(editor, rows, "magicbrush", tmp_path / "run", clip=clip, progress=False)
    assert calls == ["30_1", "139_1", "139_2"]  # the rerun edits only what results.jsonl lacks
    assert (s["n_scored"], s["n_bad"]) == (3, 1) and "7-output1.png" in s["bad_rows"][0]["why"]
    assert s["n_per_metric"]["clip_t"] == 1  # only one turn has a local caption
    assert "dino" in s["not_computed"] and "--dino PATH" in s["not_computed"]["dino"]
    recs = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    l1s = [r["metrics"]["l1"] for r in recs if "metrics" in r]
    assert s["metrics"]["l1"] == pytest.approx(np.mean(l1s))


def test_multi_turn_chains_the_models_own_outputs_and_scores_the_final_turn(tmp_path):
    rows = read_rows(magicbrush_zip(tmp_path / "mb"), "magicbrush")
    s = run_benchmark(brighten, rows, "magicbrush", tmp_path / "run", multi_turn=True, progress=False)
    assert (s["setting"], s["n_scored"], s["n_bad"]) == ("multi_turn", 2, 1)
    rec = {r["id"]: r for r in map(json.loads, (tmp_path / "run" / "results.jsonl").read_text().splitlines())}
    assert rec["139"]["turns"] == 2
    final = np.asarray(PIL.Image.open(tmp_path / "run" / "images" / "139.png"), dtype=np.int16)
    start = np.asarray(img(139), dtype=np.int16)
    assert np.array_equal(final, np.clip(np.clip(start + 10, 0, 255) + 10, 0, 255))  # turn 2 edited turn 1's output
    target = arr(img(1392))
    assert rec["139"]["metrics"]["l1"] == pytest.approx(np.abs(final / 255.0 - target).mean(), abs=1e-6)


def test_magicbrush_and_emu_edit_from_datasets_tables(tmp_path, models):
    import datasets

    clip, dino, _ = models
    mb = datasets.Dataset.from_dict({"img_id": ["5", "5"], "turn_index": [1, 2], "source_img": [img(1), img(2)],
                                     "mask_img": [img(3).convert("L"), img(4).convert("L")],
                                     "instruction": ["add a hat", "make it blue"], "target_img": [img(2), img(5)]},
                                    features=datasets.Features({"img_id": datasets.Value("string"), "turn_index": datasets.Value("int32"),
                                                                "source_img": datasets.Image(), "mask_img": datasets.Image(),
                                                                "instruction": datasets.Value("string"), "target_img": datasets.Image()}))
    datasets.DatasetDict({"dev": mb}).save_to_disk(str(tmp_path / "mb"))
    rows = read_rows(tmp_path / "mb", "magicbrush", split="dev")
    assert [(r.id, r.chain, r.turn) for r in rows] == [("5_1", "5", 1), ("5_2", "5", 2)]
    assert np.array_equal(np.asarray(load_row(rows[1]).target), np.asarray(img(5)))
    with pytest.raises(ValueError, match=r"pick a split with --split, one of \['dev'\]"):
        read_rows(tmp_path / "mb", "magicbrush", split="test")

    emu = datasets.Dataset.from_dict({"instruction": ["make it snowy", ""], "image": [img(7), img(8)], "task": ["global", "add"],
                                      "split": ["test", "test"], "idx": [0, 1], "hash": ["a", "b"],
                                      "input_caption": ["a street", "a dog"], "output_caption": ["a snowy street", "a dog with a hat"]},
                                     features=datasets.Features({"instruction": datasets.Value("string"), "image": datasets.Image(),
                                                                 "task": datasets.Value("string"), "split": datasets.Value("string"),
                                                                 "idx": datasets.Value("int64"), "hash": datasets.Value("string"),
                                                                 "input_caption": datasets.Value("string"), "output_caption": datasets.Value("string")}))
    (tmp_path / "emu" / "data").mkdir(parents=True)
    emu.to_parquet(str(tmp_path / "emu" / "data" / "test-00000-of-00001.parquet"))
    rows = read_rows(tmp_path / "emu" / "data", "emu_edit", split="test")
    s = run_benchmark(brighten, rows, "emu_edit", tmp_path / "run", clip=clip, dino=dino, progress=False)
    assert (s["n_scored"], s["n_bad"]) == (1, 1) and "empty instruction" in s["bad_rows"][0]["why"]
    row = load_row(rows[0])
    out = brighten(row, row.source, 0)
    m = score_row("emu_edit", row, out, clip, dino)
    assert m["l1"] == pytest.approx(np.abs(arr(out) - arr(row.source)).mean(), abs=1e-6)  # Emu Edit: output vs input
    ie, te = clip.image([out, row.source]), clip.text(["a snowy street", "a street"])
    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(a[None], b[None]))  # noqa: E731
    assert m["clip_dir"] == pytest.approx(cos(ie[0] - ie[1], te[0] - te[1]), abs=1e-5)
    assert m["clip_out"] == pytest.approx(cos(ie[0], te[0]), abs=1e-5) and m["clip_i"] == pytest.approx(cos(ie[0], ie[1]), abs=1e-5)


def test_pie_bench_mask_background_metrics_and_structure_distance(tmp_path, models):
    clip, dino, _ = models
    encoded = [512 * 100 + 100, 50, 512 * 101 + 100, 50]  # two runs of 50 pixels on rows 100 and 101
    mask = pie_mask(encoded)
    assert mask[100, 100:150].all() and mask[101, 100:150].all() and not mask[100, 150] and not mask[102, 120]
    assert mask[0].all() and mask[:, -1].all() and mask.sum() == 100 + 4 * 511  # the border counts as edited
    (tmp_path / "pie" / "annotation_images" / "0_random_140").mkdir(parents=True)
    img(9, 512).save(tmp_path / "pie" / "annotation_images" / "0_random_140" / "000.jpg", quality=95)
    (tmp_path / "pie" / "mapping_file.json").write_text(json.dumps({"000": {
        "image_path": "0_random_140/000.jpg", "original_prompt": "a [cat] on a mat", "editing_prompt": "a [dog] on a mat",
        "editing_instruction": "turn the cat into a dog", "editing_type_id": "0", "blended_word": "cat dog", "mask": encoded}}))
    rows = read_rows(tmp_path / "pie", "pie_bench")
    assert (rows[0].input_caption, rows[0].output_caption) == ("a cat on a mat", "a dog on a mat")
    row = load_row(rows[0])
    same = score_row("pie_bench", row, row.source, clip, dino)
    assert same["structure_distance"] == 0.0 and same["bg_mse"] == 0.0 and same["bg_ssim"] == pytest.approx(1.0)
    out = brighten(row, row.source, 0)
    m = score_row("pie_bench", row, out, clip, dino)
    bg = (~mask)[..., None]
    mse = (((arr(out) - arr(row.source)) * bg) ** 2).mean()
    assert m["bg_mse"] == pytest.approx(mse, rel=1e-5) and m["bg_psnr"] == pytest.approx(10 * np.log10(1 / mse), rel=1e-5)
    assert m["structure_distance"] > 0 and 0 <= m["clip_whole"] <= 100 and 0 <= m["clip_edited"] <= 100
    assert m["structure_distance"] == pytest.approx(_structure_distance_by_hand(dino.model, row.source, out), rel=1e-4)


def _structure_distance_by_hand(model, source: PIL.Image.Image, output: PIL.Image.Image) -> float:
    """PnP-Inversion's definition: 0-255 pixels (never divided by 255) bilinearly resized to 224 and
    ImageNet-normalised, the last layer's keys (heads concatenated), their cosine self-similarity, the MSE."""
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    key = [m for n, m in model.named_modules() if n.endswith(("attention.key", "attention.k_proj"))][-1]

    def similarity(image: PIL.Image.Image) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None]
        x = (torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)[0] - mean) / std
        seen = []
        handle = key.register_forward_hook(lambda _m, _i, out: seen.append(out[0]))
        with torch.no_grad():
            model(pixel_values=x[None])  # DINOv2 interpolates its positions to 224 itself
        handle.remove()
        k = seen[0]
        n = k.norm(dim=1, keepdim=True)
        return (k @ k.T) / (n @ n.T).clamp(min=1e-8)

    return float(torch.nn.functional.mse_loss(similarity(output), similarity(source)))


def test_folder_format_reports_each_bad_row_by_id_and_writes_the_report(tmp_path):
    root = tmp_path / "f"
    root.mkdir()
    for i in range(3):
        img(i).save(root / f"in{i}.png")
        img(i + 10).save(root / f"out{i}.png")
    img(20, 48).save(root / "big.png")
    (root / "broken.png").write_bytes(b"not a png")
    lines = [{"id": "a", "input_image": "in0.png", "edited_image": "out0.png", "edit_prompt": "make it red"},
             {"id": "b", "input_image": "in1.png", "edited_image": "out1.png", "edit_prompt": "make it blue"},
             {"id": "gone", "input_image": "nope.png", "edited_image": "out2.png", "edit_prompt": "x"},
             {"id": "size", "input_image": "in2.png", "edited_image": "big.png", "edit_prompt": "x"},
             {"id": "broken", "input_image": "broken.png", "edited_image": "out2.png", "edit_prompt": "x"},
             {"id": "empty", "input_image": "in2.png", "edited_image": "out2.png", "edit_prompt": "  "}]
    (root / "metadata.jsonl").write_text("\n".join(map(json.dumps, lines)))
    s = run_benchmark(brighten, read_rows(root, "folder"), "folder", tmp_path / "run", progress=False)
    why = {b["id"]: b["why"] for b in s["bad_rows"]}
    assert s["n_scored"] == 2 and set(why) == {"gone", "size", "broken", "empty"}
    assert "missing" in why["gone"] and "48x48" in why["size"] and "not a readable image" in why["broken"] and "empty" in why["empty"]
    assert set(s["not_computed"]) == {"clip_i", "dino", "clip_t"}
    page = write_html(tmp_path / "run", tmp_path / "report" / "r.html").read_text()
    l1 = {r["id"]: r["metrics"]["l1"] for r in map(json.loads, (tmp_path / "run" / "results.jsonl").read_text().splitlines()) if "metrics" in r}
    worst, best = sorted(l1, key=l1.get, reverse=True)
    assert page.index(f'data-v="{worst}"') < page.index(f'data-v="{best}"')  # worst first
    assert "../run/thumbs/a_output.png" in page and "Skipped rows (4)" in page
    sheet = PIL.Image.open(write_contact_sheet(tmp_path / "run", tmp_path / "report" / "r.png"))
    assert sheet.size == (4 * 128, 2 * (128 + 16))


def test_cli_runs_a_shipped_pipeline_on_a_folder(tmp_path, capsys):
    from editkit import cli

    root = tmp_path / "f"
    root.mkdir()
    img(1, 64).save(root / "in.png")
    img(2, 64).save(root / "out.png")
    (root / "metadata.jsonl").write_text(json.dumps({"input_image": "in.png", "edited_image": "out.png", "edit_prompt": "make it red"}))
    out = tmp_path / "run"
    assert cli.main(["eval", "--dataset", str(root), "--format", "folder", "--steps", "2", "--out", str(out), "--no-progress",
                     "--device", "cpu", "--report", str(tmp_path / "r.html")]) == 0
    text = capsys.readouterr().out
    assert "folder (single_turn): 1 scored, 0 skipped" in text and "clip_i" in text and "not computed" in text
    assert PIL.Image.open(out / "images" / "1.png").size == (64, 64) and (tmp_path / "r.png").is_file()
    assert cli.main(["eval", "--dataset", str(root), "--clip", "nowhere"]) != 0
    assert "--clip 'nowhere' is not a folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--format must be one of|invalid choice"):
        read_rows(root, "coco")
    shutil.rmtree(out)


def test_shapes_eval_report_shows_every_sample_worst_psnr_first(tmp_path):
    from editkit import cli

    out = tmp_path / "r.json"
    assert cli.main(["eval", "--tasks", "recolor,segment", "--n", "2", "--steps", "2", "--out", str(out), "--no-progress",
                     "--device", "cpu", "--report", str(tmp_path / "r.html")]) == 0
    recs = [json.loads(x) for x in (tmp_path / "r" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in recs) == ["recolor_0", "recolor_1", "segment_0", "segment_1"]
    page = (tmp_path / "r.html").read_text()
    order = sorted(recs, key=lambda r: r["metrics"]["psnr"])
    assert page.index(f'data-v="{order[0]["id"]}"') < page.index(f'data-v="{order[-1]["id"]}"')
    assert PIL.Image.open(tmp_path / "r.png").size == (4 * 128, 4 * (128 + 16))


def _lpips_by_hand(state: dict, a: torch.Tensor, b: torch.Tensor) -> float:
    """LPIPS written out from its definition (Zhang et al. 2018; the SqueezeNet 1.1 variant): scale the [-1, 1]
    inputs, take seven feature maps, unit-normalise each over channels, weight the squared difference with the
    linear heads shipped in torchmetrics, average over space and sum the layers."""
    import torchmetrics
    import torchvision

    net = torchvision.models.squeezenet1_1(weights=None)
    net.load_state_dict(state)
    heads = torch.load(Path(torchmetrics.__file__).parent / "functional/image/lpips_models/squeeze.pth", map_location="cpu",
                       weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
    scale = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]
    cuts = (2, 5, 8, 10, 11, 12, 13)  # the end of each of the seven slices of `features`
    total = 0.0
    x, y = ((t[None] * 2 - 1 - shift) / scale for t in (a, b))
    start = 0
    for k, end in enumerate(cuts):
        for layer in net.features[start:end]:
            x, y = layer(x), layer(y)
        start = end
        nx, ny = (f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for f in (x, y))
        total += float(torch.nn.functional.conv2d((nx - ny) ** 2, heads[f"lin{k}.model.1.weight"]).mean())
    return total


def test_pie_bench_background_lpips_matches_its_definition_and_names_its_weights(tmp_path):
    import torchvision

    from editkit.evaluation.bench_metrics import Lpips, missing_models

    torch.manual_seed(0)
    state = torchvision.models.squeezenet1_1(weights=None).state_dict()  # random weights: the formula, not the values
    torch.save(state, tmp_path / "squeeze.pth")
    lpips = Lpips.load(str(tmp_path / "squeeze.pth"))
    row = types.SimpleNamespace(source=img(3, 64), target=None, mask=np.zeros((64, 64), bool), input_caption=None,
                                output_caption=None, instruction="x")
    row.mask[10:30, 10:40] = True
    out = img(4, 64)
    m = score_row("pie_bench", row, out, None, None, lpips)
    bg = torch.from_numpy(~row.mask)[None].float()
    expected = _lpips_by_hand(state, to_tensor(out) * bg, to_tensor(row.source) * bg)
    assert m["bg_lpips"] == pytest.approx(expected, rel=1e-4) and m["bg_lpips"] > 0
    assert score_row("pie_bench", row, row.source, None, None, lpips)["bg_lpips"] == pytest.approx(0.0, abs=1e-6)
    assert "--lpips PATH" in missing_models("pie_bench", None, None)["bg_lpips"]
    with pytest.raises(ValueError, match="--lpips"):
        Lpips.load(str(tmp_path / "nothing.pth"))


def test_batches_group_rows_of_one_size_and_give_the_single_row_records(tmp_path):
    root = tmp_path / "f"
    root.mkdir()
    sizes = [32, 32, 32, 48, 32, 32]
    lines = []
    for i, side in enumerate(sizes):
        img(i, side).save(root / f"in{i}.png")
        img(i + 10, side).save(root / f"out{i}.png")
        lines.append({"id": f"r{i}", "input_image": f"in{i}.png", "edited_image": f"out{i}.png", "edit_prompt": f"edit {i}"})
    lines.insert(2, {"id": "gone", "input_image": "nope.png", "edited_image": "out0.png", "edit_prompt": "x"})
    (root / "metadata.jsonl").write_text("\n".join(map(json.dumps, lines)))
    rows = read_rows(root, "folder")

    class Batched:
        def __init__(self):
            self.calls = []

        def batch(self, rows, sources, seeds):
            self.calls.append(([r.id for r in rows], seeds))
            return [brighten(r, s, k) for r, s, k in zip(rows, sources, seeds)]

        def __call__(self, row, source, seed):
            return self.batch([row], [source], [seed])[0]

    editor = Batched()
    s = run_benchmark(editor, rows, "folder", tmp_path / "b", progress=False, batch_size=2)
    one = run_benchmark(brighten, rows, "folder", tmp_path / "one", progress=False)
    assert editor.calls == [(["r0", "r1"], [0, 1]), (["r2"], [3]), (["r3"], [4]), (["r4", "r5"], [5, 6])]
    assert (s["n_scored"], s["n_bad"]) == (6, 1) and s["metrics"] == one["metrics"]

    def recs(run):
        return {r["id"]: r.get("metrics") for r in map(json.loads, (tmp_path / run / "results.jsonl").read_text().splitlines())}

    assert recs("b") == recs("one")
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer"):
        run_benchmark(editor, rows, "folder", tmp_path / "c", progress=False, batch_size=0)


def test_pipeline_editor_batch_gives_the_images_of_one_row_at_a_time():
    from editkit.evaluation.bench import pipeline_editor
    from editkit.evaluation.datasets import LoadedRow
    from editkit.pipelines import InstructCVPipeline
    from editkit.testing import tiny_instructcv_components

    pipe = InstructCVPipeline(**tiny_instructcv_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    edit = pipeline_editor(pipe, "instructcv", steps=3)
    rows = [LoadedRow(f"r{i}", f"make the shape number {i} red", img(i), None, None) for i in range(3)]
    together = edit.batch(rows, [r.source for r in rows], [5, 6, 7])
    alone = [edit(r, r.source, seed) for r, seed in zip(rows, (5, 6, 7))]
    diffs = [np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max() for a, b in zip(together, alone)]
    assert max(diffs) <= 1 and np.asarray(together[0]).shape == (32, 32, 3)
    assert np.abs(np.asarray(together[0], dtype=np.int16) - np.asarray(together[1], dtype=np.int16)).max() > 5
