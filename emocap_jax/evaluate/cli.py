"""`python -m emocap_jax.evaluate`: one benchmark x protocol evaluation of one checkpoint.

    python -m emocap_jax.evaluate --checkpoint PATH --benchmark NAME --data DIR \\
        --protocol zero_shot --output DIR [options]
    python -m emocap_jax.evaluate --list

Heavy imports (JAX, the model) happen after the arguments are checked, so `--help`, `--list` and
argument errors answer at once.
"""
from __future__ import annotations

import argparse
import json
import math
import string
import sys
from typing import Optional, Sequence

import ml_collections

import emocap_jax.storage as storage
from emocap_jax.cli_errors import (ArgumentParser, entry_point, float_in, int_in,
                                   mesh_axis_size, non_negative_int)
from emocap_jax.evaluate import registry, report
from emocap_jax.prompt_templates import template_problem

EPILOG = """\
protocols:
  zero_shot        class prompts (templates averaged in embedding space; see --zero-shot-mode)
  video            zero-shot on clips: --frames frames sampled uniformly, features averaged
                   (also reports the middle frame alone)
  compound         zero-shot over compound class names (also: how often one component is right)
  linear_probe     logistic regression on frozen features, C chosen on a validation split by
                   UAR; trains on the benchmark's train split, or runs subject-independent
                   cross-validation (--num-folds) when there is none
  few_shot         the probe on k examples per class (--shots), averaged over --seeds
  au_detection     per-AU positive vs negative prompts; per-AU F1 and mean F1
  retrieval        image <-> caption recall@1/5/10 on a captioned split
  multiple_choice  the option text closest to the image; accuracy (questions.jsonl)
  grounding        pointing game: the argmax patch of the local loss's sentence-to-patch map
                   falls in the box of the region the local sentence describes; accuracy per
                   region and overall against the boxes' area fraction as chance
                   (regions.jsonl; see emocap_jax/evaluate/grounding.py)

--data is a dataset folder (with metadata.json) or the output folder of
`python -m data_prep.benchmarks` / `python -m data_prep.synthetic_benchmarks`, in which the
benchmark's splits are found by name (OUT/test/, OUT/fold3/test/, ...).

Output (--output; one folder per checkpoint, runs accumulate):
  results/<benchmark>__<protocol>.json, predictions/*.csv, confusion/*.json and *.png,
  report.md and report.csv (the paper's table with its EmoCapCLIP and FLIP numbers beside ours).

example (the embedded synthetic benchmark):
  python -m data_prep.synthetic_benchmarks --output data/synthetic_bench
  python -m emocap_jax.evaluate --checkpoint runs/demo --benchmark synthetic \\
      --data data/synthetic_bench --protocol zero_shot --output runs/demo/eval
"""


