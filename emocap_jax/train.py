"""train_and_evaluate(config, workdir): the EmoCapCLIP training run.

Sections: setup (devices, data, tokenizer) / model and optimiser / state (resume, or init from a
CLIP checkpoint) / the loop (logging, checkpoints, SIGTERM) / export and evaluation.

The workdir, the datasets and init_from may be local paths or bucket URLs (`gs://bucket/run`):
every file goes through emocap_jax.storage, checkpoints and exports through Orbax.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import pathlib
import re
import shutil
import signal
import time

import jax
import numpy as np

from emocap_jax import api, convert, distributed, losses, params_io, sharding, storage
from emocap_jax.cli_errors import UsageError
from emocap_jax.checkpoint import TrainCheckpointer, abstract_like
from emocap_jax.config_utils import clip_config
from emocap_jax.data import pipeline
from emocap_jax.data.manifest import convert_manifest
from emocap_jax.data.pipeline import to_global_batch
from emocap_jax.data.shard_writer import load_metadata, not_a_dataset_reason
from emocap_jax.data.synthetic.corpus import ensure_eval_regions, generate_corpus
from emocap_jax.evaluate import registry, runner
from emocap_jax.evaluate.report import summary_line
from emocap_jax.evaluate.features import Encoder
from emocap_jax.evaluate.suite import run_config_evals
from emocap_jax.models.clip import CLIP, init_params
from emocap_jax.optim import make_optimizer, param_paths
from emocap_jax.step_clock import StepClock
from emocap_jax.tokenizers import get_tokenizer, tokenizer_from_config
from emocap_jax.train_step import initial_state, make_train_step, mining_config, mining_terms

log = logging.getLogger("emocap_jax.train")


class NonFiniteLossError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------------
# Data


def prepare_data(config, workdir: str) -> tuple[str, str]:
    """Returns (train dataset folder, zero-shot eval dataset folder or ""). With no train_dir and
    `data.synthetic.num > 0`, generates the synthetic-faces corpus into the workdir and converts it
    (once: later runs and resumes reuse it)."""
    train_dir, eval_dir = config.data.train_dir, config.eval.zero_shot_dir
    if eval_dir:
        check_dataset(eval_dir, "config.eval.zero_shot_dir")
    if train_dir:
        check_dataset(train_dir, "config.data.train_dir")
        return train_dir, eval_dir
    syn = config.data.synthetic
    if syn.num <= 0:
        raise UsageError("no training data: config.data.train_dir is empty and "
                         "config.data.synthetic.num is 0; pass --config.data.train_dir=DIR, a "
                         "dataset folder written by `python -m data_prep.captions` or "
                         "`python -m data_prep.benchmarks`")
    if storage.is_url(workdir):
        raise UsageError(f"--workdir={workdir}: the synthetic corpus is generated into a local "
                         f"workdir; with a bucket workdir set config.data.train_dir (convert the "
                         f"data with `python -m data_prep.captions --output gs://...`)")
    workdir = pathlib.Path(workdir)
    if distributed.process_and_count()[0] > 0:
        # Process 0 writes the corpus into the workdir (below); the others read it from there.
        distributed.host_barrier(_SYNTHETIC_WRITTEN)
        data = workdir / "data"
        check_dataset(str(data / "train"), f"the synthetic corpus that process 0 wrote to "
                      f"{workdir} (every process must see the same --workdir)")
        return str(data / "train"), eval_dir or str(data / "eval")
    corpus = workdir / "synthetic"
    if (corpus / "corpus.json").exists():
        _check_synthetic_corpus(corpus, syn)
    elif corpus.exists():
        raise UsageError(f"{corpus} holds no corpus.json: a synthetic corpus generation that was "
                         f"interrupted; delete it to generate the corpus again")
    else:
        # Into a folder of its own, renamed once complete: a run killed while it generates leaves
        # only that folder, which the next run deletes (the generator refuses to write into a
        # folder holding anything but a finished corpus).
        partial = workdir / "synthetic.partial"
        shutil.rmtree(partial, ignore_errors=True)
        log.info("generating %d synthetic faces into %s", syn.num, corpus)
        generate_corpus(partial, num=syn.num, seed=syn.seed, size=syn.size,
                        eval_per_class=syn.eval_per_class,
                        au_drop_probability=syn.au_drop_probability,
                        appearance_captions=syn.appearance_captions)
        os.replace(partial, corpus)
    data = workdir / "data"
    corpus_info = json.loads((corpus / "corpus.json").read_text())
    classes = corpus_info["classes"]
    # The held-out split keeps the generator's class order (label_id) for zero-shot scoring. The
    # training faces get label ids too, over the basic and compound classes, so that label
    # positives act and the log can count mined pairs across labels (before, every id was -1).
    tokenizer = get_tokenizer(config.tokenizer)  # the one convert_manifest stores ids of
    for split, manifest, split_classes in (
            ("train", corpus / "manifest.jsonl", classes + corpus_info["compound_classes"]),
            ("eval", corpus / "eval" / "manifest.jsonl", classes)):
        out = data / split
        try:
            stale = pipeline.stored_tokens_mismatch(load_metadata(out), tokenizer)
        except (FileNotFoundError, ValueError):
            stale = "not converted yet"
        # Only the train split stores ids worth reading; the eval split is tokenized on the fly.
        # Stale ids in the workdir's own corpus (another ftfy, or metadata from before the
        # identity recorded it) would make every later run tokenize every sentence again; the
        # records derive from the corpus, so converting again changes nothing but the ids.
        if stale and (split == "train" or stale == "not converted yet"):
            if stale != "not converted yet":
                log.info("converting %s again: its stored token ids cannot be used (%s)", out, stale)
            log.info("converting %s into TFRecords at %s", manifest, out)
            convert_manifest(manifest, manifest.parent, out, num_shards=8, overwrite=True,
                             progress=False, classes=split_classes, tokenizer=tokenizer)
    # Region boxes and sentence regions of the held-out faces, for the grounding protocol.
    ensure_eval_regions(corpus, data / "eval")
    distributed.host_barrier(_SYNTHETIC_WRITTEN)
    return str(data / "train"), eval_dir or str(data / "eval")


_SYNTHETIC_WRITTEN = "emocap_jax: synthetic corpus written"


def _check_synthetic_corpus(corpus: pathlib.Path, syn) -> None:
    """A workdir's corpus is reused (resumes, copies), so it must be the one config.data.synthetic
    describes: a run never trains on another corpus than its config says without saying so."""
    written = json.loads((corpus / "corpus.json").read_text())["arguments"]
    # Corpora written before the options existed.
    written.setdefault("au_drop_probability", 0.0)
    written.setdefault("appearance_captions", False)
    wrong = [f"{name}={syn[name]!r} (the corpus has {written[name]!r})"
             for name in ("num", "seed", "size", "eval_per_class", "au_drop_probability",
                          "appearance_captions")
             if written[name] != syn[name]]
    if wrong:
        raise UsageError(f"{corpus} was generated with other settings than "
                         f"config.data.synthetic: {', '.join(wrong)}; use a new --workdir, or "
                         f"delete {corpus} and {corpus.parent / 'data'} to generate it again")


def check_dataset(path: str, setting: str) -> None:
    """A dataset folder a run can read: there, finished (metadata.json) and holding records. Run
    before anything compiles, so a wrong path fails in seconds."""
    try:
        metadata = load_metadata(path)
    except (FileNotFoundError, ValueError) as e:
        if not_a_dataset_reason(path):  # a file, or a folder of converted datasets: no hint
            raise UsageError(f"{setting}={path}: {e}") from None
        raise UsageError(f"{setting}={path}: {e}; convert a dataset with `python -m "
                         f"data_prep.captions` or `python -m data_prep.benchmarks`") from None
    if not metadata.get("num_records"):
        raise UsageError(f"{setting}={path}: the dataset holds no records (see its "
                         f"rejected.jsonl for why its inputs were rejected)")


# Fields a resumed run may set otherwise than the run it continues: where and how often it logs,
# checkpoints and evaluates, how it computes the same result (sharding, remat, loss kernels),
# where the dataset now lives and what to do with a corrupt record found in it (a run stopped by
# one can resume with on_corrupt="skip"), and how it starts a run (only a fresh one reads
# init_from). The batches do not depend on read_threads; they do on worker_count. Every
# other field (model, tokenizer, data order and augmentation, losses, optimiser, batch, seed)
# must be the same, or the workdir's checkpoints continue another run than the config says.
# loss.local_group_size is compared on its own (resolve_local_group_size): left at 0 it takes
# the saved value, and another value given on purpose is allowed with a warning.
RESUME_MAY_CHANGE = (
    "train.num_steps", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.eval_every", "train.compilation_cache_dir", "train.checkpoint_replica_parallel",
    "train.on_nonfinite", "data.train_dir", "data.worker_buffer_size", "data.read_threads",
    "data.on_corrupt", "mesh.", "eval.",
    "init_from", "init_exclude", "loss.impl", "loss.chunk_size", "model.remat",
    "model.remat_policy", "loss.local_group_size",
)


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def resume_config_differences(saved: dict, config) -> list[str]:
    """The fields (besides RESUME_MAY_CHANGE) whose value in `config` differs from the `saved`
    config of the checkpoint a run would resume, as "field: saved -> now". Fields the saved
    config lacks (written before they existed) are not compared."""
    now = _flatten(json.loads(config.to_json_best_effort()))
    before = _flatten(saved)
    return [f"{key}: {before[key]!r} -> {now[key]!r}" for key in sorted(now)
            if key in before and before[key] != now[key]
            and not any(key == f or (f.endswith(".") and key.startswith(f))
                        for f in RESUME_MAY_CHANGE)]


def check_batch_settings(config, num_batch_shards: int) -> None:
    """The global batch splits into `num_batch_shards` devices, and each device's rows into
    optim.grad_accum_steps micro-batches (checked before anything compiles)."""
    gbs, accum = config.train.global_batch_size, config.optim.grad_accum_steps
    if not isinstance(accum, int) or accum < 1:
        raise UsageError(f"config.optim.grad_accum_steps={accum!r}: give a whole number of "
                         f"micro-batches per step, at least 1 (1: no accumulation)")
    unit = num_batch_shards * accum
    if gbs < 1 or gbs % unit:
        below = gbs // unit * unit
        nearest = (f"the nearest are {below} and {below + unit}" if below > 0
                   else f"the smallest is {unit}")
        raise UsageError(
            f"config.train.global_batch_size={gbs} must be a positive multiple of {unit} "
            f"({num_batch_shards} devices x optim.grad_accum_steps={accum}); {nearest}")


def _local_share(config, num_batch_shards: int) -> int:
    """Faces each device holds of a (micro-)batch: the local term's group when
    config.loss.local_group_size is 0."""
    return config.train.global_batch_size // (num_batch_shards * config.optim.grad_accum_steps)


def _share_words(config, num_batch_shards: int) -> str:
    return (f"config.train.global_batch_size={config.train.global_batch_size} / "
            f"({num_batch_shards} devices x config.optim.grad_accum_steps="
            f"{config.optim.grad_accum_steps})")


def check_local_loss_settings(config, num_batch_shards: int) -> None:
    """The local term's groups of negatives (config.loss.local_group_size) on this mesh, checked
    before anything compiles, after check_batch_settings. A group never spans devices, so it
    divides each device's share of a (micro-)batch. A group of one face has no negatives: its
    sentence->image term is exactly 0 and its image->sentence term weighs only the face's own
    sentences, all positives, against each other. Gradient accumulation down to one face per
    device in a micro-batch made every group that, and the run trained on, silently."""
    if config.loss.local_weight <= 0:
        return
    share = _local_share(config, num_batch_shards)
    given = config.loss.get("local_group_size", 0)
    if not isinstance(given, int) or isinstance(given, bool) or given < 0 or given == 1:
        raise UsageError(f"config.loss.local_group_size={given!r}: give the faces per group of "
                         f"the local term's negatives, at least 2 (one face has no negatives), "
                         f"or 0 for each device's share of a (micro-)batch")
    if given and share % given:
        raise UsageError(
            f"config.loss.local_group_size={given} must divide the {share} faces each device "
            f"holds of a (micro-)batch ({_share_words(config, num_batch_shards)}): a group of "
            f"the local term's negatives never spans devices")
    if not given and share < 2:
        raise UsageError(
            f"the local term's negatives are the faces each device holds of a (micro-)batch, "
            f"and here that is one face ({_share_words(config, num_batch_shards)}), which has "
            f"no negatives: lower config.optim.grad_accum_steps, raise "
            f"config.train.global_batch_size, train on fewer devices (config.mesh.data), or "
            f"set config.loss.local_weight=0")


def resolve_local_group_size(config, num_batch_shards: int, saved: dict | None,
                             resuming: bool) -> int:
    """The faces per group of the local term's negatives that the run trains with, which it
    records as config.loss.local_group_size (in WORKDIR/config.json and every checkpoint). Its
    value and gradient depend on the group's size; when the group was each device's share, a
    run resumed on another mesh changed its objective, silently.

    0 (the default) is the share of a device at the run's start; a resumed run keeps the saved
    size, on any mesh whose share it divides, and is refused on another (the objective never
    changes unasked). A size given on purpose wins, with a loud warning where it differs from the
    saved one: that is how a researcher continues on a mesh that cannot hold the old groups,
    knowing that the objective changes. Runs without the local term return the value as given.
    `saved`: the checkpoint's config (None when it has none); `resuming`: whether a checkpoint
    is resumed at all."""
    given = config.loss.get("local_group_size", 0)
    if config.loss.local_weight <= 0:
        return given
    share = _local_share(config, num_batch_shards)
    recorded = (saved or {}).get("loss", {}).get("local_group_size") or None
    if given:
        if resuming and recorded is not None and recorded != given:
            log.warning("RESUMING WITH ANOTHER LOCAL OBJECTIVE: the run trained its local term "
                        "on groups of %d faces; config.loss.local_group_size=%d makes them "
                        "groups of %d from here on, which changes the local term's value and "
                        "gradient", recorded, given, given)
        return given
    if not resuming:
        return share
    if recorded is None:
        log.warning("the checkpoint does not record the local term's group size (written "
                    "before config.loss.local_group_size existed): its groups are now each "
                    "device's %d faces; if the run started on another number of devices, its "
                    "local objective changes here (set config.loss.local_group_size to the "
                    "faces per device it started with to keep it)", share)
        return share
    if share % recorded:
        raise UsageError(
            f"the run trained its local term on groups of {recorded} faces "
            f"(config.loss.local_group_size, recorded at its start), which do not divide the "
            f"{share} faces each device holds on this mesh ({_share_words(config, num_batch_shards)}): "
            f"resume on a mesh whose devices each hold a multiple of {recorded} faces, or set "
            f"--config.loss.local_group_size to a divisor of {share} (at least 2) to continue "
            f"with another local objective")
    return recorded


def check_tokenizer(config, model_config, tokenizer) -> None:
    """The run's tokenizer fits the text tower (checked before anything compiles): its ids index
    the token embedding, and the tower's pooling rule (model.text.eot_token_id) finds its
    end-of-text token. A sentencepiece model with sentencepiece's default ids (eos 2) under the
    default argmax pooling used to train a text tower pooled at an arbitrary word, silently."""
    text = model_config.text
    if tokenizer.vocab_size > text.vocab_size:
        raise UsageError(f"config.tokenizer={config.tokenizer!r} has {tokenizer.vocab_size} ids but "
                         f"config.model.text.vocab_size={text.vocab_size}")
    problem = tokenizer.pooling_problem(text.eot_token_id)
    if problem:
        raise UsageError(f"config.tokenizer={config.tokenizer!r} does not fit the text tower, which "
                         f"{problem}: set --config.model.text.eot_token_id={tokenizer.eot_id}")


def check_train_settings(config) -> None:
    """Loop settings whose typo would otherwise go unnoticed (checked before anything compiles):
    any train.on_nonfinite other than "error" skipped non-finite steps; a log_every or
    checkpoint_every below 1 ended the run after its first (compiled) step with a
    ZeroDivisionError; a negative num_steps trained nothing and exited 0."""
    if not isinstance(config.train.num_steps, int) or config.train.num_steps < 0:
        raise UsageError(f"config.train.num_steps={config.train.num_steps!r}: give a number of "
                         f"steps, at least 0 (0: export and evaluate the initial parameters)")
    if config.train.on_nonfinite not in ("error", "skip"):
        raise UsageError(f"config.train.on_nonfinite={config.train.on_nonfinite!r}: choose "
                         f"'error' (stop at a non-finite loss or gradient) or 'skip'")
    for name in ("log_every", "checkpoint_every"):
        value = config.train[name]
        if not isinstance(value, int) or value < 1:
            raise UsageError(f"config.train.{name}={value!r}: give a number of steps, at least 1 "
                             f"(the last step is always logged and checkpointed)")
    if not isinstance(config.train.eval_every, int) or config.train.eval_every < 0:
        raise UsageError(f"config.train.eval_every={config.train.eval_every!r}: give a number "
                         f"of steps (0: evaluate only at the end)")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_number_settings(config) -> None:
    """Optimiser and loss numbers out of their range, checked before anything compiles: each used
    to train without a word. A negative learning rate climbed the loss (and a negative
    end_learning_rate_fraction ended the schedule below 0), negative warm-up steps skipped the
    warm-up, a negative weight decay or grad_clip_norm (< 0: off, as 0) pushed weights up or
    clipped nothing, b1 or b2 outside [0, 1) made Adam's averages diverge, an eps of 0 made
    m / (sqrt(v) + eps) 0 / 0 on every parameter without a gradient yet (the token embedding
    rows no sentence of the step used: NaN weights after a step whose loss and gradient norm,
    all the step's guard checks, were finite), and a local_pool_temperature of 0 made every
    local logit infinite (a non-finite loss at step 1)."""
    optim = config.optim
    ranges = (("learning_rate", optim.learning_rate, lambda v: v > 0, "a number > 0"),
              ("end_learning_rate_fraction", optim.end_learning_rate_fraction,
               lambda v: 0 <= v <= 1, "a fraction of the peak learning rate in [0, 1]"),
              ("weight_decay", optim.weight_decay, lambda v: v >= 0, "a number >= 0"),
              ("b1", optim.b1, lambda v: 0 <= v < 1, "a decay rate in [0, 1)"),
              ("b2", optim.b2, lambda v: 0 <= v < 1, "a decay rate in [0, 1)"),
              ("eps", optim.eps, lambda v: v > 0, "a number > 0"),
              ("grad_clip_norm", optim.grad_clip_norm, lambda v: v >= 0,
               "a gradient norm >= 0 (0: no clipping)"))
    for name, value, ok, what in ranges:
        if not _number(value) or not ok(value):
            raise UsageError(f"config.optim.{name}={value!r}: give {what}")
    if not isinstance(optim.warmup_steps, int) or optim.warmup_steps < 0:
        raise UsageError(f"config.optim.warmup_steps={optim.warmup_steps!r}: give a number of "
                         f"steps, at least 0")
    tau = config.loss.get("local_pool_temperature", 1.0)
    if not _number(tau) or tau <= 0:
        raise UsageError(f"config.loss.local_pool_temperature={tau!r}: give a temperature > 0")


def check_loss_settings(config, train_dir: str) -> None:
    """The loss settings a run can use, checked before anything compiles (a wrong one would
    otherwise fail inside the first step's trace). `config.loss.mining` must make a MiningConfig
    and name known terms. Label positives need label ids: a dataset converted without a class
    order has every id -1, and the option would change nothing, silently."""
    try:
        mining_config(config.loss)
        mining_terms(config.loss)
    except (TypeError, ValueError) as e:
        raise UsageError(f"config.loss.mining: {e}") from None
    _check_loss_impl(config)
    if config.loss.get("label_positives", False) and not load_metadata(train_dir).get("classes"):
        raise UsageError(
            f"config.loss.label_positives=True, but {train_dir} records no class order, so every "
            f"record's label_id is -1 and no pair would become positive; convert it with "
            f"`python -m data_prep.captions --classes A,B,...` (or --captions-from-labels), or "
            f"train the synthetic corpus in a new --workdir (older workdirs converted it "
            f"without label ids)")


def _check_loss_impl(config) -> None:
    """loss.impl and, for "chunked", loss.chunk_size: the contrastive terms scan the columns of
    each step's (micro-)batch, global_batch_size / optim.grad_accum_steps of them, chunk_size at a
    time. A wrong one failed inside the first step's trace, after the data was prepared."""
    impl, chunk = config.loss.impl, config.loss.chunk_size
    if impl not in losses.GLOBAL_IMPLS:
        raise UsageError(f"config.loss.impl={impl!r}: choose one of {', '.join(losses.GLOBAL_IMPLS)}")
    if impl != "chunked":
        return
    accum = config.optim.grad_accum_steps
    micro = config.train.global_batch_size // accum if isinstance(accum, int) and accum >= 1 else None
    if not isinstance(chunk, int) or chunk < 1 or (micro and micro % chunk):
        raise UsageError(
            f"config.loss.chunk_size={chunk!r}: loss.impl='chunked' scans the batch's columns "
            f"chunk_size at a time; give a whole number that divides the "
            + (f"{micro} columns of a step" if micro else "columns of a step")
            + (f" (global_batch_size {config.train.global_batch_size} / optim.grad_accum_steps "
               f"{accum})" if micro and accum > 1 else ""))


def train_pipeline_config(config, data_dir: str) -> pipeline.TrainPipelineConfig:
    """The input pipeline's settings from config.data (and the model's input sizes); a bad one is
    a ValueError naming it."""
    d = config.data
    return pipeline.TrainPipelineConfig(
        data_dir=data_dir, image_size=config.model.vision.image_size,
        context_length=config.model.text.context_length,
        max_local_sentences=d.max_local_sentences,
        local_sentences_per_step=d.local_sentences_per_step, crop_scale=tuple(d.crop_scale),
        flip_prob=d.flip_prob, brightness=d.color_jitter, contrast=d.color_jitter,
        saturation=d.color_jitter, grayscale_prob=d.grayscale_prob, seed=d.shuffle_seed,
        worker_count=d.worker_count, worker_buffer_size=d.worker_buffer_size,
        read_threads=d.read_threads, on_corrupt=d.on_corrupt,
        captions_from_labels=d.get("captions_from_labels", True))


def make_train_iterator(config, tokenizer, data_dir: str):
    return pipeline.make_train_iterator(
        train_pipeline_config(config, data_dir), tokenizer, config.train.global_batch_size,
        process_index=jax.process_index(), process_count=jax.process_count())


def check_model_and_data_settings(config):
    """The model, tokenizer, input-pipeline and evaluation settings, checked before the data is
    prepared (generating the synthetic corpus takes minutes) and before anything compiles. A
    bad one (--config.model.activation=relu, --config.data.on_corrupt=skp,
    --config.tokenizer=bert, --config.eval.batch_size=0) ended the run in a ValueError
    traceback, the input pipeline's and the evaluation's only after the data was prepared, the
    last only after training. Returns (model config, tokenizer), which the run then uses."""
    try:
        model_config = clip_config(config)
    except ValueError as e:
        message = str(e)
        raise UsageError(f"config.{message}" if message.startswith("model.")
                         else f"config.model: {message}") from None
    try:
        tokenizer = get_tokenizer(config.tokenizer, model_config.text.context_length)
    except (OSError, ValueError) as e:
        raise UsageError(f"config.tokenizer={config.tokenizer!r}: {e}") from None
    check_tokenizer(config, model_config, tokenizer)
    try:
        train_pipeline_config(config, data_dir="")
    except (TypeError, ValueError) as e:
        # In config.data's names: the pipeline's seed is shuffle_seed, and its brightness,
        # contrast and saturation are all color_jitter.
        message = str(e).removeprefix("invalid TrainPipelineConfig: ")
        message = re.sub(r"\bseed\b", "shuffle_seed", message)
        message = re.sub(r"\b(brightness|contrast|saturation)\b", "color_jitter", message)
        raise UsageError(f"config.data: {message}") from None
    batch = config.eval.batch_size
    if not isinstance(batch, int) or batch < 1:
        raise UsageError(f"config.eval.batch_size={batch!r}: give a number of images, at least 1")
    return model_config, tokenizer


# --------------------------------------------------------------------------------------------------
# Parameters


def load_init_params(config, model_config, shapes) -> dict:
    """Parameters from `config.init_from`, adapted to the run's image size, with the paths matching
    `config.init_exclude` left to random init (returned as None leaves to fill)."""
    try:
        source = api.load(config.init_from)
    except UsageError:
        raise
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        # A wrong path or a file that is no checkpoint: a user mistake, named with the setting.
        raise UsageError(f"config.init_from={config.init_from}: {e}") from None
    params, loaded_cfg = source.params, source.config
    params = jax.tree_util.tree_map(np.asarray, params)
    if loaded_cfg.vision.image_size != model_config.vision.image_size:
        params, loaded_cfg = convert.with_image_size(params, loaded_cfg,
                                                     model_config.vision.image_size)
    excluded = [re.compile(p) for p in config.init_exclude]
    paths = param_paths(shapes)
    flat_paths = jax.tree_util.tree_leaves(paths)
    # A pattern that matches no parameter (a typo, "vision/proj" for "visual/proj") would load
    # what the run meant to keep at random init, silently.
    unmatched = [p.pattern for p in excluded if not any(p.fullmatch(path) for path in flat_paths)]
    if unmatched:
        raise UsageError(f"config.init_exclude: {', '.join(map(repr, unmatched))} matches no "
                         f"parameter of the run's model (each pattern must match a whole path, "
                         f"such as {flat_paths[0]!r} or {flat_paths[-1]!r}; `--mode=info` "
                         f"shows the model)")
    loaded = {}
    for path, value in zip(jax.tree_util.tree_leaves(param_paths(params)),
                           jax.tree_util.tree_leaves(params)):
        loaded[path] = value
    out, missing, differing = {}, [], []
    for path, shape in zip(flat_paths, jax.tree_util.tree_leaves(
            shapes, is_leaf=lambda x: isinstance(x, tuple))):
        if any(p.fullmatch(path) for p in excluded):
            continue
        if path not in loaded:
            missing.append(path)
        elif tuple(loaded[path].shape) != tuple(shape):
            differing.append(f"{path} {tuple(loaded[path].shape)} where the run's model has "
                             f"{tuple(shape)}")
        else:
            out[path] = loaded[path]
    if missing or differing:
        # Every difference at once: the usual cause is a config of another architecture than the
        # checkpoint's (configs/vitb16.py with ViT-B-32 weights), which one name would not show.
        found = [f"no {p}" for p in missing] + differing
        shown = found[:8] + ([f"and {len(found) - 8} more"] if len(found) > 8 else [])
        raise UsageError(
            f"config.init_from={config.init_from}: the checkpoint does not fit the run's model "
            f"({config.model_name}), {len(found)} parameter(s) differ: {'; '.join(shown)}. Use "
            f"the config of the checkpoint's architecture (its model_config.json or config "
            f"file), or keep these at random init with config.init_exclude (`--mode=info` "
            f"shows the model)")
    return out


def _merge(random_params, loaded: dict):
    return jax.tree_util.tree_map(lambda p, x: loaded.get(p, x), param_paths(random_params),
                                  random_params)


# --------------------------------------------------------------------------------------------------
# Logging


class MetricsLogger:
    """Console lines, metrics.jsonl (one line per logged step) and TensorBoard, on process 0."""

    # On a bucket an object cannot be appended to: metrics.jsonl and the TensorBoard events are
    # uploaded whole, at most this often (and at every checkpoint and at the end).
    REMOTE_FLUSH_SECONDS = 60.0

    def __init__(self, workdir: str, enabled: bool, start_step: int = 0,
                 relogged_at_start: tuple[str, ...] = ()):
        """`start_step`: the step the run starts (or resumes) at. A resumed run continues the
        files, less what the killed run logged after that step (up to the next checkpoint),
        which it logs again: one line per step and kind, and no second TensorBoard curve.
        `relogged_at_start`: kinds the run logs again at `start_step` itself (the final
        evaluation, when a finished training is run again), whose old lines are dropped too."""
        self.enabled = enabled
        self.remote = storage.is_url(workdir)
        self.path = storage.join(workdir, "metrics.jsonl")
        self.jsonl = None
        self.lines: list[str] = []
        self.dirty = False
        self.last_flush = time.monotonic()
        if enabled and storage.isfile(self.path):
            old = storage.read_text(self.path).splitlines(keepends=True)
            self.lines = [line if line.endswith("\n") else line + "\n" for line in old
                          if _kept(line, start_step, relogged_at_start)]
            self.dirty = self.lines != old
            if self.dirty and not self.remote:
                storage.write_text(self.path, "".join(self.lines))
                self.dirty = False
        if enabled and not self.remote:
            self.jsonl = open(self.path, "a")
            self.lines = []
        self.tb = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter  # optional: TensorBoard events only
                # tensorboardX writes gs:// itself (google-cloud-storage), whole file per flush.
                # purge_step hides the earlier events at the steps this run logs again.
                self.tb = SummaryWriter(storage.join(workdir, "tensorboard"),
                                        purge_step=start_step + 1,
                                        flush_secs=self.REMOTE_FLUSH_SECONDS if self.remote
                                        else 120)
            except ImportError:
                log.warning("tensorboardX not installed: no TensorBoard events")

    def write(self, step: int, scalars: dict, prefix: str = "train"):
        if not self.enabled:
            return
        line = json.dumps({"step": step, "kind": prefix, **scalars}) + "\n"
        if self.jsonl is not None:
            self.jsonl.write(line)
            self.jsonl.flush()
        else:
            self.lines.append(line)
            self.dirty = True
        if self.tb is not None:
            for k, v in scalars.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)
            if not self.remote:
                self.tb.flush()
        if self.remote and time.monotonic() - self.last_flush >= self.REMOTE_FLUSH_SECONDS:
            self.flush()

    def flush(self):
        """Makes everything written so far durable (on a bucket: uploads metrics.jsonl)."""
        if not self.enabled:
            return
        if self.dirty:
            storage.write_text(self.path, "".join(self.lines))
            self.dirty = False
        if self.tb is not None:
            self.tb.flush()
        self.last_flush = time.monotonic()

    def close(self):
        self.flush()
        if self.jsonl:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


def _kept(line: str, start_step: int, relogged_at_start: tuple[str, ...]) -> bool:
    """Whether a resumed run keeps this metrics.jsonl line: a record before `start_step`, or at
    it and of a kind not logged again there. A line that is not a record (a torn last line of a
    killed run) is dropped."""
    try:
        record = json.loads(line)
        step = int(record["step"])
    except (ValueError, KeyError, TypeError):
        return False
    return step < start_step or (step == start_step
                                 and record.get("kind") not in relogged_at_start)


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# --------------------------------------------------------------------------------------------------
# The run


def train_and_evaluate(config, workdir) -> dict:
    """Trains (resuming from `workdir` when it holds a checkpoint), exports the final parameters to
    `workdir/export` and runs the zero-shot evaluation. Returns the final metrics."""
    _setup_logging()
    distributed.initialize()
    # The run writes what it resolved into its config (loss.local_group_size); the caller's
    # stays as given.
    config = copy.deepcopy(config)
    _enable_compilation_cache(config)
    workdir = storage.absolute(workdir)
    storage.makedirs(workdir)
    check_train_settings(config)
    check_number_settings(config)
    model_config, tokenizer = check_model_and_data_settings(config)
    # Before the JAX backend starts: data preparation forks worker processes.
    train_dir, eval_dir = prepare_data(config, workdir)
    check_loss_settings(config, train_dir)
    is_main = jax.process_index() == 0

    # ----- devices, data, tokenizer
    mesh = sharding.make_mesh(config.mesh)
    axes = sharding.batch_axes(mesh)
    num_batch_shards = int(np.prod([mesh.shape[a] for a in axes]))
    gbs = config.train.global_batch_size
    check_batch_settings(config, num_batch_shards)
    check_local_loss_settings(config, num_batch_shards)
    num_steps = config.train.num_steps

    # ----- resume or start: decided from the checkpoint's saved config before the input
    # pipeline is built, so a refused resume starts no data workers. (Not before prepare_data:
    # Orbax's manager starts the JAX backend, and data preparation forks worker processes.)
    # Every process reads the same saved config, so all reach the same decision.
    # Orbax's first barrier is a device collective; the processes must reach it less than 30 s
    # apart on CPU (gloo), however long each took to start.
    distributed.host_barrier("emocap_jax: set up")
    checkpointer = TrainCheckpointer(storage.join(workdir, "checkpoints"),
                                     keep=config.train.keep_checkpoints,
                                     replica_parallel=config.train.checkpoint_replica_parallel)
    try:
        latest, group = _resume_decision(config, checkpointer, workdir, num_batch_shards)
        data_iter = make_train_iterator(config, tokenizer, train_dir)
    except BaseException:
        checkpointer.close()
        raise
    # Until the loop's own try below, a failure (model set-up, init_from, restore) closes the
    # checkpointer and stops the Grain workers here rather than leaving them to exit.
    try:
        # Recorded in config.json and in every checkpoint's config, which a resumed run reads back.
        # Unlocked: a config file of the run's own that lacks the field gets it (absl locks configs).
        with config.unlocked():
            config.loss.local_group_size = group
        if config.loss.local_weight > 0:
            log.info("local term: negatives in groups of %d faces (%d per device)", group,
                     _local_share(config, num_batch_shards))
        if is_main:
            storage.write_text(storage.join(workdir, "config.json"),
                               config.to_json_best_effort(indent=1))

        # ----- model, optimiser, shardings
        model = CLIP(model_config)
        shapes = jax.eval_shape(lambda: init_params(model_config, jax.random.PRNGKey(0)))
        optimizer, schedule = make_optimizer(config.optim, num_steps, shapes)
        param_shardings = sharding.param_sharding(shapes, mesh)
        state_shapes = jax.eval_shape(lambda p: initial_state(p, optimizer), shapes)
        state_shardings = jax.tree_util.tree_map(lambda _: sharding.replicated(mesh), state_shapes)
        state_shardings["params"] = param_shardings
        # Optimiser moments follow their parameter's sharding; scalars stay replicated.
        state_shardings["opt_state"] = _opt_state_shardings(state_shapes["opt_state"], shapes,
                                                            param_shardings, mesh)

        # ----- state: resume, else init (random or from a CLIP checkpoint)
        # Building the input pipeline and the model took each process its own time since Orbax's
        # last collective; the restore's must again come less than 30 s apart (gloo).
        distributed.host_barrier("emocap_jax: model set up")
        make_state = jax.jit(lambda p: initial_state(p, optimizer), out_shardings=state_shardings,
                             donate_argnums=0)
        if latest is not None:
            abstract = abstract_like(jax.tree_util.tree_map(
                lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state_shapes,
                state_shardings))
            state = checkpointer.restore(latest, abstract, data_iter,
                                         config.train.global_batch_size // jax.process_count())
            log.info("resumed from %s at step %d", checkpointer.directory, latest)
        else:
            rng = jax.random.PRNGKey(config.train.seed)
            params = jax.jit(lambda r: init_params(model_config, r), out_shardings=param_shardings)(rng)
            if config.init_from:
                loaded = load_init_params(config, model_config, jax.tree_util.tree_map(
                    lambda s: tuple(s.shape), shapes))
                params = _merge(params, {k: v for k, v in loaded.items()})
                params = jax.device_put(params, param_shardings)
                log.info("initialised %d of %d parameter arrays from %s", len(loaded),
                         len(jax.tree_util.tree_leaves(params)), config.init_from)
            state = make_state(params)

        batch_shardings = sharding.batch_sharding(mesh)
        step_fn = make_train_step(model, optimizer, schedule, config.loss, mesh=mesh, batch_axes=axes,
                                  grad_accum_steps=config.optim.grad_accum_steps)
        train_step = jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings),
                             out_shardings=(state_shardings, sharding.replicated(mesh)),
                             donate_argnums=0)

        # ----- the loop
        start_step = int(jax.device_get(state["step"]))
        # A finished training run again (killed during its export or final evaluation) redoes
        # the final evaluation at its last step: its earlier record there is replaced.
        logger = MetricsLogger(workdir, is_main, start_step,
                               relogged_at_start=("zero_shot",) if start_step >= num_steps else ())
    except BaseException:
        checkpointer.close()
        _close(data_iter)
        raise
    stop = distributed.Preemption()
    config_json = config.to_json_best_effort()
    pending: list = []
    clock = StepClock()  # one step in flight; images/s and data wait between log lines
    t_start = time.perf_counter()
    step = start_step
    log.info("training steps %d..%d, global batch %d on %d devices (%s)", start_step, num_steps,
             gbs, jax.device_count(), jax.devices()[0].platform)
    try:
        while step < num_steps:
            t0 = time.perf_counter()
            batch = clock.next_batch(data_iter, lambda b: to_global_batch(b, mesh, axes))
            if step == start_step and jax.process_count() > 1:
                # Every process compiles (or loads from the cache, which can take a minute less)
                # before any runs the step: gloo gives up on a collective whose peers are more
                # than 30 s apart.
                train_step = train_step.lower(state, batch).compile()
                distributed.host_barrier("emocap_jax: train step compiled")
            state, metrics = clock.dispatch(train_step, state, batch)
            step += 1
            stopping = stop.stop_after(step)  # the same step on every process
            if step == start_step + 1:
                # The first step includes compilation: keep it out of throughput and ETA.
                jax.block_until_ready(metrics)
                log.info("first step done (compiled) in %.1f s", time.perf_counter() - t0)
                clock.restart()
            pending.append((step, metrics))
            last = step == num_steps
            if step % config.train.log_every == 0 or last or stopping:
                jax.block_until_ready(metrics)
                images_per_s, wait_fraction, per_step = clock.rates(gbs)
                _log_pending(pending, logger, config, images_per_s, wait_fraction,
                             (num_steps - step) * per_step)
                pending = []
                clock.restart()
                if config.train.on_nonfinite == "error":
                    # The step's metrics are on the host already: stop now, not at the next
                    # checkpoint (up to checkpoint_every steps of skipped updates later).
                    _check_finite(state, config)
            if step % config.train.checkpoint_every == 0 or last or stopping:
                with clock.paused():  # the next log line's images/s are the steps' alone
                    _check_finite(state, config)
                    checkpointer.save(step, state, data_iter, config_json, force=True)
                    logger.flush()  # the metrics up to a checkpoint outlive a kill after it
                    _fault_injection_after_checkpoint(step, checkpointer, workdir)
            if config.train.eval_every and step % config.train.eval_every == 0 and not last \
                    and eval_dir:
                with clock.paused():
                    _periodic_eval(state, model_config, tokenizer, eval_dir, config, mesh, logger,
                                   step)
            if stopping:
                log.info("SIGTERM: checkpoint at step %d written; exiting", step)
                break
    finally:
        # The last batch's arrays live in the Grain worker's shared memory, which is freed when
        # they are deleted: drop them before the workers stop.
        batch = None
        checkpointer.close()
        stop.restore()
        _close(data_iter)
    total_time = time.perf_counter() - t_start
    results = {"step": step, "train_seconds": total_time}
    if stop.requested:
        if step >= num_steps:  # SIGTERM came during the last save: the loop had ended already
            log.info("SIGTERM: training is complete and checkpointed at step %d; exiting before "
                     "the export and evaluation, which the same command does", step)
        logger.close()
        return results

    # ----- export and evaluation
    # Every process takes part in gathering the parameters (they may span processes); one
    # writes them.
    final = {"params": distributed.fetch(state["params"]),
             "step": int(jax.device_get(state["step"]))}
    export_dir = (_export(final, model_config, tokenizer, workdir,
                          config.loss.local_pool_temperature) if is_main else None)
    if eval_dir:
        report = evaluate_zero_shot(state["params"], model_config, tokenizer, eval_dir, config,
                                    mesh)
        if is_main:
            _print_zero_shot(report)
        logger.write(step, {"uar": report["uar"], "war": report["war"],
                            "macro_f1": report["macro_f1"]}, prefix="zero_shot")
        if is_main:
            storage.write_text(storage.join(workdir, "zero_shot.json"),
                               json.dumps(report, indent=1))
        results["zero_shot"] = report
    logger.close()
    results["export"] = str(export_dir) if export_dir else None
    return results


