"""How well caption-guided mining finds same-class pairs on a trained model: the precision and
recall, against the records' labels, of the positives that text-guided mining (emocap_jax/mining.py,
`config.loss.mining`) would mine in training batches.

    python bench/mining_guides.py --checkpoint runs/ablations/pretrain/export \\
        --data runs/ablations/pretrain/data/train [--guide summary] [--threshold 0.9 0.98] \\
        [--top-k 8] [--no-mutual] [--records 2048] [--batch 64] [--batches 50] [--seed 0] \\
        [--suggest 0.99] [--transitivity]

--records labelled records drawn at random from --data are encoded once (their --guide sentence
through the model's text tower, as the training step does; a face with a label and no captions
gets the captions training makes from its label, `emocap_jax/data/label_captions.py`); --batches
random batches of --batch of them go through the loss's own rule (`mining.mined_positive_targets`
with mode "text", each --threshold, --top-k, --relative-threshold, --min-spread and --mutual,
whose default is training's). A mined pair is right when both records carry the same label.
Printed per rule: mined positives per row, precision (the fraction of mined pairs with the same
label) and recall (the fraction of same-label pairs mined); then the mean guide cosine of
same-label and of other-label pairs, and the label pairs the first rule most often mines together
(the false positives).

--suggest P also scans SUGGEST_GRID and prints the lowest threshold whose precision reaches P,
as a `--config.loss.mining.threshold` for training from this checkpoint. Mined pairs are pulled
together, so a guide that starts imprecise stays so (ABLATIONS.md, "A precise guide"); the
threshold is a cosine under this checkpoint's text tower and does not carry over to another.

--transitivity also prints, for each threshold of --threshold and SUGGEST_GRID, over every pair of
the --records (no batches, no cap): pairs per record above the threshold, their precision, and
their transitivity (of the paths i-j-k with both pairs above it, the fraction whose i-k is above it
too), a label-free measure; it does not find the precise threshold (ABLATIONS.md, "Next steps").
"""
from __future__ import annotations

import argparse
import collections
import math
import pathlib
import sys

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # emocap_jax of this checkout

import emocap_jax  # noqa: E402
from emocap_jax import mining  # noqa: E402
from bench_args import check_paths, refuse_repeated_options  # noqa: E402  (bench/ is sys.path[0])
from emocap_jax.cli_errors import entry_point, float_in, non_negative_int, positive_int  # noqa: E402
from emocap_jax.data import label_captions  # noqa: E402
from emocap_jax.data.example_codec import decode_record  # noqa: E402
from emocap_jax.data.shard_writer import shard_paths  # noqa: E402
from emocap_jax.data.source import ShardedTFRecordSource  # noqa: E402
from configs import default as default_config  # noqa: E402

GUIDE_FIELDS = {"summary": "summary", "global": "global_caption"}
# Thresholds --suggest tries: coarse where sentence cosines rarely separate labels, fine near 1,
# where a tower that has learned its captions puts the same-label ones.
SUGGEST_GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.985, 0.99, 0.993,
                0.995, 0.997, 0.998, 0.999)
