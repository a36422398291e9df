"""Training-step time, peak memory, FLOPs and MFU: emocap_jax and open_clip side by side.

    python bench/train_step.py                                   # ViT-B-16, batch 32, fp32, this machine
    python bench/train_step.py --precision bf16 --batch 256      # on a GPU
    python bench/train_step.py --impls emocap --remat none,full  # emocap_jax variants only
    python bench/train_step.py --rounds 2 --impls open_clip,emocap,open_clip+hugepages
    python bench/train_step.py --impls emocap --data synthetic   # + a row fed by the input pipeline

emocap_jax runs with the huge-page malloc setting `python -m emocap_jax.main` gives itself
(emocap_jax/host_memory.py); "open_clip+hugepages" runs open_clip with the same setting. With
--rounds N every row runs N times, alternating, each time in a fresh process, and the table pools
the timed steps of all rounds.

Both sides train the same full CLIP (image and text towers, symmetric InfoNCE with the learnable
temperature, AdamW with decoupled weight decay, no gradient clipping) on the same batch shape and
precision ("bf16" = bf16 compute with float32 master weights: open_clip's `--precision amp_bf16`).
Each implementation runs in its own subprocess, one after the other, so its peak memory is its own;
open_clip (and torch) are used only when installed and are never dependencies of emocap_jax:

    python -m venv --system-site-packages /tmp/benchenv
    /tmp/benchenv/bin/pip install torch==2.14.1 torchvision==0.29.1   # open_clip imports torchvision
    /tmp/benchenv/bin/pip install --no-deps open_clip_torch==3.3.0
    /tmp/benchenv/bin/python bench/train_step.py

End to end (--data DIR, or --data synthetic for 3,000 fabricated 256 px faces): after its
step-only timing, each emocap_jax job trains --steps more steps in the same process on batches
from the real Grain training pipeline (TFRecords, decode, random resized crop, flip, colour jitter,
tokens; --data-workers worker processes) instead of one synthetic batch, as the training loop
does it: the next batch is read while the device runs the step in flight. That row reports the
wall time per step, images/s, the fraction of the time spent waiting for data and MFU, next to the
step-only row. Within 5% of step-only means the input pipeline keeps the accelerator fed.

Figures printed per implementation:
- step time: median (and min/max) over --steps timed steps after --warmup untimed ones, each step
  waited for (block_until_ready / cuda synchronize);
- peak memory: on CPU the process's peak resident set (whole process, and during the timed steps
  alone: the kernel's high-water mark is reset after warm-up); on GPU the allocator's peak;
- on CPU, page faults and system/user CPU time per timed step (memory faulted in afresh every step
  shows up as system time);
- model FLOPs per step: 3x the forward matmul FLOPs of both towers and of the loss's logits, from
  the architecture (the MFU convention: remat recomputation and optimiser arithmetic are not
  counted; XLA's cost analysis is not used because it counts a scanned layer stack's body once);
- MFU: model FLOPs per second over the device's peak (bf16 dense tensor-core peak for H100/H200,
  TF32 for fp32 there); on CPU, over the best measured 2048^3 fp32 matmul rate of either framework
  on the same cores (each printed).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # emocap_jax from this checkout

from emocap_jax.cli_errors import entry_point, float_in, non_negative_int, positive_int  # noqa: E402

# Dense peak throughput per GPU (NVIDIA datasheets; the sparse figures are twice these), by
# precision, matched against the device name most specific first: "NVIDIA H100 PCIe" is not the
# SXM part's 989 TFLOP/s.
GPU_PEAK_FLOPS = {
    "H100 PCIe": {"bf16": 756e12, "fp32": 378e12},
    "H100 NVL": {"bf16": 835e12, "fp32": 418e12},
    "H100": {"bf16": 989e12, "fp32": 494e12},   # fp32 matmuls run as TF32 on tensor cores
    "H200": {"bf16": 989e12, "fp32": 494e12},
    "A100": {"bf16": 312e12, "fp32": 156e12},
}

def forward_flops(cfg, batch: int) -> float:
    """Matmul FLOPs of one forward pass of both towers and the global loss's logits (2 per
    multiply-add), from the config. Each tower projects its pooled token only (open_clip's step;
    emocap_jax's image tower also projects every patch token, for the local loss, which the global
    objective discards)."""
    def tower(tokens, width, layers, mlp_dim):
        per_layer = 2 * tokens * (3 * width * width + width * width + 2 * width * mlp_dim)
        attention = 2 * 2 * tokens * tokens * width          # q.k^T and probs.v
        return layers * (per_layer + attention)

    v, t = cfg.vision, cfg.text
    patches = (v.image_size // v.patch_size) ** 2
    vision = tower(patches + 1, v.width, v.layers, v.mlp_dim)
    vision += 2 * patches * (3 * v.patch_size ** 2) * v.width     # patch embedding
    vision += 2 * v.width * cfg.embed_dim                          # projection (pooled token)
    text = tower(t.context_length, t.width, t.layers, t.mlp_dim)
    text += 2 * t.width * cfg.embed_dim
    # One [B, D] x [D, B] product: both directions of the symmetric loss read the same logits.
    logits = 2 * batch * batch * cfg.embed_dim
    return batch * (vision + text) + logits


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_peaks(reset: bool) -> dict:
    """Whole-process peak RSS (rusage, which clear_refs leaves alone) and, when the high-water mark
    was reset after warm-up, the peak during the timed steps."""
    return {"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_bytes_steps": _peak_rss_bytes() if reset else None}


def _rusage():
    return resource.getrusage(resource.RUSAGE_SELF)


def _per_step_os_costs(before, after, steps: int) -> dict:
    """Page faults and kernel CPU time per timed step: memory that is handed back to the OS and
    faulted in again every step shows up here (as system time), not in the matmul rate."""
    return {"minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
            "sys_s_per_step": (after.ru_stime - before.ru_stime) / steps,
            "user_s_per_step": (after.ru_utime - before.ru_utime) / steps}


def _reset_peak_rss():
    # Writing 5 to clear_refs resets the kernel's peak-RSS mark (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_matmul_flops(jax, jnp) -> float:
    """Measured fp32 matmul rate of this CPU through XLA: the attainable peak MFU is quoted against."""
    n = 2048
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / min(times)


def _gpu_peak(kind: str, precision: str):
    for name, peaks in GPU_PEAK_FLOPS.items():
        if name in kind:
            return peaks[precision]
    return None


def _summary(times):
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "steps": len(times), "times_s": list(times)}


def merge_rounds(rounds: list) -> dict:
    """One implementation's results from several rounds (processes) as one row: the median over
    every timed step of every round, the highest peak memory, per-step OS costs averaged."""
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return rounds[-1]
    merged = dict(ok[-1])
    merged.update(_summary([t for r in ok for t in r["times_s"]]), rounds=len(ok))
    for key in ("peak_bytes", "peak_bytes_steps", "cpu_matmul_flops"):
        values = [r[key] for r in ok if r.get(key) is not None]
        if values:
            merged[key] = max(values)
    for key in ("minor_faults_per_step", "sys_s_per_step", "user_s_per_step"):
        if all(r.get(key) is not None for r in ok):
            merged[key] = statistics.mean(r[key] for r in ok)
    fed = [r["fed"] for r in ok if r.get("fed")]
    if fed:  # the pipeline-fed timing: mean of the rounds' mean wall time per step
        merged["fed"] = {"median_s": statistics.mean(f["median_s"] for f in fed),
                         "min_s": min(f["min_s"] for f in fed),
                         "max_s": max(f["max_s"] for f in fed),
                         "data_wait_fraction": statistics.mean(f["data_wait_fraction"]
                                                               for f in fed),
                         "workers": fed[0]["workers"]}
    return merged


# ---------------------------------------------------------------------------------- emocap_jax

def emocap_step(args, remat: str, attention: str):
    """The emocap_jax side of the comparison: (config, jitted train step, initial state, batch) for
    --model, --batch, --precision and --lr. bench/step_profile.py profiles this same step."""
    import jax
    import numpy as np
    import optax

    from emocap_jax.models.clip import CLIP, init_params
    from emocap_jax.models.config import variant
    from emocap_jax.train_step import initial_state, make_train_step

    cfg = variant(args.model).replace(
        dtype="bfloat16" if args.precision == "bf16" else "float32",
        remat=remat != "none", remat_policy="full" if remat == "none" else remat,
        attention=attention)
    model = CLIP(cfg)
    params = jax.jit(lambda k: init_params(cfg, k))(jax.random.PRNGKey(0))
    optimizer = optax.adamw(args.lr, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.2)
    from configs.default import get_config

    # The project's loss settings with CLIP's objective alone: the global term, no mining.
    loss_config = get_config().loss
    loss_config.update(summary_weight=0.0, local_weight=0.0, impl="single", chunk_size=0,
                       label_positives=False)
    loss_config.mining.mode = "off"
    step_fn = jax.jit(make_train_step(model, optimizer, lambda s: args.lr, loss_config),
                      donate_argnums=0)
    state = initial_state(params, optimizer)
    rng = np.random.default_rng(0)
    b, s, ctx = args.batch, cfg.vision.image_size, cfg.text.context_length
    tokens = rng.integers(1, cfg.text.vocab_size - 1, (b, ctx)).astype(np.int32)
    tokens[np.arange(b), rng.integers(5, ctx, b)] = cfg.text.vocab_size - 1  # end-of-text
    batch = jax.device_put({
        "image": rng.integers(0, 256, (b, s, s, 3)).astype(np.uint8),
        "global_tokens": tokens})
    jax.block_until_ready(batch)
    return cfg, step_fn, state, batch


def run_emocap(args, remat: str, attention: str) -> dict:
    import jax
    import jax.numpy as jnp

    cfg, step_fn, state, batch = emocap_step(args, remat, attention)
    b = args.batch
    t = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    mem = compiled.memory_analysis()

    for _ in range(args.warmup):
        state, metrics = compiled(state, batch)
        jax.block_until_ready(state)
    reset = _reset_peak_rss()
    times = []
    usage = _rusage()
    for _ in range(args.steps):
        t = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
    os_costs = _per_step_os_costs(usage, _rusage(), args.steps)
    loss = float(metrics["loss"])

    device = jax.devices()[0]
    result = {"impl": f"emocap_jax (remat {remat}, attn {attention}){_huge_pages_label()}",
              "device": device.device_kind,
              "platform": device.platform, "compile_s": compile_s, **_summary(times),
              "loss": loss, "model_flops": 3 * forward_flops(cfg, b)}
    if device.platform == "cpu":
        result.update(_cpu_peaks(reset), **os_costs)
        result["cpu_matmul_flops"] = _cpu_matmul_flops(jax, jnp)
    else:
        stats = device.memory_stats() or {}
        result["peak_bytes"] = stats.get("peak_bytes_in_use")
    if mem is not None:
        result["compiled_temp_bytes"] = int(mem.temp_size_in_bytes)
        result["compiled_argument_bytes"] = int(mem.argument_size_in_bytes)
    if args.data:
        result["fed"] = run_emocap_fed(args, cfg, compiled, state)
    return result


def _pipeline_data_dir(args) -> str:
    if args.data != "synthetic":
        return args.data
    sys.path.insert(0, os.path.join(REPO, "bench"))
    from input_pipeline import fabricate_dataset, parse_args as input_args
    return fabricate_dataset(input_args([]))


def run_emocap_fed(args, cfg, compiled, state) -> dict:
    """The same compiled step fed by the Grain training pipeline, through the training loop's
    StepClock (emocap_jax/step_clock.py): one step in flight (the next batch is read while the
    device runs the current one), wall time per step, and the share of it the device waited for
    data (time in next() and the host-to-device copy once the step in flight was done)."""
    import jax

    from emocap_jax.data import pipeline
    from emocap_jax.step_clock import StepClock
    from emocap_jax.tokenizers import get_tokenizer

    data_config = pipeline.TrainPipelineConfig(
        data_dir=_pipeline_data_dir(args), image_size=cfg.vision.image_size,
        context_length=cfg.text.context_length, worker_count=args.data_workers)
    tokenizer = get_tokenizer("clip", cfg.text.context_length)
    iterator = pipeline.make_train_iterator(data_config, tokenizer, args.batch, 0, 1)
    fields = ("image", "global_tokens")  # what the global-loss step reads

    def device_batches():
        while True:
            local = next(iterator)
            yield jax.device_put({k: local[k] for k in fields})

    batches = device_batches()
    clock = StepClock()
    try:
        metrics = None
        for _ in range(args.warmup + 1):  # the first batch waits for the workers to start
            state, metrics = clock.dispatch(compiled, state, clock.next_batch(batches))
        jax.block_until_ready(metrics)
        clock.restart()
        # When each timed step's result is ready. With one step in flight, the time of one loop
        # turn is not a step's (the first turn finds its previous step long done), so a step's
        # time is the gap between the readiness of its result and of the one before.
        done = [clock.start]
        for i in range(args.steps):
            state, metrics = clock.dispatch(compiled, state, clock.next_batch(batches))
            if i:  # dispatch waited for the previous step's result
                done.append(time.perf_counter())
        jax.block_until_ready(metrics)
        done.append(time.perf_counter())
        _, wait_fraction, per_step = clock.rates(args.batch)
    finally:
        if hasattr(iterator, "close"):
            iterator.close()
    times = [b - a for a, b in zip(done, done[1:])]
    return {"median_s": per_step, "min_s": min(times), "max_s": max(times),
            "data_wait_fraction": wait_fraction, "workers": args.data_workers}


# ------------------------------------------------------------------------------------ open_clip

def run_open_clip(args) -> dict:
    import numpy as np
    import open_clip
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    model = open_clip.create_model(args.model, precision="fp32", device=device)
    model.train()
    loss_fn = open_clip.ClipLoss()
    # open_clip's main.py grouping: no weight decay on gains, biases, embeddings, logit scale.
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or \
        "logit_scale" in n
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
              {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": 0.2}]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    b = args.batch
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    ctx = model.context_length
    vocab = model.vocab_size
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, vocab - 1, (b, ctx))
    tokens[np.arange(b), rng.integers(5, ctx, b)] = vocab - 1
    images = torch.randn(b, 3, size, size, device=device)
    text = torch.as_tensor(tokens, device=device)
    autocast = (torch.autocast(device, dtype=torch.bfloat16) if args.precision == "bf16"
                else torch.autocast(device, enabled=False))

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            image_features, text_features, logit_scale = model(images, text)[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        optimizer.step()
        return loss

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
        sync()
    reset = _reset_peak_rss()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    usage = _rusage()
    for _ in range(args.steps):
        t = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t)
    os_costs = _per_step_os_costs(usage, _rusage(), args.steps)
    cfg = _open_clip_shapes(model)
    result = {"impl": f"open_clip {open_clip.__version__} (torch {torch.__version__})"
                      f"{_huge_pages_label()}",
              "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "platform": "gpu" if device == "cuda" else "cpu", "compile_s": None,
              **_summary(times), "loss": float(loss),
              "model_flops": 3 * forward_flops(types.SimpleNamespace(**cfg), b)}
    if device == "cpu":
        result.update(_cpu_peaks(reset), **os_costs)
        result["cpu_matmul_flops"] = _torch_matmul_flops(torch)
    else:
        result["peak_bytes"] = torch.cuda.max_memory_allocated()
    return result


def _torch_matmul_flops(torch) -> float:
    n = 2048
    a = torch.ones(n, n)
    a @ a
    times = []
    for _ in range(5):
        t = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / min(times)


def _open_clip_shapes(model):
    cfg_v = model.visual
    size = cfg_v.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    patch = cfg_v.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    vis_width = cfg_v.conv1.out_channels
    vis_layers = len(cfg_v.transformer.resblocks)
    vis_mlp = cfg_v.transformer.resblocks[0].mlp.c_fc.out_features
    txt_width = model.transformer.width
    txt_layers = len(model.transformer.resblocks)
    txt_mlp = model.transformer.resblocks[0].mlp.c_fc.out_features
    return dict(
        embed_dim=model.text_projection.shape[1],
        vision=types.SimpleNamespace(image_size=size, patch_size=patch, width=vis_width,
                                     layers=vis_layers, mlp_dim=vis_mlp),
        text=types.SimpleNamespace(context_length=model.context_length, width=txt_width,
                                   layers=txt_layers, mlp_dim=txt_mlp))


# ----------------------------------------------------------------------------------- reporting

def _fmt_gb(x):
    return "-" if x is None else f"{x / 1e9:.2f} GB"


def _mfu(r, precision, cpu_peak=None):
    seconds = r["median_s"]
    achieved = r["model_flops"] / seconds
    if r["platform"] == "cpu":
        peak = cpu_peak
        return achieved, (achieved / peak if peak else None)
    peak = _gpu_peak(r["device"], precision)
    return achieved, (achieved / peak if peak else None)


def report(results, args):
    print(f"\n{args.model}, batch {args.batch}, {args.precision}; median of {args.steps} steps "
          f"after {args.warmup} warm-up" + (f", pooled over {args.rounds} alternating rounds"
                                           if args.rounds > 1 else ""))
    # On CPU, MFU is quoted against the best 2048^3 fp32 matmul rate any framework reached here.
    cpu_peak = max((r.get("cpu_matmul_flops") or 0 for r in results if "error" not in r),
                   default=0) or None
    header = (f"{'implementation':54s} {'step (s)':>9s} {'min-max (s)':>14s} {'img/s':>8s} "
              f"{'peak mem':>10s} {'peak (steps)':>12s} {'TFLOP/s':>8s} {'MFU':>6s}")
    print(header)
    print("-" * len(header))
    for r in results:
        if "error" in r:
            print(f"{r['impl']:54s} failed: {r['error']}")
            continue
        achieved, mfu = _mfu(r, args.precision, cpu_peak)
        print(f"{r['impl']:54s} {r['median_s']:9.3f} {r['min_s']:6.2f}-{r['max_s']:<7.2f} "
              f"{args.batch / r['median_s']:8.1f} {_fmt_gb(r.get('peak_bytes')):>10s} "
              f"{_fmt_gb(r.get('peak_bytes_steps')):>12s} {achieved / 1e12:8.2f} "
              f"{'-' if mfu is None else f'{100 * mfu:5.1f}%':>6s}")
        fed = r.get("fed")
        if fed:
            achieved, mfu = _mfu({**r, "median_s": fed["median_s"]}, args.precision, cpu_peak)
            name = f"  fed by Grain ({fed['workers']} workers), data wait " \
                   f"{100 * fed['data_wait_fraction']:.1f}%"
            print(f"{name:54s} {fed['median_s']:9.3f} {fed['min_s']:6.2f}-{fed['max_s']:<7.2f} "
                  f"{args.batch / fed['median_s']:8.1f} {'':>10s} {'':>12s} "
                  f"{achieved / 1e12:8.2f} {'-' if mfu is None else f'{100 * mfu:5.1f}%':>6s}")
    for r in results:
        if "error" in r:
            continue
        extra = [f"model FLOPs/step {r['model_flops'] / 1e12:.2f} T"]
        if r.get("compile_s") is not None:
            extra.append(f"compile {r['compile_s']:.1f} s")
        if r.get("compiled_temp_bytes") is not None:
            extra.append(f"compiled temp {_fmt_gb(r['compiled_temp_bytes'])}")
        if r.get("minor_faults_per_step") is not None:
            extra.append(f"per step: {r['minor_faults_per_step'] / 1e3:.0f}k page faults, "
                         f"{r['sys_s_per_step']:.2f} s system + {r['user_s_per_step']:.2f} s user "
                         "CPU time")
        if r.get("cpu_matmul_flops"):
            extra.append(f"measured fp32 matmul {r['cpu_matmul_flops'] / 1e12:.3f} TFLOP/s")
        extra.append(f"loss {r['loss']:.4f}")
        print(f"  {r['impl']}: " + "; ".join(extra))


def _worker_env(job: str) -> dict:
    """emocap_jax runs as `python -m emocap_jax.main` runs it: with glibc's huge-page tunable where
    supported (emocap_jax/host_memory.py). open_clip runs in the environment as given, or with the
    same tunable as "open_clip+hugepages", for a like-for-like comparison of the allocator."""
    from emocap_jax import host_memory
    if job.startswith("emocap") or job == "open_clip+hugepages":
        return host_memory.environment_with_huge_pages(os.environ) or dict(os.environ)
    return dict(os.environ)


def _huge_pages_label() -> str:
    from emocap_jax import host_memory
    return " + huge pages" if host_memory.TUNABLE in os.environ.get("GLIBC_TUNABLES", "") else ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16",
                        help="architecture (open_clip name; default: ViT-B-16)")
    parser.add_argument("--batch", type=positive_int, default=32,
                        help="global batch size (default: 32)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="compute dtype (bf16: emocap_jax bfloat16 compute, open_clip torch "
                             "autocast; default: fp32)")
    parser.add_argument("--steps", type=positive_int, default=3, help="timed steps (default: 3)")
    parser.add_argument("--warmup", type=non_negative_int, default=1,
                        help="untimed steps first (default: 1)")
    parser.add_argument("--rounds", type=positive_int, default=1,
                        help="run every implementation this many times, alternating, each in a "
                             "fresh process; the table pools all timed steps")
    # torch refuses a negative rate in every open_clip row; optax takes any, and a NaN or an
    # infinite one makes the parameters NaN: the timing of a step that computes nothing useful.
    parser.add_argument("--lr", type=float_in(0, math.inf, low_open=True, high_open=True),
                        default=1e-5, help="AdamW learning rate of both implementations, a "
                                           "finite positive number (default: 1e-5)")
    parser.add_argument("--impls", default="emocap,open_clip",
                        help="comma-separated: emocap, open_clip, open_clip+hugepages (open_clip "
                             "with emocap_jax's huge-page allocator setting); open_clip rows are "
                             "skipped if it is not installed")
    parser.add_argument("--remat", default="full",
                        help="emocap_jax remat policies to run, comma-separated: none, full "
                             "(nothing saved inside a block), dots (matmul outputs saved)")
    parser.add_argument("--attention", default="auto",
                        help="emocap_jax attention kernels to run, comma-separated: auto, xla, "
                             "cudnn")
    parser.add_argument("--data", help="also time each emocap_jax step fed by the Grain "
                        "training pipeline from this dataset directory (TFRecords), or "
                        "'synthetic' for fabricated faces (see the docstring)")
    parser.add_argument("--data-workers", type=non_negative_int, default=os.cpu_count() or 1,
                        help="Grain worker processes for --data (default: the core count)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.data and args.data != "synthetic" and \
            not os.path.isfile(os.path.join(args.data, "metadata.json")):
        parser.error(f"--data {args.data}: not a dataset directory (no metadata.json)")

    if args.worker:
        kind, remat, attention = (args.worker.split(":") + ["", ""])[:3]
        kind = kind.split("+")[0]
        try:
            result = (run_emocap(args, remat, attention) if kind == "emocap"
                      else run_open_clip(args))
        except Exception as e:  # reported in the table instead of losing the other rows
            result = {"impl": args.worker, "error": f"{type(e).__name__}: {e}"}
        print("RESULT " + json.dumps(result), flush=True)
        return

    jobs = []
    for impl in args.impls.split(","):
        if impl == "emocap":
            jobs += [f"emocap:{r}:{a}" for r in args.remat.split(",")
                     for a in args.attention.split(",")]
        elif impl in ("open_clip", "open_clip+hugepages"):
            try:
                import open_clip  # noqa: F401
                import torch  # noqa: F401
                jobs.append(impl)
            except ImportError:
                print("open_clip/torch not installed: skipping open_clip (see this script's "
                      "docstring for the install)", flush=True)
        else:
            parser.error(f"--impls: unknown implementation {impl!r}")
    if not jobs:
        parser.error("nothing to run: no implementation of --impls is available")
    # Rounds alternate the implementations (A B A B ...), so a slow spell of a shared machine
    # falls on both rather than on whichever ran second.
    per_job = {job: [] for job in jobs}
    for round_ in range(args.rounds):
        for job in jobs:
            print(f"running {job} (round {round_ + 1}/{args.rounds}) ...", flush=True)
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", job] + [
                a for a in sys.argv[1:]]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env(job))
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if not lines:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                r = {"impl": job, "error": f"exit {proc.returncode}: " + " | ".join(tail)}
            else:
                r = json.loads(lines[-1][len("RESULT "):])
            per_job[job].append(r)
            if "error" not in r:
                print(f"  {r['impl']}: median {r['median_s']:.3f} s/step, peak "
                      f"{_fmt_gb(r.get('peak_bytes'))}", flush=True)
    results = [merge_rounds(per_job[job]) for job in jobs]
    report(results, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    sys.exit(entry_point(main)())