def _resume_decision(config, checkpointer, workdir: str, num_batch_shards: int):
    """(the step to resume from or None, the local term's group size) for a run whose
    checkpoints `checkpointer` holds; a UsageError where the workdir's run cannot be continued
    with `config` (another config, or local groups this mesh cannot hold)."""
    latest = checkpointer.latest_step()
    saved = None
    if latest is None:
        export = storage.join(workdir, "export")
        if params_io.is_params_dir(export):
            raise UsageError(
                f"--workdir {workdir} holds an export ({export}) and no checkpoint to resume "
                f"from: training would start again at step 0 and replace it and its "
                f"metrics.jsonl. Evaluate it with --mode=eval, use a new --workdir, or move "
                f"{export} away to train this workdir again")
    else:
        checkpointer.check_step(latest)
        saved = checkpointer.saved_config(latest)
        differences = resume_config_differences(saved, config) if saved else []
        if differences:
            raise UsageError(
                f"--workdir {workdir} holds checkpoints (step {latest}) of a run with another "
                f"config: {'; '.join(differences)}. Resume it with its own config "
                f"({storage.join(workdir, 'config.json')}), or start a new --workdir")
        num_steps = config.train.num_steps
        if saved and saved.get("train", {}).get("num_steps") not in (None, num_steps):
            log.warning("resuming with train.num_steps=%d (the run was started with %s): the "
                        "learning-rate schedule from here on is that of a %d-step run",
                        num_steps, saved["train"]["num_steps"], num_steps)
    return latest, resolve_local_group_size(config, num_batch_shards, saved, latest is not None)


