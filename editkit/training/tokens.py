"""Tokenize each training string once.

A cached dataset repeats the same captions and instructions every epoch, and for a tiny model on a GPU
the tokenizer call is a large part of a step. UNIC-Adapter runs three tokenizers over 2 x batch + 1 strings:
about 160 ms at batch 128 on the 2-core CPU machine, where a whole H100 step took about 230 ms.
`MemoTokenizer` keeps each string's fixed-length ids.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from transformers import BatchEncoding


class MemoTokenizer:
    """Wraps a tokenizer for the fixed-length calls the trainers make:
    `tok(texts, padding="max_length", max_length=L, truncation=True, return_tensors="pt")`.

    Returns the same `input_ids` / `attention_mask` as the wrapped tokenizer; every other attribute is the
    wrapped tokenizer's. Other call patterns raise. At most `max_entries` strings are kept (then the memo
    restarts), so endless instruction noise cannot grow it without bound."""

    def __init__(self, tokenizer: Any, max_entries: int = 200_000):
        self.tokenizer = tokenizer
        self.max_entries = int(max_entries)
        self._rows: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = self.misses = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)

    def __call__(self, texts: list[str] | str, *, padding: str | bool = False, max_length: int | None = None,
                 truncation: bool = False, return_tensors: str | None = None, add_special_tokens: bool = True) -> BatchEncoding:
        if padding != "max_length" or not truncation or max_length is None or return_tensors != "pt":
            raise ValueError("MemoTokenizer handles fixed-length calls only: padding='max_length', truncation=True, "
                             f"max_length=<int>, return_tensors='pt' (got padding={padding!r}, truncation={truncation!r}, "
                             f"max_length={max_length!r}, return_tensors={return_tensors!r}).")
        texts = [texts] if isinstance(texts, str) else list(texts)
        opts = (int(max_length), bool(add_special_tokens))
        new = list(dict.fromkeys(t for t in texts if (t, *opts) not in self._rows))
        if new:
            if len(self._rows) + len(new) > self.max_entries:
                self._rows.clear()
                new = list(dict.fromkeys(texts))
            enc = self.tokenizer(new, padding="max_length", max_length=int(max_length), truncation=True,
                                 return_tensors="pt", add_special_tokens=bool(add_special_tokens))
            mask = enc["attention_mask"] if "attention_mask" in enc else torch.ones_like(enc["input_ids"])
            for t, ids, m in zip(new, enc["input_ids"], mask):
                self._rows[(t, *opts)] = (ids, m)
        self.misses += len(new)
        self.hits += len(texts) - len(new)
        rows = [self._rows[(t, *opts)] for t in texts]
        return BatchEncoding({"input_ids": torch.stack([r[0] for r in rows]), "attention_mask": torch.stack([r[1] for r in rows])})


def word_tokenizer(texts: list[str], base: Any, num_merges: int) -> Any:
    """`base` (a merge-free byte-level CLIP tokenizer) plus up to `num_merges` BPE merges learned on `texts`.

    The shapes world has a few hundred words; spelled one byte per token, a tiny text encoder must first learn
    to read "diamond" from seven symbols. With merges learned on the training instructions, every frequent
    word is one token; unseen words (held-out phrasings) still fall back to bytes, so nothing is unknown."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    vocab = dict(base.get_vocab())
    learner = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    learner.normalizer = normalizers.Lowercase()
    learner.pre_tokenizer = pre_tokenizers.Whitespace()
    alphabet = sorted({ch for t in texts for ch in t.lower() if not ch.isspace()})
    learner.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=len(alphabet) * 2 + num_merges, initial_alphabet=alphabet, end_of_word_suffix="</w>",
        show_progress=False, special_tokens=[]))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in json.loads(learner.to_str())["model"]["merges"]]
    merges = merges[:num_merges]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=[(a, b) for a, b in merges], model_max_length=base.model_max_length,
                        pad_token=base.pad_token)
    if len(tok) != len(vocab):
        raise RuntimeError(f"word tokenizer has {len(tok)} tokens, expected {len(vocab)}")
    return tok


def extend_embeddings(text_encoder: Any, base: Any, words: Any) -> None:
    """Grow the text encoder's token table to `words`' vocabulary; each new token starts as the mean of the
    embeddings of the byte tokens `base` spells it with, so the encoder reads a merged word as before."""
    old = text_encoder.get_input_embeddings().weight.detach().clone()
    text_encoder.resize_token_embeddings(len(words), mean_resizing=False)
    table = text_encoder.get_input_embeddings().weight
    base_vocab = base.get_vocab()
    with torch.no_grad():
        for piece, i in words.get_vocab().items():
            if piece in base_vocab:
                continue
            final = piece.endswith("</w>")
            chars = list(piece[: -len("</w>")] if final else piece)
            ids = [base_vocab[c] for c in chars[:-1]] + [base_vocab[chars[-1] + ("</w>" if final else "")]]
            table[i] = old[ids].mean(0)
