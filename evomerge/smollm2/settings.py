"""The SmolLM2 family's settings, their hash (which names its cache directory), and the smoke preset."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from evomerge import families

#: Bump with any change to the data, the training or the manifest that the settings do not show.
FAMILY_FORMAT_VERSION = 1

#: The languages the `words` skill may use: num2words language code -> the name prompts use.
LANGUAGES = {"fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese"}


class FamilySettings(BaseModel):
    """Every setting that shapes the family; its hash names the family's directory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(0, description="seeds the data, the splits and each expert's training")
    language: str = Field("fr", pattern="^(" + "|".join(LANGUAGES) + ")$", description="of the words skill")
    max_operand: int = Field(30, ge=3, description="arithmetic operands are at most this (answers 0..2 max)")
    words_max: int = Field(999, ge=20, description="the words skill writes the numbers 0..words_max")
    train_examples: int = Field(4800, ge=1, description="rows of each skill's train split (one epoch)")
    search_examples: int = Field(200, ge=1, description="rows of each task's search split")
    held_out_examples: int = Field(200, ge=1, description="rows of each task's held_out split")
    batch_size: int = Field(16, ge=1)
    expert_steps: int = Field(300, ge=1, description="optimizer steps of each expert")
    lr: float = Field(1e-4, gt=0, description="AdamW peak learning rate")
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)


#: A build of minutes, for tests and for checking an installation: a few steps, tiny splits.
SMOKE = FamilySettings(
    train_examples=16, search_examples=4, held_out_examples=4, batch_size=2, expert_steps=2
)


def settings_hash(settings: FamilySettings) -> str:
    """First 12 hex digits of the sha256 of the settings' canonical JSON and the family format version."""
    return families.settings_hash(settings, FAMILY_FORMAT_VERSION)
