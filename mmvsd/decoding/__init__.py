"""Draft trees, verification and the one decoding loop."""

from mmvsd.decoding.speculative import Step, autoregressive_generate, collect_tokens, speculative_generate
from mmvsd.decoding.tree import DraftTree, TreeGrower

__all__ = ["DraftTree", "Step", "TreeGrower", "autoregressive_generate", "collect_tokens", "speculative_generate"]
