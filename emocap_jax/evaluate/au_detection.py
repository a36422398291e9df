"""Zero-shot action-unit detection (multi-label): for every AU a positive prompt set ("the inner
corners of the eyebrows are raised, showing inner brow raiser (AU1)") and a negative one ("the
inner brows rest level, with no inner brow raiser (AU1)"); an AU is detected when the image is
closer to its positive class embedding than to its negative one. Scored by per-AU F1 and their
mean (the AU-detection convention), plus per-AU balanced accuracy.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from emocap_jax.evaluate import metrics, prompts
from emocap_jax.evaluate.zero_shot import class_embeddings, prompt_embeddings


def au_names(codes: Sequence[int]) -> list[str]:
    return [f"AU{c}" for c in codes]


def au_labels(annotations: Sequence[Mapping[str, float]], codes: Sequence[int],
              threshold: float = 0.0) -> np.ndarray:
    """[N, L] booleans: AU `codes[j]` is present in record i when its annotated intensity is above
    `threshold`. Annotation keys may be spelled "AU1", "AU01" or "1". Intensities are >= 0 with
    0 meaning absent, so a threshold below 0 (or NaN) is refused: it would count those as present."""
    if not threshold >= 0:
        raise ValueError(f"AU threshold must be >= 0 (an intensity of 0 is an absent AU), got "
                         f"{threshold}")
    wanted = {c: j for j, c in enumerate(codes)}
    out = np.zeros((len(annotations), len(codes)), bool)
    for i, aus in enumerate(annotations):
        for name, value in aus.items():
            j = wanted.get(prompts.au_code(name))
            if j is not None and float(value) > threshold:
                out[i, j] = True
    return out


def codes_in(annotations: Sequence[Mapping[str, float]]) -> list[int]:
    """Every AU code that some record annotates, sorted."""
    return sorted({prompts.au_code(name) for aus in annotations for name in aus})


def au_prompt_embeddings(encode_texts, codes: Sequence[int],
                         positive_templates: Sequence[str] = prompts.AU_POSITIVE_TEMPLATES,
                         negative_templates: Sequence[str] = prompts.AU_NEGATIVE_TEMPLATES
                         ) -> tuple[np.ndarray, np.ndarray]:
    """([L, D] positive, [L, D] negative) unit class embeddings of the AUs."""
    positive = prompt_embeddings(encode_texts, [prompts.au_prompts(c, positive_templates, True)
                                                for c in codes])
    negative = prompt_embeddings(encode_texts, [prompts.au_prompts(c, negative_templates, False)
                                                for c in codes])
    return class_embeddings(positive), class_embeddings(negative)


def au_scores(image_feats: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """[N, L] margins cos(image, positive) - cos(image, negative); > 0 means detected."""
    image_feats = np.asarray(image_feats, np.float32)
    image_feats = image_feats / np.maximum(np.linalg.norm(image_feats, axis=-1, keepdims=True),
                                           1e-12)
    return image_feats @ np.asarray(positive).T - image_feats @ np.asarray(negative).T


def au_detection_report(labels: np.ndarray, scores: np.ndarray, codes: Sequence[int]) -> dict:
    report = metrics.multilabel_report(labels, scores > 0, au_names(codes))
    report["aus"] = au_names(codes)
    return report
