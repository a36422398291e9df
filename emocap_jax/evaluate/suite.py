"""The config's list of evaluations (`config.eval.benchmarks`), as `--mode=eval` runs them.

Each entry is "BENCHMARK:PROTOCOL[:DATA_DIR]" (benchmark names: `python -m emocap_jax.evaluate
--list`). Without DATA_DIR:
  synthetic            the workdir's held-out synthetic faces (data/eval, made by training), or
                       config.eval.zero_shot_dir when set; multiple_choice uses the generated
                       basic split, which carries the questions;
  synthetic-compound,  generated into WORKDIR/synthetic_benchmarks on first use, with the
  synthetic-video      corpus's seed and image size;
  anything else        needs its DATA_DIR.
Results and the report go to WORKDIR/eval/ (see report.py).
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Optional

import jax

from emocap_jax import distributed
from emocap_jax.cli_errors import UsageError
import emocap_jax.storage as storage
from emocap_jax.data.shard_writer import load_metadata
from emocap_jax.evaluate import registry, report, runner
from emocap_jax.evaluate.synthetic_benchmarks import generate_benchmarks

log = logging.getLogger("emocap_jax.evaluate")

SYNTHETIC_BENCH_DIR = "synthetic_benchmarks"


@dataclasses.dataclass(frozen=True)
class Entry:
    benchmark: str
    protocol: str
    data: Optional[str] = None


def parse_entry(text: str) -> Entry:
    """One config.eval.benchmarks entry; a malformed or unknown one is a UsageError (one line on
    the command line, like every other bad setting; still a ValueError to library callers)."""
    parts = str(text).split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise UsageError(f"config.eval.benchmarks entry {text!r} is not BENCHMARK:PROTOCOL"
                         "[:DATA_DIR]")
    benchmark, protocol = parts[0].strip(), parts[1].strip()
    if benchmark not in registry.BENCHMARKS:
        raise UsageError(f"config.eval.benchmarks entry {text!r}: unknown benchmark "
                         f"{benchmark!r}; known: {', '.join(registry.names())}")
    if protocol not in registry.get(benchmark).protocols:
        raise UsageError(f"config.eval.benchmarks entry {text!r}: {benchmark} supports "
                         f"{', '.join(registry.get(benchmark).protocols)}")
    return Entry(benchmark, protocol, parts[2].strip() if len(parts) == 3 and parts[2] else None)


def _synthetic_benchmarks(config, workdir, split: str) -> str:
    if storage.is_url(workdir):
        raise UsageError(f"the synthetic {split} benchmark is generated into a local workdir, not "
                         f"{workdir}: give its data folder (synthetic...:PROTOCOL:DATA_DIR, from "
                         f"`python -m data_prep.synthetic_benchmarks`)")
    root = pathlib.Path(workdir) / SYNTHETIC_BENCH_DIR
    if distributed.process_and_count()[0] == 0 and not runner.is_dataset(root / split):
        syn = config.data.synthetic
        log.info("generating the synthetic %s split into %s", split, root)
        generate_benchmarks(root, seed=syn.seed, per_class=max(1, syn.eval_per_class),
                            size=syn.size, splits=[split], overwrite=True, progress=False)
    # Process 0 writes the split into the workdir; the other processes read it from there.
    distributed.host_barrier(f"emocap_jax: synthetic {split} split written")
    return str(root / split)


def resolve_entry(entry: Entry, config, workdir, eval_dir: str) -> tuple[str, str]:
    """(benchmark name, data folder) of an entry. A zero_shot_dir that is not the synthetic
    class order is evaluated as a generic labelled dataset ("imagefolder": classes from its
    metadata), as --mode=eval always did."""
    if entry.data:
        return entry.benchmark, entry.data
    if entry.benchmark == "synthetic":
        if entry.protocol == registry.MULTIPLE_CHOICE:
            return entry.benchmark, _synthetic_benchmarks(config, workdir, "basic")
        recorded = load_metadata(eval_dir).get("classes")
        if recorded and list(recorded) != list(registry.get("synthetic").classes):
            log.info("%s holds classes %s: evaluated as a labelled dataset (imagefolder)",
                     eval_dir, recorded)
            return "imagefolder", eval_dir
        return entry.benchmark, eval_dir
    if entry.benchmark == "synthetic-compound":
        return entry.benchmark, _synthetic_benchmarks(config, workdir, "compound")
    if entry.benchmark == "synthetic-video":
        return entry.benchmark, _synthetic_benchmarks(config, workdir, "video")
    raise UsageError(f"config.eval.benchmarks entry {entry.benchmark}:{entry.protocol} needs its "
                     f"data folder: {entry.benchmark}:{entry.protocol}:/path/to/data")


def run_config_evals(config, workdir, encoder, eval_dir: str) -> list[dict]:
    """Runs every entry of config.eval.benchmarks; writes WORKDIR/eval/ and returns the results."""
    workdir = storage.fspath(workdir)
    entries = [parse_entry(e) for e in config.eval.benchmarks]  # all checked before any runs
    if not entries:
        raise UsageError("config.eval.benchmarks is empty: nothing to evaluate")
    output = storage.join(workdir, "eval")
    results = []
    for entry in entries:
        benchmark, data = resolve_entry(entry, config, workdir, eval_dir)
        words = tuple(config.eval.classes) or None
        options = runner.Options(
            batch_size=config.eval.batch_size,
            # config.eval.classes names the zero-shot classes of the default synthetic eval.
            prompt_words=words if benchmark in ("synthetic", "imagefolder") and
            entry.protocol == registry.ZERO_SHOT else None)
        log.info("evaluating %s / %s on %s", benchmark, entry.protocol, data)
        result = runner.run(encoder, benchmark, entry.protocol, data, options)
        if jax.process_index() == 0:  # every process computed the result; one writes it
            report.write_result(output, result)
        results.append(result)
    if jax.process_index() == 0:
        summary = report.write_report(output, encoder.description)
        log.info("evaluation report: %s", summary["markdown"])
    return results
