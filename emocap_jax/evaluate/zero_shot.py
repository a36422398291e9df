"""Zero-shot classification: class prompts through the text tower, faces through the image tower,
the nearest class wins.

Three ways to turn prompts into class scores (`mode`):
  "embedding"   each class's template embeddings are averaged, re-normalised, and compared with
                the image (CLIP's prompt ensembling);
  "logits"      the image is compared with every template of a class and the cosine logits are
                averaged (no re-normalisation: templates that match a class better weigh more);
  "description" one descriptive sentence per class (registry `descriptions`) instead of templates.

The functions here take feature arrays, so they are testable without a model; `runner.py` binds
them to an `features.Encoder` (training's periodic evals, `--mode=eval` and the evaluate CLI all go
through it).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from emocap_jax.evaluate.prompts import EMOTION_TEMPLATES

MODES = ("embedding", "logits", "description")

__all__ = ["EMOTION_TEMPLATES", "MODES", "class_embeddings", "zero_shot_scores",
           "prompt_embeddings", "prompt_texts"]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_embeddings(prompt_emb: np.ndarray) -> np.ndarray:
    """[C, T, D] prompt embeddings -> [C, D] unit class embeddings (mean of the unit prompts)."""
    return _unit(_unit(prompt_emb).mean(axis=1))


def zero_shot_scores(image_feats: np.ndarray, prompt_emb: np.ndarray,
                     mode: str = "embedding") -> np.ndarray:
    """[N, C] cosine scores of N images against C classes given [C, T, D] prompt embeddings
    (T templates per class; T = 1 for descriptions)."""
    if mode not in MODES:
        raise ValueError(f"zero-shot mode {mode!r} is none of {MODES}")
    prompt_emb = np.asarray(prompt_emb, np.float32)
    if prompt_emb.ndim != 3:
        raise ValueError(f"prompt embeddings must be [classes, templates, dim], got "
                         f"{prompt_emb.shape}")
    image_feats = _unit(image_feats)
    if mode == "logits":
        return np.einsum("nd,ctd->nc", image_feats, _unit(prompt_emb)) / prompt_emb.shape[1]
    return image_feats @ class_embeddings(prompt_emb).T


def prompt_texts(words: Sequence[str], templates: Sequence[str],
                 descriptions: Optional[Sequence[str]] = None, mode: str = "embedding"
                 ) -> list[list[str]]:
    """The prompts of each class: every template filled with the class word, or (mode
    "description") the class's one description."""
    if mode == "description":
        if descriptions is None or len(descriptions) != len(words):
            raise ValueError("mode 'description' needs one description per class")
        return [[d] for d in descriptions]
    return [[t.format(w) for t in templates] for w in words]


def prompt_embeddings(encode_texts, prompts: Sequence[Sequence[str]]) -> np.ndarray:
    """[C, T, D] embeddings of C classes with T prompts each (`encode_texts(list) -> [n, D]`)."""
    counts = {len(p) for p in prompts}
    if len(counts) != 1:
        raise ValueError(f"every class needs the same number of prompts, got {sorted(counts)}")
    flat = [text for class_prompts in prompts for text in class_prompts]
    emb = np.asarray(encode_texts(flat), np.float32)
    return emb.reshape(len(prompts), counts.pop(), -1)
