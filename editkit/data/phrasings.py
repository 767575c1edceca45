"""Instruction phrasings for every shapes-benchmark task.

`TRAIN[task]` holds the phrasings used for training (at least 6 per task) and
`HELDOUT[task]` a disjoint set kept for generalisation tests (at least 3).
`PARAPHRASES[task]` are extra training-only wordings (`data.paraphrases`): more
verbs per task, so a from-scratch text encoder learns that the arguments (object,
colour, size word, place, background), not one verb, say what to do. They are not
evaluated, and they use no word that only the held-out phrasings use
(tests/test_data_families.py checks), so the held-out test stays unseen.
The cv tasks (segment, detect, depth, classify) take their phrasings from
`editkit.tasks.templates` (RP_PROMPTS for training, HELDOUT_PROMPTS held out),
so the benchmark asks exactly what the InstructCV codecs expect.

Placeholders (filled with `str.format`):
    {obj}      an object of the scene, "red circle"
    {new}      a new object, "small green star"
    {color}    an object colour name
    {place}    a named place, "top left"
    {adj}      "bigger" / "smaller";  {verb}: "Enlarge" / "Shrink"
    {bg}       a background description, "plain mint", "a beige and white checkerboard"
    {caption}  a scene description
    {marker}   a highlight colour name
"""

from __future__ import annotations

import random

from editkit.tasks import templates as _cv_templates

