"""How many validation faces have a copy on the training side of a split: byte-identical stored
images, and near-copies (the same photo re-encoded, brightened or slightly re-cropped), found by
the correlation of small grayscale thumbnails.

    python bench/split_overlap.py --train runs/real_faces/data/fer/train \\
        --val runs/real_faces/data/fer/val [--side 16] [--thresholds 0.99 0.95 0.93 0.9]

Each face becomes a --side x --side grayscale thumbnail, mean-centred and scaled to unit norm;
a validation face's score is its largest dot product (Pearson correlation) with any training
face. Printed: how many validation faces have an identical stored image in train, and how many
score above each threshold (flat faces, whose thumbnail has no contrast, are left out of those).
On FER2013's training faces, by eye, pairs above 0.93 were the same photo, and some around 0.90
were still. RESULTS.md quotes what it found.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import pathlib
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # emocap_jax of this checkout

from bench_args import check_paths, refuse_repeated_options  # noqa: E402  (bench/ is sys.path[0])
from emocap_jax.cli_errors import entry_point, float_in, int_in  # noqa: E402

# A thumbnail of one pixel is flat once centred (every face left out); a correlation is in [-1, 1],
# and none lies above 1.
MIN_SIDE = 2
THRESHOLD = float_in(-1, 1, high_open=True)


class EmptyDataset(ValueError):
    """A converted dataset without records."""


def thumbnails(data_dir: str, side: int) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(unit-norm centred thumbnails, their norm before scaling, sha256 of each stored image,
    record ids) of every record of a converted dataset, in record order."""
    from emocap_jax.data.example_codec import decode_record
    from emocap_jax.data.shard_writer import shard_paths
    from emocap_jax.data.source import ShardedTFRecordSource

    source = ShardedTFRecordSource(shard_paths(data_dir))
    if len(source) == 0:
        raise EmptyDataset(f"{data_dir} holds no records: there is nothing to compare")
    x, digests, ids = [], [], []
    for i in range(len(source)):
        rec = decode_record(source[i])
        digests.append(hashlib.sha256(rec.images[0]).hexdigest())
        ids.append(rec.id)
        img = Image.open(io.BytesIO(rec.images[0])).convert("L")
        x.append(np.asarray(img.resize((side, side), Image.BILINEAR), np.float32).ravel())
    return (*unit_rows(np.stack(x)), digests, ids)


def unit_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1)
    return x / np.maximum(norm, 1e-6)[:, None], norm


def nearest(val: np.ndarray, train: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Each val row's largest dot product with a train row, and that row's index."""
    best = np.full(len(val), -np.inf, np.float32)
    where = np.zeros(len(val), np.int64)
    for start in range(0, len(train), chunk):
        sims = val @ train[start:start + chunk].T
        j = sims.argmax(1)
        s = sims[np.arange(len(val)), j]
        better = s > best
        best[better], where[better] = s[better], j[better] + start
    return best, where


def overlap(train_dir: str, val_dir: str, side: int, thresholds) -> dict:
    xt, _, dt, _ = thumbnails(train_dir, side)
    xv, nv, dv, _ = thumbnails(val_dir, side)
    identical = int(np.isin(dv, dt).sum())
    best, _ = nearest(xv, xt)
    # A flat thumbnail (a blank frame) has no direction: its correlation means nothing.
    textured = nv > 1e-3 * np.sqrt(side * side)
    return {"val": len(dv), "train": len(dt), "identical": identical, "flat": int((~textured).sum()),
            "above": {t: int(((best > t) & textured).sum()) for t in thresholds}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="converted training dataset")
    p.add_argument("--val", required=True, help="converted validation dataset")
    p.add_argument("--side", type=int_in(MIN_SIDE), default=16,
                   help=f"thumbnail side in pixels, at least {MIN_SIDE} (default 16)")
    p.add_argument("--thresholds", type=THRESHOLD, nargs="+", default=[0.99, 0.95, 0.93, 0.9],
                   help="correlations in [-1, 1) to count validation faces above "
                        "(default 0.99 0.95 0.93 0.9)")
    args = p.parse_args(argv)
    refuse_repeated_options(p, argv)
    check_paths(p, args, datasets=("train", "val"))
    try:
        r = overlap(args.train, args.val, args.side, args.thresholds)
    except EmptyDataset as e:
        sys.exit(f"split_overlap: {e}")
    print(f"{r['val']} validation / {r['train']} training faces; {r['identical']} validation "
          f"faces have an identical stored image in train; {r['flat']} flat faces left out")
    for t, n in r["above"].items():
        print(f"  nearest training thumbnail correlation > {t}: {n} ({100 * n / r['val']:.1f}%)")


if __name__ == "__main__":
    sys.exit(entry_point(main)())