# Ranges of the rule's numbers (mining.MiningConfig), checked at parse time: MiningConfig refuses
# some only once the model is loaded and the guides encoded, and the rest give a rule that mines
# nothing. A guide cosine lies in [-1, 1] (-1: no floor); a z-score is any finite number; the std
# of cosines is at most 1, so a larger --min-spread shuts every row out.
COSINE = float_in(-1, 1)
Z_SCORE = float_in(-math.inf, math.inf, low_open=True, high_open=True)
SPREAD = float_in(0, 1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="an export folder (emocap_jax.load)")
    p.add_argument("--data", required=True, help="a converted dataset folder (TFRecord shards)")
    p.add_argument("--guide", choices=sorted(GUIDE_FIELDS), default="summary",
                   help="the sentence whose embeddings judge similarity (config.loss.mining.guide; "
                        "default: summary)")
    p.add_argument("--threshold", type=COSINE, nargs="+", default=[0.9],
                   help="cosine floors in [-1, 1] to try, one rule each "
                        "(config.loss.mining.threshold; default: 0.9)")
    p.add_argument("--top-k", type=non_negative_int, default=8,
                   help="at most this many mined positives per row, 0: no cap "
                        "(config.loss.mining.top_k; default: 8)")
    p.add_argument("--relative-threshold", type=Z_SCORE, default=None,
                   help="z: a pair must reach its row's mean + z * std of guide similarity "
                        "(config.loss.mining.relative_threshold; default: off)")
    p.add_argument("--min-spread", type=SPREAD, default=0.01,
                   help="rows whose guide similarities have a smaller std mine nothing, in [0, 1] "
                        "(config.loss.mining.min_spread; default: 0.01)")
    # The default follows training's, so that a threshold --suggest finds is one for the rule a
    # run with the default config mines with.
    p.add_argument("--mutual", action=argparse.BooleanOptionalAction,
                   default=default_config.get_config().loss.mining.mutual,
                   help="the mutual cap (config.loss.mining.mutual): a pair within both rows' "
                        "top-k; default as configs/default.py (%(default)s); --no-mutual: the "
                        "one-sided cap ABLATIONS.md's guide figures were measured with")
    p.add_argument("--records", type=positive_int, default=2048,
                   help="labelled records drawn from --data and encoded once (default: 2048)")
    p.add_argument("--batch", type=int, default=64, help="records per mining batch (default: 64)")
    p.add_argument("--batches", type=positive_int, default=50,
                   help="random batches the rules are measured on (default: 50)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the record draw and the batches (default: 0)")
    p.add_argument("--suggest", type=float, default=None, metavar="P",
                   help="also print the lowest threshold (of --threshold and SUGGEST_GRID) whose "
                        "precision reaches P, e.g. 0.99")
    p.add_argument("--transitivity", action="store_true",
                   help="also print the transitivity of the pairs above each threshold (all pairs)")
    args = p.parse_args(argv)
    refuse_repeated_options(p, argv)
    if args.batch < 2:
        p.error(f"--batch must be at least 2, got {args.batch}")
    if args.mutual and args.top_k == 0:
        # mining.MiningConfig refuses it too, but only after the model has encoded the guides.
        p.error("--top-k 0 (no cap) with --mutual: the mutual cap means within each other's "
                "top k; give --top-k > 0, or --no-mutual")
    if args.suggest is not None and not 0.0 < args.suggest <= 1.0:
        p.error(f"--suggest must be in (0, 1], got {args.suggest}")
    check_paths(p, args, datasets=("data",), folders=("checkpoint",))
    return args


def read_guides(data: str, field: str, records: int, seed: int
                ) -> tuple[list[str], np.ndarray, int]:
    """(guide sentences, labels, records skipped for want of a label or sentence) of up to
    `records` records drawn at random."""
    source = ShardedTFRecordSource(shard_paths(data))
    order = np.random.default_rng(seed).permutation(len(source))
    template_rng = np.random.default_rng(seed + 1)
    texts, labels, skipped = [], [], 0
    for index in order:
        if len(texts) == records:
            break
        record = decode_record(source[int(index)])
        text = getattr(record, field)
        if record.label.strip() and not record.global_caption.strip():
            # A face that carries only its label: the captions training makes from it
            # (data.captions_from_labels), the global sentence with a template drawn at random.
            text = (label_captions.summary_caption(record.label) if field == "summary" else
                    label_captions.global_caption(record.label, int(template_rng.integers(1 << 30))))
        if not record.label or not text.strip():
            skipped += 1
            continue
        texts.append(text)
        labels.append(record.label)
    return texts, np.array(labels, dtype=object), skipped


def mined_pairs(config: mining.MiningConfig, guides: np.ndarray) -> np.ndarray:
    """Bool [B, B]: the pairs the loss's rule mines in a batch with these unit guide rows."""
    rows = jnp.asarray(guides)
    targets = np.asarray(mining.mined_positive_targets(config, text_rows=rows, text_cols=rows))
    return (targets > 0) & ~np.eye(len(guides), dtype=bool)


def measure(config: mining.MiningConfig, guides: np.ndarray, labels: np.ndarray, batch: int,
            batches: int, seed: int) -> dict:
    """Mined positives per row, precision and recall over random batches; and the label pairs
    of the wrong ones."""
    rng = np.random.default_rng(seed)
    right = wrong = same_pairs = 0
    confused = collections.Counter()
    for _ in range(batches):
        pick = rng.choice(len(labels), batch, replace=False)
        mined = mined_pairs(config, guides[pick])
        same = labels[pick][:, None] == labels[pick][None, :]
        np.fill_diagonal(same, False)
        right += int(np.sum(mined & same))
        wrong += int(np.sum(mined & ~same))
        same_pairs += int(np.sum(same))
        for i, j in zip(*np.nonzero(mined & ~same)):
            confused[tuple(sorted((labels[pick][i], labels[pick][j])))] += 1
    return {"per_row": (right + wrong) / (batches * batch),
            "precision": right / max(right + wrong, 1), "recall": right / max(same_pairs, 1),
            "confused": confused}


