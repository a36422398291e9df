"""How far apart a model's text tower keeps local sentences that name different facial regions.
Mined positives pull sentences together; when a brow sentence and a mouth sentence embed alike,
no sentence-to-patch map can differ between them (ABLATIONS.md, "Fine-tuning where action units
come apart").

    python bench/sentence_spread.py --regions runs/ablations_apart/pretrain/data/eval/regions.jsonl \\
        --checkpoint runs/ablations_apart/local_s0 runs/ablations_apart/mining_s0 \\
        [--region brows eyes mouth jaw] [--per-region 60]

The local sentences of --regions (a grounding regions file: each sentence with the region it
describes) are grouped by region; the first --per-region distinct sentences of each (sorted) go
through each checkpoint's text tower. Printed per checkpoint: the cross-region cosine (the mean,
over every pair of different regions, of the mean cosine between their sentences) and the mean
cosine of each region pair (same-region pairs without a sentence against itself).
"""
from __future__ import annotations

import argparse
import collections
import itertools
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # emocap_jax of this checkout

import emocap_jax  # noqa: E402
from bench_args import check_paths, refuse_repeated_options  # noqa: E402  (bench/ is sys.path[0])
from emocap_jax.cli_errors import entry_point  # noqa: E402
from emocap_jax.evaluate.grounding import load_regions  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--regions", required=True, help="a grounding regions file (regions.jsonl)")
    p.add_argument("--checkpoint", nargs="+", required=True,
                   help="run or export folders (emocap_jax.load)")
    p.add_argument("--region", nargs="+", default=["brows", "eyes", "mouth", "jaw"],
                   help="regions whose sentences are compared, at least two "
                        "(default: brows eyes mouth jaw)")
    p.add_argument("--per-region", type=int, default=60,
                   help="the first this many distinct sentences of each region (default: 60)")
    args = p.parse_args(argv)
    refuse_repeated_options(p, argv)
    check_paths(p, args, files=("regions",), folders=("checkpoint",))
    if len(args.region) < 2:
        p.error("--region needs at least two regions to compare")
    if args.per_region < 2:
        p.error(f"--per-region must be at least 2, got {args.per_region}")
    return args


def sentences_by_region(path: str, regions, per_region: int) -> dict[str, list[str]]:
    found = collections.defaultdict(set)
    for entry in load_regions(path).values():
        for region, text in entry["local"]:
            if region in regions:
                found[region].add(text)
    missing = [r for r in regions if len(found[r]) < 2]
    if missing:
        raise SystemExit(f"{path}: fewer than two distinct sentences for region(s) "
                         f"{', '.join(missing)}")
    return {r: sorted(found[r])[:per_region] for r in regions}


def region_cosines(embeddings: dict[str, np.ndarray]) -> dict[tuple[str, str], float]:
    """Mean cosine between the rows of each pair of regions (a region with itself: off-diagonal
    pairs only, so a sentence never counts against itself)."""
    unit = {r: e / np.linalg.norm(e, axis=1, keepdims=True) for r, e in embeddings.items()}
    out = {}
    for a, b in itertools.combinations_with_replacement(list(unit), 2):
        sims = unit[a] @ unit[b].T
        if a == b:
            sims = sims[~np.eye(len(sims), dtype=bool)]
        out[(a, b)] = float(sims.mean())
    return out


def cross_region(cosines: dict[tuple[str, str], float]) -> float:
    return float(np.mean([v for (a, b), v in cosines.items() if a != b]))


def main(argv=None):
    args = parse_args(argv)
    texts = sentences_by_region(args.regions, args.region, args.per_region)
    print("sentences per region: " + ", ".join(f"{r} {len(t)}" for r, t in texts.items()))
    for checkpoint in args.checkpoint:
        model = emocap_jax.load(checkpoint)
        embeddings = {r: np.asarray(model.encode_text(model.tokenize(t))) for r, t in texts.items()}
        cosines = region_cosines(embeddings)
        print(f"{checkpoint}: cross-region cosine {cross_region(cosines):.3f} | " + ", ".join(
            f"{a}/{b} {v:.3f}" for (a, b), v in cosines.items()), flush=True)


if __name__ == "__main__":
    sys.exit(entry_point(main)())