def _int_list(low: int, what: str):
    """argparse type of a comma-separated list of integers >= low (shots: >= 1; seeds: >= 0,
    which NumPy's and scikit-learn's generators require)."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a comma-separated list of integers") from None
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        bad = [v for v in values if v < low]
        if bad:
            raise argparse.ArgumentTypeError(f"{text!r}: {what} must be >= {low}, got {bad}")
        return values

    parse.__name__ = f"list of {what}"
    return parse


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers")
    if not values or not all(0 < v < math.inf for v in values):  # NaN too
        raise argparse.ArgumentTypeError(f"{text!r}: C values must be positive and finite")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m emocap_jax.evaluate",
        description="Evaluate a checkpoint on one benchmark with one protocol and write the "
                    "result, confusion matrix and the checkpoint's report (Markdown + CSV).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true",
                   help="print the benchmarks, their protocols and the paper's numbers, then exit")
    p.add_argument("--checkpoint", help="anything emocap_jax.load reads: an export folder, a "
                   "training workdir (its export/), open_clip or Hugging Face CLIP weights")
    p.add_argument("--benchmark", metavar="NAME", help="registry name (see --list)")
    p.add_argument("--data", help="dataset folder, or the converter's output folder")
    p.add_argument("--protocol", default=registry.ZERO_SHOT, choices=registry.PROTOCOLS,
                   help="evaluation protocol (default zero_shot; see below)")
    p.add_argument("--output", help="folder for results and the report (one per checkpoint)")
    g = p.add_argument_group("data")
    g.add_argument("--fold", type=int, default=None,
                   help="one official fold (DFEW, MAFW); default: all folds, reported as mean")
    g.add_argument("--train-data", default=None,
                   help="training dataset folder for linear_probe / few_shot when --data has no "
                        "train split")
    g.add_argument("--frames", type=int_in(1), default=None,
                   help=f"frames sampled per video clip (default "
                        f"{16}, at most the frames stored per record)")
    g.add_argument("--batch-size", type=int_in(1), default=256,
                   help="images per global batch, rounded up to a multiple of the devices "
                        "(default 256)")
    g = p.add_argument_group("zero-shot")
    g.add_argument("--zero-shot-mode", default="embedding",
                   choices=("embedding", "logits", "description"),
                   help="embedding: templates averaged in embedding space; logits: per-template "
                        "cosine logits averaged; description: one description per class, with no "
                        "prompt words or templates (default embedding)")
    g.add_argument("--classes", default=None,
                   help="comma-separated prompt words in label order (default: the registry's)")
    g.add_argument("--templates", default=None,
                   help="file with one template per line, '{}' marking the class word "
                        "(default: the registry's)")
    g = p.add_argument_group("linear probe and few-shot")
    g.add_argument("--num-folds", type=int_in(2), default=None,
                   help="cross-validation folds for single-split benchmarks (default: the "
                        "registry's, e.g. 10 subject-independent folds for CK+)")
    g.add_argument("--val-fraction", type=float_in(0, 1, low_open=True, high_open=True),
                   default=0.2,
                   help="share of the training data held out to choose C (default 0.2)")
    g.add_argument("--c-grid", type=_float_list, default=None,
                   help="comma-separated inverse regularisation strengths to try "
                        "(default 0.01,0.1,...,10000)")
    g.add_argument("--shots", type=_int_list(1, "shots"), default=(1, 2, 4, 8, 16),
                   help="few-shot k values (default 1,2,4,8,16)")
    g.add_argument("--seeds", type=_int_list(0, "seeds"), default=(0, 1, 2),
                   help="few-shot sampling seeds (default 0,1,2)")
    g.add_argument("--unbalanced-probe", dest="balanced_probe", action="store_false",
                   help="fit the linear and few-shot probes unweighted (default: class-balanced, "
                        "each class weighted by 1 / its frequency, since the headline is UAR)")
    g.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the cross-validation and validation splits (default 0)")
    g = p.add_argument_group("AU detection, retrieval, multiple choice")
    # Annotated intensities are >= 0, 0 meaning absent: a negative threshold would count every
    # AU a record annotates as 0 as present. No upper bound: the scale is the dataset's (0/1
    # occurrences, 0-5 intensities).
    g.add_argument("--au-threshold", type=float_in(0, math.inf, high_open=True), default=0.0,
                   help="an AU counts as present above this annotated intensity, >= 0 (default "
                        "0: any intensity above 0)")
    g.add_argument("--caption-field", default="full",
                   choices=("full", "global", "summary", "local"),
                   help="retrieval text: the whole caption (mean of its sentence embeddings) or "
                        "one part (default full)")
    g.add_argument("--questions", default=None,
                   help="questions.jsonl (default: questions.jsonl in the dataset folder)")
    g.add_argument("--mc-template", default="{option}",
                   help="text of an answer option, from {question} and {option} "
                        "(default '{option}')")
    g = p.add_argument_group("grounding")
    g.add_argument("--regions", default=None,
                   help="regions file (default: regions.jsonl in the dataset folder)")
    g.add_argument("--grounding-tolerance", type=float_in(0, math.inf, high_open=True),
                   default=0.0, metavar="PX",
                   help="a pointer this many pixels (of the stored image) outside the region's "
                        "boxes still hits; chance grows with the boxes (default 0)")
    g = p.add_argument_group("devices")
    g.add_argument("--mesh-data", type=mesh_axis_size, default=-1,
                   help="devices on the mesh's data axis (-1: all; default -1)")
    g.add_argument("--mesh-fsdp", type=mesh_axis_size, default=1,
                   help="devices on the fsdp axis, which splits the parameters (default 1)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group(
        "multi-process", "for clusters JAX cannot detect (nothing is needed on TPU pod slices "
        "and SLURM): the same command on every process, all three flags together")
    g.add_argument("--coordinator_address", "--coordinator-address", metavar="HOST:PORT",
                   help="process 0's host and a free port")
    g.add_argument("--num_processes", "--num-processes", type=int, metavar="N",
                   help="processes in the run")
    g.add_argument("--process_id", "--process-id", type=int, metavar="I",
                   help="this process's index, 0..N-1")
    g.add_argument("--heartbeat_timeout_seconds", "--heartbeat-timeout-seconds", type=int,
                   metavar="S", help="a process silent this long counts as dead and ends the run "
                   "(default 100)")
    return p


def list_benchmarks() -> str:
    lines = []
    for group in registry.GROUPS:
        lines.append(f"{group}:")
        for spec in (b for b in registry.BENCHMARKS.values() if b.group == group):
            paper = (f"paper {spec.paper.emocapclip} (FLIP {spec.paper.flip})"
                     if spec.paper else "")
            classes = (f"{len(spec.classes)} classes" if spec.classes else
                       "classes from the data" if spec.classes is None else "")
            lines.append(f"  {spec.name:<20} {spec.title:<22} {classes:<22} "
                         f"{', '.join(spec.protocols)}  {paper}")
    return "\n".join(lines)


def _empty_dataset(folder: str) -> bool:
    """A finished dataset folder (metadata.json) with no records in it."""
    try:
        return json.loads(storage.read_text(storage.join(folder, "metadata.json"))
                          ).get("num_records") == 0
    except (OSError, ValueError):
        return False  # not a dataset folder itself (a converter's output folder, or unreadable)


def _check(args, parser) -> None:
    for flag in ("checkpoint", "benchmark", "data", "output"):
        if getattr(args, flag) is None:
            parser.error(f"--{flag} is required (or use --list)")
    if args.benchmark not in registry.BENCHMARKS:
        parser.error(f"--benchmark {args.benchmark!r} is unknown; known: "
                     f"{', '.join(registry.names())}")
    if args.mesh_data == -1 and args.mesh_fsdp == -1:
        parser.error("--mesh-data and --mesh-fsdp cannot both be -1")
    spec = registry.get(args.benchmark)
    if args.protocol not in spec.protocols:
        parser.error(f"--protocol {args.protocol}: benchmark {args.benchmark} supports "
                     f"{', '.join(spec.protocols)}")
    # Paths may be local or bucket URLs (gs://...).
    if not storage.exists(args.checkpoint):
        parser.error(f"--checkpoint {args.checkpoint}: no such file or directory")
    for flag, path in (("--data", args.data), ("--train-data", args.train_data)):
        if path is not None and storage.isfile(path):
            parser.error(f"{flag} {path}: is a file, not a dataset folder (give the folder "
                         f"holding metadata.json)")
        if path is not None and not storage.isdir(path):
            parser.error(f"{flag} {path}: no such directory")
    if _empty_dataset(args.data):
        parser.error(f"--data {args.data}: the dataset holds no records (its rejected.jsonl says "
                     f"why the converter rejected its inputs)")
    if args.questions is not None and not storage.isfile(args.questions):
        parser.error(f"--questions {args.questions}: no such file")
    if args.templates is not None and not storage.isfile(args.templates):
        parser.error(f"--templates {args.templates}: no such file")
    if args.zero_shot_mode == "description":
        # Each class is scored with its one description, so these would be ignored without a word.
        for flag, value in (("--templates", args.templates), ("--classes", args.classes)):
            if value is not None:
                parser.error(f"{flag}: --zero-shot-mode description scores each class with its "
                             "registry description and uses no prompt words or templates")
    if args.regions is not None and not storage.isfile(args.regions):
        parser.error(f"--regions {args.regions}: no such file")
    _check_mc_template(args.mc_template, parser)
    if storage.isfile(args.output):
        parser.error(f"--output {args.output} exists and is not a directory")


def _check_mc_template(template: str, parser) -> None:
    """--mc-template names {option} (and may name {question}), nothing else: another field ended
    the run in a KeyError or IndexError traceback, and a template without {option} gave every
    option the same text, so the protocol measured nothing, silently."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        parser.error(f"--mc-template {template!r}: {e}")
    unknown = sorted(fields - {"question", "option"})
    if unknown or "option" not in fields:
        parser.error(f"--mc-template {template!r}: use {{option}} for the answer option and "
                     f"optionally {{question}}, no other field"
                     + (f" (it names {', '.join(repr(f) for f in unknown)})" if unknown else ""))