def _opt_state_shardings(opt_shapes, param_shapes, param_shardings, mesh):
    """Leaves of the optimiser state that have a parameter's shape take its sharding."""
    by_shape = {}
    for s, sh in zip(jax.tree_util.tree_leaves(param_shapes),
                     jax.tree_util.tree_leaves(param_shardings)):
        by_shape.setdefault(tuple(s.shape), sh)
    return jax.tree_util.tree_map(
        lambda s: by_shape.get(tuple(s.shape), sharding.replicated(mesh)) if s.ndim else
        sharding.replicated(mesh), opt_shapes)


def _log_pending(pending, logger, config, images_per_s, wait_fraction, eta_s):
    """Fetches the metrics of the steps since the last log (one host sync per log interval)."""
    fetched = jax.device_get([m for _, m in pending])
    for (step, _), m in zip(pending, fetched):
        scalars = {k: float(v) for k, v in m.items()}
        logger.write(step, scalars)
    step, m = pending[-1][0], fetched[-1]
    terms = " ".join(f"{k} {float(m[k]):.4f}" for k in ("global", "summary", "local") if k in m)
    log.info("step %d/%d | loss %.4f (%s) | lr %.2e | T %.1f | %.0f img/s | data wait %.0f%% | "
             "eta %s%s", step, config.train.num_steps, float(m["loss"]), terms,
             float(m["learning_rate"]), float(m["logit_scale"]), images_per_s,
             100 * wait_fraction, _format_eta(eta_s), _mining_note(m))
    logger.write(step, {"images_per_s": images_per_s, "data_wait_fraction": wait_fraction},
                 prefix="perf")


