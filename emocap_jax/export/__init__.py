"""Export a trained model to the peers: open_clip and Hugging Face transformers.

    python -m emocap_jax.convert --to open_clip --input RUN_OR_EXPORT --output DIR
    python -m emocap_jax.convert --to hf --input RUN_OR_EXPORT --output DIR

The input is a training workdir (its export/) or an emocap_jax export folder. The weights are
written in the target's own key layout by walking the import rules (`emocap_jax.weight_layouts`)
backwards, so importing the written folder with `emocap_jax.load` gives back the same parameters
and outputs.

    common.py        reading the input, what each target can express, weights in a torch layout
    to_open_clip.py  open_clip_model.safetensors + open_clip_config.json
    to_hf.py         config.json, model.safetensors, preprocessor_config.json, tokenizer files
    model_card.py    README.md: architecture, use, training data, evaluation, vocabulary licence

An architecture the target cannot express (a convolutional stem, a sentencepiece tokenizer, an
imported checkpoint's non-CLIP open_clip tokenizer, patch-mean pooling for transformers, ...) is
refused with an `ExportError` naming it, before anything is written.
"""
from __future__ import annotations

import pathlib
import shutil

from emocap_jax.export import model_card, to_hf, to_open_clip
from emocap_jax.export.common import (TARGETS, ExportError, ExportSource, check_expressible,
                                      expressibility_problems, params_to_state_dict, read_source)

__all__ = ["TARGETS", "ExportError", "ExportSource", "check_expressible", "export_model",
           "expressibility_problems", "params_to_state_dict", "read_source"]

_WRITERS = {"open_clip": to_open_clip.write, "hf": to_hf.write}
CARD_FILE = "README.md"


def export_model(input_path, target: str, output) -> list[pathlib.Path]:
    """Writes the model at `input_path` in `target`'s format ("open_clip" or "hf") into the new
    or empty folder `output`; returns the files written."""
    if target not in TARGETS:
        raise ExportError(f"--to {target!r}: expected one of {', '.join(TARGETS)}")
    output = pathlib.Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ExportError(f"--output {output} exists and is not an empty folder; choose a new one")
    source = read_source(input_path)
    check_expressible(source.config, source.tokenizer, target,
                      (source.description.get("source") or {}).get("peer_tokenizer"))
    # Written into a sibling folder and renamed: a failed export leaves no half-written model.
    tmp = output.with_name(output.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        names = [p.name for p in _WRITERS[target](source, tmp)]
        (tmp / CARD_FILE).write_text(model_card.model_card(source, target, output.absolute()),
                                     encoding="utf-8")
        names.append(CARD_FILE)
        if output.exists():
            output.rmdir()
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [output / name for name in names]
