"""ABLATIONS.md: what each part of the EmoCapCLIP objective adds, measured on the synthetic corpus
(where every face's action units and regions are known).

    python bench/ablations.py --work runs/ablations --seeds 0 1 2 --output ABLATIONS.md \\
        [--jobs 2] [--pretrain-steps 700] [--finetune-steps 300] [--finetune-au-drop P]
        [--finetune-appearance-captions] [--config.FIELD=VALUE ...]

1. Pretrain once: `configs/ablations.py:summary` (the demo recipe: global + summary terms) for
   --pretrain-steps on the synthetic corpus, exported to WORK/pretrain/export. Reused when present
   and made with the same --pretrain-steps (refused otherwise; `--config.*` overrides it was made
   without are printed).
2. Fine-tune every variant of configs/ablations.py named in --variants (default global_only,
   summary, local, mining, full; also global_mining) from that export for --finetune-steps,
   once per seed (the seed sets the parameter-free randomness: data order, augmentation,
   local-sentence sampling), each in a fresh process with the user's command, on the pretrain
   run's corpus (copied, not regenerated).
   With --finetune-au-drop P > 0 they fine-tune instead on a corpus made once in
   WORK/finetune_corpus with config.data.synthetic.au_drop_probability=P (a class's action units
   no longer come together), and are still evaluated on the pretrain's held-out split.
   --finetune-appearance-captions does the same with a corpus whose global sentences also say
   what each face looks like (config.data.synthetic.appearance_captions; same images): captions
   that tell faces of one emotion apart, as real ones do.
3. Evaluate each fine-tuned export with `--mode=eval` (config.eval.benchmarks of
   configs/ablations.py): zero-shot UAR on the held-out basic faces, compound UAR on the held-out
   compound faces, AU-detection mean F1, image-to-caption R@1, and grounding where the protocol
   is available.
Finished runs are reused, so an interrupted table resumes; per-run figures land in
WORK/VARIANT_sSEED/ablation_result.json (--render-only rebuilds from them and refuses a --work
without any), WORK/results.jsonl and the table (mean ± std over seeds, and per run) between the
markers of --output (a table of its own for each fine-tuning corpus and fine-tune length, so all
fit in one file). Extra `--config.*` arguments go to every run (pretrain, fine-tuning corpus and
fine-tunes); the table gets a marker of its own, and a finished run made with other overrides is
refused, as is one of another corpus or length.
"""
from __future__ import annotations

import argparse
import ast
import concurrent.futures
import json
import pathlib
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np
from bench_args import check_rendered, refuse_repeated_options  # bench/ is sys.path[0]
from markdown_tables import begin_marker, mean_std_cell, write_table

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # emocap_jax of this checkout

from emocap_jax.cli_errors import entry_point, int_in, positive_int  # noqa: E402

SEED = int_in(0, 2**32 - 1)  # config.data.shuffle_seed's range (TrainPipelineConfig)