def _mining_note(m) -> str:
    """' | mined 2.1/row (0.3 other label)' when mining is on (mining.mining_statistics); the
    part in brackets only where mined pairs carry labels (in a caption corpus none do, and 0
    pairs across labels would read as a perfect guide)."""
    if "mined_per_row" not in m:
        return ""
    other, labelled = m.get("mined_other_label_per_row"), m.get("mined_labelled_per_row")
    known = other is not None and labelled is not None and float(labelled) > 0
    return (f" | mined {float(m['mined_per_row']):.1f}/row"
            + (f" ({float(other):.1f} other label)" if known else ""))


def _enable_compilation_cache(config):
    """XLA's persistent cache: a resumed or repeated run skips recompiling the train step."""
    cache = config.train.compilation_cache_dir
    if cache and cache.lower() != "none":
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _fault_injection_after_checkpoint(step: int, checkpointer, workdir: str):
    """Test hooks, to test that a hard-killed run resumes exactly.
    EMOCAP_FAULT_SIGKILL_AFTER_CHECKPOINT=N kills this process with SIGKILL right after
    checkpoint N is complete. EMOCAP_FAULT_SIGSTOP_AFTER_CHECKPOINT=N stops it (SIGSTOP) once
    every process of the run has checkpoint N complete, so that a test can SIGKILL them all at
    one point of the run. EMOCAP_FAULT_SIGTERM_AFTER_CHECKPOINT=N sends it SIGTERM there (a
    preemption notice during that save)."""
    for name, sig in (("EMOCAP_FAULT_SIGKILL_AFTER_CHECKPOINT", signal.SIGKILL),
                      ("EMOCAP_FAULT_SIGSTOP_AFTER_CHECKPOINT", signal.SIGSTOP),
                      ("EMOCAP_FAULT_SIGTERM_AFTER_CHECKPOINT", signal.SIGTERM)):
        target = os.environ.get(name)
        if target and int(target) == step:
            checkpointer.wait()
            if sig == signal.SIGSTOP:
                distributed.host_barrier(f"emocap_jax: checkpoint {step} complete")
                _let_process_0_stop_last(workdir, step)
                log.warning("fault injection: stopping after checkpoint %d", step)
            os.kill(os.getpid(), sig)


