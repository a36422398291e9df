"""The exported-model folder: parameters as an Orbax checkpoint plus the JSON that says what they are.

    DIR/model_config.json   {"format": "emocap_jax.params", "model": CLIPConfig.to_dict(),
                             "tokenizer": tokenizer config or null, "source": where they came from}
    DIR/params/             Orbax StandardCheckpointer tree of float32 arrays
    DIR/tokenizer.model     a sentencepiece tokenizer's model, when the model has one (the
                            tokenizer config names it relative to DIR, so the folder can move)

`emocap_jax.convert` writes it, training exports it, `emocap_jax.load` and the trainer's
`init_from` read it. The folder may be local or on a bucket (`gs://...`, see emocap_jax.storage):
functions given a local path return a pathlib.Path, given a URL the URL string.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

import emocap_jax.storage as storage
from emocap_jax.cli_errors import UsageError
from emocap_jax.models.config import CLIPConfig

FORMAT = "emocap_jax.params"
CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
TOKENIZER_MODEL_FILE = "tokenizer.model"


def _typed(path: str) -> pathlib.Path | str:
    return path if storage.is_url(path) else pathlib.Path(path)


def is_params_dir(path) -> bool:
    return (storage.isfile(storage.join(path, CONFIG_FILE))
            and storage.isdir(storage.join(path, PARAMS_DIR)))


def find_export(path) -> Optional[pathlib.Path | str]:
    """An export folder itself, or a training workdir's latest export (WORKDIR/export), or None."""
    path = storage.fspath(path)
    if is_params_dir(path):
        return _typed(path)
    exported = storage.join(path, "export")
    if is_params_dir(exported):
        return _typed(exported)
    return None


def save_params(path, params, model_config: CLIPConfig, tokenizer: Optional[dict] = None,
                source: Optional[dict] = None) -> pathlib.Path | str:
    """Writes `params` and their description to the folder `path` (created; must not hold params)."""
    path = storage.absolute(path)
    params_dir = storage.join(path, PARAMS_DIR)
    if storage.exists(params_dir):
        raise FileExistsError(f"{params_dir} already exists; choose an empty output folder")
    storage.makedirs(path)
    params = _as_float32(_to_numpy(params))
    checkpointer = _this_process_checkpointer()
    checkpointer.save(storage.orbax_path(params_dir), params)
    checkpointer.wait_until_finished()
    tokenizer = _bundle_tokenizer(path, tokenizer)
    description = {"format": FORMAT, "model": model_config.to_dict(), "tokenizer": tokenizer,
                   "source": source or {}}
    # Written atomically after the params: the config appears only once the params are complete.
    storage.write_text(storage.join(path, CONFIG_FILE), json.dumps(description, indent=1))
    return _typed(path)


def read_description(path) -> dict[str, Any]:
    config_path = storage.join(path, CONFIG_FILE)
    description = json.loads(storage.read_text(config_path))
    if description.get("format") != FORMAT:
        raise ValueError(f"{config_path}: not an emocap_jax params description "
                         f"(format={description.get('format')!r})")
    return description


def _bundle_tokenizer(path, tokenizer: Optional[dict]) -> Optional[dict]:
    """A sentencepiece tokenizer's model file copied into the export and named relative to it:
    the path it was trained from (a run's data folder, on the machine that trained) is not there
    where the export is copied to, and without the file the model cannot tokenize."""
    if not tokenizer or tokenizer.get("type") != "sentencepiece":
        return tokenizer
    storage.write_bytes(storage.join(path, TOKENIZER_MODEL_FILE),
                        storage.read_bytes(tokenizer["model_file"]))
    return dict(tokenizer, model_file=TOKENIZER_MODEL_FILE)


def _local_tokenizer(path, tokenizer: Optional[dict]) -> Optional[dict]:
    """The tokenizer config with a sentencepiece model file named relative to the export `path`
    as a local file (SentencePieceTokenizer reads local files only): the export's own file, or for
    an export on a bucket a copy in the temporary folder, named by its content, which stays for
    the tokenizer's pickled copies in data workers to open. Absolute paths (exports written before
    the file was bundled) are kept."""
    if (not tokenizer or tokenizer.get("type") != "sentencepiece"
            or os.path.isabs(tokenizer["model_file"]) or storage.is_url(tokenizer["model_file"])):
        return tokenizer
    model_file = storage.join(path, tokenizer["model_file"])
    if storage.is_url(model_file):
        data = storage.read_bytes(model_file)
        local = pathlib.Path(tempfile.gettempdir(), "emocap_jax_tokenizers",
                             hashlib.sha256(data).hexdigest(), TOKENIZER_MODEL_FILE)
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            storage.write_bytes(str(local), data)
        model_file = str(local)
    return dict(tokenizer, model_file=model_file)


class IncompleteExportError(UsageError):
    """An export folder whose params/ is empty or lacks part of what Orbax wrote."""


def load_params(path) -> tuple[dict, CLIPConfig, dict]:
    """Returns (params as NumPy arrays, model config, the full description)."""
    path = storage.absolute(path)
    description = read_description(path)
    params_dir = storage.join(path, PARAMS_DIR)
    try:
        params = _this_process_checkpointer().restore(storage.orbax_path(params_dir))
    # Orbax's own errors name its files, not the export: a missing tree metadata file is a
    # FileNotFoundError, missing or cut array data TensorStore's NOT_FOUND / FAILED_PRECONDITION,
    # raised as ValueError.
    except (FileNotFoundError, ValueError) as e:
        raise IncompleteExportError(_incomplete(path, params_dir, e)) from e
    # Parameters are float32 everywhere (CLIPConfig.dtype is the compute dtype only); an export
    # written with 16-bit arrays (by an older version, or by hand) would otherwise start a
    # fine-tuning run (init_from) with bfloat16 weights and optimizer moments.
    description = dict(description, tokenizer=_local_tokenizer(path, description.get("tokenizer")))
    return _as_float32(params), CLIPConfig.from_dict(description["model"]), description


def _incomplete(path: str, params_dir: str, error: Exception) -> str:
    contents = storage.listdir(params_dir) if storage.isdir(params_dir) else []
    what = (f"its {PARAMS_DIR}/ folder is empty" if not contents else
            f"its {PARAMS_DIR}/ folder is incomplete ({' '.join(str(error).split())[:300]})")
    return (f"the emocap_jax export {path} cannot be read: {what}. The folder was copied only in "
            f"part, or written by an export that was interrupted: copy it again whole, or write "
            f"it again (a training run writes export/ when its training command runs to the end; "
            f"`python -m emocap_jax.convert` writes a converted checkpoint's)")


def _to_numpy(tree):
    return jax.tree_util.tree_map(lambda x: np.asarray(x), tree)


def _as_float32(tree):
    """Floating leaves (bfloat16 and float16 included) as float32 NumPy arrays."""
    def cast(x):
        x = np.asarray(x)
        return x.astype(np.float32) if jax.numpy.issubdtype(x.dtype, jax.numpy.floating) else x
    return jax.tree_util.tree_map(cast, tree)


def _this_process_checkpointer() -> ocp.StandardCheckpointer:
    """Orbax for this process alone. An export holds host (NumPy) arrays that one process writes
    (process 0, in a multi-process run) or reads on its own, so no Orbax barrier may wait for the
    other processes, as it does by default."""
    if jax.process_count() == 1:
        return ocp.StandardCheckpointer()
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"export_process_{me}"))
