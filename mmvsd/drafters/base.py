"""What every drafter is: its training protocol (the decoding one, `Drafter`, belongs to the loop:
`decoding/drafting.py`, with the pair convention all drafter inputs follow), its per-sequence
state, its registry and its saved spec.

**Adding a drafter kind**: a new file in this folder with a class decorated `@register_drafter("name")`
(usually an `EagleDrafter` subclass overriding `embed_pairs`, as `msd.py` does), imported in
`drafters/__init__.py`; the command line, `--help` and the tests' parametrisations take it from
`DRAFTERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from mmvsd.decoding.drafting import Drafter

if TYPE_CHECKING:
    from mmvsd.drafters.layers import KVCache
    from mmvsd.models.kv_cache import RowsLayer

DRAFTERS: dict[str, type] = {}  # kind -> class, filled by @register_drafter


def register_drafter(kind: str):
    """Class decorator: make `kind` a drafter kind (`drafter=kind` builds an untrained one)."""
    def add(cls: type) -> type:
        cls.kind = kind
        DRAFTERS[kind] = cls
        return cls
    return add


def pair_position(pair_index: torch.Tensor | int) -> torch.Tensor | int:
    """Pair i of a sequence (0-based, as `make_pairs` returns them) is pair i + 1: it sits at
    position i + 1, the position of its token."""
    return pair_index + 1


@dataclass
class DraftState:
    """Where drafting one sequence stands: made by `Drafter.begin`, advanced by `propose` (the
    module itself holds only weights, so one drafter can serve many sequences and training)."""

    cache: KVCache
    stable: int = 0  # rows of the cache that hold accepted context (the rest is draft scratch)
    position: int = 0  # position of the newest accepted pair (cache rows and positions differ for ViSpec)
    image: tuple[torch.Tensor, torch.Tensor] | None = None  # the prompt's image marks [n] and embeddings [n_img, H],
    #                                                         read once by the first `embed_pairs`
    image_feature: torch.Tensor | None = None  # ViSpec's global image feature g, once an image was read


@dataclass
class DraftRows:
    """Where drafting a batch of sequences stands (`EagleDrafter.propose_batch`): one cache row
    per sequence, each row's `stable` and `position` as in `DraftState`, and ViSpec's g per row
    [B, 1, H] (None for drafters without one). Rows join after reading their prompt alone."""

    cache: RowsLayer
    stable: list[int] = field(default_factory=list)
    position: list[int] = field(default_factory=list)
    image_feature: torch.Tensor | None = None


@dataclass
class Rollout:
    """Draft paths to roll out in a training pass (VSD's E-step): from pair indices `contexts`
    [B, M] of each sequence, `depth` tokens each, chosen by `pick(b, logits [M, V], level)`."""

    contexts: torch.Tensor
    depth: int
    pick: Callable[[int, torch.Tensor, int], torch.Tensor]


class TrainableDrafter(Drafter, Protocol):
    """Training: a teacher-forced pass over whole sequences (and VSD's rollouts)."""

    spec: DrafterSpec
    lm_head: nn.Linear  # the target's, frozen: turns predicted features into logits

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, image_pairs: torch.Tensor,
                image_embeds: torch.Tensor, rollout: Rollout | None = None):
        """Pairs [B, n, H], [B, n], image marks [B, n], image embeddings [B, n_img, H] -> predicted
        next features [B, n, H], one per pair (padding last: attention is causal); with a rollout
        also (draft logits [B, M, L, V], paths [B, M, L]) drafted as decoding drafts them."""


FORMAT = 2  # 2: the authors' computation (issue 24); 1: mmvsd's earlier layer, which no longer loads


@dataclass
class DrafterSpec:
    """Sizes of a drafter and the fingerprint of the target it was built for (config.json)."""

    kind: str
    hidden_size: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    format: int = 1  # what a config.json without the field was written by
    draft_vocab: list[int] = field(default_factory=list)  # token ids drafted over (empty: the whole vocabulary)
    target: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # kind-specific sizes

    @staticmethod
    def for_target(kind: str, target, draft_vocab: list[int] | None = None, **extra) -> DrafterSpec:
        spec = DrafterSpec.for_text_config(kind, target.model.config.text_config, target.fingerprint(), **extra)
        spec.draft_vocab = list(draft_vocab or [])
        return spec

    @staticmethod
    def for_text_config(kind: str, text_config, target: dict | None = None, **extra) -> DrafterSpec:
        """Sized for a target's language model, from its config alone (no weights needed): the
        target's head count, MLP width, RoPE base and norm epsilon, as the authors size theirs."""
        return DrafterSpec(kind=kind, hidden_size=text_config.hidden_size,
                           num_heads=text_config.num_attention_heads,
                           intermediate_size=text_config.intermediate_size, vocab_size=text_config.vocab_size,
                           rope_theta=_rope_theta(text_config), rms_norm_eps=float(text_config.rms_norm_eps),
                           format=FORMAT, target=target or {}, extra=extra)

    def to_dict(self) -> dict:
        return asdict(self)


def _rope_theta(text_config) -> float:
    rope = getattr(text_config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta") or getattr(text_config, "rope_theta", None) or 10000.0)
