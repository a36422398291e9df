"""RESULTS.md: the real-faces recipe (configs/real_faces.py) with and without label positives and
mining, several seeds each, on FER2013 (a validation split carved from its training faces, the
copies of one face kept on one side: NEAR_COPY_THRESHOLD) and
CK+48 (10 subject-independent folds), beside a raw-pixel logistic-regression floor.

    python bench/real_faces.py --fer ../shared/data/fer2013_train --ckplus ../shared/data/ckplus48 \\
        --work runs/real_faces --seeds 0 1 2 --output RESULTS.md [--config.FIELD=VALUE ...]

Per variant and seed it runs the user's command (`python -m emocap_jax.main
--config=configs/real_faces.py ...`) in a fresh process, timing it end to end (compilation, training,
export and the end-of-training zero-shot), then evaluates the exported model in this process
through the evaluation runner, exactly as `python -m emocap_jax.evaluate` does:
  FER2013 val   zero_shot (imagefolder prompts) and linear_probe (trained on the train split,
                class-balanced, C chosen on a carve-out of it);
  CK+48         zero_shot and linear_probe over 10 subject-independent folds (fold mean).
The end-of-training zero-shot printed by the training command must equal the runner's (checked:
the script stops if they differ). Runs already finished in --work are reused, so an interrupted
table resumes. Each run's figures land in WORK/VARIANT_sSEED/bench_result.json (and its
evaluation files in WORK/VARIANT_sSEED/eval/); the table, and WORK/results.jsonl, are rebuilt from
those of the --variants and --seeds asked for. The converted data (WORK/data/fer,
WORK/data/ckplus48) and the raw-pixel row (WORK/pixels.json) are reused too, so several --work
folders can share one converted copy through a link to one WORK/data. --render-only trains,
converts and fits nothing: it rebuilds the table from the finished runs of an earlier run with
the same --work, and refuses a --work without them.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import subprocess
import sys
import time

import numpy as np
from bench_args import check_rendered, refuse_repeated_options  # bench/ is sys.path[0]
from markdown_tables import begin_marker, mean_std_cell, write_table

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emocap_jax.cli_errors import entry_point, float_in, int_in  # noqa: E402

SEED = int_in(0, 2**32 - 1)  # config.data.shuffle_seed's range (TrainPipelineConfig)

# name -> (what it is, config overrides on top of configs/real_faces.py, which has mining off;
# its mining settings are the collapse-proof ones, so the mining variants only switch the mode
# on). Every variant sets label_positives itself, so a row means the same whatever the recipe's
# default (off since f70d431; on when the first table was made).
_LABELS = "--config.loss.label_positives=True"
_NO_LABELS = "--config.loss.label_positives=False"
# The mining rows were measured with mined positives in both contrastive terms (the default until
# ABLATIONS.md chose the global term alone) and the one-sided cap (the default until the mutual
# one), so they set both, as they set label_positives.
_ONE_SIDED = "--config.loss.mining.mutual=False"
_MINING = ["--config.loss.mining.mode=text", "--config.loss.mining.terms=('global', 'summary')"]
VARIANTS = {
    "labels": ("label positives", [_LABELS]),
    "labels_mining": ("label positives + mining from step 0", [_LABELS, *_MINING, _ONE_SIDED]),
    "labels_mining_gated": ("label positives + mining from step 0, weighted by the in-batch "
                            "agreement", [_LABELS, *_MINING, _ONE_SIDED,
                                          "--config.loss.mining.agreement_gate=True"]),
    "mining": ("mining from step 0, no label positives", [*_MINING, _ONE_SIDED, _NO_LABELS]),
    "mining_mutual": ("mining from step 0 with the mutual cap, no label positives",
                      [*_MINING, "--config.loss.mining.mutual=True", _NO_LABELS]),
    "mining_global": ("mining from step 0 in the global term alone (the default's terms), no "
                      "label positives", ["--config.loss.mining.mode=text",
                                          "--config.loss.mining.terms=('global',)", _ONE_SIDED,
                                          _NO_LABELS]),
    "plain": ("neither: plain CLIP InfoNCE on the label captions (configs/real_faces.py as is)",
              [_NO_LABELS]),
}
PIXEL_SIDE = 24
# FER2013 stores some faces more than once, re-encoded, brightened or re-cropped: the validation
# split keeps the copies of a face on one side (`data_prep.benchmarks --join-near-copies`). Above
# this thumbnail correlation the pairs looked at were the same photo; at 0.90 some were not, and
# chains of such pairs joined 808 faces into one set (at 0.93 the largest set is 57).
NEAR_COPY_THRESHOLD = 0.93


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Any --config.FIELD=VALUE argument goes to every training run;\n"
                                       "configs/default.py documents the fields.")
    p.add_argument("--fer", required=True, help="FER2013 training faces as class folders")
    p.add_argument("--ckplus", required=True, help="CK+48 class folders")
    p.add_argument("--work", default="runs/real_faces", help="converted data and run folders")
    # Seeds become config.train.seed and config.data.shuffle_seed, which the training pipeline
    # refuses outside [0, 2**32) (after the FER2013 conversion, in the first training run).
    p.add_argument("--seeds", type=SEED, nargs="+", default=[0, 1, 2],
                   help="train each variant once per seed (default: 0 1 2)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="which rows (default: all)")
    # 0 would hold out nothing: the FER2013 rows are scored on the validation split.
    p.add_argument("--val-fraction", type=float_in(0, 1, low_open=True, high_open=True),
                   default=0.1, help="share of FER2013's training faces held out for validation, "
                                     "in (0, 1) (default: 0.1)")
    p.add_argument("--output", default="RESULTS.md",
                   help="Markdown file whose table between the markers is rewritten (default: RESULTS.md)")
    p.add_argument("--skip-pixels", action="store_true", help="leave out the raw-pixel row")
    p.add_argument("--render-only", action="store_true",
                   help="train nothing: build the table from the runs already finished in --work")
    args, extra = p.parse_known_args(argv)
    bad = [a for a in extra if not a.startswith("--config.")]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)} (only --config.* overrides pass through)")
    refuse_repeated_options(p, argv)
    # A repeated seed would reuse the finished run and count it twice in the mean and std.
    for name in ("seeds", "variants"):
        repeated = sorted({v for v in getattr(args, name) if getattr(args, name).count(v) > 1})
        if repeated:
            p.error(f"--{name} repeats {' '.join(map(str, repeated))}: each run is counted once")
    args.extra = extra
    return args


def _data_dirs(work: pathlib.Path) -> dict:
    return {"fer": work / "data" / "fer", "ck": work / "data" / "ckplus48"}


def _data_paths(data: dict) -> dict:
    return {"fer_train": str(data["fer"] / "train"), "fer_val": str(data["fer"] / "val"),
            "ck": str(data["ck"] / "all")}


def _convert_one(flag: str, name: str, root: str, output: pathlib.Path, **options) -> None:
    """data_prep.benchmarks' conversion, its layout errors named by the option that gave root."""
    from data_prep.benchmark_formats.common import LayoutError
    from data_prep.benchmarks import convert_benchmark

    try:
        convert_benchmark(name, root, output, overwrite=True, progress=False, **options)
    except LayoutError as e:
        raise SystemExit(f"{flag} {root}: {e}") from None


