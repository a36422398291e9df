"""How alike a model's text tower makes the captions of faces with the same label, against those
of other labels: what caption-guided mining has to remove when the same-label captions are told
apart (ABLATIONS.md, "Captions that tell faces of one emotion apart").

    python bench/caption_spread.py --manifest runs/app/finetune_corpus/synthetic/manifest.jsonl \\
        --baseline runs/app/pretrain/synthetic/manifest.jsonl \\
        --checkpoint runs/app/pretrain/export runs/app/summary_s0 [--field global] [--records 400]

The first --records records of --manifest (and, with --baseline, the records of the same ids
there: the same faces with other captions) go through each checkpoint's text tower. Printed per
checkpoint and manifest: the mean cosine between the --field sentences of different records with
the same label and with different labels; with --baseline also the mean cosine between one
record's sentence in the two manifests.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # emocap_jax of this checkout

import emocap_jax  # noqa: E402
from bench_args import check_paths, refuse_repeated_options  # noqa: E402  (bench/ is sys.path[0])
from emocap_jax.cli_errors import entry_point  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="a caption manifest (manifest.jsonl)")
    p.add_argument("--baseline", help="a manifest holding the same ids with other captions")
    p.add_argument("--checkpoint", nargs="+", required=True,
                   help="run or export folders (emocap_jax.load)")
    p.add_argument("--field", default="global", choices=["global", "summary"],
                   help="which sentence of each record is compared (default: global)")
    p.add_argument("--records", type=int, default=400,
                   help="the first this many records of --manifest are used (default: 400)")
    args = p.parse_args(argv)
    refuse_repeated_options(p, argv)
    check_paths(p, args, files=("manifest", "baseline"), folders=("checkpoint",))
    if args.records < 2:
        p.error(f"--records must be at least 2, got {args.records}")
    return args


def read_records(path: str, limit: int | None = None, ids: list[str] | None = None) -> list[dict]:
    """The first `limit` records of a manifest, or those with `ids` in that order."""
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    if ids is None:
        return records[:limit]
    by_id = {r["id"]: r for r in records}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise SystemExit(f"{path}: no record with id {missing[0]!r} ({len(missing)} missing)")
    return [by_id[i] for i in ids]


def label_cosines(embeddings: np.ndarray, labels) -> tuple[float, float]:
    """(mean cosine over pairs of different rows with the same label, over pairs with different
    labels)."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    sims = unit @ unit.T
    labels = np.asarray(labels)
    same = (labels[:, None] == labels[None]) & ~np.eye(len(labels), dtype=bool)
    other = labels[:, None] != labels[None]
    if not same.any() or not other.any():
        raise ValueError("need at least two records of one label and two labels")
    return float(sims[same].mean()), float(sims[other].mean())


def paired_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine between row i of `a` and row i of `b`."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.mean(np.sum(a * b, axis=1)))


def main(argv=None):
    args = parse_args(argv)
    records = read_records(args.manifest, args.records)
    sets = {"manifest": records}
    if args.baseline:
        sets["baseline"] = read_records(args.baseline, ids=[r["id"] for r in records])
    labels = [r["label"] for r in records]
    for checkpoint in args.checkpoint:
        model = emocap_jax.load(checkpoint)
        emb = {name: np.asarray(model.encode_text(model.tokenize([r[args.field] for r in rs])))
               for name, rs in sets.items()}
        parts = []
        for name, e in emb.items():
            same, other = label_cosines(e, labels)
            parts.append(f"{name}: same label {same:.3f}, other labels {other:.3f}")
        if args.baseline:
            across = paired_cosine(emb["manifest"], emb["baseline"])
            parts.append(f"same record across manifests {across:.3f}")
        print(f"{checkpoint} ({len(records)} records, {args.field}): " + " | ".join(parts),
              flush=True)


if __name__ == "__main__":
    sys.exit(entry_point(main)())
