"""Command line entry point: flags only; the library does the work.

    python -m emocap_jax.main --config=configs/vitb16.py --workdir=DIR [--mode=train|eval|info]
        [--config.field=value ...]
"""
from __future__ import annotations


import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from emocap_jax import host_memory

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file with get_config(); fields overridable with "
    "--config.field=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and exports.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "info"],
                          "train: train (resuming from the workdir) then evaluate; eval: run the "
                          "config's evaluations (config.eval.benchmarks) on the workdir's export "
                          "and write WORKDIR/eval/report.md; info: print the model summary.")


def print_info(config) -> None:
    # Here, not at the top: the library and JAX load after the huge-pages re-exec (see __main__).
    import jax

    from emocap_jax.config_utils import clip_config
    from emocap_jax.models.clip import param_shapes

    model = clip_config(config)
    shapes = param_shapes(model)
    count = lambda tree: sum(int(np.prod(s)) for s in jax.tree_util.tree_leaves(
        tree, is_leaf=lambda x: isinstance(x, tuple)))
    v, t = model.vision, model.text
    print(f"model: {config.model_name}")
    print(f"  image tower: ViT {v.image_size}px, patch {v.patch_size} ({v.num_patches} patches), "
          f"width {v.width}, {v.layers} layers, {v.heads} heads, mlp {v.mlp_dim}: "
          f"{count(shapes['visual']):,} parameters")
    print(f"  text tower: context {t.context_length}, vocab {t.vocab_size}, width {t.width}, "
          f"{t.layers} layers, {t.heads} heads, mlp {t.mlp_dim}: {count(shapes['text']):,} "
          f"parameters")
    print(f"  embed dim {model.embed_dim}, activation {model.activation}, compute dtype "
          f"{model.dtype}, remat {model.remat}")
    print(f"  total: {count(shapes):,} parameters")
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform} "
          f"({jax.process_count()} process(es))")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    # Orbax and JAX log every checkpoint file operation at INFO through absl; our own progress
    # lines (logger "emocap_jax") stay visible. --verbosity=0 brings the library logs back.
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
    if _MODE.value == "info":
        print_info(config)
        return 0
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required for --mode=train and --mode=eval")
    from emocap_jax import train  # after the huge-pages re-exec, as in print_info
    if _MODE.value == "train":
        train.train_and_evaluate(config, _WORKDIR.value)
    else:
        train.evaluate_workdir(config, _WORKDIR.value)
    return 0


if __name__ == "__main__":
    # Huge pages for XLA:CPU's per-step buffers (see host_memory); a no-op where unsupported.
    host_memory.reexec_with_huge_pages()
    flags.mark_flags_as_required(["config"])
    app.run(main)
