"""Instruction noise: train a from-scratch text encoder to ignore words it has never seen.

A tiny text encoder trained on a few phrasings per task learns those strings, not
the language; an unseen wording then lands anywhere. Rewriting a share of the
training instructions, with words dropped and made-up words inserted (random
letters, so no test wording leaks in), teaches the model to act on the words it
knows and, for restorations, on the image when it knows none.
"""

from __future__ import annotations

import string

import torch

LETTERS = string.ascii_lowercase
WORD_DROP = 0.25  # default per-word drop rate (train.instruction_noise_drop)


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """An integer in [low, high]."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def _bare(word: str) -> str:
    return word.strip(".,;:!?'\"").lower()


def noisy_instruction(text: str, generator: torch.Generator, drop: float = WORD_DROP, max_inserted: int = 3,
                      keep_words: frozenset[str] = frozenset()) -> str:
    """Drop each word with probability `drop` (one word always survives; words in `keep_words` always do), insert
    1..max_inserted made-up words."""
    words = text.split()
    keep = [bool(k) or _bare(w) in keep_words
            for w, k in zip(words, (torch.rand(len(words), generator=generator) >= drop).tolist())]
    if words and not any(keep):
        keep[_randint(0, len(words) - 1, generator)] = True
    out = [w for w, k in zip(words, keep) if k]
    for _ in range(_randint(1, max_inserted, generator)):
        word = "".join(LETTERS[_randint(0, 25, generator)] for _ in range(_randint(2, 8, generator)))
        out.insert(_randint(0, len(out), generator), word)
    return " ".join(out)


def noisy_instructions(
    texts: list[str], generators: list[torch.Generator], share: float, drop: float = WORD_DROP,
    keep_words: frozenset[str] = frozenset(),
) -> list[str]:
    """Rewrite each instruction with probability `share`; one uniform draw per sample, always, to keep streams aligned.
    `keep_words` (e.g. `editkit.data.phrasings.slot_words()`) are never dropped."""
    out = []
    for text, g in zip(texts, generators):
        u = float(torch.rand((), generator=g))
        out.append(noisy_instruction(text, g, drop, keep_words=keep_words) if u < share else text)
    return out
