"""From an ml_collections run config to the library's typed objects."""
from __future__ import annotations

from emocap_jax.models.config import CLIPConfig


def clip_config(config) -> CLIPConfig:
    """The model architecture a run config describes: `config.model` field for field (unknown
    fields are an error)."""
    model = config.model
    return CLIPConfig.from_dict(model.to_dict() if hasattr(model, "to_dict") else model)
