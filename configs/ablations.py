"""Ablations of the EmoCapCLIP objective (DESIGN section 2), on top of another config.

    python -m emocap_jax.main --config=configs/ablations.py:global_only --workdir=runs/ab_global
    python -m emocap_jax.main --config=configs/ablations.py:mining_both,vitb16 --workdir=...

The argument is `NAME[,BASE]`; BASE is a config module in configs/ (default `demo`, which runs on
a CPU). NAMEs: global_only, summary (+ summary term), local (+ local term), full (everything,
text mining), mining_text, mining_image, mining_both, mining_off.
"""
import importlib

ABLATIONS = {
    "global_only": dict(summary_weight=0.0, local_weight=0.0, mining="off"),
    "summary": dict(summary_weight=1.0, local_weight=0.0, mining="off"),
    "local": dict(summary_weight=1.0, local_weight=1.0, mining="off"),
    "full": dict(summary_weight=1.0, local_weight=1.0, mining="text"),
    "mining_text": dict(mining="text"),
    "mining_image": dict(mining="image"),
    "mining_both": dict(mining="both"),
    "mining_off": dict(mining="off"),
}


def get_config(arg: str = "full"):
    name, _, base = arg.partition(",")
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; choose one of {sorted(ABLATIONS)}")
    config = importlib.import_module(f"configs.{base or 'demo'}").get_config()
    choice = ABLATIONS[name]
    if "summary_weight" in choice:
        config.loss.summary_weight = choice["summary_weight"]
    if "local_weight" in choice:
        config.loss.local_weight = choice["local_weight"]
    config.loss.mining.mode = choice["mining"]
    return config
