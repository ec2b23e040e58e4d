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

import functools

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


class RowsLayer(PreallocatedLayer):
    """One layer's keys and values for a batch of sequences, each of its own length (`lengths`).

    Row b's positions live at [0, lengths[b]) of its row; a forward writes each row's new
    positions right after its own, and returns all rows up to the longest: the caller's attention
    mask hides what lies past a row's own end (other rows' longer contexts, stale scratch). The
    drafter uses it as its batched cache too (`append`, `truncate`), with no mask sizes asked.
    """

    def __init__(self, capacity: int):
        super().__init__(capacity)
        self.lengths: list[int] = []

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        n = key_states.shape[-2]
        if len(set(self.lengths)) == 1:  # rows level with each other: one slice, as at batch size 1
            self.length = self.lengths[0]
            keys, values = super().update(key_states, value_states)
        else:
            end = max(self.lengths) + n
            if end > self.capacity:
                self._grow(end)
            rows, index = _write_index(tuple(self.lengths), n, key_states.device)  # [B, 1], [B, n]
            self.keys[rows, :, index] = key_states.transpose(1, 2)  # [B, n, heads, hd] into each row's own slots
            self.values[rows, :, index] = value_states.transpose(1, 2)
            keys, values = self.keys[:, :, :end], self.values[:, :, :end]
        self.lengths = [length + n for length in self.lengths]
        self.length = max(self.lengths)
        return keys, values

    append = update  # the drafter's layer calls its cache's `append`

    def truncate(self, lengths: list[int]) -> None:
        """Drop every row's positions past its new length (the drafter's scratch)."""
        self.lengths = list(lengths)
        self.length = max(lengths, default=0)

    def keep_rows(self, rows: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, lengths: list[int]) -> None:
        """Move positions src [B, P] of each row to dst [B, P] (see `keep_paths`)."""
        self.keys[rows, :, dst] = self.keys[rows, :, src]  # the right side is gathered (copied) first
        self.values[rows, :, dst] = self.values[rows, :, src]
        self.truncate(lengths)

    def add(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """A new last row holding keys and values [1, heads, n, hd]."""
        n = keys.shape[2]
        if not self.is_initialized:
            self.capacity = max(self.capacity, n)
            self.lazy_initialization(keys[:0], values[:0])  # no rows yet
        elif n > self.capacity:
            self._grow(n)
        self.length = max(self.lengths + [n])
        row_keys, row_values = (t.new_zeros(1, *t.shape[1:]) for t in (self.keys, self.values))
        row_keys[:, :, :n], row_values[:, :, :n] = keys, values
        self.keys, self.values = torch.cat([self.keys, row_keys]), torch.cat([self.values, row_values])
        self.lengths.append(n)

    def select(self, rows: list[int]) -> None:
        """Keep only batch rows `rows` (finished sequences leave)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.keys.device)
        self.keys, self.values = self.keys[index], self.values[index]
        self.truncate([self.lengths[r] for r in rows])

    def get_seq_length(self) -> int:
        return max(self.lengths, default=0)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0


def rows_mask(starts: torch.Tensor, sees: torch.Tensor) -> torch.Tensor:
    """Which keys of a `RowsLayer` each new query may attend to, as a bool [B, q, max(starts) + m]:
    row b's queries see the row's whole context (its first starts[b] slots) and, of the m new slots
    written right after it, those `sees` [B, q, m] allows; nothing past them (another row's longer
    context, stale scratch). starts: [B, 1]."""
    b, q, m = sees.shape
    relative = torch.arange(int(starts.max()) + m, device=sees.device)[None] - starts  # [B, K]: slot - context
    new = sees.gather(2, relative.clamp(0, m - 1)[:, None].expand(b, q, -1)) & (relative < m)[:, None]
    return (relative < 0)[:, None] | new


def rows_cache(num_layers: int, capacity: int) -> Cache:
    """An empty batch cache: rows join with `add_row`."""
    return Cache(layers=[RowsLayer(capacity) for _ in range(num_layers)])


def add_row(cache: Cache, row: Cache) -> None:
    """Append a batch-1 cache's live positions as the last row of `cache`."""
    for layer, one in zip(cache.layers, row.layers):
        layer.add(one.keys[:, :, :one.length], one.values[:, :, :one.length])


def keep_paths(layers: list[RowsLayer], starts: list[int], paths: list[list[int]]) -> None:
    """Row b keeps its positions starts[b] + paths[b] (ascending, relative to starts[b]) at
    starts[b], starts[b] + 1, ... and drops every later one: each row's accepted path becomes its
    context. Rows keep paths of different lengths: the shorter ones are padded by repeating their
    last move, which writes the same value twice."""
    lengths = [start + len(path) for start, path in zip(starts, paths)]
    if all(path == list(range(len(path))) for path in paths):  # every path already sits in place
        for layer in layers:
            layer.truncate(lengths)
        return
    width = max(len(path) for path in paths)
    src = [[start + i for i in path] + [start + path[-1]] * (width - len(path)) for start, path in zip(starts, paths)]
    dst = [list(range(start, start + len(path))) + [start + len(path) - 1] * (width - len(path))
           for start, path in zip(starts, paths)]
    device = layers[0].keys.device
    rows = torch.arange(len(paths), device=device)[:, None]
    src, dst = torch.tensor(src, device=device), torch.tensor(dst, device=device)
    for layer in layers:
        layer.keep_rows(rows, src, dst, lengths)


@functools.lru_cache(maxsize=16)
def _write_index(lengths: tuple[int, ...], n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [B, 1] and slots [B, n] where each row's n new positions go (shared by every layer of a forward)."""
    start = torch.tensor(lengths, dtype=torch.long, device=device)[:, None]
    return torch.arange(len(lengths), device=device)[:, None], start + torch.arange(n, device=device)