TRAIN: dict[str, tuple[str, ...]] = {
    # ------------------------------------------------------------------ edit
    "recolor": (
        "Make the {obj} {color}.",
        "Change the color of the {obj} to {color}.",
        "Recolor the {obj} in {color}.",
        "Turn the {obj} {color}.",
        "Paint the {obj} {color}.",
        "The {obj} should be {color}.",
        "Give the {obj} a {color} color.",
    ),
    "remove": (
        "Remove the {obj}.",
        "Delete the {obj}.",
        "Erase the {obj} from the image.",
        "Take the {obj} away.",
        "Get rid of the {obj}.",
        "Make the {obj} disappear.",
    ),
    "add": (
        "Add a {new} at the {place}.",
        "Put a {new} at the {place}.",
        "Place a {new} at the {place}.",
        "Draw a {new} at the {place}.",
        "Insert a {new} at the {place} of the image.",
        "There should be a {new} at the {place}.",
    ),
    "move": (
        "Move the {obj} to the {place}.",
        "Shift the {obj} to the {place}.",
        "Drag the {obj} over to the {place}.",
        "Relocate the {obj} to the {place}.",
        "Put the {obj} at the {place} instead.",
        "Slide the {obj} to the {place}.",
    ),
    "resize": (
        "Make the {obj} {adj}.",
        "Resize the {obj} to be {adj}.",
        "Scale the {obj} so that it is {adj}.",
        "The {obj} should be {adj}.",
        "Change the size of the {obj}: make it {adj}.",
        "{verb} the {obj}.",
    ),
    "change_background": (
        "Change the background to {bg}.",
        "Replace the background with {bg}.",
        "Make the background {bg}.",
        "Use {bg} as the background.",
        "Set the background to {bg}.",
        "Swap the background for {bg}.",
    ),
    # ------------------------------------------------------------------ restore
    "denoise": (
        "Remove the noise.",
        "Denoise this image.",
        "Clean up the grain in the picture.",
        "Get rid of the noise in this image.",
        "Make the image noise-free.",
        "Reduce the noise in the photo.",
    ),
    "deblur": (
        "Deblur the image.",
        "Make the image sharp.",
        "Remove the blur.",
        "Sharpen this blurry picture.",
        "Restore the sharpness of the image.",
        "Fix the blur in this image.",
    ),
    "dehaze": (
        "Remove the haze.",
        "Dehaze the image.",
        "Clear the fog from this picture.",
        "Make the image clear by removing the haze.",
        "Get rid of the haze in the image.",
        "Remove the mist from the image.",
    ),
    "lowlight": (
        "Enhance the light.",
        "Brighten the image.",
        "Fix this low-light image.",
        "Make this dark image brighter.",
        "Increase the brightness of the picture.",
        "Improve the lighting of this picture.",
    ),
    "colorize": (
        "Colorize the image.",
        "Add color to this black and white picture.",
        "Transform gray image to color image.",
        "Make this grayscale image colorful.",
        "Restore the colors of the image.",
        "Turn this gray picture into a color one.",
    ),
    "dewatermark": (
        "Remove the watermark.",
        "Erase the watermark from the image.",
        "Get rid of the text overlay.",
        "Clean the watermark off this picture.",
        "Delete the watermark.",
        "Make the image free of watermarks.",
    ),
    "desnow": (
        "Remove the snow.",
        "Erase the snowflakes from the image.",
        "Clear the falling snow from this picture.",
        "Get rid of the snow in the image.",
        "Make the image snow-free.",
        "Remove the snowflakes.",
    ),
    "super_resolve": (
        "Increase the resolution of the image.",
        "Upscale this image with more detail.",
        "Make this low-resolution image sharp and detailed.",
        "Super-resolve the image.",
        "Enhance the resolution.",
        "Restore the fine details of this pixelated image.",
    ),
    "inpaint": (
        "Fill in the missing region.",
        "Inpaint the masked area.",
        "Complete the black hole in the image.",
        "Restore the missing part of the picture.",
        "Fill the masked region naturally.",
        "Repair the blank area of the image.",
    ),
    "remove_object": (
        "Remove the {obj} from the image.",
        "Erase the {obj}.",
        "Delete the {obj} and fill in the background.",
        "Take out the {obj}.",
        "Remove the {obj} and restore what is behind it.",
        "Clear the {obj} from the picture.",
    ),
    # ------------------------------------------------------------------ control
    "canny_to_image": (
        "Generate image from canny edge: {caption}",
        "Canny edge to image: {caption}",
        "Turn these edges into an image of {caption}",
        "Render {caption}, following the edge map.",
        "Create a picture from the canny edges: {caption}",
        "Use the edge map to draw {caption}",
    ),
    "depth_to_image": (
        "Generate image from depth map: {caption}",
        "Depth map to image: {caption}",
        "Turn this depth map into an image of {caption}",
        "Render {caption}, following the depth map.",
        "Create a picture from the depth map: {caption}",
        "Use the depth map to draw {caption}",
    ),
    "seg_to_image": (
        "Generate image from segmentation map: {caption}",
        "Segmentation map to image: {caption}",
        "Turn this segmentation map into an image of {caption}",
        "Render {caption}, following the segmentation map.",
        "Create a picture from the segmentation map: {caption}",
        "Use the label map to draw {caption}",
    ),
    "subject_driven": (
        "Generate image from the subject image: {caption}",
        "Place the subject of the reference image in this scene: {caption}",
        "Draw the reference object in a new scene: {caption}",
        "Using the subject from the reference, render {caption}",
        "Subject-driven generation: {caption}",
        "Put the object from the reference image into {caption}",
    ),
    "style_driven": (
        "Generate image from style image.",
        "Apply the style of the reference image.",
        "Redraw this image in the style of the reference.",
        "Transfer the colors and background of the reference image to this picture.",
        "Restyle the image like the reference image.",
        "Use the palette and texture of the reference image.",
    ),
    # ------------------------------------------------------------------ grounding
    "mark": (
        "Mark the pixels of the {obj} in {marker} and leave the rest unchanged.",
        "Highlight the {obj} in {marker}.",
        "Color over the {obj} with a {marker} tint.",
        "Mark the {obj} with a {marker} overlay.",
        "Show where the {obj} is by tinting it {marker}.",
        "Paint a {marker} highlight over the {obj}.",
    ),
    # ------------------------------------------------------------------ interleaved
    "combine": (
        "Combine the object in image 1 with the object in image 2.",
        "Put the object from image 1 and the object from image 2 together in one picture.",
        "Make one image containing both the object of image 1 and the object of image 2.",
        "Place the objects of image 1 and image 2 side by side.",
        "Merge the object in image 1 and the object in image 2 into a single scene.",
        "Combine the objects: image 1, image 2.",
    ),
    "put_on_background": (
        "Put the object of image 1 on the background of image 2.",
        "Place the object from image 1 onto the background of image 2.",
        "Move the object in image 1 onto the background of image 2.",
        "Paste the object of image 1 into the background of image 2.",
        "Show the object of image 1 in front of the background of image 2.",
        "Combine the object of image 1 with the background of image 2.",
    ),
}