def _let_process_0_stop_last(workdir: str, step: int, timeout_s: float = 600.0):
    """Before SIGSTOP, in a multi-process run: process 0 hosts the coordination service and
    must stop last. Stopping as soon as its own barrier call returned could freeze the service
    before it has sent the other processes their answer; they would then wait in the barrier
    until the heartbeat timeout aborted them. So the others say through a file (which needs no
    answer from process 0) that they are past the barrier, and process 0 stops once all have.
    A one-machine test hook: the files are in the local workdir every process shares."""
    index, count = distributed.process_and_count()
    if count == 1:
        return
    folder = pathlib.Path(workdir) / "fault_injection"
    folder.mkdir(parents=True, exist_ok=True)
    if index:
        (folder / f"past_barrier_{step}_{index}").touch()
        return
    deadline = time.monotonic() + timeout_s
    while not all((folder / f"past_barrier_{step}_{i}").exists() for i in range(1, count)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"fault injection: the other processes did not pass the barrier "
                               f"of checkpoint {step} within {timeout_s:.0f} s")
        time.sleep(0.05)


def _close(data_iter):
    """Stops the Grain worker processes and frees their shared memory now, not at garbage
    collection (which leaves `resource_tracker: ... leaked shared_memory objects` warnings)."""
    close = getattr(data_iter, "close", None)
    if close is not None:
        close()