def convert(args, work: pathlib.Path) -> dict:
    from emocap_jax.evaluate.runner import is_dataset

    data = _data_dirs(work)
    if not is_dataset(data["fer"] / "val"):
        _convert_one("--fer", "imagefolder", args.fer, data["fer"], val_fraction=args.val_fraction,
                     near_copy_threshold=NEAR_COPY_THRESHOLD)
    _check_split(data["fer"], args.val_fraction)
    if not is_dataset(data["ck"] / "all"):
        _convert_one("--ckplus", "ckplus48", args.ckplus, data["ck"])
    return _data_paths(data)


def converted(args, work: pathlib.Path) -> dict:
    """The data an earlier run of this command converted in --work (--render-only converts
    nothing: a mistyped --work would otherwise be converted anew and get an empty table)."""
    from emocap_jax.evaluate.runner import is_dataset

    data = _data_dirs(work)
    if not (is_dataset(data["fer"] / "val") and is_dataset(data["ck"] / "all")):
        raise SystemExit(f"--work {work}: no converted data (data/fer, data/ckplus48), so no "
                         "finished runs to render; --render-only reads the --work of an earlier "
                         "run of this command")
    _check_split(data["fer"], args.val_fraction)
    return _data_paths(data)


def _holdout(fer: pathlib.Path) -> dict:
    from emocap_jax.data.shard_writer import load_metadata

    return load_metadata(str(fer / "val")).get("layout_info", {}).get("holdout", {})


def _check_split(fer: pathlib.Path, val_fraction: float) -> None:
    """Refuses a converted FER2013 split other than the one asked for: the runs already in --work
    were trained and scored on it, so converting anew would mix two splits in one table."""
    holdout = _holdout(fer)
    if holdout.get("val_fraction") != val_fraction:
        raise SystemExit(f"{fer}: converted with val_fraction {holdout.get('val_fraction')}, "
                         f"not --val-fraction {val_fraction}; use another --work")
    if holdout.get("near_copy_threshold") != NEAR_COPY_THRESHOLD:
        raise SystemExit(f"{fer}: split without identical and near-copy faces kept on one side "
                         f"(near_copy_threshold {holdout.get('near_copy_threshold')}, not "
                         f"{NEAR_COPY_THRESHOLD}), so its validation faces include copies of "
                         "training faces; use another --work")


