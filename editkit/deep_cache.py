"""DeepCache (Ma et al., CVPR 2024) for editkit's UNets, on diffusers' own hook machinery.

Between two denoising steps a UNet's deep features (everything below its outermost level) change
little, while the outermost level, the one at full latent resolution, changes most. DeepCache runs the
whole UNet on every `interval`-th backbone call and, on the calls in between, only conv_in, the first
down block, the last up block and conv_out; the deeper down blocks, the mid block and the other up blocks
replay their outputs from the last full call. diffusers' cache hooks (`diffusers.hooks`) cover transformer
blocks only; this registers `diffusers.hooks.ModelHook`s on the UNet's blocks the same way they do.

    from editkit.deep_cache import DeepCacheConfig, deep_cache_unet
    pipe.unet = deep_cache_unet(pipe.unet, DeepCacheConfig(interval=2))

`deep_cache_unet` returns a cached *view*: a shallow copy of the UNet sharing its parameters and blocks,
whose calls decide full-or-replay. The original UNet, and so any other pipeline holding it, computes
exactly as before (the block hooks are inert unless a view is running), which is how `editkit.speed`
gives one `--fast` pipeline next to the normal one without a second copy of the weights.

A call whose timestep is not below the previous call's starts a new run (a full call), and so does a call
whose batch differs from the previous one (a guidance interval changes the number of branches), so a
replayed tensor always comes from the same run and has the same shape.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

UNET_HOOK = "editkit_deep_cache_unet"
BLOCK_HOOK = "editkit_deep_cache_block"


@dataclass(frozen=True)
class DeepCacheConfig:
    interval: int = 2  # one full UNet call every `interval` calls; 1 = no caching

    def __post_init__(self) -> None:
        if int(self.interval) < 1:
            raise ValueError(f"DeepCacheConfig.interval must be >= 1, got {self.interval}.")


class DeepCacheState:
    """Per cached view: counts its calls and tells the shared block hooks what to do on this one."""

    def __init__(self, interval: int) -> None:
        self.interval = int(interval)
        self.calls = 0
        self.last_timestep: float | None = None
        self.last_batch: int | None = None
        self.full_calls = 0
        self.replayed_calls = 0

    def next_mode(self, timestep: float, batch: int) -> str:
        """'record' (a full call whose deep outputs are kept) or 'replay'."""
        new_run = self.last_timestep is None or timestep >= self.last_timestep or batch != self.last_batch
        self.calls = 0 if new_run else self.calls + 1
        self.last_timestep, self.last_batch = timestep, batch
        if self.calls % self.interval == 0:
            self.full_calls += 1
            return "record"
        self.replayed_calls += 1
        return "replay"


class BlockSwitch:
    """Shared by every view of one UNet: 'off' (plain forward, as the original UNet runs), 'record', 'replay'."""

    def __init__(self) -> None:
        self.mode = "off"


def first_timestep(timestep: torch.Tensor | float | int) -> float:
    if isinstance(timestep, torch.Tensor):
        return float(timestep.flatten()[0])
    return float(timestep)


class DeepCacheUNetHook(ModelHook):
    """On a cached view: sets the blocks' mode for this call, and back to 'off' after it."""

    def __init__(self, state: DeepCacheState, switch: BlockSwitch) -> None:
        super().__init__()
        self.state, self.switch = state, switch

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        sample = kwargs["sample"] if "sample" in kwargs else args[0]
        timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
        self.switch.mode = self.state.next_mode(first_timestep(timestep), int(sample.shape[0]))
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            self.switch.mode = "off"


class DeepCacheBlockHook(ModelHook):
    """On a deep block: stores its output on 'record' calls and returns it on 'replay' calls."""

    def __init__(self, switch: BlockSwitch) -> None:
        super().__init__()
        self.switch = switch
        self.output: Any = None

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.switch.mode == "replay" and self.output is not None:
            return self.output
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.switch.mode == "record":
            self.output = output
        return output


def deep_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks below the UNet's outermost level: down_blocks[1:], mid_block, up_blocks[:-1]."""
    for name in ("down_blocks", "up_blocks", "mid_block"):
        if not hasattr(unet, name):
            raise TypeError(f"DeepCache needs a diffusers-style UNet (down_blocks, mid_block, up_blocks); "
                            f"{type(unet).__name__} has no {name!r}.")
    if len(unet.down_blocks) < 2 or len(unet.up_blocks) < 2:
        raise ValueError("DeepCache needs a UNet with at least two levels (down_blocks / up_blocks).")
    mid = [unet.mid_block] if unet.mid_block is not None else []
    return [*unet.down_blocks[1:], *mid, *unet.up_blocks[:-1]]


def block_switch(unet: torch.nn.Module) -> BlockSwitch:
    """The UNet's shared switch, registering the (inert) block hooks the first time."""
    blocks = deep_blocks(unet)
    hook = HookRegistry.check_if_exists_or_initialize(blocks[0]).get_hook(BLOCK_HOOK)
    if hook is not None:
        return hook.switch
    switch = BlockSwitch()
    for block in blocks:
        HookRegistry.check_if_exists_or_initialize(block).register_hook(DeepCacheBlockHook(switch), BLOCK_HOOK)
    return switch


def deep_cache_unet(unet: torch.nn.Module, config: DeepCacheConfig) -> torch.nn.Module:
    """A view of `unet` (same parameters and blocks) whose calls use DeepCache; `unet` itself is unchanged."""
    if deep_cache_state(unet) is not None:
        raise ValueError("this UNet is already a DeepCache view; pass the original UNet.")
    switch = block_switch(unet)
    view = copy.copy(unet)
    view.__dict__.pop("_diffusers_hook", None)  # the view gets its own registry; the original's stays as it is
    HookRegistry.check_if_exists_or_initialize(view).register_hook(DeepCacheUNetHook(DeepCacheState(config.interval), switch), UNET_HOOK)
    return view


def remove_deep_cache(unet: torch.nn.Module) -> None:
    """Take the block hooks (and their stored tensors) off the original UNet; its views stop caching."""
    for block in deep_blocks(unet):
        HookRegistry.check_if_exists_or_initialize(block).remove_hook(BLOCK_HOOK, recurse=False)


def deep_cache_state(unet: torch.nn.Module) -> DeepCacheState | None:
    """A view's call counters (full and replayed calls), None for a UNet that is not a view."""
    registry = unet.__dict__.get("_diffusers_hook")
    hook = None if registry is None else registry.get_hook(UNET_HOOK)
    return None if hook is None else hook.state
