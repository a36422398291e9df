"""Compiled per-device memory of the global contrastive loss (value and gradient) as N grows.

Compares the three forms in emocap_jax.losses on simulated CPU devices:
  single   [N, N] logits on one device            -> O(N^2)
  sharded  [n, N] logits per device, n = N / D    -> O(n * N)
  chunked  [n, c] logit chunks per device         -> O(n * c) plus gathered embeddings O(N * D)
Each program is lowered and compiled, and XLA's memory_analysis() reports its buffer sizes (for the
sharded forms, those of the per-device program); nothing is executed unless --time R is given,
which also runs each compiled program R times on random unit embeddings and reports the median
wall time of one value-and-gradient call (on simulated CPU devices all devices share this
machine's cores: compare forms and commits side by side, not with an accelerator).

Two tables: (1) a fixed mesh of --devices devices with growing N, so n = N / D grows with N too
and the sharded form grows like N^2 / D; (2) a fixed per-device batch n on meshes of 1, 2, 4, ...
devices, so N = n * D and the sharded form grows linearly in N while the chunked form stays nearly flat.

Run:  python bench/loss_memory.py            (see --help)
"""
import argparse
import os
import pathlib
import shlex
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # emocap_jax of this checkout

# Loads no JAX: the device count must be set (in main) before jax is imported.
from bench_args import refuse_repeated_options  # noqa: E402  (bench/ is sys.path[0])
from emocap_jax.cli_errors import entry_point, non_negative_int, positive_int  # noqa: E402

MIB = 1024 * 1024


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=positive_int, nargs="+",
                        default=[256, 512, 1024, 2048, 4096, 8192, 16384],
                        help="global batch sizes N for table 1 (default: %(default)s)")
    parser.add_argument("--dim", type=positive_int, default=512,
                        help="embedding width D (default: %(default)s)")
    parser.add_argument("--chunk", type=positive_int, default=128,
                        help="chunk size c of the chunked form (default: %(default)s)")
    parser.add_argument("--devices", type=positive_int, default=8,
                        help="number of simulated CPU devices (default: %(default)s)")
    parser.add_argument("--per-device", type=positive_int, default=1024,
                        help="fixed per-device batch n for table 2 (default: %(default)s)")
    parser.add_argument("--mining", default="off", choices=["off", "text", "image", "both"],
                        help="mining mode included in the loss (default: %(default)s)")
    parser.add_argument("--top-k", type=non_negative_int, default=0,
                        help="mining top-k, 0: no cap (default: %(default)s)")
    parser.add_argument("--mutual", action="store_true",
                        help="with --top-k, the mutual cap (training's default, configs/default.py)")
    parser.add_argument("--time", type=non_negative_int, default=0, metavar="R",
                        help="also run each program R times and report the median ms (default: 0, "
                             "compile only)")
    parser.add_argument("--skip-single-above", type=non_negative_int, default=16384,
                        help="do not compile the single-device form above this N (default: %(default)s)")
    args = parser.parse_args(argv)
    refuse_repeated_options(parser, argv)
    bad = [n for n in args.sizes if n % args.devices or n % args.chunk]
    if bad:
        parser.error(f"--sizes {bad} must be divisible by --devices {args.devices} and --chunk {args.chunk}")
    if args.per_device % args.chunk:
        # Table 2 starts with one device, where N = n.
        parser.error(f"--per-device {args.per_device} must be divisible by --chunk {args.chunk}")
    return args


