"""The offline tokenizers must tell prompts apart, in memory and after a save/load round trip.

A tokenizer that maps every prompt to the same ids trains a model that ignores
its instruction; this happened once (transformers 5's file-path constructor gave
a 2-token vocabulary) and every benchmark task fell to the identity baseline.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
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
    assert len(tok) > 514  # the byte vocabulary plus the word merges (configs/train/instructcv_shapes_words.yaml)
    assert tok.convert_ids_to_tokens(tok("the purple diamond").input_ids)[1:-1] == ["the</w>", "purple</w>", "diamond</w>"]
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


def test_word_merges_make_frequent_words_one_token_and_start_from_their_bytes(tmp_path):
    from editkit.testing import tiny_clip_text_encoder
    from editkit.training.tokens import extend_embeddings, word_tokenizer

    base = tiny_clip_tokenizer(model_max_length=96)
    texts = ["Turn the purple diamond yellow.", "Make the red circle purple.", "Remove the yellow diamond."] * 20
    words = word_tokenizer(texts, base, 200)
    assert words.convert_ids_to_tokens(words("Turn the purple diamond yellow.").input_ids)[1:-1] == \
        ["turn</w>", "the</w>", "purple</w>", "diamond</w>", "yellow</w>", ".</w>"]
    assert words("zebra").input_ids == base("zebra").input_ids  # an unseen word is spelled in bytes, as before
    assert words.get_vocab()["diamond</w>"] >= 514 and all(words.get_vocab()[k] == v for k, v in base.get_vocab().items())
    enc = tiny_clip_text_encoder(hidden_size=32, num_hidden_layers=1, max_length=96)
    old = enc.get_input_embeddings().weight.detach().clone()
    extend_embeddings(enc, base, words)
    table = enc.get_input_embeddings().weight
    spelled = base("diamond").input_ids[1:-1]  # d i a m o n d</w>
    assert table.shape[0] == len(words) and torch.allclose(table[words.get_vocab()["diamond</w>"]], old[spelled].mean(0))
    assert torch.equal(table[:514], old)
    words.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert _ids(again, PROMPTS) == _ids(words, PROMPTS) and len(again) == len(words)
