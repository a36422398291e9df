"""From an ml_collections run config to the library's typed objects."""
from __future__ import annotations

from emocap_jax.models.config import CLIPConfig


def clip_config(config) -> CLIPConfig:
    """The model architecture a run config describes (`config.model`)."""
    d = config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)
    d["text"] = dict(d["text"])
    if d["text"].get("eot_token_id", -1) == -1:
        d["text"]["eot_token_id"] = None
    return CLIPConfig.from_dict(d)
