"""Guidance as data.

A `GuidanceRule` lists its branches (which condition groups each branch
drops) and how their predictions combine:

    prediction = sum_b base[b] * out[b] + sum_k scale_k * (out[plus_k] - out[minus_k])

Every method in editkit is one such rule (IP2P 3-way, PromptFix midpoint,
PixWizard, UNIC, Dream Engine 2-way). All active branches are evaluated in
**one batched backbone forward per step**; a branch whose total weight is
zero for the given scales is skipped. `ConditionDropout` draws training
dropout from the same drop sets, so training and sampling agree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .conditioning import Conditioning


@dataclass(frozen=True)
class Branch:
    name: str
    drop: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Term:
    """`scale * (out[plus] - out[minus])`, the scale looked up by name."""

    scale: str
    plus: str
    minus: str


@dataclass(frozen=True)
class GuidanceRule:
    branches: tuple[Branch, ...]
    base: tuple[tuple[str, float], ...]
    terms: tuple[Term, ...]
    # The branch run alone when guidance is off (all scales at their neutral value).
    conditional: str = "full"

    def __post_init__(self) -> None:
        names = [b.name for b in self.branches]
        used = {n for n, _ in self.base} | {t.plus for t in self.terms} | {t.minus for t in self.terms} | {self.conditional}
        missing = used - set(names)
        if missing:
            raise ValueError(f"guidance rule refers to undefined branches {sorted(missing)}")

    @property
    def scale_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.scale for t in self.terms))

    def branch(self, name: str) -> Branch:
        for b in self.branches:
            if b.name == name:
                return b
        raise KeyError(name)

    def weights(self, scales: Mapping[str, float]) -> dict[str, float]:
        """Each branch's total coefficient for the given scales."""
        missing = set(self.scale_names) - set(scales)
        if missing:
            raise ValueError(f"missing guidance scale(s) {sorted(missing)}; this rule needs {list(self.scale_names)}.")
        w = {b.name: 0.0 for b in self.branches}
        for name, coef in self.base:
            w[name] += coef
        for t in self.terms:
            s = float(scales[t.scale])
            w[t.plus] += s
            w[t.minus] -= s
        return w

    def active_branches(self, scales: Mapping[str, float]) -> list[Branch]:
        w = self.weights(scales)
        active = [b for b in self.branches if abs(w[b.name]) > 1e-12]
        return active or [self.branch(self.conditional)]

    def neutral_scales(self) -> dict[str, float]:
        """The scales at which the rule reduces to its conditional branch alone (guidance off): 1 for the
        IP2P / CFG chains, 0.5 for PromptFix's midpoint rule."""
        names = list(self.scale_names)
        rows = [b.name for b in self.branches]
        base = torch.tensor([self.weights({n: 0.0 for n in names})[r] for r in rows], dtype=torch.float64)
        cols = [torch.tensor([self.weights({m: float(m == n) for m in names})[r] for r in rows], dtype=torch.float64) - base
                for n in names]
        target = torch.tensor([float(r == self.conditional) for r in rows], dtype=torch.float64)
        if not names:
            return {}
        solution = torch.linalg.lstsq(torch.stack(cols, dim=1), (target - base)[:, None]).solution[:, 0]
        neutral = {n: round(float(v), 9) for n, v in zip(names, solution)}
        if [b.name for b in self.active_branches(neutral)] != [self.conditional]:
            raise ValueError(f"no scales reduce this rule to its '{self.conditional}' branch alone")
        return neutral

    def formula(self) -> str:
        base = " + ".join(f"{c:g}*{n}" for n, c in self.base)
        terms = " + ".join(f"{t.scale}*({t.plus} - {t.minus})" for t in self.terms)
        return f"{base} + {terms}" if terms else base

    def combine(self, outputs: Mapping[str, torch.Tensor], scales: Mapping[str, float]) -> torch.Tensor:
        """Combine per-branch predictions.

        With every branch present the rule is evaluated term by term (the
        order diffusers uses, so results match it bit for bit in fp32); with
        skipped branches the collapsed weights are used.
        """
        if all(b.name in outputs for b in self.branches):
            result = None
            for name, coef in self.base:
                part = outputs[name] if coef == 1.0 else coef * outputs[name]
                result = part if result is None else result + part
            for t in self.terms:
                result = result + float(scales[t.scale]) * (outputs[t.plus] - outputs[t.minus])
            return result
        w = self.weights(scales)
        result = None
        for name, out in outputs.items():
            part = out if w[name] == 1.0 else w[name] * out
            result = part if result is None else result + part
        return result


