"""An open_clip model folder: `open_clip_model.safetensors` (open_clip's state-dict keys) and
`open_clip_config.json` (`model_cfg` + `preprocess_cfg`), what
`open_clip.create_model_and_transforms("local-dir:DIR")` and `open_clip.get_tokenizer("local-dir:DIR")`
read.

A model with the CLIP BPE tokenizer needs no tokenizer file: open_clip's SimpleTokenizer is the same
vocabulary and the same ids (`emocap_jax.tokenizers.ClipBpeTokenizer` reproduces it id for id).
"""
from __future__ import annotations

import json
import pathlib

from emocap_jax.export.common import ExportSource, params_to_state_dict, write_safetensors
from emocap_jax.models.clip import CLIP_MEAN, CLIP_STD
from emocap_jax.models.config import CLIPConfig

WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"


def model_cfg(config: CLIPConfig) -> dict:
    """open_clip's `model_cfg` for this architecture, in the form open_clip's own configs take
    (`mlp_ratio` of the text tower and the pooling keys only where they differ from open_clip's
    defaults)."""
    v, t = config.vision, config.text
    vision = {"image_size": v.image_size, "patch_size": v.patch_size, "width": v.width,
              "layers": v.layers, "head_width": v.width // v.heads, "mlp_ratio": v.mlp_dim / v.width}
    if v.pool == "gap":
        vision["pool_type"] = "avg"
    text = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
            "heads": t.heads, "layers": t.layers}
    if t.mlp_dim != 4 * t.width:
        text["mlp_ratio"] = t.mlp_dim / t.width
    if t.eot_token_id is not None:
        # Pool at the first end-of-text id instead of at the largest id (open_clip >= 2.24).
        text["pool_type"] = "eos"
        text["eos_id"] = t.eot_token_id
    return {"embed_dim": config.embed_dim, "vision_cfg": vision, "text_cfg": text,
            "quick_gelu": config.activation == "quick_gelu"}


def preprocess_cfg(config: CLIPConfig) -> dict:
    """CLIP's evaluation preprocessing, as `emocap_jax.preprocess` does it: shorter side resized
    (bicubic) to the image size, central crop, CLIP mean and std."""
    return {"size": config.vision.image_size, "mode": "RGB", "mean": list(CLIP_MEAN),
            "std": list(CLIP_STD), "interpolation": "bicubic", "resize_mode": "shortest"}


def write(source: ExportSource, output: pathlib.Path) -> list[pathlib.Path]:
    state = params_to_state_dict(source.params, "open_clip", source.config)
    write_safetensors(state, output / WEIGHTS_FILE)
    cfg = {"model_cfg": model_cfg(source.config), "preprocess_cfg": preprocess_cfg(source.config)}
    (output / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    return [output / WEIGHTS_FILE, output / CONFIG_FILE]