def suggest_threshold(results: dict[float, dict], precision: float) -> float | None:
    """The lowest threshold whose result mines something with at least `precision` (None: no
    such threshold). Precision need not rise with the threshold (the per-row cap picks other
    pairs), so every threshold is checked, not only the first to pass."""
    passing = [t for t, r in results.items() if r["per_row"] > 0 and r["precision"] >= precision]
    return min(passing) if passing else None


def transitivity(guides: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Over every pair of these unit guide rows (no cap): the pairs per row at or above
    `threshold`, the fraction of them with the same label, and the fraction of paths i-j-k (i != k)
    along two such pairs whose pair i-k is one too (1 when the pairs split into cliques, as a
    precise guide's do; a whole class merged with another is a clique as well)."""
    off = ~np.eye(len(labels), dtype=bool)
    above = ((guides @ guides.T >= threshold) & off).astype(np.float64)
    same = (labels[:, None] == labels[None, :]) & off
    paths = above @ above
    np.fill_diagonal(paths, 0.0)
    pairs = above.sum()
    return {"per_row": pairs / len(labels),
            "precision": float((above * same).sum() / pairs) if pairs else float("nan"),
            "transitivity": float((paths * above).sum() / paths.sum()) if paths.sum() else
            float("nan")}


def _config(args, threshold: float) -> mining.MiningConfig:
    return mining.MiningConfig(mode="text", threshold=threshold, top_k=args.top_k,
                               relative_threshold=args.relative_threshold,
                               min_spread=args.min_spread, mutual=args.mutual)


def main(argv=None) -> int:
    args = parse_args(argv)
    model = emocap_jax.load(args.checkpoint)
    texts, labels, skipped = read_guides(args.data, GUIDE_FIELDS[args.guide], args.records,
                                         args.seed)
    if len(texts) < args.batch:
        print(f"error: {args.data}: {len(texts)} records with a label and a {args.guide} "
              f"sentence ({skipped} without), fewer than --batch {args.batch}", file=sys.stderr)
        return 2
    guides = model.encode_text(model.tokenize(texts)).astype(np.float32)
    guides /= np.linalg.norm(guides, axis=1, keepdims=True)
    print(f"{len(texts)} records ({len(set(labels))} labels; {skipped} skipped without a label "
          f"or {args.guide} sentence), guide: {args.guide} sentences; {args.batches} batches "
          f"of {args.batch}")
    results = {}
    for threshold in args.threshold:
        result = measure(_config(args, threshold), guides, labels, args.batch, args.batches,
                         args.seed)
        results[threshold] = result
        cap = f"top-k {args.top_k}{' mutual' if args.mutual else ''}"
        print(f"threshold {threshold:g}, {cap}: {result['per_row']:.2f} mined per "
              f"row, precision {100 * result['precision']:.1f}%, recall "
              f"{100 * result['recall']:.1f}%")
    cos = guides @ guides.T
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    other = cos[~same].mean() if np.any(~same) else float("nan")
    print(f"mean guide cosine: same label {cos[same & off].mean():.3f}, other labels "
          f"{other:.3f}")
    first = results[args.threshold[0]]
    top = ", ".join(f"{a} / {b} {n}" for (a, b), n in first["confused"].most_common(8))
    print(f"wrong pairs mined most often (threshold {args.threshold[0]:g}): {top or 'none'}")
    if args.transitivity:
        for threshold in sorted(set(args.threshold) | set(SUGGEST_GRID)):
            r = transitivity(guides, labels, threshold)
            print(f"all pairs at threshold {threshold:g}: {r['per_row']:.1f} per record, precision "
                  f"{100 * r['precision']:.1f}%, transitivity {100 * r['transitivity']:.1f}%")
    if args.suggest is not None:
        for threshold in (t for t in SUGGEST_GRID if t not in results):
            results[threshold] = measure(_config(args, threshold), guides, labels, args.batch,
                                         args.batches, args.seed)
        best = suggest_threshold(results, args.suggest)
        if best is None:
            print(f"no threshold of {sorted(results)} reaches precision {100 * args.suggest:g}%")
        else:
            r = results[best]
            print(f"suggested: --config.loss.mining.threshold={best:g} (precision "
                  f"{100 * r['precision']:.1f}%, recall {100 * r['recall']:.1f}%, "
                  f"{r['per_row']:.2f} mined per row), the lowest threshold tried whose "
                  f"precision reaches {100 * args.suggest:g}%")
    return 0


if __name__ == "__main__":
    sys.exit(entry_point(main)())
