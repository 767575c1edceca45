"""Where editkit's transformer blocks return their streams, for diffusers' block caches.

diffusers' cache hooks (`FirstBlockCacheConfig`, `MagCacheConfig`, ...) look each block class up in
`TransformerBlockRegistry` to find the hidden (and text) stream in its output. diffusers registers its own
blocks there; editkit's models register theirs through `register_cache_block` when `enable_cache` is
called, so importing editkit does not import every diffusers transformer the registry pulls in.
"""

from __future__ import annotations

from torch import nn


def register_cache_block(block_class: type[nn.Module], hidden_index: int, encoder_index: int | None) -> None:
    """Register `block_class`: its output's hidden stream at `hidden_index` (0 for a single tensor), the text
    stream at `encoder_index` (None when the block returns only the hidden stream)."""
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry  # the registry the hooks read

    TransformerBlockRegistry.register(block_class, TransformerBlockMetadata(return_hidden_states_index=hidden_index,
                                                                            return_encoder_hidden_states_index=encoder_index))