def _check_finite(state, config):
    nonfinite = jax.device_get(state["nonfinite"])
    if int(nonfinite["count"]) and config.train.on_nonfinite == "error":
        raise NonFiniteLossError(
            f"non-finite loss or gradient at step {int(nonfinite['first_step']) + 1} "
            f"({int(nonfinite['count'])} bad steps so far); their updates were not applied and no "
            f"checkpoint holds them. Lower the learning rate, or set "
            f"--config.train.on_nonfinite=skip to skip such steps")
    if int(nonfinite["count"]):
        log.warning("%d steps with non-finite loss skipped so far (first at step %d)",
                    int(nonfinite["count"]), int(nonfinite["first_step"]) + 1)


def _export(state, model_config, tokenizer, workdir: str,
            local_pool_temperature: float) -> str:
    """Writes the final parameters as an export folder (what `emocap_jax.load(workdir)` reads);
    replaces an older export only once the new one is complete. The local loss's pooling
    temperature is recorded with them: `explain` draws its maps with it."""
    params = jax.device_get(state["params"])
    tmp = storage.join(workdir, "export.tmp")
    storage.rmtree(tmp)
    params_io.save_params(tmp, params, model_config, tokenizer.to_config(),
                          {"layout": "emocap_jax.train", "step": int(jax.device_get(state["step"])),
                           "local_pool_temperature": float(local_pool_temperature)})
    final = storage.join(workdir, "export")
    # A rename locally; on a bucket a copy that publishes model_config.json last.
    storage.replace_tree(tmp, final, last=params_io.CONFIG_FILE)
    log.info("exported parameters to %s", final)
    return final


