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
        hidden = target.hidden_size
        heads = num_heads or max(1, hidden // 64)
        return DrafterSpec(kind=kind, hidden_size=hidden, num_heads=heads,
                           intermediate_size=target.model.config.text_config.intermediate_size,
                           vocab_size=target.vocab_size,
                           rope_theta=_rope_theta(target.model.config.text_config),
                           target=target.fingerprint(), extra=extra)

    def to_dict(self) -> dict:
        return asdict(self)


def _rope_theta(text_config) -> float:
    rope = getattr(text_config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta") or getattr(text_config, "rope_theta", None) or 10000.0)
