"""The evaluation harness: scoring, baselines, determinism, table, JSON and the `editkit eval` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from editkit import cli, loading
from editkit.data import FAMILIES, TASKS, make_sample
from editkit.evaluation import CLASSICAL, SCORERS, compare_table, describe, evaluate, format_table, parse_call_args, write_results
from editkit.pipelines import InstructCVPipeline
from editkit.testing import tiny_instructcv_components

COLUMNS = ("task", "n", "metric", "model", "identity", "classical")


def oracle(instructions, sources, samples):
    """A perfect model: returns every sample's target."""
    assert [s.instruction for s in samples] == list(instructions)
    return [s.target for s in samples]


@pytest.fixture(scope="module")
def pipe():
    p = InstructCVPipeline(**tiny_instructcv_components(seed=0))
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, pipe):
    path = tmp_path_factory.mktemp("model") / "tiny"
    pipe.save_pretrained(path)
    return path


def _rows(table: str) -> dict[str, list[str]]:
    lines = table.splitlines()
    return {line.split()[0]: line.split() for line in lines[2:]}


def test_tiny_model_table_has_every_column_and_baseline(pipe):
    res = evaluate(pipe, "instructcv", "segment,recolor,denoise", n=2, size=48, steps=1, batch_size=2, progress=False)
    table = format_table(res)
    assert table.splitlines()[0].split() == list(COLUMNS)
    rows = _rows(table)
    assert list(rows) == ["segment", "recolor", "denoise"]
    seg = rows["segment"]
    assert seg[1] == "2" and seg[2] == "miou" and seg[3] == "↑"
    assert all(v != "-" for v in seg[4:7])  # model, identity and classical (colour thresholding)
    assert rows["recolor"][-1] == "-"  # no classical baseline for recolouring
    assert rows["denoise"][2:4] == ["psnr", "↑"]
    # Every number is in the json, all metrics included, with the configuration.
    t = res["tasks"]["segment"]
    assert set(t["scores"]) == {"model", "identity", "classical"} and t["headline"] == "miou"
    assert {"edit_success", "presence", "psnr", "psnr_in", "psnr_out"} <= set(res["tasks"]["recolor"]["scores"]["model"])
    assert res["config"]["steps"] == 1 and res["config"]["method"] == "instructcv"
    json.dumps(res, allow_nan=False)


def test_identity_baseline_is_the_psnr_of_source_vs_target():
    res = evaluate(None, "instructcv", "denoise", n=3, split="val", size=48, progress=False)
    by_hand = []
    for i in range(3):
        s = make_sample("denoise", "val", i, 48)
        d = np.asarray(s.source, np.float64) - np.asarray(s.target, np.float64)
        by_hand.append(10 * np.log10(255.0**2 / np.mean(d**2)))
    ident = res["tasks"]["denoise"]["scores"]["identity"]
    assert ident["psnr"] == pytest.approx(np.mean(by_hand), abs=1e-9)
    assert "model" not in res["tasks"]["denoise"]["scores"]
    assert res["config"]["baselines_only"] is True
    assert _rows(format_table(res))["denoise"][4] == "-"


def test_oracle_is_perfect_on_cv_tasks():
    res = evaluate(oracle, "custom", "cv", n=4, size=64, progress=False)
    m = {t: res["tasks"][t]["scores"]["model"] for t in FAMILIES["cv"]}
    assert m["segment"]["miou"] == 1.0
    assert m["detect"] == {"ap50": 1.0, "precision": 1.0, "recall": 1.0}
    assert m["classify"]["accuracy"] == 1.0
    assert m["depth"]["rmse"] < 0.03 and m["depth"]["delta1"] == 1.0  # 8-bit quantisation only
    # The identity baseline is far from it.
    assert res["tasks"]["detect"]["scores"]["identity"]["ap50"] == 0.0
    assert res["tasks"]["depth"]["scores"]["identity"]["rmse"] > 1.0


def test_oracle_hits_every_headline_and_beats_identity():
    others = [t for t in TASKS if t not in FAMILIES["cv"]]
    res = evaluate(oracle, "custom", others, n=1, size=48, progress=False)
    for task in others:
        r = res["tasks"][task]
        assert r["headline"] == SCORERS[task].headline
        best = r["scores"]["model"][r["headline"]]
        assert best == (100.0 if r["headline"] == "psnr" else 1.0), task
        assert r["scores"]["identity"][r["headline"]] < best, task


