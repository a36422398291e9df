"""What every export target shares: reading the model to export, the checks of what a target can
express, and writing weights in a torch layout."""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Optional

import numpy as np
from safetensors.numpy import save_file

import emocap_jax.storage as storage
from emocap_jax.cli_errors import UsageError
from emocap_jax.models.config import CLIPConfig
from emocap_jax.params_io import CONFIG_FILE, PARAMS_DIR, find_export, load_params
from emocap_jax.weight_layouts import INVERSE_TRANSFORMS, tensor_rules

TARGETS = ("open_clip", "hf")
TARGET_NAMES = {"open_clip": "open_clip", "hf": "Hugging Face transformers"}
# Every peer CLIP (and OpenAI's) uses this LayerNorm epsilon; open_clip cannot set another.
CLIP_LAYER_NORM_EPS = 1e-5
CLIP_BPE_VOCAB_SIZE = 49408


class ExportError(UsageError):
    """The input cannot be exported as asked (not a model, or an architecture the target cannot
    express); the message says why and what to do."""


@dataclasses.dataclass
class ExportSource:
    """A model to export: parameters, architecture, tokenizer and where they came from."""
    params: dict
    config: CLIPConfig
    tokenizer: Optional[dict]
    description: dict
    export_dir: pathlib.Path
    run_dir: Optional[pathlib.Path]  # the training workdir, when the export is a run's


def read_source(path) -> ExportSource:
    """A training workdir (its export/) or an emocap_jax export folder."""
    if storage.is_url(path):
        raise ExportError(f"--input {storage.fspath(path)}: the export to open_clip and Hugging Face "
                          f"reads a local folder; copy the run's export/ down first (e.g. "
                          f"`gcloud storage cp -r URL/export DIR`)")
    path = pathlib.Path(path)
    if not path.exists():
        raise ExportError(f"--input {path}: no such file or directory")
    export = find_export(path)
    if export is None:
        raise ExportError(
            f"--input {path}: neither an emocap_jax export folder ({CONFIG_FILE} + {PARAMS_DIR}/) "
            f"nor a training workdir holding export/ (a run writes it when training ends); peer "
            f"weights are imported first with `python -m emocap_jax.convert --source ...`")
    params, config, description = load_params(export)
    parent = export.parent
    run_dir = parent if export.name == "export" and (parent / "config.json").is_file() else None
    return ExportSource(params=params, config=config, tokenizer=description.get("tokenizer"),
                        description=description, export_dir=export, run_dir=run_dir)