def options_from_args(args):
    # Here, not at the top: they load scikit-learn and JAX, which --help and --list do not need.
    from emocap_jax.evaluate.linear_probe import DEFAULT_C_GRID
    from emocap_jax.evaluate.runner import Options

    templates = None
    if args.templates:
        templates = tuple(line.strip() for line in storage.read_text(args.templates).splitlines()
                          if line.strip())
        if not templates:
            raise ValueError(f"--templates {args.templates}: no template in the file; every "
                             f"line needs '{{}}' for the class word")
        # The check zero_shot and predict make: a line is filled with str.format, so "{name}" or
        # a lone "{" would end the run in a KeyError once the checkpoint is loaded.
        for line in templates:
            problem = template_problem(line)
            if problem is not None:
                raise ValueError(f"--templates {args.templates}: line {line!r}: {problem}")
    words = tuple(w.strip() for w in args.classes.split(",")) if args.classes else None
    return Options(batch_size=args.batch_size, frames=args.frames,
                   zero_shot_mode=args.zero_shot_mode, templates=templates, prompt_words=words,
                   fold=args.fold, train_data=args.train_data, num_folds=args.num_folds,
                   val_fraction=args.val_fraction, c_grid=args.c_grid or DEFAULT_C_GRID,
                   shots=args.shots, seeds=args.seeds, caption_field=args.caption_field,
                   questions=args.questions, mc_template=args.mc_template,
                   au_threshold=args.au_threshold, seed=args.seed,
                   balanced_probe=args.balanced_probe, regions=args.regions,
                   grounding_tolerance=args.grounding_tolerance)


