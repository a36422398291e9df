"""The exported-model folder: parameters as an Orbax checkpoint plus the JSON that says what they are.

    DIR/model_config.json   {"format": "emocap_jax.params", "model": CLIPConfig.to_dict(),
                             "tokenizer": tokenizer config or null, "source": where they came from}
    DIR/params/             Orbax StandardCheckpointer tree of float32 arrays

`emocap_jax.convert` writes it, training exports it, `emocap_jax.load` and the trainer's
`init_from` read it.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from emocap_jax.models.config import CLIPConfig

FORMAT = "emocap_jax.params"
CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


def is_params_dir(path) -> bool:
    path = pathlib.Path(path)
    return (path / CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir()


def find_export(path) -> Optional[pathlib.Path]:
    """An export folder itself, or a training workdir's latest export (WORKDIR/export), or None."""
    path = pathlib.Path(path)
    if is_params_dir(path):
        return path
    exported = path / "export"
    if is_params_dir(exported):
        return exported
    return None


def save_params(path, params, model_config: CLIPConfig, tokenizer: Optional[dict] = None,
                source: Optional[dict] = None) -> pathlib.Path:
    """Writes `params` and their description to the folder `path` (created; must not hold params)."""
    path = pathlib.Path(path).absolute()
    if (path / PARAMS_DIR).exists():
        raise FileExistsError(f"{path / PARAMS_DIR} already exists; choose an empty output folder")
    path.mkdir(parents=True, exist_ok=True)
    params = _to_numpy(params)
    checkpointer = _this_process_checkpointer()
    checkpointer.save(path / PARAMS_DIR, params)
    checkpointer.wait_until_finished()
    description = {"format": FORMAT, "model": model_config.to_dict(), "tokenizer": tokenizer,
                   "source": source or {}}
    tmp = path / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(description, indent=1))
    os.replace(tmp, path / CONFIG_FILE)  # the config appears only once the params are complete
    return path


def read_description(path) -> dict[str, Any]:
    path = pathlib.Path(path)
    description = json.loads((path / CONFIG_FILE).read_text())
    if description.get("format") != FORMAT:
        raise ValueError(f"{path / CONFIG_FILE}: not an emocap_jax params description "
                         f"(format={description.get('format')!r})")
    return description


def load_params(path) -> tuple[dict, CLIPConfig, dict]:
    """Returns (params as NumPy arrays, model config, the full description)."""
    path = pathlib.Path(path).absolute()
    description = read_description(path)
    params = _this_process_checkpointer().restore(path / PARAMS_DIR)
    return params, CLIPConfig.from_dict(description["model"]), description


def _to_numpy(tree):
    return jax.tree_util.tree_map(lambda x: np.asarray(x), tree)


def _this_process_checkpointer() -> ocp.StandardCheckpointer:
    """Orbax for this process alone. An export holds host (NumPy) arrays that one process writes
    (process 0, in a multi-process run) or reads on its own, so no Orbax barrier may wait for the
    other processes, as it does by default."""
    if jax.process_count() == 1:
        return ocp.StandardCheckpointer()
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"export_process_{me}"))