def expressibility_problems(config: CLIPConfig, tokenizer: Optional[dict], target: str,
                            peer_tokenizer: Optional[str] = None) -> list[str]:
    """What of this model `target` cannot express (empty when it can export exactly).
    `peer_tokenizer`: the non-CLIP tokenizer an imported open_clip checkpoint's config named
    (its description's source["peer_tokenizer"], recorded by `emocap_jax.convert`)."""
    name = TARGET_NAMES[target]
    v, t = config.vision, config.text
    problems = []
    if v.stem != "patch":
        problems.append(
            f"model.vision.stem={v.stem!r}: the CLIP ViT of {name} embeds patches with one "
            f"linear projection (stem='patch'); a convolutional stem has no place in it")
    if v.local_head != "none":
        problems.append(
            f"model.vision.local_head={v.local_head!r}: the local loss's patch head is not part of "
            f"the CLIP of {name} (its patch tokens come from the last layer)")
    if v.pool != "token" and not (target == "open_clip" and v.pool == "gap"):
        problems.append(
            f"model.vision.pool={v.pool!r} (the mean of the patch tokens): the CLIP vision model of "
            f"{name} pools the class token; export to open_clip instead (its pool_type 'avg')")
    if target == "open_clip" and config.layer_norm_eps != CLIP_LAYER_NORM_EPS:
        problems.append(f"model.layer_norm_eps={config.layer_norm_eps}: open_clip's CLIP uses "
                        f"{CLIP_LAYER_NORM_EPS} and cannot be configured otherwise")
    if target == "hf" and t.eot_token_id == 2:
        problems.append("model.text.eot_token_id=2: transformers reads a CLIP eos_token_id of 2 as "
                        "'pool at the largest id', not at the first id 2")
    if target == "open_clip":
        for tower, width, mlp in (("vision", v.width, v.mlp_dim), ("text", t.width, t.mlp_dim)):
            if int(width * (mlp / width)) != mlp:
                problems.append(f"model.{tower}.mlp_dim={mlp}: open_clip derives it as "
                                f"int(width * mlp_ratio) and cannot give {mlp} for width {width}")
    kind = (tokenizer or {}).get("type")
    if peer_tokenizer:
        # The import kept only this description of it, so the export cannot write it back, and a
        # folder that names no tokenizer is read with CLIP BPE ids without a word (open_clip's
        # get_tokenizer without hf_tokenizer_name / tokenizer_kwargs in text_cfg; emocap_jax.load
        # of the exported folder for a 49408-token vocabulary).
        problems.append(
            f"the text tower was trained with open_clip's tokenizer {peer_tokenizer} (the "
            f"imported checkpoint's config), which the export cannot carry: the written folder "
            f"would be tokenized with CLIP BPE (open_clip's default; emocap_jax.load's for a "
            f"49408-token vocabulary), giving the text tower other ids")
    if kind == "sentencepiece":
        problems.append(
            f"the tokenizer is sentencepiece ({tokenizer.get('model_file')}): {name} loads CLIP "
            f"BPE tokenizers with this kind of model (open_clip's SimpleTokenizer, transformers' "
            f"CLIPTokenizer), so the text tower would be given other ids")
    elif kind not in (None, "clip_bpe"):
        problems.append(f"tokenizer type {kind!r} is unknown to {name}")
    elif kind == "clip_bpe" and tokenizer.get("vocab_path") and target == "open_clip":
        problems.append(f"the tokenizer uses its own CLIP BPE vocabulary "
                        f"({tokenizer['vocab_path']}); open_clip's local-dir loader always uses "
                        f"its bundled one (export to hf, which carries the vocabulary)")
    return problems


def check_expressible(config: CLIPConfig, tokenizer: Optional[dict], target: str,
                      peer_tokenizer: Optional[str] = None) -> None:
    problems = expressibility_problems(config, tokenizer, target, peer_tokenizer)
    if problems:
        raise ExportError(f"cannot export to {TARGET_NAMES[target]}: " + "; ".join(problems))


def _get(tree, path: str):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def _leaf_paths(tree, prefix: str = ""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaf_paths(value, f"{prefix}{key}/")
    else:
        yield prefix[:-1]


def params_to_state_dict(params: dict, layout: str, config: CLIPConfig) -> dict[str, np.ndarray]:
    """The Flax parameters as a torch state dict in `layout` ("open_clip" or "hf"): the import
    rules of `emocap_jax.weight_layouts` walked backwards, every parameter used exactly once."""
    state: dict[str, np.ndarray] = {}
    used = set()
    for path, key_groups, transform, stacked in tensor_rules(layout, config):
        value = np.asarray(_get(params, path), dtype=np.float32)
        items = list(value) if stacked else [value]
        if len(items) != len(key_groups):
            raise ValueError(f"parameter {path}: {len(items)} layers, the config says "
                             f"{len(key_groups)}")
        for keys, item in zip(key_groups, items):
            for key, tensor in zip(keys, INVERSE_TRANSFORMS[transform](item)):
                # np.array, not ascontiguousarray: that turns logit_scale's () into (1,).
                state[key] = np.array(tensor, dtype=np.float32, order="C")
        used.add(path)
    leftover = sorted(set(_leaf_paths(params)) - used)
    if leftover:
        raise ExportError(f"parameters {leftover[:5]} have no place in a {layout} CLIP")
    return state


def write_safetensors(state: dict[str, Any], path: pathlib.Path) -> None:
    # "format": "pt" is what torch's safetensors writers record; transformers checks it.
    save_file(state, str(path), metadata={"format": "pt"})
