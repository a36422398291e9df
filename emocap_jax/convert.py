"""Import CLIP weights from open_clip / OpenAI and Hugging Face checkpoints, and export ours to them.

    python -m emocap_jax.convert --source {auto,open_clip,openai,hf} --input PATH --output DIR
    python -m emocap_jax.convert --to {open_clip,hf} --input RUN_OR_EXPORT --output DIR

reads the weights (safetensors always; torch `.pt`/`.bin` when torch is installed), infers the
architecture from the tensor shapes and the config file beside the weights, maps every tensor onto
the Flax parameter tree and writes an exported-model folder (`emocap_jax.params_io`).

The key layouts (which torch tensor makes which Flax parameter, and how) are data in
`emocap_jax.weight_layouts`, which `emocap_jax.export` walks backwards to write them. Every mismatch
names the parameter path and both shapes; every tensor of the checkpoint must be used, so an
unsupported architecture fails loudly instead of loading partially.

`--to open_clip|hf` goes the other way: it exports a training run or an export folder
(`emocap_jax.export`).
"""
from __future__ import annotations

import json
import logging
import math
import numbers
import pathlib
import re
import sys
from typing import Optional

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

import emocap_jax.storage as storage
from emocap_jax.cli_errors import ArgumentParser, UsageError, entry_point
from emocap_jax.export import TARGETS as EXPORT_TARGETS, export_model
from emocap_jax.models.clip import count_params, param_shapes
from emocap_jax.models.config import CLIPConfig, TextConfig, VisionConfig
from emocap_jax.params_io import CONFIG_FILE, PARAMS_DIR, is_params_dir, save_params
from emocap_jax.weight_layouts import tensor_rules

log = logging.getLogger(__name__)

OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin",
                          "open_clip_pytorch_model.pt")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Weight files by suffix: safetensors is read directly, these through torch; nothing else is one.
TORCH_SUFFIXES = (".bin", ".pt", ".pth")
WEIGHT_SUFFIXES = (".safetensors",) + TORCH_SUFFIXES
# Tensors that carry no learned state, which some exports include: OpenAI's TorchScript scalars
# input_resolution, context_length and vocab_size (open_clip's build_model_from_openai_state_dict
# pops them too; the sizes are read off the tables' shapes), transformers' position_ids buffer
# (arange(max_positions), which open_clip's load_checkpoint also deletes), and the text tower's
# attention mask, which open_clip rebuilds from context_length (a non-persistent buffer since
# 2022: build_causal_mask) and so is dropped only once `_check_causal_mask` has found it to be
# that causal mask: the text tower here is always causal.
_IGNORED_KEYS = re.compile(
    r"^(attn_mask|input_resolution|context_length|vocab_size|"
    r"(vision_model|text_model)\.embeddings\.position_ids)$")


class ConversionError(UsageError):
    """A checkpoint that cannot be read as a CLIP emocap_jax implements (the message says why)."""


# ----------------------------------------------------------------------------------------------
# Reading weights


