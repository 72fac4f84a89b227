"""The zoo's settings and their hash, which names the zoo's cache directory."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from evomerge import families

ZOO_FORMAT_VERSION = 2


class ZooSettings(BaseModel):
    """Every setting that shapes the zoo; its hash names the zoo's directory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    layers: int = Field(2, ge=1)
    hidden: int = Field(128, ge=8)
    intermediate: int = Field(256, ge=8)
    heads: int = Field(4, ge=1)
    batch_size: int = Field(64, ge=1)
    base_steps: int = Field(1200, ge=1)
    base_lr: float = Field(1e-3, gt=0)
    base_mixture: dict[str, float] = Field(
        default_factory=lambda: {"add": 4.0, "reverse": 1.0, "shift": 1.0},
        description="relative share of each skill in the base's training batches",
    )
    expert_steps: int = Field(300, ge=1)
    expert_lr: float = Field(5e-4, gt=0)
    expert_anchor: float = Field(
        20.0, ge=0, description="L2-SP: per step, pull each expert weight toward the base's by lr * anchor"
    )
    expert_replay: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="share of an expert's training rows replayed from the base's easy data of other skills",
    )
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    train_examples: int = Field(5000, ge=1, description="per skill")
    search_examples: int = Field(200, ge=1, description="per skill")
    held_out_examples: int = Field(200, ge=1, description="per skill")


def settings_hash(settings: ZooSettings) -> str:
    """First 12 hex digits of the sha256 of the settings' canonical JSON and the zoo format version."""
    return families.settings_hash(settings, ZOO_FORMAT_VERSION)