@dataclass(frozen=True)
class GuidanceInterval:
    """Guidance only inside a part of the sampling run (after Kynkäänniemi et al. 2024, "Applying guidance in a
    limited interval improves sample and distribution quality"): steps i with `start <= i / num_steps < end`
    are guided; the others run the conditional branch alone, so their backbone batch shrinks to one branch.
    The interval is in steps, not noise levels, so that one setting means the same for every scheduler."""

    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.start < self.end <= 1.0:
            raise ValueError(f"`guidance_interval` must satisfy 0 <= start < end <= 1, got ({self.start}, {self.end}).")

    def scales_at(self, rule: GuidanceRule, scales: Mapping[str, float], step: int, num_steps: int) -> Mapping[str, float]:
        """`scales` inside the interval; outside it, the rule's neutral scales (one branch runs)."""
        if self.start <= step / num_steps < self.end:
            return scales
        return rule.neutral_scales()


def interval_scales(rule: GuidanceRule, scales: Mapping[str, float], interval: GuidanceInterval | tuple[float, float] | None,
                    step: int, num_steps: int) -> Mapping[str, float]:
    """The scales step `step` of `num_steps` runs with: `scales`, or the neutral ones outside `interval`."""
    if interval is None:
        return scales
    if not isinstance(interval, GuidanceInterval):
        interval = GuidanceInterval(*interval)
    return interval.scales_at(rule, scales, step, num_steps)


def guided_prediction(
    rule: GuidanceRule,
    scales: Mapping[str, float],
    conditioning: Conditioning,
    model_input: torch.Tensor,
    forward: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor],
) -> torch.Tensor:
    """Evaluate every active branch in one batched `forward` and combine.

    `model_input` is the (B, ...) latent input shared by all branches;
    `forward(batched_input, batched_conditions)` runs the backbone once.
    """
    active = rule.active_branches(scales)
    cond = conditioning.branch_batch([b.drop for b in active])
    out = forward(torch.cat([model_input] * len(active)), cond)
    chunks = out.chunk(len(active))
    return rule.combine({b.name: c for b, c in zip(active, chunks)}, scales)


@dataclass(frozen=True)
class ConditionDropout:
    """Training-time dropout over the same drop sets that guidance uses.

    Each sample draws one pattern: pattern i with probability `probs[i]`,
    no drop otherwise. IP2P (p=0.05): text-only, text+image, image-only, 5 % each.
    """

    patterns: tuple[frozenset[str], ...]
    probs: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.patterns) != len(self.probs):
            raise ValueError("patterns and probs must have the same length")
        if any(p < 0 for p in self.probs) or sum(self.probs) > 1.0 + 1e-9:
            raise ValueError(f"dropout probabilities must be >= 0 and sum to <= 1, got {self.probs}")

    def sample(self, batch_size: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Per-group bool masks (B,) saying which samples drop that group."""
        return self.masks(torch.rand(batch_size, generator=generator), device)

    def masks(self, r: torch.Tensor, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Masks from given uniform draws `r` (B,) in [0, 1), one per sample."""
        batch_size = r.shape[0]
        groups = sorted(set().union(*self.patterns)) if self.patterns else []
        masks = {g: torch.zeros(batch_size, dtype=torch.bool) for g in groups}
        lo = 0.0
        for pattern, p in zip(self.patterns, self.probs):
            hit = (r >= lo) & (r < lo + p)
            for g in pattern:
                masks[g] |= hit
            lo += p
        return {g: m.to(device) for g, m in masks.items()}


# The InstructPix2Pix rule, used by InstructCV (and by PromptFix as an option):
# eps = uncond + s_T (full - image) + s_I (image - uncond), branch order as in diffusers.
IP2P_GUIDANCE = GuidanceRule(
    branches=(
        Branch("full"),
        Branch("image", frozenset({"text"})),
        Branch("uncond", frozenset({"text", "image"})),
    ),
    base=(("uncond", 1.0),),
    terms=(Term("guidance_scale", "full", "image"), Term("image_guidance_scale", "image", "uncond")),
)


def ip2p_dropout(p: float) -> ConditionDropout:
    """IP2P training dropout: one uniform r per sample; text-only, both, image-only, p each."""
    return ConditionDropout(
        patterns=(frozenset({"text"}), frozenset({"text", "image"}), frozenset({"image"})),
        probs=(p, p, p),
    )
