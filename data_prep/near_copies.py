"""Near-copies among image files: the same photo stored twice after re-encoding, a brightness or
contrast change or a slight re-crop, which byte comparison misses. FER2013's training faces hold
hundreds; a hold-out split that puts the two copies on either side scores the model on faces it
trained on (RESULTS.md).

A face is compared by a SIDE x SIDE grayscale thumbnail, mean-centred and scaled to unit norm, so
that the dot product of two thumbnails is their Pearson correlation (blind to brightness and
contrast). Every pair is compared, blockwise: O(n^2) in the number of images, about 15 s for
FER2013's 28,709 faces on 2 cores, so it is opt-in (`--join-near-copies`).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from data_prep.benchmark_formats import common

SIDE = 16
_CHUNK = 2048


def thumbnail(item) -> np.ndarray | None:
    """The unit-norm centred thumbnail of an image entry; None for other entries, for an image that
    cannot be read (its decoding worker rejects it with the reason) and for a flat one (no
    contrast, so no direction to compare)."""
    if not isinstance(item, common.Entry) or item.kind != common.IMAGE:
        return None
    try:
        with Image.open(item.source) as img:
            x = np.asarray(img.convert("L").resize((SIDE, SIDE), Image.BILINEAR), np.float32)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    x = x.ravel() - x.mean()
    norm = float(np.linalg.norm(x))
    return x / norm if norm > 1e-3 * SIDE else None


def near_copy_pairs(items: list, threshold: float) -> list[tuple[int, int]]:
    """(i, j), i < j, of the items whose thumbnails correlate above `threshold`."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"near-copy threshold must be a correlation in [-1, 1], got {threshold}")
    index, rows = [], []
    for i, item in enumerate(items):
        t = thumbnail(item)
        if t is not None:
            index.append(i)
            rows.append(t)
    if not rows:
        return []
    x, index = np.stack(rows), np.asarray(index)
    pairs = []
    for start in range(0, len(x), _CHUNK):
        a, b = np.nonzero(x[start:start + _CHUNK] @ x.T > threshold)
        a = a + start
        keep = a < b
        pairs.extend(zip(index[a[keep]].tolist(), index[b[keep]].tolist()))
    return pairs
