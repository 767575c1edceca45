"""One switch for the attention kernel of every editkit pipeline and attention module.

    from editkit.attention import set_attention_backend
    set_attention_backend(pipe, "xformers")     # or "sdpa" (the default), or "auto"
    pipe.set_attention_backend("sdpa")          # the same, as a method of every editkit pipeline

Backends:

- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``; torch picks
  its flash, memory-efficient or math kernel. This is what diffusers and
  editkit build by default.
- ``"xformers"``: ``xformers.ops.memory_efficient_attention``; needs the
  xformers package and a CUDA device, and says so before touching any module.
- ``"auto"``: xformers when it imports and CUDA is available, else sdpa.

How the switch reaches each kind of attention code:

- diffusers ``Attention`` modules with a stock processor (UNet, VAE, SD3
  MM-DiT): the processor is swapped for its xformers twin and back
  (``AttnProcessor2_0`` <-> ``XFormersAttnProcessor``, ``JointAttnProcessor2_0``
  <-> ``XFormersJointAttnProcessor``, ...). This is what diffusers'
  ``enable_xformers_memory_efficient_attention`` does, minus its habit of
  replacing processors it does not know with the default one.
- modules built on diffusers' attention dispatcher (``AttentionModuleMixin``):
  their own ``set_attention_backend`` is called ("native" or "xformers").
- editkit's own attention code: any module or processor with an
  ``attention_backend`` attribute (see `AttentionBackendMixin`) gets the
  name, and computes attention with `attend`, which honours it.

Anything else (a processor that holds weights, such as IP-Adapter's, or a
third-party one) is left as it is and counted in the returned report;
``strict=True`` turns that into an error. Text encoders from transformers
keep their own attention implementation (sdpa by default).
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "xformers", "auto")


def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None


def resolve_backend(name: str) -> str:
    """Validate `name` and turn "auto" into "sdpa" or "xformers"; raise a clear error if xformers cannot run."""
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {name!r}.")
    name = name.lower()
    if name == "auto":
        return "xformers" if xformers_available() and torch.cuda.is_available() else "sdpa"
    if name == "xformers":
        if not xformers_available():
            raise ValueError(
                "attention backend 'xformers' needs the xformers package (pip install xformers, built for your torch); "
                "use 'sdpa' (torch's fused attention) instead."
            )
        if not torch.cuda.is_available():
            raise ValueError("attention backend 'xformers' needs a CUDA device, and torch sees none; use 'sdpa' on CPU.")
    return name


class AttentionBackendMixin:
    """Mark an editkit attention module or processor as honouring the switch.

    The module computes attention with ``attend(q, k, v, ..., backend=self.attention_backend)``;
    `set_attention_backend` sets the attribute."""

    attention_backend: str = "sdpa"


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    backend: str = "sdpa",
) -> torch.Tensor:
    """Scaled dot-product attention on (B, heads, L, D) tensors with the chosen backend.

    `attn_mask`: bool (True = attend) or additive float, broadcastable to (B, heads, Lq, Lk)."""
    if backend == "sdpa":
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, scale=scale)
    if backend != "xformers":
        raise ValueError(f"`backend` must be 'sdpa' or 'xformers' (resolve 'auto' first), got {backend!r}.")
    import xformers.ops as xops

    bias = None
    if attn_mask is not None:
        b, h, lq, lk = query.shape[0], query.shape[1], query.shape[2], key.shape[2]
        if attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device).masked_fill(~attn_mask, float("-inf"))
        # xformers wants a dense (B, H, Lq, Lk) bias whose rows start on 8-element boundaries
        padded = (lk + 7) // 8 * 8
        bias = torch.zeros(b, h, lq, padded, dtype=query.dtype, device=query.device)[..., :lk]
        bias.copy_(attn_mask.to(query.dtype).expand(b, h, lq, lk))
    # xformers takes (B, L, heads, D)
    out = xops.memory_efficient_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_bias=bias, scale=scale
    )
    return out.transpose(1, 2)


def _swap_table() -> dict[type, tuple[type, type]]:
    """Stock diffusers processor class -> (its sdpa class, its xformers class)."""
    from diffusers.models import attention_processor as ap

    pairs = [
        (ap.AttnProcessor2_0, ap.XFormersAttnProcessor),
        (ap.JointAttnProcessor2_0, ap.XFormersJointAttnProcessor),
        (ap.AttnAddedKVProcessor2_0, ap.XFormersAttnAddedKVProcessor),
    ]
    table: dict[type, tuple[type, type]] = {}
    for sdpa_cls, xf_cls in pairs:
        table[sdpa_cls] = table[xf_cls] = (sdpa_cls, xf_cls)
    table[ap.AttnProcessor] = (ap.AttnProcessor2_0, ap.XFormersAttnProcessor)  # the pre-SDPA eager one
    table[ap.AttnAddedKVProcessor] = (ap.AttnAddedKVProcessor2_0, ap.XFormersAttnAddedKVProcessor)
    return table


def _modules_of(target: Any) -> list[tuple[str, torch.nn.Module]]:
    if isinstance(target, torch.nn.Module):
        return [(type(target).__name__, target)]
    components = getattr(target, "components", None)
    if not isinstance(components, dict):
        raise TypeError(f"`pipe` must be a diffusers pipeline or a torch.nn.Module, got {type(target).__name__}.")
    return [(name, m) for name, m in components.items() if isinstance(m, torch.nn.Module)]


def set_attention_backend(pipe: Any, name: str, *, strict: bool = False) -> dict[str, Any]:
    """Switch every attention module of `pipe` (a pipeline or a module) to backend `name`.

    Returns a report: the backend used and, per component, how many attention
    sites were switched and which processor classes were left alone.
    """
    backend = resolve_backend(name)
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention

    table = _swap_table()
    report: dict[str, Any] = {"backend": backend, "components": {}}
    untouched: Counter[str] = Counter()
    for comp_name, model in _modules_of(pipe):
        switched = 0
        for module in model.modules():
            if isinstance(module, AttentionBackendMixin) or (hasattr(module, "attention_backend") and not isinstance(module, Attention)):
                module.attention_backend = backend
                switched += 1
                continue
            if not isinstance(module, (Attention, AttentionModuleMixin)):
                continue
            processor = module.processor
            if hasattr(processor, "attention_backend"):  # an editkit processor
                processor.attention_backend = backend
                switched += 1
            elif type(processor) in table:
                sdpa_cls, xf_cls = table[type(processor)]
                want = xf_cls if backend == "xformers" else sdpa_cls
                if type(processor) is not want:
                    module.set_processor(want())
                switched += 1
            elif hasattr(processor, "_attention_backend") and isinstance(module, AttentionModuleMixin):
                module.set_attention_backend("xformers" if backend == "xformers" else "native")
                switched += 1
            else:
                untouched[f"{comp_name}:{type(processor).__name__}"] += 1
        report["components"][comp_name] = switched
    report["untouched"] = dict(untouched)
    if untouched and strict:
        raise ValueError(f"attention processors that do not follow the switch: {dict(untouched)}.")
    return report


def attention_processors(pipe: Any) -> Counter[str]:
    """Count the attention implementations in `pipe`: processor class names, or
    ``ClassName[backend]`` for editkit modules and dispatcher processors."""
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention

    counts: Counter[str] = Counter()
    for _, model in _modules_of(pipe):
        for module in model.modules():
            if isinstance(module, AttentionBackendMixin):
                counts[f"{type(module).__name__}[{module.attention_backend}]"] += 1
            elif isinstance(module, (Attention, AttentionModuleMixin)):
                p = module.processor
                tag = getattr(p, "attention_backend", None) or getattr(p, "_attention_backend", None)
                counts[type(p).__name__ + (f"[{getattr(tag, 'value', tag)}]" if tag else "")] += 1
    return counts