def main(argv=None):
    args = parse_args(argv)
    # The device count is fixed when jax initialises its backend, so set it before importing jax.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from tqdm import tqdm

    from emocap_jax import losses
    from emocap_jax.mining import MiningConfig

    if len(jax.devices()) < args.devices:
        sys.exit(f"error: asked for {args.devices} devices, jax sees {len(jax.devices())} "
                 f"({jax.devices()[0].platform}); XLA_FLAGS was set too late or is overridden")

    if args.mutual and not args.top_k:
        sys.exit("error: --mutual needs a cap (--top-k > 0)")
    mining = MiningConfig(mode=args.mining, threshold=0.5, top_k=args.top_k, mutual=args.mutual)
    rng = np.random.default_rng(0)

    def measure(impl: str, global_batch: int, num_devices: int):
        mesh = Mesh(np.array(jax.devices()[:num_devices]), ("data",))
        if impl == "single":
            device = jax.devices()[0]
            sharding = jax.sharding.SingleDeviceSharding(device)
            batch_sharding = sharding
        else:
            sharding = NamedSharding(mesh, P())
            batch_sharding = NamedSharding(mesh, P("data"))
        emb = jax.ShapeDtypeStruct((global_batch, args.dim), jnp.float32, sharding=batch_sharding)
        scale = jax.ShapeDtypeStruct((), jnp.float32, sharding=sharding)

        def loss(image, text, logit_scale, guide):
            return losses.contrastive_loss(image, text, logit_scale, mesh=mesh, impl=impl,
                                           chunk_size=args.chunk, mining=mining, guide_text=guide)

        fn = jax.jit(jax.value_and_grad(loss, (0, 1, 2)))
        compiled = fn.lower(emb, emb, scale, emb).compile()
        stats = compiled.memory_analysis()
        return dict(temp=stats.temp_size_in_bytes, args=stats.argument_size_in_bytes,
                    out=stats.output_size_in_bytes,
                    ms=run_ms(compiled, emb, scale) if args.time else None)

    def run_ms(compiled, emb, scale):
        def unit():
            x = rng.standard_normal(emb.shape).astype(np.float32)
            return jax.device_put(x / np.linalg.norm(x, axis=1, keepdims=True), emb.sharding)

        inputs = (unit(), unit(), jax.device_put(np.float32(10.0), scale.sharding), unit())
        jax.block_until_ready(compiled(*inputs))  # the first call allocates
        times = []
        for _ in range(args.time):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*inputs))
            times.append(time.perf_counter() - start)
        return 1000 * float(np.median(times))

    def logit_block_mib(impl, global_batch, per_device):
        # One float32 logit block of the size each form is designed around.
        return {"single": global_batch * global_batch, "sharded": per_device * global_batch,
                "chunked": per_device * args.chunk}[impl] * 4 / MIB

    def table(title, cases):
        rows = []
        for impl, global_batch, num_devices in tqdm(cases, desc=title.split(":")[0], file=sys.stderr):
            if impl == "single" and global_batch > args.skip_single_above:
                continue
            rows.append((impl, global_batch, num_devices, measure(impl, global_batch, num_devices)))
        print(f"\n{title}")
        header = (f"{'N':>6} {'devices':>7} {'n':>6} {'impl':>8} {'temp MiB':>10} {'args MiB':>9} "
                  f"{'out MiB':>8} {'logits MiB':>10} {'N*D MiB':>8}"
                  + (f" {'ms':>8}" if args.time else ""))
        print(header)
        print("-" * len(header))
        for impl, global_batch, num_devices, mem in rows:
            per_device = global_batch if impl == "single" else global_batch // num_devices
            print(f"{global_batch:>6} {num_devices if impl != 'single' else 1:>7} {per_device:>6} {impl:>8} "
                  f"{mem['temp'] / MIB:>10.2f} {mem['args'] / MIB:>9.2f} {mem['out'] / MIB:>8.2f} "
                  f"{logit_block_mib(impl, global_batch, per_device):>10.2f} "
                  f"{global_batch * args.dim * 4 / MIB:>8.2f}"
                  + (f" {mem['ms']:>8.1f}" if args.time else ""))

    print("$ " + shlex.join(["python"] + sys.argv))
    print(f"jax {jax.__version__}, {jax.devices()[0].platform} x {len(jax.devices())}; value_and_grad of "
          f"contrastive_loss w.r.t. (image, text, logit_scale); D={args.dim}, chunk c={args.chunk}, "
          f"mining={args.mining}" + (f" top_k={args.top_k}" if args.top_k else "")
          + (" mutual" if args.mutual else "")
          + (f"; ms: median of {args.time} runs" if args.time else ""))
    print("temp/args/out: per-device bytes from compile().memory_analysis(). For scale: 'logits MiB' is one "
          "float32 logit block of the form (single [N,N], sharded [n,N], chunked [n,c]); 'N*D MiB' is one "
          "[N,D] float32 array (the sharded forms hold the two gathered modalities and their cotangents, "
          "about 4 of these).")

    impls = ("single", "sharded", "chunked")
    table(f"Table 1: fixed mesh of {args.devices} devices, growing N (n = N / {args.devices} grows too)",
          [(impl, n, args.devices) for n in args.sizes for impl in impls])
    mesh_sizes = [d for d in (1, 2, 4, 8, 16, 32, 64) if d <= args.devices]
    table(f"Table 2: fixed per-device n = {args.per_device}, N = n * devices",
          [(impl, args.per_device * d, d) for d in mesh_sizes for impl in impls])


if __name__ == "__main__":
    sys.exit(entry_point(main)())
