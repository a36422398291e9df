"""Image <-> caption retrieval on a held-out caption split: every image's caption is the positive
of that image (and vice versa); recall@k in both directions.

Two faces can carry the same caption word for word (the synthetic corpus's summaries repeat within
a class). Their caption embeddings are then identical and score the same against any image, so
either is a right answer: every caption identical to a face's own counts as a match, both ways.
Counting only the face's own copy would rank the twin by index and charge a perfect model a miss.

A caption is long and split into sentences (global, local, summary), each within the text tower's
context, so a whole caption is embedded as the re-normalised mean of its sentence embeddings
(`field="full"`), the way the model was trained to read it; one part alone can be chosen instead.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from emocap_jax.evaluate import metrics

FIELDS = ("full", "global", "summary", "local")
DEFAULT_KS = (1, 5, 10)


def caption_sentences(record, field: str = "full") -> list[str]:
    """The sentences of one record's caption that make up its text side (may be empty)."""
    if field not in FIELDS:
        raise ValueError(f"caption field {field!r} is none of {FIELDS}")
    parts = {
        "global": [record.global_caption],
        "summary": [record.summary],
        "local": list(record.local_captions),
    }
    sentences = parts[field] if field != "full" else (
        parts["global"] + parts["local"] + parts["summary"])
    return [s for s in sentences if s.strip()]


def caption_embeddings(encode_texts, sentences: Sequence[Sequence[str]]) -> np.ndarray:
    """[N, D]: the normalised mean of each caption's unit sentence embeddings."""
    if any(len(s) == 0 for s in sentences):
        raise ValueError("every caption needs at least one sentence")
    flat = [t for caption in sentences for t in caption]
    emb = np.asarray(encode_texts(flat), np.float32)
    owner = np.repeat(np.arange(len(sentences)), [len(s) for s in sentences])
    sums = np.zeros((len(sentences), emb.shape[1]), np.float32)
    np.add.at(sums, owner, emb)
    return sums / np.maximum(np.linalg.norm(sums, axis=-1, keepdims=True), 1e-12)


def retrieval_metrics(image_feats: np.ndarray, text_feats: np.ndarray,
                      ks: Sequence[int] = DEFAULT_KS,
                      captions: Sequence[Sequence[str]] | None = None) -> dict:
    """Recall@k image->text and text->image for paired rows (row i of each is one face); the
    headline `mean_recall` averages all of them. `captions` (row i's sentences) makes rows with
    identical captions match each other; without it only row i matches row i."""
    image_feats = np.asarray(image_feats, np.float32)
    text_feats = np.asarray(text_feats, np.float32)
    if image_feats.shape != text_feats.shape:
        raise ValueError(f"image {image_feats.shape} and caption {text_feats.shape} features must "
                         "be paired row by row")
    scores = image_feats @ text_feats.T
    if captions is None:
        codes = np.arange(len(image_feats))
    else:
        if len(captions) != len(image_feats):
            raise ValueError(f"{len(captions)} captions for {len(image_feats)} paired rows")
        ids: dict = {}
        codes = np.asarray([ids.setdefault(tuple(c), len(ids)) for c in captions])
    positives = codes[:, None] == codes[None, :]   # symmetric: serves both directions
    i2t = metrics.recall_at_k(scores, positives, ks)
    t2i = metrics.recall_at_k(scores.T, positives, ks)
    return {"image_to_text": i2t, "text_to_image": t2i,
            "mean_recall": float(np.mean(list(i2t.values()) + list(t2i.values()))),
            "num_examples": int(len(image_feats)),
            "num_distinct_captions": int(len(np.unique(codes)))}
