"""The offline tokenizers must tell prompts apart, in memory and after a save/load round trip.

A tokenizer that maps every prompt to the same ids trains a model that ignores
its instruction; this happened once (transformers 5's file-path constructor gave
a 2-token vocabulary) and every benchmark task fell to the identity baseline.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, CLIPTokenizer

from editkit.loading import default_model
from editkit.testing import tiny_clip_tokenizer

PROMPTS = ["Which pixels show the star? Paint them white.", "Turn the purple diamond yellow."]


def _ids(tok, prompts):
    return tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids


def test_tiny_clip_tokenizer_is_byte_level_and_round_trips(tmp_path):
    tok = tiny_clip_tokenizer(model_max_length=96)
    assert len(tok) == 514
    assert tok("ab").input_ids == [512, 97, 256 + 98, 513]  # start, 'a', word-final 'b', end
    a, b = _ids(tok, PROMPTS)
    assert a != b
    tok.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert len(again) == 514
    assert _ids(again, PROMPTS) == [a, b]


def test_shipped_model_tokenizer_tells_prompts_apart():
    model = default_model()
    assert model is not None, "the package ships a default model"
    tok = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    a, b = _ids(tok, PROMPTS)
    assert len(tok) == 514
    assert a != b


SHIPPED = sorted(p for p in (Path(__file__).resolve().parents[1] / "editkit" / "models").glob("*-tiny") if (p / "model_index.json").is_file())


@pytest.mark.parametrize("model", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_tokenizer_tells_prompts_apart(model):
    """Every tokenizer folder of every shipped model (CLIP, T5 stand-ins, LMM byte tokenizers)."""
    folders = sorted(p for p in model.glob("*tokenizer*") if p.is_dir())
    assert folders, f"{model.name} has no tokenizer"
    for folder in folders:
        tok = AutoTokenizer.from_pretrained(folder)
        a, b = tok(PROMPTS).input_ids
        assert a != b and len(set(a)) > 10, f"{model.name}/{folder.name} maps different prompts to the same ids"
