"""Export to PNG + metadata.jsonl, reading it back, the `editkit data` CLI and its bad-input errors."""

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from editkit.data import arrays_from_ground_truth, generate
from editkit.data.cli import add_data_parser, main
from editkit.data.export import METADATA, export, load_metadata, load_samples

COLUMNS = {"file_name", "input_image", "edited_image", "edit_prompt", "auxiliary_prompt", "task", "family",
           "reference_images", "mask_image", "split", "index", "ground_truth"}
TASKS = "edit,cv,restore,grounding,interleaved,subject_driven,style_driven,seg_to_image"  # no canny import


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_export_layout_and_round_trip(tmp_path):
    samples = list(generate(TASKS, 30, split="val"))
    res = export(samples, tmp_path / "out", progress=False)
    assert res.count == 30 and sum(res.tasks.values()) == 30
    rows = load_metadata(tmp_path / "out")
    assert len(rows) == 30
    raw = [json.loads(line) for line in (tmp_path / "out" / METADATA).read_text().splitlines()]
    for row, r, s in zip(rows, raw, samples):
        assert set(row) == COLUMNS
        assert isinstance(r["ground_truth"], str)  # JSON string in the file: one Arrow schema for all tasks
        assert row["file_name"] == row["input_image"] and row["file_name"].endswith("_source.png")
        assert row["task"] == s.task and row["edit_prompt"] == s.instruction
        assert row["ground_truth"] == json.loads(json.dumps(s.ground_truth))
        assert len(row["reference_images"]) == len(s.references)
        assert (row["mask_image"] is None) == (s.mask is None)
        for rel in [row["file_name"], row["edited_image"], *row["reference_images"]] + \
                ([row["mask_image"]] if row["mask_image"] else []):
            assert (tmp_path / "out" / rel).is_file()
    back = list(load_samples(tmp_path / "out"))
    for a, b in zip(samples, back):  # PNG is lossless
        assert np.array_equal(np.asarray(a.source), np.asarray(b.source))
        assert np.array_equal(np.asarray(a.target), np.asarray(b.target))
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.references, b.references))
        if a.mask is not None:
            assert np.array_equal(np.asarray(a.mask), np.asarray(b.mask))
        rebuilt = arrays_from_ground_truth(b.ground_truth)
        for k, v in a.arrays.items():
            if k in rebuilt:
                assert np.array_equal(rebuilt[k], v)


def test_same_arguments_give_identical_files(tmp_path):
    export(generate(TASKS, 24, seed=3), tmp_path / "a", progress=False)
    export(generate(TASKS, 24, seed=3), tmp_path / "b", progress=False)
    export(generate(TASKS, 24, seed=4), tmp_path / "c", progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_existing_folders_are_never_overwritten_silently(tmp_path):
    out = tmp_path / "out"
    export(generate("cv", 4), out, progress=False)
    before = _digest(out)
    with pytest.raises(ValueError, match="out_dir.*not empty.*overwrite"):
        export(generate("edit", 4), out, progress=False)
    assert _digest(out) == before
    res = export(generate("edit", 6), out, overwrite=True, progress=False)
    assert res.count == 6 and len(load_metadata(out)) == 6
    assert len(list((out / "images").glob("*_source.png"))) == 6  # old images cleared
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a previous export"):
        export(generate("cv", 2), foreign, overwrite=True, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(ValueError, match="out_dir.*not a folder"):
        export(generate("cv", 2), afile, progress=False)
    with pytest.raises(ValueError, match="metadata"):
        load_metadata(foreign)


def test_cli_shapes(tmp_path, capsys):
    out = tmp_path / "ds"
    rc = main(["shapes", "--tasks", "cv,edit", "--n", "20", "--size", "64", "--split", "train",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    rows = load_metadata(out)
    assert len(rows) == 20 and {r["family"] for r in rows} == {"cv", "edit"}
    info = json.loads((out / "shapes_info.json").read_text())
    assert info["n"] == 20 and info["tasks"][:4] == ["segment", "detect", "depth", "classify"]
    assert "wrote 20 samples" in capsys.readouterr().err
    # the same command again refuses, then --overwrite works ("data" prefix accepted)
    assert main(["shapes", "--tasks", "cv", "--n", "3", "--out", str(out), "--no-progress"]) == 2
    assert "out_dir" in capsys.readouterr().err and len(load_metadata(out)) == 20
    assert main(["data", "shapes", "--tasks", "cv", "--n", "3", "--out", str(out), "--overwrite",
                 "--no-progress"]) == 0
    assert len(load_metadata(out)) == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "cv,bogus", "--n", "5"], "`tasks` names an unknown task 'bogus'"),
        (["--n", "0"], "`n` must be a positive integer"),
        (["--n", "-4"], "`n` must be a positive integer"),
        (["--n", "5", "--size", "8"], "`size`=8 is too small"),
        (["--n", "5", "--size", "2048"], "`size`=2048 is too large"),
    ],
)
def test_cli_bad_input_names_the_argument(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main(["shapes", "--out", str(out), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing written


def test_cli_unknown_split_is_an_argparse_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["shapes", "--n", "2", "--split", "dev", "--out", str(tmp_path / "x")])
    assert e.value.code == 2


def test_add_data_parser_registers_on_a_main_cli(tmp_path):
    parser = argparse.ArgumentParser(prog="editkit")
    add_data_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "shapes", "--n", "4", "--tasks", "grounding", "--out",
                              str(tmp_path / "g"), "--no-progress"])
    assert args.command == "data" and args.data_command == "shapes"
    assert args.func(args) == 0 and len(load_metadata(tmp_path / "g")) == 4
    args = parser.parse_args(["data", "tasks"])
    assert args.func(args) == 0
