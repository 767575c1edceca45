"""MemoTokenizer: the trainers' fixed-length tokenization, computed once per string."""

from __future__ import annotations

import pytest
import torch

from editkit.testing import tiny_clip_tokenizer
from editkit.training.tokens import MemoTokenizer

TEXTS = ["a red circle on a grey background", "Turn the purple diamond yellow.", "", "a red circle on a grey background"]


@pytest.mark.parametrize("length", [8, 77])
def test_memo_equals_tokenizer(length):
    tok = tiny_clip_tokenizer(model_max_length=77)
    memo = MemoTokenizer(tok)
    for _ in range(2):  # second call: every row from the memo
        got = memo(TEXTS, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        ref = tok(TEXTS, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        assert torch.equal(got.input_ids, ref.input_ids)
        assert torch.equal(got.attention_mask, ref.attention_mask)
    assert (memo.misses, memo.hits) == (3, 5)  # 3 distinct strings once; the repeat and the second call hit
    assert memo.model_max_length == 77  # attributes pass through


def test_memo_keys_on_length_and_special_tokens():
    tok = tiny_clip_tokenizer(model_max_length=77)
    memo = MemoTokenizer(tok)
    a = memo(TEXTS[:1], padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
    b = memo(TEXTS[:1], padding="max_length", max_length=16, truncation=True, return_tensors="pt", add_special_tokens=False).input_ids
    ref = tok(TEXTS[:1], padding="max_length", max_length=16, truncation=True, return_tensors="pt", add_special_tokens=False).input_ids
    assert not torch.equal(a, b) and torch.equal(b, ref)


def test_memo_is_bounded_and_refuses_other_calls():
    tok = tiny_clip_tokenizer(model_max_length=77)
    memo = MemoTokenizer(tok, max_entries=2)
    memo(["one", "two"], padding="max_length", max_length=8, truncation=True, return_tensors="pt")
    out = memo(["three", "one"], padding="max_length", max_length=8, truncation=True, return_tensors="pt")
    assert len(memo._rows) == 2  # restarted with this call's strings
    assert torch.equal(out.input_ids, tok(["three", "one"], padding="max_length", max_length=8, truncation=True, return_tensors="pt").input_ids)
    with pytest.raises(ValueError, match="padding='max_length'"):
        memo(["one"], padding="longest", return_tensors="pt")