VARIANTS = {
    "global_only": "global term only",
    "global_mining": "global term + mining (summary sentences only guide it)",
    "summary": "+ summary term",
    "local": "+ summary + local term",
    "mining": "+ summary + mining",
    "full": "all: global + summary + local + mining",
}
# The rows; global_mining is run on request (--variants).
DEFAULT_VARIANTS = ("global_only", "summary", "local", "mining", "full")
FINETUNE_STEPS = 300  # the default --finetune-steps; another length gets a table of its own
# Fine-tunes start from a trained model, so mining (guided by trained summary embeddings) may be
# on from their first step.
FINETUNE_OVERRIDES = ["--config.loss.mining.warmup_steps=0", "--config.optim.warmup_steps=30"]
# column -> (result file under eval/results, how to read the figure from it)
COLUMNS = {
    "zero_shot": ("zero-shot UAR", "synthetic__zero_shot.json", lambda r: r["value"]),
    "compound": ("compound UAR", "synthetic-compound__compound.json", lambda r: r["value"]),
    "au_f1": ("AU-detection mean F1", "synthetic__au_detection.json", lambda r: r["value"]),
    "i2t_r1": ("image-to-caption R@1", "synthetic__retrieval.json",
               lambda r: r["report"]["image_to_text"]["R@1"]),
    "grounding": ("grounding accuracy", "synthetic__grounding.json", lambda r: r["value"]),
    "grounding_chance": ("grounding chance (region area)", "synthetic__grounding.json",
                         lambda r: r["report"]["chance"]),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Any --config.FIELD=VALUE argument goes to every run (pretrain,\n"
                                       "fine-tuning corpus and fine-tunes); configs/default.py "
                                       "documents the fields.")
    p.add_argument("--work", default="runs/ablations", help="pretrain and fine-tune run folders")
    # Seeds become config.train.seed and config.data.shuffle_seed, which the training pipeline
    # refuses outside [0, 2**32) (the fine-tune fails after the shared pretrain has run).
    p.add_argument("--seeds", type=SEED, nargs="+", default=[0, 1, 2],
                   help="fine-tune each variant once per seed (default: 0 1 2)")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS),
                   help=f"configs/ablations.py variants to fine-tune (default: {' '.join(DEFAULT_VARIANTS)})")
    p.add_argument("--pretrain-steps", type=positive_int, default=700,
                   help="steps of the shared pretrain run (default: 700)")
    p.add_argument("--finetune-steps", type=positive_int, default=FINETUNE_STEPS,
                   help=f"steps of each fine-tune (default: {FINETUNE_STEPS})")
    p.add_argument("--finetune-au-drop", type=float, default=0.0, metavar="P",
                   help="fine-tune on a corpus like the pretrain's but with each action unit of a "
                   "face's class left out with probability P (0: the pretrain's own corpus)")
    p.add_argument("--finetune-appearance-captions", action="store_true",
                   help="fine-tune on a corpus like the pretrain's whose global sentences also "
                   "name each face's looks (skin, hair, tilt, light, background, clothes)")
    p.add_argument("--base", default="demo", help="config module the ablations sit on")
    p.add_argument("--jobs", type=positive_int, default=1, help="fine-tunes run at once")
    p.add_argument("--output", default="ABLATIONS.md",
                   help="Markdown file whose table between the markers is rewritten (default: ABLATIONS.md)")
    p.add_argument("--render-only", action="store_true",
                   help="rebuild the table from finished runs, train nothing")
    args, extra = p.parse_known_args(argv)
    bad = [a for a in extra if not a.startswith("--config.")]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    refuse_repeated_options(p, argv)
    # A repeated seed would reuse the finished run and count it twice in the mean and std.
    for name in ("seeds", "variants"):
        repeated = sorted({v for v in getattr(args, name) if getattr(args, name).count(v) > 1})
        if repeated:
            p.error(f"--{name} repeats {' '.join(map(str, repeated))}: each run is counted once")
    if not 0.0 <= args.finetune_au_drop < 1.0:
        p.error(f"--finetune-au-drop must be in [0, 1), got {args.finetune_au_drop}")
    args.extra = extra
    return args