def test_noise_is_not_rewarded():
    rng = np.random.default_rng(0)

    def noise(instructions, sources, samples):
        return [rng.integers(0, 256, (*s.target.size[::-1], 3), dtype=np.uint8) for s in samples]

    res = evaluate(noise, "custom", "detect,mark,recolor", n=4, size=48, progress=False)
    head = {t: r["scores"]["model"][r["headline"]] for t, r in res["tasks"].items()}
    assert head["detect"] == 0.0 and head["recolor"] == 0.0
    assert head["mark"] < 0.1  # a mark must look like the marker blend, not merely differ from the source


def test_classical_baselines_beat_identity():
    res = evaluate(None, "custom", list(CLASSICAL), n=4, split="val", size=64, progress=False)
    for task, r in res["tasks"].items():
        s, head = r["scores"], r["headline"]
        better = s["classical"][head] > s["identity"][head] if r["higher_is_better"] else s["classical"][head] < s["identity"][head]
        assert better, (task, s)
        assert r["classical"] == CLASSICAL[task].description


def test_same_seed_gives_identical_json_and_the_seed_matters(pipe, tmp_path):
    kw = dict(tasks="denoise,classify", n=3, size=48, steps=2, progress=False)
    a = write_results(evaluate(pipe, "instructcv", seed=5, batch_size=2, **kw), tmp_path / "a.json")
    b = write_results(evaluate(pipe, "instructcv", seed=5, batch_size=2, **kw), tmp_path / "b.json")
    assert a.read_bytes() == b.read_bytes()
    c = evaluate(pipe, "instructcv", seed=6, batch_size=2, **kw)
    assert c["tasks"]["denoise"]["scores"]["model"] != json.loads(a.read_text())["tasks"]["denoise"]["scores"]["model"]
    # Each sample has its own generator (seed + index), so the batch size does not matter.
    d = evaluate(pipe, "instructcv", seed=5, batch_size=3, **kw)
    assert d["tasks"]["denoise"]["scores"]["model"]["psnr"] == pytest.approx(
        json.loads(a.read_text())["tasks"]["denoise"]["scores"]["model"]["psnr"], abs=0.05)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(tasks="segment,teleport"), "unknown task 'teleport'"),
        (dict(tasks=""), "`tasks` is empty"),
        (dict(n=0), "`n` must be a positive integer"),
        (dict(n=-3), "`n` must be a positive integer"),
        (dict(n=2.5), "`n` must be a positive integer"),
        (dict(method="dalle"), "`method` must be one of"),
        (dict(size=16), "too small"),
        (dict(split="dev"), "`split` must be one of"),
        (dict(steps=0), "`steps` must be a positive integer"),
        (dict(batch_size=0), "`batch_size` must be a positive integer"),
        (dict(seed=-1), "`seed` must be a non-negative integer"),
        (dict(model=42), "must be a pipeline, a callable or None"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    args = dict(model=oracle, method="custom", tasks="segment", n=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        evaluate(args.pop("model"), args.pop("method"), args.pop("tasks"), args.pop("n"), progress=False, **args)


def test_bad_model_outputs_and_pipeline_without_adapter(pipe):
    with pytest.raises(ValueError, match="returned 0 images for 1 samples"):
        evaluate(lambda i, s, b: [], "custom", "segment", 1, progress=False)
    with pytest.raises(ValueError, match="size 32x32 for a 64x64 segment sample"):
        evaluate(lambda i, s, b: [np.zeros((32, 32, 3), np.uint8)], "custom", "segment", 1, progress=False)
    with pytest.raises(ValueError, match="needs its method's adapter"):
        evaluate(pipe, "custom", "segment", 1, progress=False)


def test_cli_eval_prints_the_table_and_writes_json(model_dir, tmp_path, capsys):
    out = tmp_path / "res" / "r.json"
    rc = cli.main(["eval", "--model", str(model_dir), "--method", "instructcv", "--tasks", "depth,deblur", "--n", "2",
                   "--split", "test", "--size", "48", "--steps", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    rows = _rows(text.split("\n", 1)[1])
    assert text.splitlines()[1].split() == list(COLUMNS)
    assert list(rows) == ["depth", "deblur"] and rows["depth"][2:4] == ["rmse", "↓"]
    data = json.loads(out.read_text())
    assert data["config"]["model"] == str(model_dir) and data["config"]["n"] == 2
    assert set(data["tasks"]["deblur"]["scores"]) == {"model", "identity", "classical"}


def test_cli_eval_baselines_only_and_errors(tmp_path, capsys, monkeypatch):
    out = tmp_path / "b.json"
    assert cli.main(["eval", "--baselines-only", "--tasks", "lowlight", "--n", "2", "--size", "48",
                     "--out", str(out), "--no-progress"]) == 0
    assert "baselines only" in capsys.readouterr().out and out.is_file()
    assert cli.main(["eval", "--baselines-only", "--tasks", "nope", "--n", "2", "--out", str(out)]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert cli.main(["eval", "--baselines-only", "--n", "0", "--out", str(out)]) == 2
    assert cli.main(["eval", "--method", "sdxl", "--n", "1", "--out", str(out)]) == 2
    assert "`method` must be one of" in capsys.readouterr().err
    monkeypatch.setattr(loading, "default_model", lambda method="instructcv": None)
    assert cli.main(["eval", "--tasks", "segment", "--n", "1", "--out", str(out)]) == 2
    assert "no default instructcv model" in capsys.readouterr().err


def test_call_args_reach_the_pipeline_and_the_results(pipe):
    """`call_args` change the model's run (here: InstructCV's image guidance by keyword) and are recorded."""
    kw = dict(n=2, size=48, steps=2, batch_size=2, progress=False)
    plain = evaluate(pipe, "instructcv", "recolor", image_guidance=1.5, **kw)
    same = evaluate(pipe, "instructcv", "recolor", call_args={"image_guidance_scale": 1.5}, **kw)
    other = evaluate(pipe, "instructcv", "recolor", call_args={"image_guidance_scale": 3.0}, **kw)
    assert same["tasks"] == plain["tasks"] and other["tasks"] != plain["tasks"]
    assert same["config"]["call_args"] == {"image_guidance_scale": 1.5} and "image_guidance_scale=1.5" in describe(same)
    with pytest.raises(ValueError, match="call_args"):
        evaluate(oracle, "custom", "recolor", n=1, size=48, progress=False, call_args={"x": 1})


def test_parse_call_args():
    assert parse_call_args(["control_scale=0", "drop_images=true", "task=canny", "w=0.5"]) == {
        "control_scale": 0, "drop_images": True, "task": "canny", "w": 0.5}
    for bad in ("control_scale", "=1", "a b=1"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_call_args([bad])


def test_compare_table_lines_up_runs_and_baselines():
    perfect = evaluate(oracle, "custom", "recolor,denoise", n=2, size=48, progress=False)
    noisy = evaluate(lambda i, s, smp: [np.full((48, 48, 3), 127, np.uint8)] * len(s), "custom", "denoise", n=2, size=48,
                     progress=False)
    table = compare_table({"oracle": perfect, "grey": noisy}, ["psnr", "edit_success"])
    rows = [r.split("|")[1:-1] for r in table.splitlines()]
    assert [c.strip() for c in rows[0]] == ["task", "metric", "oracle", "grey", "identity", "classical"]
    assert len(rows) == 3  # only the shared task (denoise), and only its metric that exists
    task, metric, oracle_psnr, grey_psnr, identity_psnr, classical_psnr = (c.strip() for c in rows[2])
    assert (task, metric) == ("denoise", "psnr") and float(oracle_psnr) > float(identity_psnr) > float(grey_psnr)
    assert float(identity_psnr) == pytest.approx(perfect["tasks"]["denoise"]["scores"]["identity"]["psnr"], abs=0.01)
    with pytest.raises(ValueError, match="runs"):
        compare_table({})


def test_eval_table_command(tmp_path, capsys):
    a = write_results(evaluate(oracle, "custom", "denoise", n=1, size=48, progress=False), tmp_path / "a.json")
    assert cli.main(["eval-table", f"perfect={a}", "--metrics", "psnr,ssim"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split("|")[3].strip() == "perfect" and [r.split("|")[2].strip() for r in out[2:]] == ["psnr", "ssim"]
    assert cli.main(["eval-table", str(tmp_path / "missing.json")]) != 0
    assert "missing.json' does not exist" in capsys.readouterr().err