@entry_point
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print(list_benchmarks())
        return 0
    _check(args, parser)
    try:
        options = options_from_args(args)
    except ValueError as e:
        parser.error(str(e))

    # Only now, with the arguments checked: JAX and the model (module docstring).
    import jax

    from emocap_jax import distributed, sharding
    from emocap_jax.evaluate import runner
    from emocap_jax.evaluate.features import Encoder

    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                           args.heartbeat_timeout_seconds)
    main_process = jax.process_index() == 0  # every process computes; one speaks and writes
    try:
        mesh = sharding.make_mesh(ml_collections.ConfigDict(
            {"data": args.mesh_data, "fsdp": args.mesh_fsdp}), names=("--mesh-data", "--mesh-fsdp"))
    except ValueError as e:
        parser.error(str(e))
    if main_process:
        print(f"loading {args.checkpoint}", flush=True)
    try:
        encoder = Encoder.load(args.checkpoint, mesh=mesh, batch_size=args.batch_size,
                               progress=not args.quiet)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: --checkpoint {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    if main_process:
        print(f"{args.benchmark} / {args.protocol} on {mesh.devices.size} devices"
              + (f" ({jax.process_count()} processes)" if jax.process_count() > 1 else ""),
              flush=True)
    try:
        with distributed.exit_when_a_peer_is_gone():
            result = runner.run(encoder, args.benchmark, args.protocol, args.data, options)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not main_process:  # every process computed the result; one writes it
        return 0
    written = report.write_result(args.output, result)
    summary = report.write_report(args.output, encoder.description)
    print(report.summary_line(result))
    if result["protocol"] == registry.GROUNDING:
        for fold in result["folds"]:
            print(report.grounding_table(fold))
    for kind, path in written.items():
        print(f"  {kind}: {path}")
    print(f"  report: {summary['markdown']} and {summary['csv']} "
          f"({summary['num_results']} results)")
    if summary["left_out"]:
        print(f"  note: {len(summary['left_out'])} results of other checkpoints in "
              f"{args.output}/results were left out of the report")
    return 0
