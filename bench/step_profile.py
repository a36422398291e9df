"""Where an emocap_jax training step spends its time, by XLA operation, from a profiler trace.

    python bench/step_profile.py                       # ViT-B-16, batch 8, fp32, remat dots
    python bench/step_profile.py --batch 32 --top 30

Runs one warm-up step, then traces one step with jax.profiler and sums the time of each executed
XLA operation (on CPU: each thunk, over all worker threads; `while` bodies count every iteration).
Prints the totals by kind of operation (the name without its numeric suffix: `ynn_fusion` are the
matmuls XLA:CPU hands to YNNPACK, `wrapped_broadcast` the zero-fills of buffers such as the
scanned layer stack's saved activations, `*dynamic-slice*` / `*dynamic-update-slice*` the reads
and writes of one layer's slice of those stacks) and the most expensive single operations with the
shape they produce. The step is bench/train_step.py's (same model, optimiser and batch).
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import pathlib
import re
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # emocap_jax of this checkout

from emocap_jax.cli_errors import entry_point, positive_int  # noqa: E402

# Lines of a device plane that repeat the time of its operations (not counted).
_AGGREGATE_LINES = {"XLA Modules", "Steps", "Launch Stats", "TensorFlow Name Scope",
                    "TensorFlow Ops", "Framework Ops", "Source code", "XLA TraceMe"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16",
                        help="architecture (open_clip name; default: ViT-B-16)")
    parser.add_argument("--batch", type=positive_int, default=8, help="global batch size (default: 8)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="compute dtype of the model (default: fp32)")
    parser.add_argument("--remat", default="dots", help="none, full or dots")
    parser.add_argument("--attention", default="auto",
                        help="attention kernel: auto, xla or cudnn (default: auto)")
    parser.add_argument("--top", type=positive_int, default=15, help="single operations to list")
    args = parser.parse_args(argv)

    import jax
    from jax._src.lib import _profile_data

    from train_step import emocap_step  # bench/train_step.py: the step it times, profiled here

    args.lr = 1e-5
    _, step_fn, state, batch = emocap_step(args, args.remat, args.attention)
    compiled = step_fn.lower(state, batch).compile()
    hlo = compiled.as_text()
    state, _ = compiled(state, batch)
    jax.block_until_ready(state)

    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        state, _ = compiled(state, batch)
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
        profile = _profile_data.ProfileData.from_file(path)

    # Device planes (GPU/TPU) name the ops directly; on CPU the ops run as events on the XLA
    # worker threads of the host plane, next to the executor's own "ThunkExecutor" spans.
    # A GPU plane's "XLA Ops" line holds the HLO operations; its other lines cover the same time
    # again (whole programs, steps, launch statistics, the CUDA streams' kernels). Where a trace
    # has no "XLA Ops" line the streams' kernels are counted, by kernel name.
    per_op = collections.Counter()
    counted_lines = set()
    for plane in profile.planes:
        on_device = not plane.name.startswith("/host")
        lines = list(plane.lines)
        if on_device:
            ops = [line for line in lines if line.name == "XLA Ops"]
            lines = ops or [line for line in lines if line.name not in _AGGREGATE_LINES]
            counted_lines.update(f"{plane.name}: {line.name}" for line in lines)
        for line in lines:
            if not (on_device or line.name.startswith("tf_XLAEigen")):
                continue
            for event in line.events:
                if not event.name.startswith(("ThunkExecutor", "SlinkyThreadPool")):
                    per_op[event.name] += event.duration_ns
    if not per_op:
        raise SystemExit("the trace held no XLA operations (unknown profiler layout)")
    total = sum(per_op.values())
    kinds = collections.Counter()
    for name, ns in per_op.items():
        kinds[re.sub(r"\.\d+$", "", name)] += ns

    print(f"{args.model}, batch {args.batch}, {args.precision}, remat {args.remat}, "
          f"{jax.devices()[0].platform}: {total / 1e9:.2f} s of operation time in one step")
    if counted_lines:
        print("counted trace lines: " + "; ".join(sorted(counted_lines)))
    print(f"\n{'kind of operation':40s} {'time (s)':>9s} {'share':>7s}")
    for kind, ns in kinds.most_common():
        if ns / total >= 0.005:
            print(f"{kind:40s} {ns / 1e9:9.3f} {100 * ns / total:6.1f}%")
    print(f"\n{'operation':34s} {'time (s)':>9s}  result shape / source")
    for name, ns in per_op.most_common(args.top):
        line = re.search(r"\n\s*(?:ROOT )?%" + re.escape(name) + r" = ([^\n]*)", hlo)
        shape = line.group(1).split(" ")[0] if line else "?"
        op_name = re.search(r'op_name="([^"]*)"', line.group(1)) if line else None
        source = "/".join(op_name.group(1).split("/")[-3:]) if op_name else ""
        print(f"{name:34s} {ns / 1e9:9.3f}  {shape[:36]} {source}")


if __name__ == "__main__":
    sys.exit(entry_point(main)())
