"""Training-data options: task weights for the shapes stream and instruction noise."""

from collections import Counter

import numpy as np
import pytest
import torch

from editkit.training.config import load_config
from editkit.training.data import ShapesPairs, build_dataset
from editkit.training.prompts import WORD_DROP, noisy_instruction, noisy_instructions


def test_unweighted_stream_is_round_robin():
    ds = ShapesPairs("denoise,deblur,colorize", 30, 48)
    assert [ds.task_index(i) for i in range(7)] == [
        ("denoise", 0), ("deblur", 0), ("colorize", 0), ("denoise", 1), ("deblur", 1), ("colorize", 1), ("denoise", 2)]


def test_task_weights_set_the_mix_and_never_repeat_a_sample():
    ds = ShapesPairs("denoise,deblur,colorize", 600, 48, task_weights={"colorize": 3, "deblur": 2})
    pairs = [ds.task_index(i) for i in range(600)]
    counts = Counter(t for t, _ in pairs)
    assert counts == {"denoise": 100, "deblur": 200, "colorize": 300}
    for task, n in counts.items():  # each task's indices are 0..n-1, each once
        assert sorted(k for t, k in pairs if t == task) == list(range(n))
    item = ds[5]
    assert item["task"] == pairs[5][0] and item["index"] == 5


def test_task_weights_from_the_command_line_and_their_errors():
    cfg = load_config(None, ["data.tasks=denoise,colorize", "data.task_weights.colorize=4", "data.num_samples=10", "data.size=48"])
    ds = build_dataset(cfg.data, seed=0)
    assert Counter(ds.task_index(i)[0] for i in range(10)) == {"colorize": 8, "denoise": 2}
    with pytest.raises(ValueError, match="task_weights names 'dehaze'"):
        ShapesPairs("denoise,colorize", 10, 48, task_weights={"dehaze": 2})
    with pytest.raises(ValueError, match="task_weights.colorize must be a whole number >= 1"):
        ShapesPairs("denoise,colorize", 10, 48, task_weights={"colorize": 0})


def test_noisy_instruction_keeps_known_words_and_adds_made_up_ones():
    text = "Remove the haze from this picture."
    words = set(text.split())
    for seed in range(50):
        out = noisy_instruction(text, torch.Generator().manual_seed(seed)).split()
        kept = [w for w in out if w in words]
        new = [w for w in out if w not in words]
        assert kept and kept == [w for w in text.split() if w in kept]  # order kept, one word always survives
        assert 1 <= len(new) <= 3 and all(w.isalpha() and w.islower() and 2 <= len(w) <= 8 for w in new)
    a = noisy_instruction(text, torch.Generator().manual_seed(3))
    assert a == noisy_instruction(text, torch.Generator().manual_seed(3))


def test_noisy_instructions_share():
    texts = [f"Dehaze image number {i}." for i in range(400)]
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(400)]  # noqa: E731
    assert noisy_instructions(texts, gens(), 0.0) == texts
    assert all(a != b for a, b in zip(noisy_instructions(texts, gens(), 1.0), texts))
    changed = sum(a != b for a, b in zip(noisy_instructions(texts, gens(), 0.25), texts))
    assert 70 <= changed <= 130  # 100 expected
    with pytest.raises(ValueError, match="instruction_noise is implemented for methods instructcv, pixwizard and promptfix"):
        load_config(None, ["method=unic", "train.instruction_noise=0.2"])
    with pytest.raises(ValueError, match=r"instruction_noise must be in \[0, 1\]"):
        load_config(None, ["method=pixwizard", "train.instruction_noise=1.5"])


def test_instruction_noise_drop_rate():
    """`train.instruction_noise_drop` sets the share of words dropped; the default (0.25) keeps the old draws."""
    text = "Remove the red circle from the image and restore the background behind it."  # 13 words
    n_words = len(text.split())

    def kept_share(drop: float) -> float:
        kept = 0
        for seed in range(200):
            out = noisy_instruction(text, torch.Generator().manual_seed(seed), drop=drop).split()
            kept += sum(w in text.split() for w in out)
        return kept / (200 * n_words)

    assert kept_share(0.0) == 1.0
    assert abs(kept_share(0.25) - 0.75) < 0.03
    assert abs(kept_share(0.5) - 0.5) < 0.03
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(20)]  # noqa: E731
    texts = [text] * 20
    assert noisy_instructions(texts, gens(), 1.0) == noisy_instructions(texts, gens(), 1.0, 0.25)
    assert noisy_instructions(texts, gens(), 1.0) != noisy_instructions(texts, gens(), 1.0, 0.5)
    assert float(load_config(None, ["method=promptfix"]).train.instruction_noise_drop) == WORD_DROP == 0.25
    with pytest.raises(ValueError, match=r"instruction_noise_drop must be in \[0, 1\)"):
        load_config(None, ["method=promptfix", "train.instruction_noise=0.5", "train.instruction_noise_drop=1.0"])


def test_noise_keeps_slot_words_and_drops_frame_words():
    """`keep_words` (train.instruction_noise_keep_slots): the edit's arguments survive every rewrite, the frame does
    not; without it the same draws drop argument words too. Same draws: a kept word only adds survivors."""
    from editkit.data.phrasings import slot_words

    text = "Change the color of the small red circle at the top left to green."
    keep = slot_words()
    args = [w for w in text.split() if w.strip(".").lower() in keep]
    assert args == ["small", "red", "circle", "top", "left", "green."]
    frame_kept = plain_args = 0
    for seed in range(200):
        out = noisy_instruction(text, torch.Generator().manual_seed(seed), drop=0.5, keep_words=keep).split()
        plain = noisy_instruction(text, torch.Generator().manual_seed(seed), drop=0.5).split()
        assert [w for w in out if w in args] == args  # all arguments, in order
        assert set(plain) - set(text.split()) == set(out) - set(text.split())  # the same made-up words
        frame_kept += sum(w in text.split() and w not in args for w in out)
        plain_args += sum(w in args for w in plain)
    assert 0.4 < frame_kept / (200 * (len(text.split()) - len(args))) < 0.6
    assert 0.4 < plain_args / (200 * len(args)) < 0.6
    cfg = load_config(None, ["train.instruction_noise=0.3", "train.instruction_noise_keep_slots=true"])
    assert cfg.train.instruction_noise_keep_slots is True


def test_paraphrases_change_only_the_wording():
    """`data.paraphrases`: same scenes, more wordings; eval (paraphrase off) never sees them."""
    from editkit.data.phrasings import PARAPHRASES, TRAIN
    from editkit.data.shapes import make_sample

    plain = ShapesPairs("recolor,segment", 400, 48)
    rich = ShapesPairs("recolor,segment", 400, 48, paraphrase=True)
    extra_starts = {t.split("{")[0] for t in PARAPHRASES["recolor"]} - {t.split("{")[0] for t in TRAIN["recolor"]}
    n_extra = 0
    for i in range(0, 400, 2):  # recolor items
        a, b = plain[i], rich[i]
        assert np.array_equal(np.asarray(a["source"]), np.asarray(b["source"]))
        assert np.array_equal(np.asarray(a["target"]), np.asarray(b["target"]))
        n_extra += any(b["instruction"].startswith(s) for s in extra_starts if s)
    assert 80 < n_extra < 160  # 10 of 17 wordings, some sharing a start with a training one
    cfg = load_config(None, ["data.paraphrases=true"])
    assert build_dataset(cfg.data, seed=0).paraphrase is True
    with pytest.raises(ValueError, match="cannot be combined with heldout"):
        make_sample("recolor", heldout=True, paraphrase=True)