def read_state_dict(path) -> dict[str, np.ndarray]:
    """Tensors of a safetensors, torch or TorchScript (OpenAI `.pt`) file as float32 NumPy arrays."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file  # optional heavy dependency: safetensors files only
        try:
            tensors = load_file(str(path))
        except Exception as e:  # bf16 safetensors need torch or ml_dtypes-aware loading
            tensors = _load_safetensors_any_dtype(path, e)
    elif path.suffix in TORCH_SUFFIXES:
        tensors = _read_torch_file(path)
    else:
        raise ConversionError(not_weights_message(path))
    if "attn_mask" in tensors:
        _check_causal_mask(np.asarray(tensors["attn_mask"]), path)
    return {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()
            if not _IGNORED_KEYS.match(k)}


def _check_causal_mask(mask: np.ndarray, path) -> None:
    """A checkpoint's `attn_mask` must be the causal mask the text tower applies anyway: additive
    (0 on and below the diagonal, -inf or a large negative number above, open_clip's
    build_causal_mask) or boolean (True above the diagonal: masked, as torch reads a bool mask).
    Anything else would attend differently from what loads here, so it is refused."""
    square = mask.ndim == 2 and mask.shape[0] == mask.shape[1]
    if square:
        above = np.triu(np.ones(mask.shape, bool), 1)
        if mask.dtype == np.bool_:
            causal = np.array_equal(mask, above)
        else:
            values = mask.astype(np.float32)
            causal = bool(np.all(values[~above] == 0) and np.all(values[above] <= -1e4))
        if causal:
            return
    raise ConversionError(
        f"{path}: tensor attn_mask (shape {tuple(mask.shape)}) is not the causal text mask "
        f"(0 on and below the diagonal, -inf above): emocap_jax's text tower is always causal, "
        f"so this checkpoint would attend differently here")


def _load_safetensors_any_dtype(path, first_error):
    # safetensors.numpy cannot represent bfloat16; read the raw buffers with ml_dtypes instead.
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + header_len])
    dtypes = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "F64": np.float64, "I64": np.int64, "I32": np.int32}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in dtypes:
            raise ConversionError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}") \
                from first_error
        start, end = info["data_offsets"]
        buf = raw[8 + header_len + start: 8 + header_len + end]
        out[name] = np.frombuffer(buf, dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


def _read_torch_file(path):
    try:
        import torch  # optional, not in requirements.txt: torch files only
    except ImportError:
        raise ConversionError(
            f"{path} is a torch file, and reading it needs torch, which is not installed. Either "
            f"`pip install torch` (CPU build: pip install torch --index-url "
            f"https://download.pytorch.org/whl/cpu), or convert it to safetensors once on a machine "
            f"that has torch: python -c \"import torch, safetensors.torch as st; "
            f"sd = torch.load('{path.name}', map_location='cpu'); "
            f"st.save_file({{k: v.contiguous() for k, v in sd.get('state_dict', sd).items()}}, "
            f"'model.safetensors')\"") from None
    try:
        # OpenAI's original checkpoints are TorchScript archives.
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    except RuntimeError:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if "state_dict" in state:
            state = state["state_dict"]
    out = {}
    for k, v in state.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if hasattr(v, "float"):
            out[k] = v.float().numpy()
    return out


def detect_layout(state: dict) -> str:
    if "visual.conv1.weight" in state:
        return "open_clip"
    if "vision_model.embeddings.patch_embedding.weight" in state:
        return "hf"
    sample = ", ".join(sorted(state)[:8])
    raise ConversionError(
        "cannot tell the checkpoint layout: neither open_clip/OpenAI keys (visual.conv1.weight) nor "
        f"Hugging Face CLIPModel keys (vision_model.embeddings.patch_embedding.weight); first keys: "
        f"{sample}")


# ----------------------------------------------------------------------------------------------
# Architecture inference


def _num_layers(state, prefix):
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    ids = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if not ids:
        raise ConversionError(f"no transformer layers found under {prefix}*")
    if ids != set(range(len(ids))):
        raise ConversionError(f"layers under {prefix}* are not numbered 0..{len(ids) - 1}: "
                              f"{sorted(ids)}")
    return len(ids)


# Image towers of the standard CLIPs whose heads are not 64 wide (open_clip's ViT-H-14/-16,
# ViT-g-14 and ViT-bigG-14 configs: head_width 80, 88 and 104, i.e. 16 heads), by width. Their text
# towers, and every other standard tower, use 64-wide heads.
_VISION_HEAD_WIDTHS = {1280: 80, 1408: 88, 1664: 104}


def _vision_head_width(width: int) -> int:
    return _VISION_HEAD_WIDTHS.get(width, 64)


def _heads(width, head_width, what):
    # Attention heads are invisible in the tensor shapes; the standard CLIPs use 64-wide heads
    # (image towers: _VISION_HEAD_WIDTHS), so that is the fallback when no config says otherwise.
    if head_width <= 0 or width % head_width:
        raise ConversionError(
            f"{what}: cannot infer the number of attention heads for width {width} (head width "
            f"{head_width}); put the checkpoint's config (open_clip_config.json / config.json) "
            f"beside the weights")
    return width // head_width


def _grid(num_positions, what):
    grid = math.isqrt(num_positions - 1)
    if grid * grid != num_positions - 1:
        raise ConversionError(f"{what} has {num_positions} positions, not 1 + a square grid")
    return grid


# patch_dropout acts in training only (open_clip's PatchDropout returns its input in eval mode),
# so any rate describes the same inference model.
_OPEN_CLIP_SUPPORTED_VISION = {"image_size", "patch_size", "width", "layers", "head_width",
                               "mlp_ratio", "heads", "pool_type", "patch_dropout"}
_OPEN_CLIP_SUPPORTED_TEXT = {"context_length", "vocab_size", "width", "heads", "layers",
                             "mlp_ratio", "hf_tokenizer_name", "tokenizer_kwargs", "pool_type",
                             "eos_id", "text_mask"}
# open_clip pooling -> ours: the image's class token or patch mean (VisionConfig.pool); the text at
# argmax(ids) or at the first `eos_id` (TextConfig.eot_token_id).
OPEN_CLIP_VISION_POOLS = {"tok": "token", "avg": "gap"}
OPEN_CLIP_TEXT_POOLS = ("argmax", "eos")
OPEN_CLIP_TEXT_HEADS = 8  # open_clip's CLIPTextCfg.heads default
# open_clip's text_cfg.text_mask values that select another tokenize function (see
# _open_clip_tokenizer).
OPEN_CLIP_TEXT_MASKS = ("syntax", "random", "block")
_OPEN_CLIP_DEFAULT_OK = {"ls_init_value": None, "attentional_pool": False,
                         "no_ln_pre": False, "no_causal_mask": False,
                         "final_ln_after_pool": False, "output_tokens": False,
                         "proj_bias": False, "embed_cls": False, "pad_id": 0,
                         "norm_kwargs": {}, "act_kwargs": {}, "proj_type": "linear",
                         "pos_embed_type": "learnable", "global_average_pool": False,
                         "input_patchnorm": False, "eps": 1e-5}


def _check_open_clip_tower_cfg(cfg: dict, supported: set, tower: str):
    for key, value in cfg.items():
        if key in supported:
            continue
        if key in _OPEN_CLIP_DEFAULT_OK:
            ok = _OPEN_CLIP_DEFAULT_OK[key]
            if value == ok or (isinstance(ok, tuple) and value in ok):
                continue
            raise ConversionError(
                f"open_clip config {tower}_cfg.{key}={value!r} describes an architecture emocap_jax "
                f"does not implement (only standard CLIP ViTs are supported)")
        if key.startswith("timm_") or key.startswith("hf_model"):
            raise ConversionError(f"open_clip config {tower}_cfg.{key}: timm/Hugging Face towers "
                                  f"are not supported, only standard CLIP ViTs")
        log.warning("open_clip config %s_cfg.%s=%r ignored", tower, key, value)


# The tensors each layout's architecture is read from: a checkpoint that lacks one is not a
# two-tower CLIP ViT in that layout (a ResNet image tower, a custom text tower, one tower alone).
_SHAPE_KEYS = {
    "open_clip": ("visual.conv1.weight", "visual.positional_embedding", "visual.proj",
                  "visual.transformer.resblocks.0.mlp.c_fc.weight", "token_embedding.weight",
                  "positional_embedding", "transformer.resblocks.0.mlp.c_fc.weight",
                  "text_projection"),
    "hf": ("vision_model.embeddings.patch_embedding.weight",
           "vision_model.embeddings.position_embedding.weight",
           "vision_model.encoder.layers.0.mlp.fc1.weight", "visual_projection.weight",
           "text_model.embeddings.token_embedding.weight",
           "text_model.embeddings.position_embedding.weight",
           "text_model.encoder.layers.0.mlp.fc1.weight", "text_projection.weight"),
}


def _require_clip_vit(state: dict, layout: str):
    missing = [k for k in _SHAPE_KEYS[layout] if k not in state]
    if not missing:
        return
    if any(k.startswith(("visual.layer1.", "visual.attnpool.")) for k in state):
        what = "its image tower is a ResNet (OpenAI's RN50 family)"
    elif any(k.startswith("text.") for k in state):
        what = "its text tower is not CLIP's (open_clip custom_text, CoCa or a Hugging Face model)"
    else:
        what = f"it has no tensor {missing[0]}" + (
            f" (nor {len(missing) - 1} more the architecture is read from)" if len(missing) > 1
            else "")
    raise ConversionError(
        f"not a CLIP ViT checkpoint in {layout} layout: {what}. emocap_jax imports standard CLIP "
        f"ViTs with both towers (image and text) only")


def infer_open_clip_config(state: dict, oc_cfg: Optional[dict] = None,
                           activation: Optional[str] = None) -> CLIPConfig:
    """Architecture of an open_clip/OpenAI state dict. `oc_cfg` is open_clip's `model_cfg` (from
    `open_clip_config.json`); without it the attention heads are those of the standard
    architecture of that width (64-wide, as in all OpenAI CLIPs, except the image towers of
    open_clip's ViT-H/g/bigG: 16 heads) and the activation must be given."""
    _require_clip_vit(state, "open_clip")
    vcfg = dict((oc_cfg or {}).get("vision_cfg", {}))
    tcfg = dict((oc_cfg or {}).get("text_cfg", {}))
    if oc_cfg:
        _check_open_clip_tower_cfg(vcfg, _OPEN_CLIP_SUPPORTED_VISION, "vision")
        _check_open_clip_tower_cfg(tcfg, _OPEN_CLIP_SUPPORTED_TEXT, "text")
    for key in ("image_size", "patch_size"):
        # open_clip takes (height, width) pairs; the position table alone cannot tell an 8 x 2 grid
        # from a 4 x 4 one, so a non-square pair would load as a wrong square model.
        value = vcfg.get(key)
        if isinstance(value, (list, tuple)) and len(set(value)) > 1:
            raise ConversionError(
                f"open_clip config vision_cfg.{key}={value!r}: non-square images or patches are "
                f"not supported (emocap_jax's ViT has a square patch grid)")
    v_pool, t_pool = vcfg.get("pool_type", "tok"), tcfg.get("pool_type", "argmax")
    if v_pool not in OPEN_CLIP_VISION_POOLS or t_pool not in OPEN_CLIP_TEXT_POOLS:
        raise ConversionError(
            f"open_clip config pool_type vision={v_pool!r} text={t_pool!r}: emocap_jax implements "
            f"vision {sorted(OPEN_CLIP_VISION_POOLS)} and text {list(OPEN_CLIP_TEXT_POOLS)}")
    if activation is None:
        if oc_cfg is None:
            raise ConversionError(
                "the activation cannot be read off the weights: pass --activation quick_gelu "
                "(OpenAI weights, open_clip '-quickgelu' models) or --activation gelu (most other "
                "open_clip weights), or put open_clip_config.json beside the weights")
        activation = "quick_gelu" if oc_cfg.get("quick_gelu", False) else "gelu"
    conv = state["visual.conv1.weight"]
    v_width, _, patch, _ = conv.shape
    grid = _grid(state["visual.positional_embedding"].shape[0], "visual.positional_embedding")
    v_layers = _num_layers(state, "visual.transformer.resblocks.")
    # With a config, open_clip's own default head_width (64) applies; without one, the standard
    # architecture of this width.
    v_heads = int(vcfg["heads"]) if "heads" in vcfg else _heads(
        v_width, int(vcfg.get("head_width", 64 if oc_cfg else _vision_head_width(v_width))),
        "image tower")
    vision = VisionConfig(
        image_size=grid * patch, patch_size=patch, width=v_width, layers=v_layers, heads=v_heads,
        mlp_dim=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        pool=OPEN_CLIP_VISION_POOLS[v_pool])
    vocab, t_width = state["token_embedding.weight"].shape
    text = TextConfig(
        context_length=state["positional_embedding"].shape[0], vocab_size=vocab, width=t_width,
        layers=_num_layers(state, "transformer.resblocks."),
        # A text_cfg without "heads" means open_clip's CLIPTextCfg default, 8.
        heads=int(tcfg.get("heads", OPEN_CLIP_TEXT_HEADS)) if "text_cfg" in (oc_cfg or {})
        else _heads(t_width, 64, "text tower"),
        mlp_dim=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        # open_clip's CLIPTextCfg.eos_id defaults to 2.
        eot_token_id=int(tcfg.get("eos_id", 2)) if t_pool == "eos" else None)
    return CLIPConfig(embed_dim=state["visual.proj"].shape[1], vision=vision, text=text,
                      activation=activation)


_HF_ACT = {"quick_gelu": "quick_gelu", "gelu": "gelu"}


# transformers' CLIPTextConfig default eos_token_id (since its PR #24773, v4.31; it was 2 before,
# the value it still reads as "pool at the argmax").
HF_DEFAULT_EOS_TOKEN_ID = 49407
# transformers' CLIPVisionConfig / CLIPTextConfig defaults of the fields read here: what
# CLIPModel builds for a tower config that omits them (and what a `*_config_dict` overrides).
_HF_TOWER_DEFAULTS = {
    "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                      "num_attention_heads": 12, "image_size": 224, "patch_size": 32,
                      "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
    "text_config": {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
                    "num_hidden_layers": 12, "num_attention_heads": 8,
                    "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                    "layer_norm_eps": 1e-5, "eos_token_id": HF_DEFAULT_EOS_TOKEN_ID},
}
HF_DEFAULT_PROJECTION_DIM = 512  # transformers' CLIPConfig.projection_dim default


def hf_tower_configs(hf_cfg: dict) -> dict:
    """A CLIPModel config.json with its towers as transformers' CLIPConfig reads them: configs
    written by transformers before 4.27 (openai/clip-vit-*) carry `text_config_dict` /
    `vision_config_dict`, which CLIPConfig merges into `text_config` / `vision_config`: every
    field of the tower becomes the `*_config_dict`'s value or, where it has none, the tower
    class's default (CLIPTextConfig(**text_config_dict).to_dict() updates text_config)."""
    cfg = dict(hf_cfg)
    for tower in ("text_config", "vision_config"):
        given = cfg.pop(f"{tower}_dict", None)
        base = cfg.get(tower)
        if base is not None and not isinstance(base, dict):
            raise ConversionError(f"Hugging Face config {tower} must be an object, got "
                                  f"{type(base).__name__}")
        base = dict(base or {})
        if given is not None:
            if not isinstance(given, dict):
                raise ConversionError(f"Hugging Face config {tower}_dict must be an object, got "
                                      f"{type(given).__name__}")
            # The fields read here take the *_dict's value, else (being absent) the default.
            base = {k: v for k, v in base.items() if k not in _HF_TOWER_DEFAULTS[tower]}
            base.update(given)
        cfg[tower] = base
    return cfg


def _check_hf_config_sizes(cfg: dict, config: CLIPConfig) -> None:
    """transformers builds CLIPModel from config.json (its defaults for absent fields) and then
    loads the weights into it: a size the config gives that the weights do not have is a "size
    mismatch" from_pretrained refuses (an image_size whose patch grid is not the weights'
    position table, a max_position_embeddings that is not the text table's length, ...), and a
    layer count that differs loads some layers as random or drops some. Both are refused here,
    naming the field, its value and the weights'."""
    v, t = config.vision, config.text
    checks = [("vision_config", "image_size", v.image_size,
               f"the weights' position table holds 1 + {v.grid_size} x {v.grid_size} patch "
               f"positions, {v.image_size} px at {v.patch_size} px patches"),
              ("vision_config", "patch_size", v.patch_size, None),
              ("vision_config", "hidden_size", v.width, None),
              ("vision_config", "intermediate_size", v.mlp_dim, None),
              ("vision_config", "num_hidden_layers", v.layers, None),
              ("text_config", "max_position_embeddings", t.context_length,
               f"the weights' text position table has {t.context_length} rows"),
              ("text_config", "vocab_size", t.vocab_size, None),
              ("text_config", "hidden_size", t.width, None),
              ("text_config", "intermediate_size", t.mlp_dim, None),
              ("text_config", "num_hidden_layers", t.layers, None)]
    problems = []
    for tower, key, weights, why in checks:
        given = key in cfg[tower]
        value = cfg[tower].get(key, _HF_TOWER_DEFAULTS[tower][key])
        if value != weights:
            problems.append(f"{tower}.{key}={value!r}" + ("" if given else
                                                          " (absent: transformers' default)")
                            + f" but {why or f'the weights have {weights}'}")
    projection = cfg.get("projection_dim", HF_DEFAULT_PROJECTION_DIM)
    if projection != config.embed_dim:
        problems.append(f"projection_dim={projection!r}" + (
            "" if "projection_dim" in cfg else " (absent: transformers' default)")
            + f" but the weights' projections are {config.embed_dim} wide")
    if problems:
        raise ConversionError(
            "Hugging Face config.json does not describe these weights: " + "; ".join(problems)
            + ". transformers builds the model its config describes and refuses to load weights "
            "of other sizes into it (size mismatch): fix config.json, or convert the weights "
            "without it (the sizes are then read off the weights; --activation gives the "
            "activation, --image-size resizes the position table)")


def _hf_heads(hf_cfg: Optional[dict], tower: str, width: int, head_width: int) -> int:
    """Heads of a tower: its config's num_attention_heads; transformers' default when the tower's
    config omits it (what CLIPModel builds); without a config, the standard head width's."""
    what = "image tower" if tower == "vision_config" else "text tower"
    if hf_cfg is None:
        return _heads(width, head_width, what)
    tower_cfg = hf_cfg[tower]
    heads = int(tower_cfg.get("num_attention_heads",
                              _HF_TOWER_DEFAULTS[tower]["num_attention_heads"]))
    if heads <= 0 or width % heads:
        raise ConversionError(f"Hugging Face config {tower}.num_attention_heads={heads} "
                              f"(transformers' default when absent) does not divide the "
                              f"{what}'s width {width}")
    return heads


def infer_hf_config(state: dict, hf_cfg: Optional[dict] = None,
                    activation: Optional[str] = None) -> CLIPConfig:
    _require_clip_vit(state, "hf")
    if activation is None and hf_cfg is None:
        # transformers' default (quick_gelu) is no evidence: LAION's CLIPs on the Hub are gelu.
        raise ConversionError(
            "the activation cannot be read off the weights: pass --activation quick_gelu "
            "(OpenAI's CLIPs) or --activation gelu (LAION's and most other CLIPs), or put the "
            "checkpoint's config.json beside the weights")
    if hf_cfg is not None:
        hf_cfg = hf_tower_configs(hf_cfg)
    vcfg = dict((hf_cfg or {}).get("vision_config", {}))
    tcfg = dict((hf_cfg or {}).get("text_config", {}))
    conv = state["vision_model.embeddings.patch_embedding.weight"]
    v_width, _, patch, _ = conv.shape
    grid = _grid(state["vision_model.embeddings.position_embedding.weight"].shape[0],
                 "vision_model.embeddings.position_embedding.weight")
    vision = VisionConfig(
        image_size=grid * patch, patch_size=patch, width=v_width,
        layers=_num_layers(state, "vision_model.encoder.layers."),
        heads=_hf_heads(hf_cfg, "vision_config", v_width, _vision_head_width(v_width)),
        mlp_dim=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0])
    vocab, t_width = state["text_model.embeddings.token_embedding.weight"].shape
    # Without the key, a config means transformers' CLIPTextConfig default, 49407 (CLIP BPE's end
    # of text, pooled at its first occurrence: the argmax for CLIP BPE ids, not for a vocabulary
    # with added tokens); without any config, CLIP's own argmax rule.
    eos = tcfg.get("eos_token_id", HF_DEFAULT_EOS_TOKEN_ID if hf_cfg is not None else 2)
    text = TextConfig(
        context_length=state["text_model.embeddings.position_embedding.weight"].shape[0],
        vocab_size=vocab, width=t_width, layers=_num_layers(state, "text_model.encoder.layers."),
        heads=_hf_heads(hf_cfg, "text_config", t_width, 64),
        mlp_dim=state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        # transformers pools at argmax(ids) when eos_token_id == 2 (configs written before it knew
        # the real end token), else at the first end token.
        eot_token_id=None if eos == 2 else int(eos))
    if activation is None:
        acts = {vcfg.get("hidden_act", "quick_gelu"), tcfg.get("hidden_act", "quick_gelu")}
        if len(acts) != 1 or next(iter(acts)) not in _HF_ACT:
            raise ConversionError(f"Hugging Face config activations {sorted(acts)} unsupported: "
                                  f"both towers must use quick_gelu or gelu")
        activation = _HF_ACT[acts.pop()]
    # The model has one LayerNorm epsilon (CLIPConfig.layer_norm_eps): the towers' must agree.
    # It is read from the config, not assumed to be CLIP's 1e-5, so that a model exported to
    # Hugging Face with another epsilon (emocap_jax.export writes it) loads back as it was;
    # --activation overrides the activation only, never the epsilon.
    eps = [tower.get("layer_norm_eps", _HF_TOWER_DEFAULTS[name]["layer_norm_eps"])
           for name, tower in (("vision_config", vcfg), ("text_config", tcfg))]
    if eps[0] != eps[1] or not all(isinstance(e, numbers.Real) and not isinstance(e, bool)
                                   and e > 0 for e in eps):
        raise ConversionError(f"Hugging Face config layer_norm_eps: vision {eps[0]!r}, text "
                              f"{eps[1]!r}; emocap_jax's towers share one positive LayerNorm "
                              f"epsilon")
    config = CLIPConfig(embed_dim=state["visual_projection.weight"].shape[0], vision=vision,
                        text=text, activation=activation, layer_norm_eps=float(eps[0]))
    if hf_cfg is not None:
        _check_hf_config_sizes(hf_cfg, config)
    return config


# ----------------------------------------------------------------------------------------------
# Tensor mapping (the rules per layout: emocap_jax.weight_layouts)


def _set(tree, path, value):
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _get(tree, path):
    for p in path.split("/"):
        tree = tree[p]
    return tree


def _flatten_paths(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten_paths(v, f"{prefix}{k}/")
    else:
        yield prefix[:-1], tree


def state_dict_to_params(state: dict, layout: str, config: CLIPConfig) -> dict:
    """Maps a torch state dict onto the Flax parameter tree of `config`, checking every shape
    against the model's own parameter shapes and that no tensor is left over."""
    expected = param_shapes(config)
    params, used = {}, set()
    for path, key_groups, fn, stacked in tensor_rules(layout, config):
        want = tuple(_get(expected, path))
        item_shape = want[1:] if stacked else want
        values = []
        for keys in key_groups:
            missing = [k for k in keys if k not in state]
            if missing:
                raise ConversionError(f"parameter {path}: checkpoint has no tensor {missing[0]}")
            try:
                value = np.array(fn(*(state[k] for k in keys)), dtype=np.float32, order="C")
            except ValueError as e:  # e.g. q/k/v parts that cannot be concatenated
                shapes = [tuple(state[k].shape) for k in keys]
                raise ConversionError(f"parameter {path} (from {keys}): tensors of shapes "
                                      f"{shapes} do not combine: {e}") from None
            if value.shape != item_shape:
                raise ConversionError(
                    f"parameter {path} (from {keys[0]}): checkpoint shape {value.shape} != model "
                    f"shape {item_shape}" + (f" (per layer of {want})" if stacked else ""))
            values.append(value)
            used.update(keys)
        _set(params, path, np.stack(values) if stacked else values[0])
    unused = sorted(set(state) - used)
    if unused:
        raise ConversionError(
            f"{len(unused)} checkpoint tensors have no place in a standard CLIP ViT, e.g. "
            f"{unused[:5]}: this architecture is not supported")
    wanted = {p for p, _ in _flatten_paths(expected)}
    got = {p for p, _ in _flatten_paths(params)}
    assert wanted == got, f"converter rules do not cover {sorted(wanted - got)}"
    return params


# ----------------------------------------------------------------------------------------------
# Resolution change


def resize_pos_embedding(pos: np.ndarray, new_grid: int, class_token: bool = True) -> np.ndarray:
    """Resizes a ViT position table [1 + g*g, w] to [1 + new_grid**2, w]: the class-token row is
    kept, the grid is resampled bicubically with antialiasing, as open_clip's `resize_pos_embed`
    does (F.interpolate(mode="bicubic", antialias=True, align_corners=False), which is Pillow's
    bicubic resize: without the antialiasing a smaller grid would differ from open_clip's). With
    class_token=False the table is the grid alone, [g*g, w] -> [new_grid**2, w]."""
    rows = 1 if class_token else 0
    old_grid = math.isqrt(pos.shape[0] - rows)
    if old_grid == new_grid:
        return pos
    grid = jnp.asarray(pos[rows:]).reshape(old_grid, old_grid, -1)
    grid = jax.image.resize(grid, (new_grid, new_grid, grid.shape[-1]), method="bicubic",
                            antialias=True)
    return np.concatenate([pos[:rows], np.asarray(grid).reshape(new_grid * new_grid, -1)], axis=0)


def with_image_size(params: dict, config: CLIPConfig, image_size: int) -> tuple[dict, CLIPConfig]:
    """Adapts parameters trained at one resolution to `image_size` (a multiple of the patch): the
    position embeddings are resized, the ViT's and, with vision.local_head="patch_fine", the local
    head's own (its finer grid, no class-token row)."""
    patch = config.vision.patch_size
    # bool is an Integral, and True would otherwise read as 1 pixel.
    if (not isinstance(image_size, numbers.Integral) or isinstance(image_size, bool)
            or image_size <= 0 or image_size % patch):
        raise ConversionError(
            f"image_size={image_size!r}: must be a positive multiple of the model's patch size "
            f"{patch} (it was trained at {config.vision.image_size})")
    image_size = int(image_size)
    if image_size == config.vision.image_size:
        return params, config
    vision = VisionConfig(**{**config.vision.__dict__, "image_size": image_size})
    config = config.replace(vision=vision)  # validates divisibility by the patch size
    params = dict(params)
    params["visual"] = visual = dict(params["visual"])
    visual["pos_embedding"] = resize_pos_embedding(np.asarray(visual["pos_embedding"]),
                                                   vision.grid_size)
    if "local_pos_embedding" in visual:
        visual["local_pos_embedding"] = resize_pos_embedding(
            np.asarray(visual["local_pos_embedding"]), vision.local_grid_size, class_token=False)
    return params, config


def resize_text_pos_embedding(pos: np.ndarray, context_length: int) -> np.ndarray:
    """Resizes a text position table [T, w] to [context_length, w] as open_clip's
    `resize_text_pos_embed` does: F.interpolate(mode="linear", antialias=False,
    align_corners=False) along the positions, i.e. position j samples the old table at
    (j + 0.5) * T / context_length - 0.5, linearly between its two neighbours and clamped to the
    first and last rows."""
    if pos.shape[0] == context_length:
        return pos
    # jax's triangle kernel, renormalised over the rows that exist, is exactly torch's clamping
    # at both ends (checked against a plain formula in tests/test_weight_import.py).
    out = jax.image.resize(jnp.asarray(pos, jnp.float32), (context_length, pos.shape[1]),
                           method="linear", antialias=False)
    return np.asarray(out, np.float32)


def _cfg_size(value, what: str) -> int:
    # open_clip takes an int or an (h, w) pair; non-square pairs are refused before this.
    if isinstance(value, (list, tuple)):
        value = value[0]
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise ConversionError(f"open_clip config {what}={value!r}: not a positive integer")
    return int(value)


# open_clip's CLIPVisionCfg / CLIPTextCfg defaults of the sizes: what open_clip builds for a
# model_cfg tower that omits them (its own model configs always give them).
OPEN_CLIP_DEFAULTS = {
    "vision_cfg": {"image_size": 224, "patch_size": 16, "width": 768, "layers": 12,
                   "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "layers": 12,
                 "mlp_ratio": 4.0},
}


def open_clip_config_sizes(params: dict, config: CLIPConfig,
                           oc_cfg: dict) -> tuple[dict, CLIPConfig]:
    """The model open_clip builds from its config, with these weights: open_clip makes the model
    from `model_cfg` (CLIPVisionCfg / CLIPTextCfg defaults for the sizes it omits:
    `OPEN_CLIP_DEFAULTS`) and, loading a checkpoint into it (`load_checkpoint`), resizes the
    checkpoint's position tables to the model's: the image grid to vision_cfg.image_size //
    patch_size (bicubic, antialiased: `resize_pos_embedding`) and the text table to
    text_cfg.context_length (linear: `resize_text_pos_embedding`). Any other size the config
    gives (or defaults to) that the weights do not have (width, layers, patch, vocabulary,
    embedding) is a shape mismatch open_clip refuses, and so is refused here, naming both; and
    a model_cfg without embed_dim, vision_cfg or text_cfg, which open_clip's CLIP cannot be
    built from, is refused."""
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if oc_cfg.get(k) is None]
    if missing:
        raise ConversionError(
            f"open_clip config has no {', '.join(missing)}: open_clip cannot build a model from "
            f"it (CLIP(embed_dim, vision_cfg, text_cfg) needs all three); give the checkpoint's "
            f"full open_clip_config.json, or convert the weights without it (--activation)")
    given = {"vision_cfg": dict(oc_cfg["vision_cfg"]), "text_cfg": dict(oc_cfg["text_cfg"])}
    v, t = config.vision, config.text

    def value(tower, key):
        """(the config's size, how the message quotes it): absent is open_clip's default."""
        if key in given[tower]:
            return given[tower][key], f"{tower}.{key}={given[tower][key]!r}"
        default = OPEN_CLIP_DEFAULTS[tower][key]
        return default, f"{tower}.{key}={default!r} (absent: open_clip's default)"

    fixed = [("vision_cfg", "patch_size", v.patch_size), ("vision_cfg", "width", v.width),
             ("vision_cfg", "layers", v.layers), ("text_cfg", "width", t.width),
             ("text_cfg", "layers", t.layers), ("text_cfg", "vocab_size", t.vocab_size)]
    # open_clip's MLP width is int(width * mlp_ratio).
    for tower, weights in (("vision_cfg", v), ("text_cfg", t)):
        ratio, quoted = value(tower, "mlp_ratio")
        if isinstance(ratio, numbers.Real) and int(weights.width * ratio) != weights.mlp_dim:
            raise ConversionError(
                f"open_clip config {quoted} (MLP width {int(weights.width * ratio)}) but the "
                f"weights' MLP is {weights.mlp_dim} wide: open_clip cannot load these weights "
                f"into the model its config describes")
    for tower, key, weights in fixed:
        size, quoted = value(tower, key)
        if _cfg_size(size, f"{tower}.{key}") != weights:
            raise ConversionError(
                f"open_clip config {quoted} but the weights have {weights}: open_clip cannot "
                f"load these weights into the model its config describes")
    if _cfg_size(oc_cfg["embed_dim"], "embed_dim") != config.embed_dim:
        raise ConversionError(
            f"open_clip config embed_dim={oc_cfg['embed_dim']!r} but the weights have "
            f"{config.embed_dim}: open_clip cannot load these weights into the model its config "
            f"describes")
    # A size open_clip resizes to from its default rather than the config is worth a warning:
    # the config's author probably meant the weights' size.
    size, quoted = value("vision_cfg", "image_size")
    size = _cfg_size(size, "vision_cfg.image_size")
    if size != v.image_size:
        if size % v.patch_size:
            raise ConversionError(
                f"open_clip config {quoted} is not a multiple of the {v.patch_size} px patch: "
                f"open_clip would drop the last {size % v.patch_size} pixel rows and columns, "
                f"which emocap_jax's ViT does not")
        (log.info if "image_size" in given["vision_cfg"] else log.warning)(
            "open_clip config %s: the weights' %d px position grid is resized to %d px, as "
            "open_clip does", quoted, v.image_size, size)
        params, config = with_image_size(params, config, size)
    length, quoted = value("text_cfg", "context_length")
    length = _cfg_size(length, "text_cfg.context_length")
    if length != t.context_length:
        (log.info if "context_length" in given["text_cfg"] else log.warning)(
            "open_clip config %s: the weights' %d text positions are resized to %d, as "
            "open_clip does", quoted, t.context_length, length)
        params = dict(params)
        params["text"] = dict(params["text"])
        params["text"]["pos_embedding"] = resize_text_pos_embedding(
            np.asarray(params["text"]["pos_embedding"]), length)
        config = config.replace(text=TextConfig(**{**config.text.__dict__,
                                                   "context_length": length}))
    return params, config


# ----------------------------------------------------------------------------------------------
# Locating a checkpoint and its config


def not_weights_message(path) -> str:
    """Why the file `path` (local or a URL), whose suffix is no weights file's, cannot be loaded,
    and what to give instead when it is part of an export or a training run."""
    return not_a_checkpoint(path) or (
        f"{path}: not a weights file (expected {', '.join(WEIGHT_SUFFIXES)})")


def weights_in(names, source: str = "auto") -> Optional[str]:
    """The weights file `locate` reads in a folder holding the files `names`, or None: an
    open_clip/OpenAI file before a Hugging Face one (Hub folders often hold both)."""
    names = set(names)
    if source in ("auto", "open_clip", "openai"):
        for name in OPEN_CLIP_WEIGHT_FILES:
            if name in names:
                return name
    if source in ("auto", "hf"):
        for name in HF_WEIGHT_FILES:
            if name in names:
                return name
    return None


def no_weights_message(folder, source: str) -> str:
    """Why the folder `folder` (local or a URL), which holds no weights file for `source`, cannot
    be loaded (a training run without export/ yet, its checkpoints, ...)."""
    return not_a_checkpoint(folder) or (
        f"{folder}: no weights found for source={source!r}; expected one of "
        f"{OPEN_CLIP_WEIGHT_FILES + HF_WEIGHT_FILES}")


def _training_run(path: str) -> Optional[dict]:
    """A training workdir's config (its config.json, {} when unreadable), or None when `path` is
    not one: a folder with checkpoints/ or with the config.json training writes."""
    if not storage.isdir(path):
        return None
    config = _read_json_or_none(storage.join(path, "config.json"))
    is_run = isinstance(config, dict) and "model" in config and "train" in config
    if is_run or storage.isdir(storage.join(path, "checkpoints")):
        return config if is_run else {}
    return None


def _newest_step(checkpoints: str) -> Optional[int]:
    """The highest step folder under a run's checkpoints/ (None when there is none). Only the
    candidates down to the first real folder are checked: one listing and, usually, one more
    request on a bucket, however many checkpoints the run kept."""
    names = storage.listdir(checkpoints) if storage.isdir(checkpoints) else []
    for step in sorted((int(n) for n in names if n.isdigit()), reverse=True):
        if storage.isdir(storage.join(checkpoints, str(step))):
            return step
    return None


def _run_without_export(run: str, config: dict) -> str:
    step = _newest_step(storage.join(run, "checkpoints"))
    total = (config.get("train") or {}).get("num_steps")
    newest = (f" (newest checkpoint: step {step}" + (f" of {total})" if total else ")")
              if step is not None else "")
    return (f"{run} is a training workdir with no export/ yet{newest}: a run writes "
            f"{storage.join(run, 'export')} when training ends. Finish it by starting its training "
            f"command again (`python -m emocap_jax.main --config=CONFIG --workdir={run}`, which "
            f"resumes from the newest checkpoint), then give {run}")


def not_a_checkpoint(path) -> Optional[str]:
    """For a path (local or a URL) that is not itself a model to load: what it is and what to give
    instead (a training workdir without export/ yet, one of its Orbax checkpoints, an export's
    params/ folder or model_config.json). None when it is none of these. On a bucket this costs a
    few listings and reads a run's config.json at most: nothing is copied."""
    path = storage.absolute(path).rstrip("/") if storage.is_url(path) else str(
        pathlib.Path(path).absolute())
    parent = storage.dirname(path)
    name = storage.basename(path)
    if storage.isfile(path):
        if name == CONFIG_FILE and is_params_dir(parent):
            return f"{path} is the description file of the emocap_jax export {parent}: give {parent}"
        config = _training_run(parent) if name == "config.json" else None
        if config is not None:
            if is_params_dir(storage.join(parent, "export")):
                return f"{path} is a training run's config: give the run folder {parent}"
            return _run_without_export(parent, config)
        return None
    if name == PARAMS_DIR and is_params_dir(parent):
        return f"{path} is the params/ folder of the emocap_jax export {parent}: give {parent}"
    if name == "checkpoints" or (name.isdigit() and storage.basename(parent) == "checkpoints"):
        run = parent if name == "checkpoints" else storage.dirname(parent)
        what = (f"{path} holds a training run's Orbax checkpoints" if name == "checkpoints"
                else f"{path} is an Orbax training checkpoint (step {name})")
        if is_params_dir(storage.join(run, "export")):
            return (f"{what}, not a model export: give the run folder {run}, whose export/ holds "
                    f"its final parameters")
        config = _training_run(run)
        if config is not None:
            return f"{what}, not a model export. " + _run_without_export(run, config)
        return f"{what}, not a model export: give the training workdir once it has export/"
    config = _training_run(path)
    if config is not None:
        return _run_without_export(path, config)
    return None


def locate(path, source: str = "auto") -> tuple[str, pathlib.Path, Optional[dict]]:
    """Returns (layout, weights file, config dict or None) for a file or a model folder."""
    path = pathlib.Path(path)
    if path.is_dir():
        name = weights_in((p.name for p in path.iterdir() if p.is_file()), source)
        if name is None:
            raise ConversionError(no_weights_message(path, source))
        if name in OPEN_CLIP_WEIGHT_FILES:
            return "open_clip", path / name, _read_json(path / "open_clip_config.json")
        return "hf", path / name, config_beside(path / name, "hf")
    if not path.is_file():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ConversionError(not_weights_message(path))
    layout = {"open_clip": "open_clip", "openai": "open_clip", "hf": "hf"}.get(source, "auto")
    # With source=auto the layout is known only once the tensors are read: `convert` then picks
    # the config that belongs to it.
    return layout, path, None if layout == "auto" else config_beside(path, layout)


def config_beside(weights, layout: str) -> Optional[dict]:
    """The config of a weights file in `layout`, read from beside it: open_clip_config.json for
    open_clip/OpenAI weights, a CLIPModel config.json for Hugging Face ones, else None. Hub folders
    often hold both (open_clip_model.safetensors and model.safetensors), and each file's
    architecture is in its own layout's config only."""
    folder = pathlib.Path(weights).parent
    if layout == "open_clip":
        return _read_json(folder / "open_clip_config.json")
    cfg = _read_json(folder / "config.json")
    return cfg if is_clip_model_config(cfg) else None


def is_clip_model_config(cfg) -> bool:
    """Whether a config.json describes a CLIPModel: model_type "clip", or (hand-written and older
    configs, which transformers also loads as CLIPConfig) no model_type but a tower config. Any
    other model_type is another model's config that happens to share the folder."""
    if not isinstance(cfg, dict):
        return False
    if "model_type" in cfg:
        return cfg["model_type"] == "clip"
    return isinstance(cfg.get("vision_config"), dict) or isinstance(cfg.get("text_config"), dict)


def _read_json(path):
    path = pathlib.Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def _read_json_or_none(path) -> Optional[dict]:
    """A JSON file (local or a URL) parsed, or None when it is absent or unreadable."""
    try:
        return json.loads(storage.read_text(path)) if storage.isfile(path) else None
    except (OSError, ValueError):
        return None


def convert(path, source: str = "auto", activation: Optional[str] = None,
            image_size: Optional[int] = None) -> tuple[dict, CLIPConfig, dict]:
    """Reads a CLIP checkpoint into (params, config, source description)."""
    layout, weights, cfg = locate(path, source)
    state = read_state_dict(weights)
    detected = detect_layout(state)
    if layout not in ("auto", detected):
        raise ConversionError(f"{weights}: --source {source} but the keys are in {detected} layout")
    if layout == "auto" and not pathlib.Path(path).is_dir():
        cfg = config_beside(weights, detected)
    if detected == "open_clip":
        oc_cfg = cfg.get("model_cfg", cfg) if cfg else None
        if source == "openai" and activation is None:
            activation = "quick_gelu"
        config = infer_open_clip_config(state, oc_cfg, activation)
        peer_tokenizer = _open_clip_tokenizer(dict((oc_cfg or {}).get("text_cfg") or {}))
    else:
        config = infer_hf_config(state, cfg, activation)
        peer_tokenizer = None
    params = state_dict_to_params(state, detected, config)
    if detected == "open_clip" and oc_cfg:
        params, config = open_clip_config_sizes(params, config, oc_cfg)
    if image_size is not None:
        params, config = with_image_size(params, config, image_size)
    source_info = {"layout": detected, "weights": str(weights.absolute())}
    if peer_tokenizer:
        log.warning("the checkpoint's text tower was trained with open_clip's tokenizer %s, not "
                    "the CLIP BPE emocap_jax implements: no tokenizer is recorded (tokenize with "
                    "that tokenizer and call encode_text)", peer_tokenizer)
        source_info["peer_tokenizer"] = peer_tokenizer
    return params, config, source_info


def _open_clip_tokenizer(tcfg: dict) -> Optional[str]:
    """The tokenizer an open_clip text_cfg names when it is not the CLIP BPE with open_clip's
    default 'lower' cleaning (what ClipBpeTokenizer implements), else None. open_clip's
    get_tokenizer takes text_cfg.hf_tokenizer_name (a Hugging Face tokenizer) or passes
    text_cfg.tokenizer_kwargs to SimpleTokenizer (clean='canonicalize' or 'whitespace',
    reduction_mask, ... give other ids)."""
    if tcfg.get("hf_tokenizer_name"):
        return f"hf_tokenizer_name={tcfg['hf_tokenizer_name']!r}"
    # open_clip's text_cfg.text_mask (CLIPA; on its main branch between v2.22.0 and v2.23.0, which
    # replaced it by tokenizer_kwargs.reduction_mask): how get_tokenizer shortens a text longer
    # than the context. These three keep other tokens than the plain truncation ("first", or any
    # other value) that ClipBpeTokenizer does.
    if tcfg.get("text_mask") in OPEN_CLIP_TEXT_MASKS:
        return f"text_mask={tcfg['text_mask']!r}"
    kwargs = dict(tcfg.get("tokenizer_kwargs") or {})
    if kwargs.get("clean", "lower") == "lower":
        kwargs.pop("clean", None)
    kwargs.pop("context_length", None)
    return f"tokenizer_kwargs={tcfg['tokenizer_kwargs']!r}" if kwargs else None


def default_tokenizer_config(config: CLIPConfig, source: Optional[dict] = None) -> Optional[dict]:
    """CLIP BPE for models with its 49408-token vocabulary, unless the checkpoint's config names
    another tokenizer (`source["peer_tokenizer"]`, from `convert`); None (unknown) otherwise."""
    if (source or {}).get("peer_tokenizer"):
        return None
    if config.text.vocab_size == 49408:
        return {"type": "clip_bpe", "context_length": config.text.context_length}
    return None


def _export(args) -> int:
    """--to: a run or export folder out to open_clip or Hugging Face (emocap_jax.export)."""
    given = [flag for flag, value in (("--source", args.source != "auto"),
                                      ("--activation", args.activation),
                                      ("--image-size", args.image_size)) if value]
    if given:
        raise UsageError(f"{', '.join(given)}: import options; --to takes only --input (a training "
                         f"workdir or an export folder) and --output")
    written = export_model(args.input, args.to, args.output)
    print(f"exported {args.input} to {args.to} in {args.output}: "
          f"{', '.join(p.name for p in written)}")
    return 0


@entry_point
def main(argv=None):
    parser = ArgumentParser(
        prog="python -m emocap_jax.convert",
        description="Convert open_clip / OpenAI / Hugging Face CLIP weights to an emocap_jax params "
                    "folder (Orbax params + model_config.json), or with --to, export a training "
                    "run or export folder to open_clip or Hugging Face.")
    parser.add_argument("--source", choices=("auto", "open_clip", "openai", "hf"), default="auto",
                        help="checkpoint layout (auto: read off the tensor names)")
    parser.add_argument("--input", required=True,
                        help="weights file (.safetensors, .bin, .pt) or a model folder holding one "
                             "and its config (open_clip_config.json or config.json)")
    parser.add_argument("--output", required=True, help="output folder (must not hold params)")
    parser.add_argument("--activation", choices=("quick_gelu", "gelu"),
                        help="override the activation (needed for weights without their config)")
    parser.add_argument("--image-size", type=int,
                        help="adapt to this input resolution (position embeddings are resized)")
    parser.add_argument("--to", choices=EXPORT_TARGETS,
                        help="export instead: --input is a training workdir or an export folder, "
                             "--output a new folder for open_clip (open_clip_model.safetensors + "
                             "open_clip_config.json) or hf (transformers' CLIPModel files and "
                             "tokenizer), with a model card README.md")
    args = parser.parse_args(argv)
    if args.to:
        return _export(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        params, config, source = convert(args.input, args.source, args.activation, args.image_size)
        out = save_params(args.output, params, config, default_tokenizer_config(config, source),
                          source)
    except (ConversionError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    v, t = config.vision, config.text
    print(f"converted {source['layout']} checkpoint {source['weights']}\n"
          f"  image tower: ViT {v.image_size}px patch {v.patch_size} width {v.width} "
          f"layers {v.layers} heads {v.heads}\n"
          f"  text tower: context {t.context_length} vocab {t.vocab_size} width {t.width} "
          f"layers {t.layers} heads {t.heads}\n"
          f"  embed dim {config.embed_dim}, activation {config.activation}, "
          f"{count_params(params):,} parameters\n"
          f"  written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
