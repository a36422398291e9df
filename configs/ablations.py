"""Ablations of the EmoCapCLIP objective (emocap_jax/train_step.py), on top of another config.

    python -m emocap_jax.main --config=configs/ablations.py:global_only --workdir=runs/ab_global
    python -m emocap_jax.main --config=configs/ablations.py:mining_both,vitb16 --workdir=...

The argument is `NAME[,BASE]`; BASE is a config module in configs/ (default `demo`, which runs on
a CPU). NAMEs: global_only, global_mining (global term + text-guided mining, the summary sentences
only guiding it), summary (+ summary term), local (+ local term), mining (+ summary term +
text-guided mining), full (everything, text mining), mining_text, mining_image, mining_both,
mining_off (only the mining mode changes).

Every variant that mines does so as ABLATIONS.md's tables were measured, not as the default
config does: in both contrastive terms and with the one-sided cap (`loss.mining.terms=("global",
"summary")`, `loss.mining.mutual=False`). `--config.loss.mining.terms="('global',)"
--config.loss.mining.mutual=True` gives the default's rule.

`bench/ablations.py` fine-tunes global_only, summary, local, mining and full from one
synthetic-pretrained checkpoint and evaluates them with `config.eval.benchmarks` as set here
(`--mode=eval`): zero-shot and AU detection and retrieval on the held-out basic faces, the
compound protocol on the synthetic compound faces, and the grounding protocol (pointing game
of the local term's sentence-to-patch maps) on the basic faces.
"""
import importlib
import pkgutil

ABLATIONS = {
    "global_only": dict(summary_weight=0.0, local_weight=0.0, mining="off"),
    # Mining on its own: what it adds to the global term alone, with no summary term that already
    # aligns each face with a sentence naming its emotion.
    "global_mining": dict(summary_weight=0.0, local_weight=0.0, mining="text"),
    "summary": dict(summary_weight=1.0, local_weight=0.0, mining="off"),
    "local": dict(summary_weight=1.0, local_weight=1.0, mining="off"),
    "mining": dict(summary_weight=1.0, local_weight=0.0, mining="text"),
    "full": dict(summary_weight=1.0, local_weight=1.0, mining="text"),
    "mining_text": dict(mining="text"),
    "mining_image": dict(mining="image"),
    "mining_both": dict(mining="both"),
    "mining_off": dict(mining="off"),
}

# What the ablation table measures, as --mode=eval runs it.
EVALS = ("synthetic:zero_shot", "synthetic-compound:compound", "synthetic:au_detection",
         "synthetic:retrieval", "synthetic:grounding")


def get_config(arg: str = "full"):
    name, _, base = arg.partition(",")
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; choose one of {sorted(ABLATIONS)}")
    # A base that is no config module would otherwise end in an import traceback.
    bases = sorted(m.name for m in pkgutil.iter_modules(importlib.import_module("configs").__path__)
                   if m.name != "ablations")
    if (base or "demo") not in bases:
        raise ValueError(f"unknown base config {base!r} in {arg!r}; choose one of {bases}")
    default = importlib.import_module("configs.default").get_config()
    config = importlib.import_module(f"configs.{base or 'demo'}").get_config()
    choice = ABLATIONS[name]
    if "summary_weight" in choice:
        config.loss.summary_weight = choice["summary_weight"]
    if "local_weight" in choice:
        config.loss.local_weight = choice["local_weight"]
    if config.loss.local_weight > 0:
        # A base that switched the local term off may have cut the local sentence slots to one
        # (configs/demo.py does, to save tokenizing); the local term needs the default's.
        config.data.max_local_sentences = max(config.data.max_local_sentences,
                                              default.data.max_local_sentences)
        config.data.local_sentences_per_step = max(config.data.local_sentences_per_step,
                                                   default.data.local_sentences_per_step)
        # The local term pools tokens that see only their own patch (vision.local_head): on the
        # last layer's tokens it learnt to read every sentence off one patch and its maps fell to
        # chance (ABLATIONS.md, "What was tried"). The head is new, so a fine-tune from a
        # checkpoint without it starts it from random init.
        config.model.vision.local_head = "patch_mlp"
        config.init_exclude = tuple(config.init_exclude) + ("visual/local_.*",)
    config.loss.mining.mode = choice["mining"]
    # ABLATIONS.md's tables were measured with mined positives in both contrastive terms, the
    # default until these tables chose the global term alone; kept so that they reproduce
    # (`--config.loss.mining.terms="('global',)"` gives the default's form).
    config.loss.mining.terms = ("global", "summary")
    # The same for the one-sided cap, the default until the mutual one
    # (`--config.loss.mining.mutual=True` gives the default's form).
    config.loss.mining.mutual = False
    config.eval.benchmarks = EVALS
    return config
