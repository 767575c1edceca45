"""Evaluation: the shapes-benchmark harness, its scorers, baselines, method adapters and CLI.

Where each part lives: `harness` (evaluate), `scoring` (SCORERS), `baselines` (identity, CLASSICAL),
`adapters` (ADAPTERS: how each method is called), `report` (results files and tables), `cli` (`editkit eval`).

The harness: run a method over shapes-benchmark samples and score every task, with baselines.

    from editkit.evaluation import evaluate, format_table, write_results
    results = evaluate(pipe, "instructcv", "cv,edit", n=200, split="test", steps=20, seed=0)
    print(format_table(results))
    write_results(results, "results.json")

    editkit eval --model DIR --method instructcv --tasks cv,edit --n 200 --split test

What is scored
    Every task has a `TaskScorer` (`SCORERS`): the metrics it reports (all kept
    in the results) and one headline metric with its direction for the table.

    cv           outputs are decoded with the task codecs (`editkit.tasks`):
                 segment  miou (mean over samples of the decoded mask's IoU)
                 detect   ap50, precision, recall (pooled over the samples)
                 depth    rmse (m), absrel, delta1..3 (per image, averaged)
                 classify accuracy of the decoded present/absent answer
    edit, remove_object, control, interleaved
                 edit_success (scene reader: the output holds exactly the
                 target's objects and background), presence, color_accuracy,
                 background; psnr / ssim to the target; psnr_in / psnr_out
                 inside / outside the edited region where one is defined;
                 canny_to_image also edge_f1 (output edges vs the control
                 edges), subject_driven also subject_present. Neither of these
                 two is a headline: returning the input scores 1.0 on both.
    restore      psnr (headline), ssim; psnr_in / psnr_out of the flaw's
                 region (watermark, snow, hole) where there is one
    mark         mark_iou: IoU of the pixels the output highlights (near the
                 50 % marker blend and closer to it than to the source) with
                 the object; psnr, psnr_in / psnr_out of the object

Baselines (so every number has context)
    identity     output = source, for every task.
    classical    a simple hand-written method where one is honest (`CLASSICAL`):
                 it sees only the source image and what the instruction says
                 (the queried label, the two classification colours), never the
                 target or the ground truth. Tasks without one show "-".

Determinism
    Samples are `make_sample(task, split, i, size, seed=data_seed)` for
    i < n, so a task's samples do not depend on which other tasks run. The
    sampler's noise for sample i of a task comes from
    `torch.Generator().manual_seed(seed + i)`, so a sample's output does not
    depend on the batch size or on the other tasks either.

Methods
    A pipeline is driven through an adapter, `ADAPTERS[method](pipe, samples,
    seeds=..., steps=..., guidance=..., image_guidance=...) -> list of images`;
    the adapters are one registry in `editkit.evaluation.adapters`.
    Any other callable
    `fn(instructions, sources, samples) -> images` can be evaluated directly.
    `call_args` go to the adapter as extra keywords, and from there to the
    pipeline call, which makes a method's own ablation a baseline, e.g.
    `{"control_scale": 0}` (UNIC-Adapter without its condition) or
    `{"drop_images": True}` (Dream Engine's text-only prompt).
"""

from .adapters import ADAPTERS, CUSTOM, check_method, prompt_and_image, sampling_kwargs
from .baselines import CLASSICAL, Baseline, identity
from .cli import parse_call_args
from .harness import DEFAULT_EVAL_STEPS, RESULTS_FORMAT, evaluate
from .report import SYSTEMS, compare_table, describe, format_table, write_results
from .scoring import SCORERS, TaskScorer

__all__ = [
    "ADAPTERS", "CLASSICAL", "CUSTOM", "DEFAULT_EVAL_STEPS", "RESULTS_FORMAT", "SCORERS", "SYSTEMS", "Baseline",
    "TaskScorer", "check_method", "compare_table", "describe", "evaluate", "format_table", "identity",
    "parse_call_args", "prompt_and_image", "sampling_kwargs", "write_results",
]