def train_command(workdir, data, variant, seed, extra) -> list[str]:
    return [sys.executable, "-m", "emocap_jax.main", "--config=configs/real_faces.py",
            f"--workdir={workdir}", f"--config.data.train_dir={data['fer_train']}",
            f"--config.eval.zero_shot_dir={data['fer_val']}", f"--config.train.seed={seed}",
            f"--config.data.shuffle_seed={seed}", *VARIANTS[variant][1], *extra]


def evaluate(workdir: pathlib.Path, data: dict) -> dict:
    from emocap_jax.evaluate import report, runner
    from emocap_jax.evaluate.features import Encoder

    encoder = Encoder.load(str(workdir), batch_size=512)
    out = {}
    jobs = (("fer_zero_shot", "imagefolder", "zero_shot", data["fer_val"], {}),
            ("fer_probe", "imagefolder", "linear_probe", data["fer_val"],
             {"train_data": data["fer_train"]}),
            ("ck_zero_shot", "ckplus48", "zero_shot", data["ck"], {}),
            ("ck_probe", "ckplus48", "linear_probe", data["ck"], {"num_folds": 10}))
    for key, benchmark, protocol, path, options in jobs:
        result = runner.run(encoder, benchmark, protocol, path, runner.Options(**options))
        report.write_result(workdir / "eval", result)
        out[key] = result["value"]
    report.write_report(workdir / "eval", encoder.description)
    return out


def pixel_features(data_dir: str):
    """Grayscale PIXEL_SIDE x PIXEL_SIDE pixels in [0, 1] of every record, labels, groups."""
    import io

    from PIL import Image

    from emocap_jax.data.example_codec import decode_record
    from emocap_jax.data.shard_writer import shard_paths
    from emocap_jax.data.source import ShardedTFRecordSource

    source = ShardedTFRecordSource(shard_paths(data_dir))
    feats, labels, groups = [], [], []
    for i in range(len(source)):
        rec = decode_record(source[i])
        img = Image.open(io.BytesIO(rec.images[0])).convert("L").resize((PIXEL_SIDE, PIXEL_SIDE),
                                                                        Image.BILINEAR)
        feats.append(np.asarray(img, np.float32).ravel() / 255.0)
        labels.append(rec.label_id)
        groups.append(rec.group)
    x = np.stack(feats)
    # Per-image standardisation: brightness and contrast are not expressions.
    x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)
    return x, np.asarray(labels), np.asarray(groups)


def pixel_row(data: dict) -> dict:
    from emocap_jax.evaluate import linear_probe

    start = time.perf_counter()
    x_tr, y_tr, _ = pixel_features(data["fer_train"])
    x_va, y_va, _ = pixel_features(data["fer_val"])
    classes = [str(i) for i in range(int(y_tr.max()) + 1)]
    fer = linear_probe.linear_probe(x_tr, y_tr, x_va, y_va, classes,
                                    c_grid=(0.001, 0.01, 0.1))["uar"]
    x_ck, y_ck, g_ck = pixel_features(data["ck"])
    ck_classes = [str(i) for i in range(int(y_ck.max()) + 1)]
    uars = []
    for tr, te in linear_probe.cv_folds(y_ck, g_ck, 10, seed=0):
        uars.append(linear_probe.linear_probe(x_ck[tr], y_ck[tr], x_ck[te], y_ck[te], ck_classes,
                                              train_groups=g_ck[tr])["uar"])
    return {"fer_probe": fer, "ck_probe": float(np.mean(uars)),
            "seconds": time.perf_counter() - start}