HELDOUT: dict[str, tuple[str, ...]] = {
    "recolor": (
        "Could you switch the {obj} over to {color}?",
        "I want the {obj} colored {color} instead.",
        "Swap the hue of the {obj} for {color}.",
    ),
    "remove": (
        "Could you clear the {obj} out of this picture?",
        "I don't want the {obj} here anymore.",
        "Wipe out the {obj}.",
    ),
    "add": (
        "Could you drop a {new} into the {place}?",
        "Include a {new}, positioned at the {place}.",
        "Sketch in a {new} over at the {place}.",
    ),
    "move": (
        "Could the {obj} sit at the {place} instead?",
        "Reposition the {obj} so it ends up at the {place}.",
        "Transfer the {obj} to the {place} of the picture.",
    ),
    "resize": (
        "Could you make the {obj} a bit {adj}?",
        "I'd like the {obj} to look {adj}.",
        "Rescale the {obj}; it needs to be {adj}.",
    ),
    "change_background": (
        "Could the backdrop become {bg}?",
        "Give the picture {bg} behind the objects.",
        "Put {bg} behind everything.",
    ),
    "denoise": (
        "Could you smooth out the speckles?",
        "Strip the grainy noise from this photo.",
        "Please give me a clean version without noise.",
    ),
    "deblur": (
        "Could you bring this picture back into focus?",
        "Undo the blurring.",
        "Please make the edges crisp again.",
    ),
    "dehaze": (
        "Could you lift the fog off this scene?",
        "Take away the milky veil.",
        "Please make the distant parts clear again.",
    ),
    "lowlight": (
        "Could you lighten up this underexposed shot?",
        "This is too dark; fix the exposure.",
        "Please make the details visible by adding light.",
    ),
    "colorize": (
        "Could you bring back the colors?",
        "Paint this monochrome picture in full color.",
        "Please give this gray image its colors.",
    ),
    "dewatermark": (
        "Could you strip the overlaid text?",
        "Take the watermark out, please.",
        "Clean away the stamped letters.",
    ),
    "desnow": (
        "Could you clear away the snowfall?",
        "Take out the white flakes, please.",
        "Please show the scene without the snow.",
    ),
    "super_resolve": (
        "Could you recover a high-resolution version?",
        "Undo the pixelation, please.",
        "Please sharpen this low-res picture into a detailed one.",
    ),
    "inpaint": (
        "Could you fill the gap in this picture?",
        "Reconstruct the part that was cut out.",
        "Please patch up the black region.",
    ),
    "remove_object": (
        "Could you make the {obj} vanish?",
        "The {obj} has to go, please.",
        "Please show the scene without the {obj}.",
    ),
    "canny_to_image": (
        "Could you paint {caption} over these edges?",
        "Fill these outlines to show {caption}",
        "Edges given; produce {caption}",
    ),
    "depth_to_image": (
        "Could you paint {caption} with this depth layout?",
        "Fill this depth layout to show {caption}",
        "Depth given; produce {caption}",
    ),
    "seg_to_image": (
        "Could you paint {caption} with this layout of regions?",
        "Fill these labelled regions to show {caption}",
        "Labels given; produce {caption}",
    ),
    "subject_driven": (
        "Could you show this subject in {caption}?",
        "Take the reference object and stage it as {caption}",
        "Reference subject; produce {caption}",
    ),
    "style_driven": (
        "Could you make this look like the reference picture?",
        "Borrow the look of the reference for this image.",
        "Reference style; redraw this image.",
    ),
    "mark": (
        "Could you tint the {obj} {marker}?",
        "Overlay {marker} on the {obj} only.",
        "Please flag the {obj} using {marker}.",
    ),
    "combine": (
        "Could you show the objects of image 1 and image 2 in one scene?",
        "Bring together image 1's object and image 2's object.",
        "Both objects, from image 1 and image 2, in a single picture.",
    ),
    "put_on_background": (
        "Could you set image 1's object against image 2's backdrop?",
        "Take the object in image 1 and stage it over the background of image 2.",
        "Image 1 object, image 2 background: one picture.",
    ),
}

