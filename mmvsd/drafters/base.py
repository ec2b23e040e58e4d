"""The spec saved with every drafter checkpoint: sizes, kind and the target's fingerprint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class DrafterSpec:
    """Sizes of a drafter and the fingerprint of the target it was built for (config.json)."""

    kind: str
    hidden_size: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float = 10000.0
    target: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # kind-specific sizes

    @staticmethod
    def for_target(kind: str, target, num_heads: int | None = None, **extra) -> DrafterSpec:
        return DrafterSpec.for_text_config(kind, target.model.config.text_config, target.fingerprint(), num_heads,
                                           **extra)

    @staticmethod
    def for_text_config(kind: str, text_config, target: dict | None = None, num_heads: int | None = None,
                        **extra) -> DrafterSpec:
        """Sized for a target's language model, from its config alone (no weights needed)."""
        hidden = text_config.hidden_size
        return DrafterSpec(kind=kind, hidden_size=hidden, num_heads=num_heads or max(1, hidden // 64),
                           intermediate_size=text_config.intermediate_size, vocab_size=text_config.vocab_size,
                           rope_theta=_rope_theta(text_config), target=target or {}, extra=extra)

    def to_dict(self) -> dict:
        return asdict(self)


def _rope_theta(text_config) -> float:
    rope = getattr(text_config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta") or getattr(text_config, "rope_theta", None) or 10000.0)