def run_one(args, work, data, variant, seed) -> dict:
    workdir = work / f"{variant}_s{seed}"
    done = workdir / "bench_result.json"
    if done.exists():
        return json.loads(done.read_text())
    if args.render_only:
        return None
    cmd = train_command(workdir, data, variant, seed, args.extra)
    print(f"[{variant} seed {seed}] {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (work / f"{variant}_s{seed}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise SystemExit(f"training failed ({proc.returncode}); log: "
                         f"{work / f'{variant}_s{seed}.log'}\n{proc.stderr[-2000:]}")
    trained = json.loads((workdir / "zero_shot.json").read_text())
    result = {"variant": variant, "seed": seed, "train_seconds": seconds, **evaluate(workdir, data)}
    if abs(trained["uar"] - result["fer_zero_shot"]) > 1e-6:
        raise SystemExit(f"{workdir}: end-of-training zero-shot UAR {trained['uar']} differs from "
                         f"the evaluation runner's {result['fer_zero_shot']}")
    print(f"[{variant} seed {seed}] {seconds / 60:.1f} min: " + ", ".join(
        f"{k} {100 * v:.1f}" for k, v in result.items() if k.endswith(("shot", "probe"))),
        flush=True)
    done.write_text(json.dumps(result))
    return result




def _dataset_line(data: dict) -> str:
    from emocap_jax.data.shard_writer import load_metadata

    n = {k: load_metadata(v).get("num_records") for k, v in data.items()}
    holdout = _holdout(pathlib.Path(data["fer_val"]).parent)
    return (f"Data: FER2013's training faces split by `data_prep.benchmarks --val-fraction "
            f"{holdout.get('val_fraction')} --split-seed {holdout.get('seed')} "
            f"--join-near-copies {holdout.get('near_copy_threshold')}` into {n['fer_train']} "
            f"train / {n['fer_val']} validation faces, copies of one face on one side "
            f"({holdout.get('identical_content_sets')} byte-identical sets, "
            f"{holdout.get('near_copy_joins')} near-copy joins; 7 classes, "
            f"chance UAR 14.3%); CK+48, {n['ck']} faces, 10 subject-independent folds for the "
            "probe (7 classes). Zero-shot: the registry's prompts (5 templates with the class's "
            "prompt word, averaged in embedding space); linear probe: class-balanced logistic "
            "regression, C chosen on a carve-out of the training side by UAR.")


def render(results: list[dict], pixels: dict | None, args, command: str, data: dict) -> str:
    cols = ("fer_zero_shot", "fer_probe", "ck_zero_shot", "ck_probe")
    lines = [_dataset_line(data), "",
             "Train time: wall clock of the whole training command in a fresh process "
             "(compilation, training, export, end-of-training zero-shot), on this project's "
             "2-core CPU machine. UAR in %, mean ± population std (numpy's, ddof 0) over seeds.", "",
             "| variant | FER2013 val zero-shot UAR | FER2013 val linear-probe UAR | "
             "CK+48 zero-shot UAR | CK+48 linear-probe UAR (10 folds) | train time (min) | seeds |",
             "|---|---|---|---|---|---|---|"]
    for variant in args.variants:
        rows = [r for r in results if r["variant"] == variant]
        if not rows:
            continue
        cells = [mean_std_cell([r[c] for r in rows]) for c in cols]
        minutes = [r["train_seconds"] / 60 for r in rows]
        lines.append(f"| {variant}: {VARIANTS[variant][0]} | " + " | ".join(cells) +
                     f" | {np.mean(minutes):.1f} (max {max(minutes):.1f}) | "
                     f"{', '.join(str(r['seed']) for r in rows)} |")
    if pixels:
        lines.append(f"| raw pixels ({PIXEL_SIDE}x{PIXEL_SIDE} grayscale, standardised), "
                     f"logistic regression | — | {100 * pixels['fer_probe']:.1f} | — | "
                     f"{100 * pixels['ck_probe']:.1f} | {pixels['seconds'] / 60:.1f} | — |")
    per_seed = ["", "Per run (UAR %, in column order above):", ""]
    for r in results:
        per_seed.append(f"- {r['variant']} seed {r['seed']}: " + ", ".join(
            f"{100 * r[c]:.1f}" for c in cols) + f"; {r['train_seconds'] / 60:.1f} min")
    return "\n".join(lines + per_seed) + "\n\nReproduce: `" + command + "`\n"


def main(argv=None):
    args = parse_args(argv)
    work = pathlib.Path(args.work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    data = converted(args, work) if args.render_only else convert(args, work)
    pixels = None
    cache = work / "pixels.json"
    if not args.skip_pixels and not cache.exists() and not args.render_only:
        cache.write_text(json.dumps(pixel_row(data)))
    if not args.skip_pixels and cache.exists():
        pixels = json.loads(cache.read_text())
        print(f"raw pixels: FER2013 val probe UAR {100 * pixels['fer_probe']:.1f}, CK+48 "
              f"{100 * pixels['ck_probe']:.1f}", flush=True)
    results = []
    for seed in args.seeds:  # seed-major: an interrupted table has every variant at least once
        for variant in args.variants:
            result = run_one(args, work, data, variant, seed)
            if result is not None:
                results.append(result)
            with open(work / "results.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in results)
    if args.render_only:
        check_rendered(work, results, args.variants, args.seeds)
    command = "python bench/real_faces.py " + shlex.join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--render-only")
    table = render(results, pixels, args, command, data)
    write_table(pathlib.Path(args.output), table, begin_marker("bench/real_faces.py"))
    print(table)




if __name__ == "__main__":
    sys.exit(entry_point(main)())