def zero_shot_benchmark(eval_dir: str) -> str:
    """The registry entry whose prompts score a zero-shot dataset: the benchmark its converter
    recorded when that entry's class order matches, the synthetic faces for their own class order,
    else a generic labelled dataset ("imagefolder": classes from its metadata)."""
    metadata = load_metadata(eval_dir)
    recorded = list(metadata.get("classes") or [])
    for name in (metadata.get("benchmark"), "synthetic"):
        if name in registry.BENCHMARKS and registry.ZERO_SHOT in registry.get(name).protocols:
            classes = registry.get(name).classes
            if classes and list(classes) == recorded:
                return name
    return "imagefolder"


def evaluate_zero_shot(params, model_config, tokenizer, eval_dir, config, mesh) -> dict:
    """Zero-shot on `eval_dir` through the evaluation runner, with the registry's prompt words and
    templates (CLIP's prompt ensembling in embedding space): the same prompts, and so the same
    UAR, as `python -m emocap_jax.evaluate --protocol zero_shot` on that checkpoint and data.
    config.eval.classes, when given, replaces the prompt words (the CLI's --classes)."""
    words = tuple(config.eval.classes) or None
    encoder = Encoder(params, model_config, tokenizer, mesh, batch_size=config.eval.batch_size)
    benchmark = zero_shot_benchmark(eval_dir)
    result = runner.run(encoder, benchmark, "zero_shot", eval_dir,
                        runner.Options(batch_size=config.eval.batch_size, prompt_words=words))
    report = dict(result["report"], dataset=str(eval_dir), benchmark=benchmark,
                  prompts=result["prompts"])
    report.pop("fold_summary", None)
    return report