PARAPHRASES: dict[str, tuple[str, ...]] = {
    "recolor": (
        "Color the {obj} {color}.",
        "Change the {obj} to {color}.",
        "Fill the {obj} with {color}.",
        "Use {color} for the {obj}.",
        "Set the color of the {obj} to {color}.",
        "Repaint the {obj} {color}.",
        "Recolour the {obj} {color}.",
        "Let the {obj} be {color}.",
        "Convert the {obj} into a {color} one.",
        "{color} is the new color of the {obj}.",
    ),
    "remove": (
        "Remove the {obj} from the picture.",
        "Erase the {obj}.",
        "Take out the {obj}.",
        "Delete the {obj} and keep the background.",
        "Get the {obj} out of the image.",
        "Hide the {obj}.",
        "Eliminate the {obj}.",
        "The {obj} should be gone.",
        "Cut the {obj} from the scene.",
        "Leave out the {obj}.",
    ),
    "add": (
        "Add a {new} to the {place}.",
        "Create a {new} at the {place}.",
        "Paint a {new} at the {place}.",
        "At the {place}, add a {new}.",
        "A {new} should appear at the {place}.",
        "Show a {new} at the {place}.",
        "Make a {new} at the {place}.",
        "Give the image a {new} at the {place}.",
        "Put in a {new} at the {place}.",
        "Render a {new} at the {place}.",
    ),
    "move": (
        "Move the {obj} over to the {place}.",
        "Move the {obj} across to the {place}.",
        "Place the {obj} at the {place}.",
        "Carry the {obj} to the {place}.",
        "Push the {obj} to the {place}.",
        "The {obj} should be at the {place}.",
        "Send the {obj} to the {place}.",
        "Move the {obj} so that it is at the {place}.",
        "Change the position of the {obj} to the {place}.",
        "Take the {obj} to the {place}.",
    ),
    "resize": (
        "Make the {obj} a little {adj}.",
        "Change the {obj} so that it is {adj}.",
        "The {obj} must be {adj}.",
        "Draw the {obj} {adj}.",
        "Adjust the size of the {obj}: {adj}.",
        "Scale the {obj} to be {adj}.",
        "Resize the {obj}, {adj}.",
        "{verb} the {obj} in place.",
        "Show the {obj} {adj}.",
        "Render the {obj} {adj}.",
    ),
    "change_background": (
        "Turn the background into {bg}.",
        "Paint the background {bg}.",
        "Put the objects on {bg}.",
        "The background should be {bg}.",
        "Change the background of the image to {bg}.",
        "Give the image a background of {bg}.",
        "Draw {bg} as the new background.",
        "Exchange the background for {bg}.",
        "Fill the background with {bg}.",
        "Show the objects on {bg}.",
    ),
    "segment": (
        "Segment the {label}.",
        "Make a white mask of the {label} on black.",
        "Mask the {label}.",
        "Output the mask of the {label}.",
        "Show the {label} as a white region on a black background.",
        "Create a white silhouette of the {label}.",
    ),
    "detect": (
        "Box the {label} in blue.",
        "Draw blue bounding boxes around the {label}.",
        "Detect the {label} with blue boxes.",
        "Put a blue box on each {label}.",
        "Show where each {label} is with a blue box.",
        "Outline the {label} with a blue rectangle.",
    ),
}

CV_TASKS: tuple[str, ...] = ("segment", "detect", "depth", "classify")


def train_phrasings(task: str) -> tuple[str, ...]:
    if task in CV_TASKS:
        return tuple(_cv_templates.RP_PROMPTS[task])
    return TRAIN[task]


def heldout_phrasings(task: str) -> tuple[str, ...]:
    if task in CV_TASKS:
        return tuple(_cv_templates.HELDOUT_PROMPTS[task])
    return HELDOUT[task]


def phrase(task: str, rng: random.Random, heldout: bool = False, *, paraphrase: bool = False, **fields: str) -> str:
    """Draw one phrasing for `task` and fill it in. cv tasks go through `build_prompt`.

    `paraphrase=True` (training only) draws from the training phrasings and `PARAPHRASES` together."""
    if paraphrase and heldout:
        raise ValueError("paraphrase=True draws training wordings; it cannot be combined with heldout=True")
    extra = PARAPHRASES.get(task, ()) if paraphrase else ()
    if task in CV_TASKS:
        label = fields.get("label")
        kw = {}
        if task == "classify":
            kw = {"pos": fields["pos"], "neg": fields["neg"]}
        base = _cv_templates.RP_PROMPTS[task]
        if extra and rng.randrange(len(base) + len(extra)) >= len(base):
            return extra[rng.randrange(len(extra))].format(label=label)
        return _cv_templates.build_prompt(task, label, style="rp", heldout=heldout, rng=rng, **kw)
    pool = HELDOUT[task] if heldout else TRAIN[task] + extra
    template = pool[rng.randrange(len(pool))]
    text = template.format(**fields)
    return text[0].upper() + text[1:]


def slot_words() -> frozenset[str]:
    """Every word a filled slot can bring (colours, shapes, sizes, places, backgrounds), lower case: the words
    instruction noise keeps (`train.instruction_noise_keep_slots`), since they carry the edit's arguments."""
    from editkit.tasks.colors import COLORS

    from .scene import BACKGROUND_COLORS, OBJECT_COLORS, PLACES, SHAPES, SIZE_CLASSES

    names = [*OBJECT_COLORS, *BACKGROUND_COLORS, *SHAPES, *SIZE_CLASSES, *PLACES, *COLORS]
    names += ["bigger", "smaller", "enlarge", "shrink", "plain", "horizontal", "vertical", "gradient", "stripes",
              "checkerboard"]
    return frozenset(w for n in names for w in n.lower().split())