def _run(cmd: list[str], log: pathlib.Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{shlex.join(cmd)} failed ({proc.returncode}); log: {log}\n{tail}")
    return time.perf_counter() - start


def pretrain(args, work: pathlib.Path) -> pathlib.Path:
    workdir = work / "pretrain"
    if (workdir / "export").is_dir() and not args.render_only:
        _check_reused_pretrain(args, workdir)
    if not (workdir / "export").is_dir():
        if args.render_only:
            raise SystemExit(f"{workdir}: no pretrained export; run without --render-only")
        cmd = [sys.executable, "-m", "emocap_jax.main",
               f"--config=configs/ablations.py:summary,{args.base}", f"--workdir={workdir}",
               f"--config.train.num_steps={args.pretrain_steps}", *args.extra]
        print(f"[pretrain] {shlex.join(cmd)}", flush=True)
        seconds = _run(cmd, work / "pretrain.log")
        print(f"[pretrain] {seconds / 60:.1f} min", flush=True)
    return workdir


def _check_reused_pretrain(args, workdir: pathlib.Path):
    """Refuse a pretrain of another --pretrain-steps (that flag concerns the pretrain alone) and
    name the `--config.*` overrides it was made without. Those go to the fine-tunes too, and
    fine-tuning with one (a new head, a mining threshold) beside a copied pretrain is how several
    tables were made, so they are not refused; printing them shows a model override that was
    meant for both."""
    if not (workdir / "config.json").exists():
        print(f"[pretrain] note: reusing {workdir / 'export'}; without its config.json, its "
              "length and overrides cannot be checked", flush=True)
        return
    steps = _config_differences(workdir, [f"--config.train.num_steps={args.pretrain_steps}"])
    if steps:
        raise SystemExit(f"{workdir} was pretrained otherwise ({steps[0]}): use another --work, "
                         "or remove it to pretrain again")
    for difference in _config_differences(workdir, args.extra):
        print(f"[pretrain] note: reusing {workdir}, made without this override: {difference}",
              flush=True)


def finetune_corpus_settings(args) -> list[str]:
    """The config.data.synthetic overrides of the fine-tuning corpus ([]: the pretrain's own)."""
    settings = []
    if args.finetune_au_drop:
        settings.append(f"--config.data.synthetic.au_drop_probability={args.finetune_au_drop}")
    if args.finetune_appearance_captions:
        settings.append("--config.data.synthetic.appearance_captions=True")
    return settings


def finetune_corpus(args, work: pathlib.Path) -> pathlib.Path | None:
    """With --finetune-au-drop or --finetune-appearance-captions: the fine-tunes' training split,
    generated and converted once (`--mode=data`, the pretrain's config with those settings).
    None: the pretrain's."""
    settings = finetune_corpus_settings(args)
    if not settings:
        return None
    workdir = work / "finetune_corpus"
    train_dir = workdir / "data" / "train"
    if not (train_dir / "metadata.json").exists():
        if args.render_only:
            raise SystemExit(f"{workdir}: no fine-tuning corpus; run without --render-only")
        cmd = [sys.executable, "-m", "emocap_jax.main",
               f"--config=configs/ablations.py:summary,{args.base}", f"--workdir={workdir}",
               "--mode=data", *settings, *args.extra]
        print(f"[fine-tuning corpus] {shlex.join(cmd)}", flush=True)
        _run(cmd, work / "finetune_corpus.log")
    return train_dir


def finetune_command(args, pre: pathlib.Path, workdir: pathlib.Path, variant: str,
                     seed: int, mode: str = "train", train_dir: pathlib.Path | None = None) -> list[str]:
    # A fine-tuning corpus of its own is read in place; the held-out split stays the pretrain's.
    data = ([f"--config.data.train_dir={train_dir}",
             f"--config.eval.zero_shot_dir={workdir / 'data' / 'eval'}"] if train_dir else [])
    return [sys.executable, "-m", "emocap_jax.main",
            f"--config=configs/ablations.py:{variant},{args.base}", f"--workdir={workdir}",
            f"--mode={mode}", f"--config.init_from={pre / 'export'}",
            f"--config.train.num_steps={args.finetune_steps}", f"--config.train.seed={seed}",
            f"--config.data.shuffle_seed={seed}", *data, *FINETUNE_OVERRIDES, *args.extra]


def run_one(args, work: pathlib.Path, pre: pathlib.Path, variant: str, seed: int,
            train_dir: pathlib.Path | None = None):
    workdir = work / f"{variant}_s{seed}"
    done = workdir / "ablation_result.json"
    if done.exists():
        result = json.loads(done.read_text())
        for key, flag, want in (
                ("finetune_au_drop", "--finetune-au-drop", args.finetune_au_drop),
                ("finetune_appearance_captions", "--finetune-appearance-captions",
                 args.finetune_appearance_captions)):
            had = result.get(key, type(want)())
            if had != want:
                raise SystemExit(f"{workdir} was fine-tuned with {flag} {had}, not {want}: "
                                 "use another --work")
        # Records older than the field: the run's own log says how far it trained.
        steps = result.get("finetune_steps", _last_train_step(workdir))
        if steps is not None and steps != args.finetune_steps:
            raise SystemExit(f"{workdir} was fine-tuned for {steps} steps, not "
                             f"--finetune-steps {args.finetune_steps}: use another --work")
        differing = _differing_overrides(result, workdir, args.extra)
        if differing:
            raise SystemExit(f"{workdir} was fine-tuned with other --config overrides "
                             f"({'; '.join(differing)}): use another --work")
        return result
    if args.render_only:
        return None
    # The same corpus and held-out splits as the pretrain run, without generating them again
    # (with a fine-tuning corpus of its own, only the held-out splits are needed).
    for name in ("synthetic", "data", "synthetic_benchmarks"):
        if (pre / name).is_dir() and not (workdir / name).exists():
            shutil.copytree(pre / name, workdir / name, ignore=(
                shutil.ignore_patterns("train") if train_dir and name == "data" else None))
    train = finetune_command(args, pre, workdir, variant, seed, train_dir=train_dir)
    print(f"[{variant} seed {seed}] {shlex.join(train)}", flush=True)
    seconds = _run(train, work / f"{variant}_s{seed}.log")
    _run(finetune_command(args, pre, workdir, variant, seed, mode="eval", train_dir=train_dir),
         work / f"{variant}_s{seed}.eval.log")
    result = {"variant": variant, "seed": seed, "train_seconds": seconds,
              "finetune_au_drop": args.finetune_au_drop,
              "finetune_appearance_captions": args.finetune_appearance_captions,
              "finetune_steps": args.finetune_steps, "config_overrides": list(args.extra),
              **read_figures(workdir)}
    metrics = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    result["final_loss"] = [m for m in metrics if m.get("kind") == "train"][-1].get("loss")
    print(f"[{variant} seed {seed}] {seconds / 60:.1f} min: " + ", ".join(
        f"{k} {100 * v:.1f}" for k, v in result.items() if k in COLUMNS), flush=True)
    done.write_text(json.dumps(result))
    return result


def _last_train_step(workdir: pathlib.Path) -> int | None:
    """The step of the last train record in workdir's metrics.jsonl (None: no such record)."""
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return None
    steps = [m["step"] for m in map(json.loads, filter(str.strip, path.read_text().splitlines()))
             if m.get("kind") == "train"]
    return steps[-1] if steps else None


def _differing_overrides(result: dict, workdir: pathlib.Path, wanted: list[str]) -> list[str]:
    """How the `--config.*` overrides a finished run was fine-tuned with differ from `wanted`
    ([]: they agree). Records older than the `config_overrides` field are checked against the
    run's config.json instead: each wanted override must hold there (an override the old run
    had but `wanted` lacks cannot be told from a default, so it passes)."""
    if "config_overrides" in result:
        had = set(result["config_overrides"])
        return ([f"had {a}" for a in sorted(had - set(wanted))] +
                [f"lacks {a}" for a in sorted(set(wanted) - had)])
    return _config_differences(workdir, wanted)


def _config_differences(workdir: pathlib.Path, wanted: list[str]) -> list[str]:
    """The `--config.FIELD=VALUE` arguments of `wanted` that workdir's config.json does not hold
    ([]: it holds all of them)."""
    path = workdir / "config.json"
    if not path.exists():
        return [f"lacks {a}" for a in wanted]
    config = json.loads(path.read_text())
    differing = []
    for arg in wanted:
        key, _, text = arg.removeprefix("--config.").partition("=")
        value = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        try:
            want = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            want = text
        if isinstance(value, list) and isinstance(want, tuple):
            want = list(want)
        if value != want:
            differing.append(f"{key} was {value!r}, not {text}")
    return differing


def table_marker(args) -> str:
    """The marker of this command's table in --output: one table per fine-tuning corpus,
    fine-tune length and set of `--config.*` overrides, so that all of them fit in one file."""
    return "bench/ablations.py" + (
        f" --finetune-steps {args.finetune_steps}" if args.finetune_steps != FINETUNE_STEPS
        else "") + (f" --finetune-au-drop {args.finetune_au_drop:g}"
                    if args.finetune_au_drop else "") + (
        " --finetune-appearance-captions" if args.finetune_appearance_captions else "") + "".join(
        f" {a}" for a in sorted(args.extra))  # sorted: reuse compares them as a set too


def read_figures(workdir: pathlib.Path) -> dict:
    results = workdir / "eval" / "results"
    figures = {}
    for key, (_, name, read) in COLUMNS.items():
        path = results / name
        if path.exists():
            figures[key] = float(read(json.loads(path.read_text())))
    return figures




def render(results: list[dict], args, command: str) -> str:
    cols = [c for c in COLUMNS if any(c in r for r in results)]
    changes = []
    if args.finetune_au_drop:
        changes.append(f"whose faces leave out each action unit of their class with probability "
                       f"{args.finetune_au_drop:g} (`--finetune-au-drop`)")
    if args.finetune_appearance_captions:
        changes.append("whose global sentences also name what each face looks like, the "
                       "images unchanged (`--finetune-appearance-captions`)")
    corpus = ("on a corpus of the same size " + " and ".join(changes)
              if changes else "on the same corpus")
    lines = [f"Pretrain: configs/ablations.py:summary,{args.base} (global + summary terms), "
             f"{args.pretrain_steps} steps on the synthetic corpus; every variant fine-tunes "
             f"that export for {args.finetune_steps} steps {corpus} (seeds set data order, "
             "augmentation and sentence sampling). Held-out synthetic faces of the pretrain's "
             "corpus (identities never trained on). All figures in %, mean ± population std over seeds; "
             "measured on a 2-core CPU." + (
                 " Every run took " + ", ".join(f"`{a}`" for a in args.extra) + "."
                 if args.extra else ""), "",
             "| variant | " + " | ".join(COLUMNS[c][0] for c in cols) +
             " | fine-tune time (min) | seeds |",
             "|---|" + "---|" * (len(cols) + 2)]
    for variant in (v for v in VARIANTS if v in args.variants):  # table order, not run order
        rows = [r for r in results if r["variant"] == variant]
        if not rows:
            continue
        cells = [mean_std_cell([r[c] for r in rows if c in r]) for c in cols]
        minutes = np.mean([r["train_seconds"] / 60 for r in rows])
        lines.append(f"| {variant}: {VARIANTS[variant]} | " + " | ".join(cells) +
                     f" | {minutes:.1f} | {', '.join(str(r['seed']) for r in rows)} |")
    per_run = ["", "Per run (in column order above):", ""]
    for r in results:
        per_run.append(f"- {r['variant']} seed {r['seed']}: " + ", ".join(
            f"{100 * r[c]:.1f}" if c in r else "—" for c in cols) +
            f"; {r['train_seconds'] / 60:.1f} min")
    return "\n".join(lines + per_run) + "\n\nReproduce: `" + command + "`\n"




def main(argv=None):
    args = parse_args(argv)
    work = pathlib.Path(args.work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    pre = pretrain(args, work)
    train_dir = finetune_corpus(args, work)
    jobs = [(v, s) for s in args.seeds for v in args.variants]  # seed-major
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = [pool.submit(run_one, args, work, pre, v, s, train_dir) for v, s in jobs]
        results = [r for r in (f.result() for f in futures) if r is not None]
    if args.render_only:
        check_rendered(work, results, args.variants, args.seeds)
    with open(work / "results.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in results)
    command = "python bench/ablations.py " + shlex.join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--render-only")
    table = render(results, args, command)
    write_table(pathlib.Path(args.output), table, begin_marker(table_marker(args)))
    print(table)


if __name__ == "__main__":
    sys.exit(entry_point(main)())