def _periodic_eval(state, model_config, tokenizer, eval_dir, config, mesh, logger, step):
    report = evaluate_zero_shot(state["params"], model_config, tokenizer, eval_dir, config, mesh)
    log.info("step %d zero-shot: UAR %.2f%% WAR %.2f%%", step, 100 * report["uar"],
             100 * report["war"])
    logger.write(step, {"uar": report["uar"], "war": report["war"],
                        "macro_f1": report["macro_f1"]}, prefix="zero_shot")


def _print_zero_shot(report):
    chance = 100.0 / len(report["classes"])
    print(f"zero-shot on {report['dataset']} ({report['num_examples']} faces, "
          f"{len(report['classes'])} classes, chance {chance:.1f}%): "
          f"UAR {100 * report['uar']:.1f}%  WAR {100 * report['war']:.1f}%  "
          f"macro-F1 {100 * report['macro_f1']:.1f}%", flush=True)
    if report.get("prompts"):
        print(f"  prompts: {report['benchmark']} registry entry, words "
              f"{', '.join(report['prompts']['words'])}, {len(report['prompts']['templates'])} "
              f"templates averaged in embedding space", flush=True)


def evaluate_workdir(config, workdir) -> dict:
    """--mode=eval: the config's evaluations (`config.eval.benchmarks`) of the workdir's exported
    parameters, reported in workdir/eval/ (report.md, report.csv, per-run results and confusion
    matrices). The synthetic zero-shot result is also printed and kept in zero_shot.json, as
    before. Returns {"results": [...], "zero_shot": that report or None}."""
    _setup_logging()
    distributed.initialize()
    workdir = storage.absolute(workdir)
    export = storage.join(workdir, "export")
    if not params_io.is_params_dir(export):
        raise UsageError(f"--workdir {workdir}: no exported parameters in {export}; train first "
                         f"(--mode=train) or give the workdir of a finished run")
    params, model_config, description = params_io.load_params(export)
    tokenizer = tokenizer_from_config(description["tokenizer"])
    _, eval_dir = prepare_data(config, workdir)
    mesh = sharding.make_mesh(config.mesh)
    encoder = Encoder(params, model_config, tokenizer, mesh, batch_size=config.eval.batch_size,
                      description=str(export))
    results = run_config_evals(config, workdir, encoder, eval_dir)
    zero_shot = None
    is_main = jax.process_index() == 0  # every process computed the results; one reports them
    for result in results:
        if result["protocol"] == "zero_shot" and result["data"] == str(eval_dir):
            zero_shot = dict(result["report"], dataset=str(eval_dir))
            zero_shot.pop("fold_summary", None)
            if is_main:
                _print_zero_shot(zero_shot)
                storage.write_text(storage.join(workdir, "zero_shot.json"),
                                   json.dumps(zero_shot, indent=1))
        elif is_main:
            print(summary_line(result), flush=True)
    # (run_config_evals has logged where the report is: printing it too showed it twice.)
    return {"results": results, "zero_shot": zero_shot}


def _setup_logging():
    """One console handler on the "emocap_jax" logger, however often a run starts in a process
    (it is looked for where it is added, so repeated calls add none)."""
    logger = logging.getLogger("emocap_jax")
    if not any(getattr(h, "_emocap", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(distributed.LogFormatter("%(asctime)s %(message)s", "%H:%M:%S"))
        handler.addFilter(distributed.main_process_or_warning)
        handler._emocap = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
