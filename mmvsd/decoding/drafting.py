"""What the decoding loop asks of a drafter, and the one convention of a drafter's inputs. The
loop owns this interface: `drafters/` implements it and depends on `decoding/`, not the reverse.

**Pairs.** A drafter reads (feature, token) pairs as in EAGLE (Li et al. 2024, arXiv 2401.15077):
pair t = (f_{t-1}, x_t), the target's hidden state at position t-1 with the token at position t,
and it predicts f_t. Pair t sits at position t, the position of its token. `make_pairs` is the
only place that shifts hidden states against tokens; everything else counts in pairs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from mmvsd.decoding.tree import DraftTree, TreeGrower
    from mmvsd.models.llava import PrefillOutput


def make_pairs(hidden: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [..., T, H] (features at positions 0..T-1), ids [..., T'] (tokens at 0..T'-1) ->
    features [..., n, H] and tokens [..., n] of pairs 1..n, n = min(T, T' - 1): every pair whose
    feature and token both exist. Also shifts per-token marks: `make_pairs(hidden, mask)[1]`."""
    n = min(hidden.shape[-2], ids.shape[-1] - 1)
    return hidden[..., :n, :], ids[..., 1:n + 1]


class TreeShape(Protocol):
    """How big a tree `propose` grows: a fixed `TreeConfig`, or `tree=auto`'s `AutoTree` deciding
    from the tree drafted so far."""

    depth: int  # levels at most (the root's children are level 1)
    top_k: int  # children per expanded node, and nodes expanded per level

    def grows(self, grower: TreeGrower, frontier: list[int], depth: int) -> bool:
        """Draft the children of `frontier`, the nodes at `depth`?"""

    def size(self, grower: TreeGrower) -> int:
        """Draft tokens to verify, the best by score (0: the root alone)."""


class Drafter(Protocol):
    """Proposes a draft tree after each verification. Its per-sequence state is its own: the loop
    only hands it back."""

    kind: str

    def begin(self, input_ids: torch.Tensor, prefill: PrefillOutput) -> Any:
        """A new sequence: prompt ids [T] and the target's prefill (hidden [T, H], image marks and
        embeddings) -> the sequence's drafting state."""

    def propose(self, state: Any, features: torch.Tensor, tokens: torch.Tensor, tree: TreeShape) -> DraftTree:
        """Take in the new pairs, features [n, H] and tokens [n]; return a tree rooted at tokens[-1]."""

    # Batches (`mmvsd.decoding.batch`): the sequences' states live in one batch state, row by row.

    def new_batch(self) -> Any:
        """An empty batch."""

    def join(self, batch: Any, state: Any, features: torch.Tensor, tokens: torch.Tensor) -> None:
        """Add a sequence as the last row: `state` from `begin`, after taking in its first pairs."""

    def leave(self, batch: Any, rows: list[int]) -> None:
        """Keep only rows `rows`, in that order."""

    def propose_batch(self, batch: Any, features: list[torch.Tensor], tokens: list[torch.Tensor],
                      tree: TreeShape) -> list[DraftTree]:
        """`propose` for every row: new pairs [n_b, H], [n_b] per row -> one tree per row."""
