"""A KV cache allocated once, written in place, and cut to the accepted draft path in place.

transformers' `DynamicCache` concatenates on every forward and has no call that keeps a set of
positions, so each verification step would copy the whole cache (a cost that grows with the
context: at 7B shapes and 1500 tokens, tens of megabytes per step). `StaticCache` is in place but
makes every forward attend over its full capacity. This layer keeps the best of both: storage
for `capacity` positions allocated at the first write (doubled if ever outgrown), forwards that
attend over the live positions only, and commits that move the few accepted rows, so a step
costs the same at 600 and at 3000 tokens of context.

It is a `CacheLayerMixin`, transformers' documented extension point for cache layers, so the
model code drives it through the same calls as its own layers (`update`, `get_seq_length`,
`get_mask_sizes`); `keep` is ours.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class PreallocatedLayer(CacheLayerMixin):
    """One attention layer's keys and values: [B, heads, capacity, head_dim], `length` of them live."""

    is_sliding = False

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states.new_zeros(*key_states.shape[:2], self.capacity, key_states.shape[-1])
        self.values = value_states.new_zeros(*value_states.shape[:2], self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new positions after the live ones; return views of all live positions."""
        if not self.is_initialized:
            self.capacity = max(self.capacity, key_states.shape[-2])
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            self._grow(end)
        self.keys[:, :, self.length:end].copy_(key_states)
        self.values[:, :, self.length:end].copy_(value_states)
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def keep(self, start: int, rows: torch.Tensor) -> None:
        """Keep positions `rows` (absolute, ascending, all >= start) at start, start + 1, ... and
        drop every later position: the accepted path of a verified tree becomes the context."""
        end = start + len(rows)
        self.keys[:, :, start:end] = self.keys[:, :, rows]  # the right side is gathered (copied) first
        self.values[:, :, start:end] = self.values[:, :, rows]
        self.length = end

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0  # (kv_length, kv_offset): the live positions and the new ones

    def get_max_length(self) -> int:
        return -1  # grows when outgrown

    def reset(self) -> None:
        self.length = 0

    def _grow(self, needed: int) -> None:
        self.capacity = max(needed, 2 * self.capacity)
        keys, values = self.keys, self.values
        self.lazy_initialization(keys, values)
        self.keys[:, :, :self.length] = keys[:, :, :self.length]
        self.values[:, :, :self.length] = values[:, :, :self.length]


def preallocated_cache(num_layers: int, capacity: int) -> Cache:
    return Cache(layers=[PreallocatedLayer(capacity) for _ in range(num_layers)])


def keep_positions(cache: Cache, start: int, rows: torch.Tensor) -> None:
    """Keep positions `rows` of every layer at start, start + 1, ... (see `PreallocatedLayer.keep`)."""
    for layer in cache.layers:
        layer.keep(start, rows)
