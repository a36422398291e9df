"""The training run end to end (as a user runs it: `python -m emocap_jax.main`, 8 CPU devices),
exact resume after SIGKILL, clean stop on SIGTERM, and the step's own guarantees."""
import copy
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import REPO_ROOT, random_train_batch


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A small synthetic corpus as TFRecords: (train dir, eval dir)."""
    from emocap_jax.data.manifest import convert_manifest
    from emocap_jax.data.synthetic.corpus import generate_corpus

    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root / "synthetic", num=96, seed=0, size=40, eval_per_class=2,
                    workers=1)
    classes = json.loads((root / "synthetic" / "corpus.json").read_text())["classes"]
    convert_manifest(root / "synthetic" / "manifest.jsonl", root / "synthetic", root / "train",
                     num_shards=4, workers=1, progress=False)
    convert_manifest(root / "synthetic" / "eval" / "manifest.jsonl", root / "synthetic" / "eval",
                     root / "eval", num_shards=2, workers=1, progress=False, classes=classes)
    return str(root / "train"), str(root / "eval")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    # Runs of the same program share compiled executables, as a user's resumed run does.
    return str(tmp_path_factory.mktemp("jax_cache"))


def _command(workdir, datasets, cache_dir, *overrides):
    train_dir, eval_dir = datasets
    return [sys.executable, "-m", "emocap_jax.main", "--config=configs/tiny.py",
            f"--workdir={workdir}", f"--config.data.train_dir={train_dir}",
            f"--config.eval.zero_shot_dir={eval_dir}", "--config.model.vision.image_size=32",
            f"--config.train.compilation_cache_dir={cache_dir}", "--config.train.log_every=1",
            *overrides]


def _env(**extra):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", **extra)
    return env


def _run(cmd, **extra_env):
    return subprocess.run(cmd, cwd=REPO_ROOT, env=_env(**extra_env), capture_output=True,
                          text=True, timeout=600)


def _train_losses(workdir):
    losses = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "train":
            losses[rec["step"]] = rec["loss"]  # a resumed run's lines replace the killed run's
    return losses


@pytest.mark.slow
def test_training_lowers_loss_and_resumes_exactly_after_sigkill(tmp_path, datasets, cache_dir):
    from emocap_jax import params_io

    steps = ["--config.train.num_steps=16", "--config.train.checkpoint_every=8"]
    straight = tmp_path / "straight"
    result = _run(_command(straight, datasets, cache_dir, *steps))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "zero-shot on" in result.stdout and "UAR" in result.stdout
    losses = _train_losses(straight)
    assert sorted(losses) == list(range(1, 17))
    first, last = np.mean([losses[s] for s in range(1, 5)]), np.mean(
        [losses[s] for s in range(13, 17)])
    assert last < first - 0.2, (first, last)

    killed = tmp_path / "killed"
    result = _run(_command(killed, datasets, cache_dir, *steps),
                  EMOCAP_FAULT_SIGKILL_AFTER_CHECKPOINT="8")
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert not (killed / "export").exists()
    result = _run(_command(killed, datasets, cache_dir, *steps))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr and "at step 8" in result.stderr

    resumed = _train_losses(killed)
    assert sorted(resumed) == list(range(1, 17))
    np.testing.assert_allclose([resumed[s] for s in range(9, 17)],
                               [losses[s] for s in range(9, 17)], rtol=0, atol=1e-6)
    a, _, _ = params_io.load_params(straight / "export")
    b, _, _ = params_io.load_params(killed / "export")
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_a_run_resumed_on_another_mesh_keeps_its_local_objective(tmp_path, datasets, cache_dir):
    """A run started on 4 devices records its local term's group (its 4 faces per device) in
    config.json and its checkpoints. Resumed on 2 devices it keeps that group, and its step 3
    has the loss of the 4-device run's step 3; on 8 devices (2 faces each) the group cannot be
    held, and the run is refused, naming the setting that would change the objective on purpose.
    Before, the group was each device's share, and both resumes changed the objective silently."""
    workdir = tmp_path / "run"
    cmd = _command(workdir, datasets, cache_dir, "--config.train.num_steps=3",
                   "--config.train.checkpoint_every=2")

    def run(devices):
        env = dict(_env(), XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=600)

    result = run(4)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "local term: negatives in groups of 4 faces (4 per device)" in result.stderr
    assert json.loads((workdir / "config.json").read_text())["loss"]["local_group_size"] == 4
    from emocap_jax.checkpoint import TrainCheckpointer

    checkpointer = TrainCheckpointer(workdir / "checkpoints", async_save=False)
    assert checkpointer.saved_config(2)["loss"]["local_group_size"] == 4
    checkpointer.close()
    step_3 = _train_losses(workdir)[3]
    # Resume from step 2: step 3 is trained again.
    shutil.rmtree(workdir / "checkpoints" / "3")

    result = run(8)
    assert result.returncode != 0
    assert ("the run trained its local term on groups of 4 faces (config.loss.local_group_size, "
            "recorded at its start), which do not divide the 2 faces each device holds"
            in result.stderr), result.stderr[-3000:]
    assert "--config.loss.local_group_size" in result.stderr

    result = run(2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "at step 2" in result.stderr
    assert "local term: negatives in groups of 4 faces (8 per device)" in result.stderr
    np.testing.assert_allclose(_train_losses(workdir)[3], step_3, rtol=1e-5)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_cleanly(tmp_path, datasets, cache_dir):
    workdir = tmp_path / "preempted"
    cmd = _command(workdir, datasets, cache_dir, "--config.train.num_steps=400",
                   "--config.train.checkpoint_every=1000")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        metrics = workdir / "metrics.jsonl"
        while time.time() < deadline:
            if metrics.exists() and len(_train_losses(workdir)) >= 3:
                break
            if proc.poll() is not None:
                pytest.fail(f"training ended early: {proc.stderr.read()[-3000:]}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert "SIGTERM" in stderr
    last_step = max(_train_losses(workdir))
    assert last_step < 400
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [last_step]


@pytest.mark.slow
def test_sigterm_during_the_last_save_says_so_and_the_same_command_finishes(
        tmp_path, datasets, cache_dir):
    """SIGTERM while the last step's checkpoint is written: the loop has ended, so no step says
    "exiting"; the run stopped before its export without a word. It now says so, and the same
    command exports from that checkpoint without training again."""
    workdir = tmp_path / "preempted_last"
    cmd = _command(workdir, datasets, cache_dir, "--config.train.num_steps=2",
                   "--config.train.checkpoint_every=1")
    result = _run(cmd, EMOCAP_FAULT_SIGTERM_AFTER_CHECKPOINT="2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("SIGTERM: training is complete and checkpointed at step 2; exiting before the "
            "export and evaluation, which the same command does") in result.stderr
    assert not (workdir / "export").exists()
    result = _run(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr and (workdir / "export").is_dir()
    assert max(_train_losses(workdir)) == 2


@pytest.mark.slow
def test_a_nonfinite_loss_stops_the_run_at_the_next_log_not_the_next_checkpoint(
        tmp_path, datasets, cache_dir):
    """on_nonfinite=error: a learning rate of 1e38 makes step 2 non-finite; the run stops there
    (its metrics are on the host at each log), not ten steps later at the checkpoint."""
    workdir = tmp_path / "diverged"
    result = _run(_command(workdir, datasets, cache_dir, "--config.train.num_steps=20",
                           "--config.train.checkpoint_every=10",
                           "--config.optim.learning_rate=1e38", "--config.optim.warmup_steps=0",
                           "--config.optim.grad_clip_norm=0"))
    assert result.returncode != 0
    assert "NonFiniteLossError: non-finite loss or gradient at step 2" in result.stderr, \
        result.stderr[-3000:]
    assert max(_train_losses(workdir)) == 2
    assert not [p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]


def test_an_unknown_on_nonfinite_or_a_zero_interval_is_refused():
    """A typo ("eror") used to mean "skip": only "error" stopped the run."""
    from configs import tiny
    from emocap_jax.cli_errors import UsageError
    from emocap_jax.train import check_train_settings

    config = tiny.get_config()
    check_train_settings(config)
    config.train.on_nonfinite = "skip"
    check_train_settings(config)
    config.train.on_nonfinite = "eror"
    with pytest.raises(UsageError, match=r"on_nonfinite='eror': choose 'error'"):
        check_train_settings(config)
    config.train.on_nonfinite = "error"
    config.train.checkpoint_every = 0  # was a ZeroDivisionError after the first step
    with pytest.raises(UsageError, match=r"checkpoint_every=0: give a number of steps"):
        check_train_settings(config)


@pytest.mark.parametrize("group, name, value", [
    ("optim", "learning_rate", -1.0),  # the schedule went to -0.54 at step 50: gradient ascent
    ("optim", "learning_rate", float("nan")),
    ("optim", "end_learning_rate_fraction", -2.0),  # the decay ended below 0
    ("optim", "end_learning_rate_fraction", 1.5),
    ("optim", "warmup_steps", -5),  # no warm-up, silently
    ("optim", "weight_decay", -0.1), ("optim", "b1", 1.0), ("optim", "b2", 1.5),
    ("optim", "eps", -1e-6), ("optim", "grad_clip_norm", -1.0),  # < 0 meant no clipping
    ("loss", "local_pool_temperature", 0.0),  # every local logit infinite
])
def test_optimiser_and_loss_numbers_out_of_range_are_refused(group, name, value):
    from configs import tiny
    from emocap_jax.cli_errors import UsageError
    from emocap_jax.train import check_number_settings

    config = tiny.get_config()
    check_number_settings(config)
    config[group][name] = value
    with pytest.raises(UsageError, match=rf"config\.{group}\.{name}={value!r}: give "):
        check_number_settings(config)


def test_the_ends_of_the_number_ranges_are_allowed():
    from configs import tiny
    from emocap_jax.train import check_number_settings

    config = tiny.get_config()
    for name, value in (("end_learning_rate_fraction", 0.0), ("end_learning_rate_fraction", 1.0),
                        ("warmup_steps", 0), ("weight_decay", 0.0), ("b1", 0.0),
                        ("grad_clip_norm", 0.0), ("eps", 1e-12)):
        config.optim[name] = value
    check_number_settings(config)


def test_an_adam_eps_of_zero_is_refused():
    """Adam's update is m / (sqrt(v) + eps): at eps=0 a parameter whose gradient has been 0 so
    far (every token embedding row no sentence of the step used, the local head's parameters at
    local_weight=0) gets 0 / 0. One such step, with a finite loss and gradient norm (which is all
    the step's non-finite guard checks), put NaN into those rows; eps=0 used to be accepted."""
    from configs import tiny
    from emocap_jax.cli_errors import UsageError
    from emocap_jax.optim import make_optimizer
    from emocap_jax.train import check_number_settings

    config = tiny.get_config()
    config.optim.eps = 0.0
    params = {"token_embedding": jnp.ones((4, 3))}
    optimizer, _ = make_optimizer(config.optim, 10, params)
    grads = {"token_embedding": jnp.zeros((4, 3)).at[0].set(0.1)}  # only token 0 was used
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    assert np.isnan(np.asarray(updates["token_embedding"])[1:]).all()
    with pytest.raises(UsageError, match=r"config\.optim\.eps=0\.0: give a number > 0"):
        check_number_settings(config)


def test_a_tokenizer_the_text_tower_cannot_pool_is_refused(tmp_path):
    """A sentencepiece model with sentencepiece's default ids (eos 2, not the largest id) under the
    default argmax pooling used to train a text tower pooled at an arbitrary word, silently."""
    import sentencepiece as spm

    from configs import tiny
    from emocap_jax.cli_errors import UsageError
    from emocap_jax.config_utils import clip_config
    from emocap_jax.tokenizers import get_tokenizer
    from emocap_jax.train import check_tokenizer

    sentences = [f"The {w} are raised, showing {i} signs of surprise." for i in range(200)
                 for w in ("brows", "cheeks", "lip corners")]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), vocab_size=40,
                                   model_prefix=str(tmp_path / "plain"), minloglevel=2)
    config = tiny.get_config()
    check_tokenizer(config, clip_config(config), get_tokenizer(config.tokenizer))
    config.tokenizer = str(tmp_path / "plain.model")
    model = clip_config(config)
    tokenizer = get_tokenizer(config.tokenizer, model.text.context_length)
    with pytest.raises(UsageError, match=r"plain\.model.*largest token id.*eot_token_id=2"):
        check_tokenizer(config, model, tokenizer)
    config.model.text.eot_token_id = 2  # first-EOT pooling, as the message says
    check_tokenizer(config, clip_config(config), tokenizer)
    config.model.text.vocab_size = 30
    with pytest.raises(UsageError, match=r"40 ids but config\.model\.text\.vocab_size=30"):
        check_tokenizer(config, clip_config(config), tokenizer)


# ---------------------------------------------------------------------------------------------
# In-process checks of the step and its helpers (single device, tiny model).


def _tiny_setup(**loss_overrides):
    from configs import tiny
    from emocap_jax.config_utils import clip_config
    from emocap_jax.models.clip import CLIP, init_params
    from emocap_jax.optim import make_optimizer
    from emocap_jax.train_step import initial_state, make_train_step

    config = tiny.get_config()
    config.model.vision.image_size = 32
    for k, v in loss_overrides.items():
        config.loss[k] = v
    model_config = clip_config(config)
    # Jitted init: eager Flax init dispatches (and compiles) every op separately.
    params = jax.jit(lambda r: init_params(model_config, r))(jax.random.PRNGKey(0))
    optimizer, schedule = make_optimizer(config.optim, 10, params)
    step = jax.jit(make_train_step(CLIP(model_config), optimizer, schedule, config.loss))
    rng = np.random.default_rng(0)
    b, length = 8, model_config.text.context_length
    batch = {
        "image": rng.integers(0, 255, (b, 32, 32, 3), dtype=np.uint8),
        "global_tokens": rng.integers(1, 49000, (b, length)).astype(np.int32),
        "summary_tokens": rng.integers(1, 49000, (b, length)).astype(np.int32),
        "local_tokens": rng.integers(1, 49000, (b, 4, length)).astype(np.int32),
        "local_mask": np.ones((b, 4), bool),
    }
    return config, params, optimizer, step, batch, initial_state


def test_nonfinite_step_changes_nothing_and_is_reported():
    from emocap_jax.train import NonFiniteLossError, _check_finite

    config, params, optimizer, step, batch, initial_state = _tiny_setup()
    bad = dict(params, logit_scale=jnp.asarray(jnp.nan))
    state = jax.jit(lambda p: initial_state(p, optimizer))(bad)
    new_state, metrics = step(state, batch)
    assert not bool(metrics["finite"])
    for a, b in zip(jax.tree_util.tree_leaves(state["params"]),
                    jax.tree_util.tree_leaves(new_state["params"])):
        np.testing.assert_array_equal(a, b)
    assert int(new_state["nonfinite"]["count"]) == 1
    assert int(new_state["nonfinite"]["first_step"]) == 0
    with pytest.raises(NonFiniteLossError, match="at step 1"):
        _check_finite(new_state, config)
    config.train.on_nonfinite = "skip"
    _check_finite(new_state, config)  # warns, does not raise


def _schedule_and_adam_counts(opt_state):
    import optax

    nodes = jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(
        x, (optax.ScaleByScheduleState, optax.ScaleByAdamState)))
    return ([int(n.count) for n in nodes if isinstance(n, optax.ScaleByScheduleState)],
            [int(n.count) for n in nodes if isinstance(n, optax.ScaleByAdamState)])


def test_skipped_steps_advance_the_learning_rate_schedule_but_not_adam():
    """on_nonfinite=skip: a skipped step applies no update, but the learning-rate schedule follows
    the run's step (the logged learning_rate is the one applied), as open_clip steps its
    scheduler when AMP skips an update. Adam's moments and count (its bias correction) stay as
    they were. Skips used to freeze optax's schedule counters: after k skips the next update ran
    at schedule(step - k) (here: 0, the warm-up's start). Measured from the update of two groups
    with their own schedule counters (an lr multiplier of 0.5 on the image tower)."""
    import optax

    from emocap_jax.config_utils import clip_config
    from emocap_jax.models.clip import CLIP
    from emocap_jax.optim import make_optimizer
    from emocap_jax.train_step import compute_losses, make_train_step

    config, params, _, _, batch, initial_state = _tiny_setup()
    config.optim.lr_multipliers = (("visual/.*", 0.5),)
    optimizer, schedule = make_optimizer(config.optim, 10, params)
    step = jax.jit(make_train_step(CLIP(clip_config(config)), optimizer, schedule, config.loss))
    state = jax.jit(lambda p: initial_state(p, optimizer))(params)
    layout = jax.tree_util.tree_structure(state["opt_state"])
    k = 3
    for _ in range(k):
        state = dict(state, params=dict(state["params"], logit_scale=jnp.asarray(jnp.nan)))
        state, metrics = step(state, batch)
        assert not bool(metrics["finite"])
    assert jax.tree_util.tree_structure(state["opt_state"]) == layout  # checkpoints restore
    schedules, adams = _schedule_and_adam_counts(state["opt_state"])
    assert schedules == [k, k] and adams == [0, 0]
    state = dict(state, params=dict(state["params"], logit_scale=params["logit_scale"]))
    before = jax.device_get(state["params"])
    state, metrics = step(state, batch)
    assert bool(metrics["finite"])
    lr = schedule(k)
    assert float(lr) > 0 and np.isclose(float(metrics["learning_rate"]), float(lr))
    assert _schedule_and_adam_counts(state["opt_state"]) == ([k + 1, k + 1], [1, 1])

    # Adam's first update of an undecayed parameter is lr * g / (|g| + eps), g the clipped
    # gradient (bias-corrected moments g and g**2).
    grads = jax.device_get(jax.grad(lambda p: compute_losses(
        p, batch, k, model=CLIP(clip_config(config)), loss_config=config.loss, mesh=None,
        batch_axes=None)[0])(before))
    norm = float(optax.tree.norm(grads))
    clip = min(1.0, config.optim.grad_clip_norm / norm)
    after = jax.device_get(state["params"])
    for group, name, mult in (("visual", "class_embedding", 0.5), ("text", "pos_embedding", 1.0)):
        g = clip * np.asarray(grads[group][name], np.float64)
        big = np.abs(g) > 1e-4  # where float32 rounding of the update is negligible
        assert big.sum() > 10, group
        delta = np.asarray(after[group][name], np.float64) - before[group][name]
        applied = -delta[big] * (np.abs(g[big]) + config.optim.eps) / g[big]
        np.testing.assert_allclose(applied, mult * float(lr), rtol=1e-3, err_msg=group)

    # A checkpoint of a run that skipped steps before the counters moved on skips holds counters
    # that lag its step: the next update catches them up.
    from emocap_jax.optim import at_schedule_step

    state, _ = step(dict(state, opt_state=at_schedule_step(state["opt_state"], 0)), batch)
    assert _schedule_and_adam_counts(state["opt_state"]) == ([k + 2, k + 2], [2, 2])


def test_the_optimizer_has_no_counter_that_a_skipped_step_would_leave_behind():
    """optim.at_schedule_step moves optax.ScaleByScheduleState's counters on a skipped step and
    leaves Adam's; any other counter in the state (a scheduled weight decay's, an
    inject_hyperparams) would stop on skips and fall behind the run: it must be handled there."""
    import optax

    from emocap_jax.optim import make_optimizer

    config, params, _, _, _, _ = _tiny_setup()
    for rules in ((), (("visual/.*", 0.0),), (("visual/.*", 0.1), ("text/.*", 2.0))):
        config.optim.lr_multipliers = rules
        optimizer, _ = make_optimizer(config.optim, 10, params)
        with_count = optax.tree_utils.tree_get_all_with_path(
            jax.eval_shape(optimizer.init, params), "count")
        assert with_count, rules
        for path, _ in with_count:
            assert type(path[-1]).__name__ == "NamedTupleKey"
            assert path[-1].tuple_name in ("ScaleByAdamState", "ScaleByScheduleState"), path


def test_the_log_temperature_is_clamped_at_its_cap_after_each_update():
    """The model clips log(logit_scale) at max_logit_scale where it is used, so no gradient
    reaches a parameter above the cap: one the optimiser pushed past it never came back. The step
    clamps it (CLIP's clamp_ after each update); at the cap the gradient still reaches it."""
    import math

    config, params, optimizer, step, batch, initial_state = _tiny_setup()
    cap = math.log(100.0)
    above = dict(params, logit_scale=jnp.asarray(cap + 0.5, jnp.float32))
    state = jax.jit(lambda p: initial_state(p, optimizer))(above)
    for _ in range(3):  # the first step has learning rate 0
        state, metrics = step(state, batch)
        assert bool(metrics["finite"])
        assert float(state["params"]["logit_scale"]) <= cap + 1e-6
    from emocap_jax.train_step import compute_losses
    from emocap_jax.config_utils import clip_config
    from emocap_jax.models.clip import CLIP

    grads = jax.grad(lambda p: compute_losses(p, batch, 0, model=CLIP(clip_config(config)),
                                              loss_config=config.loss, mesh=None,
                                              batch_axes=None)[0])(state["params"])
    assert float(grads["logit_scale"]) != 0.0


def test_frozen_tower_and_weight_decay_mask():
    from emocap_jax.optim import make_optimizer, param_paths

    config, params, _, _, _, _ = _tiny_setup()
    config.optim.lr_multipliers = (("visual/.*", 0.0),)
    config.optim.warmup_steps = 0
    optimizer, _ = make_optimizer(config.optim, 10, params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = jax.jit(optimizer.update)(grads, optimizer.init(params), params)
    for path, u in zip(jax.tree_util.tree_leaves(param_paths(params)),
                       jax.tree_util.tree_leaves(updates)):
        if path.startswith("visual/"):
            assert not np.any(np.asarray(u)), path
        else:
            assert np.any(np.asarray(u)), path
    # A pattern that matches no parameter path is a mistake, not a silent no-op.
    config.optim.lr_multipliers = (("vision/.*", 0.0),)
    with pytest.raises(ValueError, match=r"optim.lr_multipliers: 'vision/\.\*' matches no parameter"):
        make_optimizer(config.optim, 10, params)
    # With zero gradients only weight decay moves parameters: kernels yes; biases, LayerNorm
    # gains, embeddings and the temperature no.
    config.optim.lr_multipliers = ()
    optimizer, _ = make_optimizer(config.optim, 10, params)
    state = optimizer.init(params)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    update = jax.jit(optimizer.update)
    _, state = update(zeros, state, params)  # past the first (lr 0) step
    updates, _ = update(zeros, state, params)
    moved = {p: bool(np.any(np.asarray(u))) for p, u in zip(
        jax.tree_util.tree_leaves(param_paths(params)), jax.tree_util.tree_leaves(updates))}
    assert moved["visual/transformer/blocks/attn/qkv/kernel"]
    assert moved["text/proj"]
    for p in ("visual/transformer/blocks/attn/qkv/bias", "visual/ln_pre/scale",
              "text/token_embedding/embedding", "visual/pos_embedding", "logit_scale"):
        assert not moved[p], p


def test_a_batch_that_does_not_split_is_refused_in_one_line():
    from configs import tiny
    from emocap_jax.cli_errors import UsageError
    from emocap_jax.train import check_batch_settings

    config = tiny.get_config()  # global batch 16
    check_batch_settings(config, 8)
    config.optim.grad_accum_steps = 2
    check_batch_settings(config, 8)
    config.optim.grad_accum_steps = 4
    with pytest.raises(UsageError, match=r"global_batch_size=16 must be a positive multiple of "
                       r"32 \(8 devices x optim.grad_accum_steps=4\); the smallest is 32"):
        check_batch_settings(config, 8)
    config.optim.grad_accum_steps = 1
    config.train.global_batch_size = 12
    with pytest.raises(UsageError, match=r"global_batch_size=12 .* nearest are 8 and 16"):
        check_batch_settings(config, 8)
    config.optim.grad_accum_steps = 0  # was a ZeroDivisionError
    with pytest.raises(UsageError, match=r"grad_accum_steps=0"):
        check_batch_settings(config, 8)


def test_a_local_group_without_negatives_is_refused_naming_the_settings():
    """With gradient accumulation down to one face per device in a micro-batch, the local term's
    group (each device's share) was one face: no negatives at all (its sentence->image CE is 0,
    its image->sentence CE weighs the face's own sentences against each other), and the run
    trained on, silently. Refused before anything compiles, naming what to change."""
    from configs import tiny
    from emocap_jax.cli_errors import UsageError
    from emocap_jax.losses import _local_loss_parts
    from emocap_jax.train import check_batch_settings, check_local_loss_settings

    rng = np.random.default_rng(0)
    sentences = rng.normal(size=(1, 3, 8)).astype(np.float32)
    sentences /= np.linalg.norm(sentences, axis=-1, keepdims=True)
    pair_term = lambda patches: float(_local_loss_parts(  # noqa: E731
        patches, sentences, np.ones((1, 3), bool), 10.0, 0.1, 0.0)[0])
    # A face alone: its sentence->image half is exactly 0, and the image->sentence half is
    # log-sum-exp minus mean over its own 3 sentences, all positives, whose floor log(3) it
    # reaches by scoring them all alike: the term teaches nothing but that.
    one = pair_term(rng.normal(size=(1, 5, 8)).astype(np.float32))
    assert one >= 0.5 * np.log(3) - 1e-6

    config = tiny.get_config()  # global batch 16
    config.optim.grad_accum_steps = 2
    check_batch_settings(config, 8)  # the batch splits: 1 face per device per micro-batch
    with pytest.raises(UsageError, match=r"that is one face \(config.train.global_batch_size=16 "
                       r"/ \(8 devices x config.optim.grad_accum_steps=2\)\), which has no "
                       r"negatives: lower config.optim.grad_accum_steps, raise "
                       r"config.train.global_batch_size, train on fewer devices "
                       r"\(config.mesh.data\), or set config.loss.local_weight=0"):
        check_local_loss_settings(config, 8)
    check_local_loss_settings(config, 4)
    config.loss.local_weight = 0.0  # no local term: nothing to refuse
    check_local_loss_settings(config, 8)
    config.loss.local_weight = 1.0
    config.optim.grad_accum_steps = 1
    config.loss.local_group_size = 1
    with pytest.raises(UsageError, match=r"local_group_size=1: .* at least 2 \(one face has no "
                                         r"negatives\)"):
        check_local_loss_settings(config, 8)
    config.loss.local_group_size = 4
    with pytest.raises(UsageError, match=r"local_group_size=4 must divide the 2 faces each "
                                         r"device holds"):
        check_local_loss_settings(config, 8)
    check_local_loss_settings(config, 4)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_a_resumed_run_keeps_its_local_groups_or_says_it_changes_them():
    """The local term's group of negatives is fixed at a run's start and recorded in its config
    (loss.local_group_size); its value and gradient depend on it. A run resumed on another mesh
    used to change it silently (each device's share). Left at 0, a resumed run keeps the recorded
    size wherever it divides the devices' share and is refused where it does not; a size given on
    purpose wins with a loud warning; a checkpoint from before the record is warned about."""
    from configs import tiny
    from emocap_jax.cli_errors import UsageError
    from emocap_jax.train import resolve_local_group_size

    records = _Records()
    logger = logging.getLogger("emocap_jax.train")
    logger.addHandler(records)
    try:
        config = tiny.get_config()  # global batch 16
        assert resolve_local_group_size(config, 8, None, resuming=False) == 2
        assert resolve_local_group_size(config, 2, None, resuming=False) == 8
        saved = json.loads(config.to_json_best_effort())
        saved["loss"]["local_group_size"] = 4  # started on 4 devices
        assert resolve_local_group_size(config, 2, saved, resuming=True) == 4  # 8 per device
        assert resolve_local_group_size(config, 4, saved, resuming=True) == 4
        assert records.messages == []
        with pytest.raises(UsageError, match=r"groups of 4 faces \(config.loss.local_group_size, "
                           r"recorded at its start\), which do not divide the 2 faces each "
                           r"device holds on this mesh .* or set --config.loss.local_group_size "
                           r"to a divisor of 2"):
            resolve_local_group_size(config, 8, saved, resuming=True)
        config.loss.local_group_size = 2  # the explicit override
        assert resolve_local_group_size(config, 8, saved, resuming=True) == 2
        assert len(records.messages) == 1
        assert "RESUMING WITH ANOTHER LOCAL OBJECTIVE" in records.messages[0]
        assert "groups of 4 faces" in records.messages[0]
        config.loss.local_group_size = 4  # the recorded size, given: no warning
        assert resolve_local_group_size(config, 4, saved, resuming=True) == 4
        assert len(records.messages) == 1
        config.loss.local_group_size = 0
        del saved["loss"]["local_group_size"]  # a checkpoint from before the record
        assert resolve_local_group_size(config, 8, saved, resuming=True) == 2
        assert "does not record the local term's group size" in records.messages[-1]
        config.loss.local_weight = 0.0  # no local term: nothing to resolve or warn about
        saved["loss"]["local_group_size"] = 4
        assert resolve_local_group_size(config, 8, saved, resuming=True) == 0
        assert len(records.messages) == 2
    finally:
        logger.removeHandler(records)


def test_the_training_loss_with_a_local_group_size_is_the_same_on_any_mesh():
    """The step's loss (train_step.compute_losses) with loss.local_group_size is the same for a
    batch on 8 and on 2 devices; at 0 (each device's share) it was not."""
    from configs import tiny
    from emocap_jax.config_utils import clip_config
    from emocap_jax.models.clip import CLIP, init_params
    from emocap_jax.train_step import compute_losses
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    config = tiny.get_config()
    config.model.vision.image_size = 32
    model_config = clip_config(config)
    params = jax.jit(lambda r: init_params(model_config, r))(jax.random.PRNGKey(0))
    batch = random_train_batch(16, model_config.text.context_length)

    def loss_terms(devices, group_size):
        config.loss.local_group_size = group_size
        mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
        total, terms = jax.jit(lambda p, x: compute_losses(
            p, x, 0, model=CLIP(model_config), loss_config=config.loss, mesh=mesh,
            batch_axes=("data",)))(params, jax.device_put(batch, NamedSharding(mesh, P("data"))))
        return float(terms["local"]), float(total)

    fixed = [loss_terms(d, 2) for d in (8, 2)]  # 2 and 8 faces per device
    np.testing.assert_allclose(fixed[1], fixed[0], rtol=2e-5)
    # On 8 devices the share is the group of 2; on 2 devices it is 8 faces, another loss.
    assert abs(loss_terms(2, 0)[0] - fixed[0][0]) > 1e-3


def test_a_mesh_that_does_not_fit_the_devices_is_a_usage_error():
    """A one-line error from the command line (a UsageError), not a traceback; mesh.data=0 used
    to die in a ZeroDivisionError."""
    from emocap_jax import sharding
    from emocap_jax.cli_errors import UsageError

    mesh = lambda data, fsdp: type("M", (), {"data": data, "fsdp": fsdp})()  # noqa: E731
    assert sharding.make_mesh(mesh(-1, 2)).shape == {"data": 4, "fsdp": 2}
    with pytest.raises(UsageError, match=r"mesh.data=3 x config.mesh.fsdp=2 != 8 devices"):
        sharding.make_mesh(mesh(3, 2))
    with pytest.raises(UsageError, match=r"mesh.data=0, config.mesh.fsdp=-1"):
        sharding.make_mesh(mesh(0, -1))
    # Said in the sizes given: it was "config.mesh.data=2 x config.mesh.fsdp=3 != 8 devices".
    with pytest.raises(UsageError, match=r"config\.mesh\.fsdp=3 does not divide the 8 devices, "
                                         r"so config\.mesh\.data=-1 cannot take the rest"):
        sharding.make_mesh(mesh(-1, 3))
    with pytest.raises(UsageError, match=r"config\.mesh\.data=5 does not divide the 8 devices, "
                                         r"so config\.mesh\.fsdp=-1"):
        sharding.make_mesh(mesh(5, -1))


def test_keeping_no_checkpoint_is_refused(tmp_path):
    """Orbax's max_to_keep=0 deletes every step it saves, the one just written too: a run with
    keep_checkpoints=0 could never resume."""
    from emocap_jax.checkpoint import TrainCheckpointer

    with pytest.raises(ValueError, match=r"keep_checkpoints=0: keep at least 1"):
        TrainCheckpointer(tmp_path / "checkpoints", keep=0, async_save=False)
    checkpointer = TrainCheckpointer(tmp_path / "checkpoints", keep=1, async_save=False)
    checkpointer.manager.save(1, args=ocp_composite({"w": np.ones(2)}), force=True)
    checkpointer.close()
    assert TrainCheckpointer(tmp_path / "checkpoints").latest_step() == 1


def ocp_composite(state, config=None):
    import orbax.checkpoint as ocp

    items = {"state": ocp.args.StandardSave(state)}
    if config is not None:
        items["config"] = ocp.args.JsonSave(json.loads(config.to_json_best_effort()))
    return ocp.args.Composite(**items)


def test_a_workdir_of_another_config_is_not_resumed_silently(tmp_path):
    """The run config saved with a checkpoint is compared with the resuming run's: a field that
    changes what is trained (learning rate, model, seed, ...) is reported; where it logs,
    checkpoints, evaluates or how it shards is not."""
    from configs import tiny
    from emocap_jax.checkpoint import TrainCheckpointer
    from emocap_jax.train import resume_config_differences

    config = tiny.get_config()
    checkpointer = TrainCheckpointer(tmp_path / "checkpoints", async_save=False)
    checkpointer.manager.save(10, args=ocp_composite({"w": np.ones(2)}, config), force=True)
    checkpointer.close()
    saved = TrainCheckpointer(tmp_path / "checkpoints").saved_config(10)
    assert resume_config_differences(saved, config) == []
    other = copy.deepcopy(config)
    other.train.log_every = 1
    other.train.num_steps = 40
    other.mesh.data = 2
    other.eval.classes = ("a", "b")
    other.data.train_dir = "/elsewhere"
    other.data.on_corrupt = "skip"
    assert resume_config_differences(saved, other) == []
    other.optim.learning_rate = 1e-3
    other.model.vision.image_size = 48
    other.loss.mining.terms = ("global", "summary")
    other.data.worker_count = 2  # Grain's saved state holds one position per worker
    assert resume_config_differences(saved, other) == [
        "data.worker_count: 0 -> 2", "loss.mining.terms: ['global'] -> ['global', 'summary']",
        "model.vision.image_size: 32 -> 48", "optim.learning_rate: 0.0005 -> 0.001"]
    # A field the saved config lacks (written before it existed) is not compared.
    del saved["optim"]["learning_rate"]
    assert len(resume_config_differences(saved, other)) == 3


class _PipelineBuilt(Exception):
    pass


@pytest.mark.parametrize("change, refusal", [
    ({"seed": 5}, r"holds checkpoints \(step 2\) of a run with another config: train\.seed: 0 -> 5"),
    # Saved: groups of 4 faces; 8 devices hold 2 faces each of the global batch of 16.
    ({}, r"groups of 4 faces .* do not divide the 2 faces each device holds"),
    (None, None),  # a resume that goes ahead builds the pipeline: the patch is on its path
])
def test_a_refused_resume_is_refused_before_the_input_pipeline_is_built(
        tmp_path, datasets, monkeypatch, change, refusal):
    """The saved config is read and the resume refused (another config, local groups this mesh
    cannot hold) before the data iterator is made: it used to be made first (worker processes,
    shard index) and closed again. Every process reads the same saved config, so all refuse."""
    from configs import tiny
    from emocap_jax import train
    from emocap_jax.checkpoint import TrainCheckpointer
    from emocap_jax.cli_errors import UsageError

    config = tiny.get_config()
    config.data.train_dir, config.eval.zero_shot_dir = datasets[0], ""
    saved = copy.deepcopy(config)
    saved.loss.local_group_size = 4 if change is not None else 2
    checkpointer = TrainCheckpointer(tmp_path / "checkpoints", async_save=False)
    checkpointer.manager.save(2, args=ocp_composite({"w": np.ones(2)}, saved), force=True)
    checkpointer.close()
    for key, value in (change or {}).items():
        setattr(config.train, key, value)

    def built(*args, **kwargs):
        raise _PipelineBuilt

    monkeypatch.setattr(train, "make_train_iterator", built)
    if refusal is None:
        with pytest.raises(_PipelineBuilt):
            train.train_and_evaluate(config, str(tmp_path))
        return
    with pytest.raises(UsageError, match=refusal):
        train.train_and_evaluate(config, str(tmp_path))


def test_a_failed_restore_stops_the_data_workers_and_closes_the_checkpointer(
        tmp_path, datasets, monkeypatch):
    """A failure after the input pipeline is built and before the loop starts (here a checkpoint
    whose tree is not the run's state, so the restore fails) closes the data iterator (its Grain
    worker processes) and the checkpointer on the way out, not only at interpreter exit."""
    from configs import tiny
    from emocap_jax import train
    from emocap_jax.checkpoint import TrainCheckpointer

    config = tiny.get_config()
    config.data.train_dir, config.eval.zero_shot_dir = datasets[0], ""
    saved = copy.deepcopy(config)
    saved.loss.local_group_size = 2
    checkpointer = TrainCheckpointer(tmp_path / "checkpoints", async_save=False)
    checkpointer.manager.save(2, args=ocp_composite({"w": np.ones(2)}, saved), force=True)
    checkpointer.close()
    closed = []

    class Iterator:
        def close(self):
            closed.append("iterator")

    original_close = TrainCheckpointer.close

    def close_checkpointer(self):
        closed.append("checkpointer")
        original_close(self)

    monkeypatch.setattr(train, "make_train_iterator", lambda *args, **kwargs: Iterator())
    monkeypatch.setattr(TrainCheckpointer, "close", close_checkpointer)
    with pytest.raises(Exception) as failure:
        train.train_and_evaluate(config, str(tmp_path))
    assert not isinstance(failure.value, _PipelineBuilt)
    assert sorted(closed) == ["checkpointer", "iterator"], failure.value


def test_a_resumed_run_logs_each_step_once(tmp_path):
    """A run killed after its checkpoint at step 2 had logged steps 3 and 4 (and half a line):
    resumed at step 2, it logs them again, and metrics.jsonl holds each step once."""
    from emocap_jax.train import MetricsLogger

    lines = [json.dumps({"step": s, "kind": k, "loss": float(s)})
             for s in (1, 2, 3, 4) for k in ("train", "perf")]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 5, "ki')
    logger = MetricsLogger(str(tmp_path), True, start_step=2)
    for s in (3, 4):
        logger.write(s, {"loss": 10.0 * s})
    logger.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["kind"]) for r in records] == [
        (1, "train"), (1, "perf"), (2, "train"), (2, "perf"), (3, "train"), (4, "train")]
    assert [r["loss"] for r in records if r["step"] > 2] == [30.0, 40.0]
    # A fresh run's logger leaves a file alone where nothing is past its start.
    MetricsLogger(str(tmp_path), True, start_step=4).close()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 6
    # A finished run killed during its final evaluation, run again: the evaluation at its last
    # step is logged again and replaces the first record there (there were two), not the step's
    # training line.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "kind": "zero_shot", "uar": 0.5}) + "\n")
    logger = MetricsLogger(str(tmp_path), True, start_step=4, relogged_at_start=("zero_shot",))
    logger.write(4, {"uar": 0.6}, prefix="zero_shot")
    logger.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["kind"]) for r in records][-2:] == [(4, "train"), (4, "zero_shot")]
    assert [r["uar"] for r in records if r["kind"] == "zero_shot"] == [0.6]


def test_a_frozen_towers_gradient_does_not_clip_the_trained_one():
    """Gradient clipping takes the global norm of the gradients that are applied: a frozen
    tower's (multiplier 0), computed but never applied, used to shrink the other's clip factor."""
    from emocap_jax.optim import make_optimizer, param_paths

    config, params, _, _, _, _ = _tiny_setup()
    config.optim.lr_multipliers = (("visual/.*", 0.0),)
    config.optim.warmup_steps = 0
    optimizer, _ = make_optimizer(config.optim, 10, params)
    paths = param_paths(params)

    def grads(visual):
        return jax.tree_util.tree_map(
            lambda p, x: jnp.full_like(x, visual if p.startswith("visual/") else 0.1),
            paths, params)

    update = jax.jit(optimizer.update)
    with_big, _ = update(grads(1e6), optimizer.init(params), params)
    without, _ = update(grads(0.0), optimizer.init(params), params)
    for path, a, b in zip(jax.tree_util.tree_leaves(paths), jax.tree_util.tree_leaves(with_big),
                          jax.tree_util.tree_leaves(without)):
        np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=path)
    # The checkpointed optimiser state keeps its layout: the clip step's state is empty, as
    # optax.clip_by_global_norm's.
    import optax

    assert optimizer.init(params)[0] == optax.EmptyState()


def test_init_from_converted_clip_with_exclusions_and_new_resolution(fixtures_dir):
    from configs import default
    from emocap_jax import api
    from emocap_jax.config_utils import clip_config
    from emocap_jax.optim import param_paths
    from emocap_jax.train import load_init_params
    from emocap_jax.models.clip import param_shapes

    config = default.get_config()
    config.model = default.model_config("tiny")
    config.model.vision.image_size = 48
    config.init_from = str(fixtures_dir / "openclip_tiny_quickgelu")
    config.init_exclude = ("visual/proj", "text/proj")
    model_config = clip_config(config)
    loaded = load_init_params(config, model_config, param_shapes(model_config))
    source = api.load(config.init_from)
    src = dict(zip(jax.tree_util.tree_leaves(param_paths(source.params)),
                   jax.tree_util.tree_leaves(source.params)))
    assert "visual/proj" not in loaded and "text/proj" not in loaded
    assert loaded["visual/pos_embedding"].shape == (1 + 36, 64)
    np.testing.assert_array_equal(loaded["text/transformer/blocks/mlp/fc/kernel"],
                                  src["text/transformer/blocks/mlp/fc/kernel"])
    # A pattern that matches no parameter path is a mistake, not a silent no-op.
    config.init_exclude = ("visual/proj", "vision/.*")
    with pytest.raises(ValueError, match=r"init_exclude: 'vision/\.\*' matches no parameter"):
        load_init_params(config, model_config, param_shapes(model_config))
    config.init_exclude = ()
    config.model.embed_dim = 32
    with pytest.raises(ValueError, match=r"(text|visual)/proj.*init_exclude"):
        load_init_params(config, clip_config(config), param_shapes(clip_config(config)))


def test_init_from_mistakes_are_usage_errors_naming_the_checkpoint(fixtures_dir, tmp_path):
    """A wrong config.init_from path, or weights of another architecture than the config's model
    (configs/vitb16.py with ViT-B-32 weights), is one line naming init_from, not a traceback."""
    from configs import tiny
    from emocap_jax.cli_errors import UsageError
    from emocap_jax.config_utils import clip_config
    from emocap_jax.models.clip import param_shapes
    from emocap_jax.train import load_init_params

    config = tiny.get_config()   # vocabulary 49408, context 32: not the fixture's 1000 and 16
    model_config = clip_config(config)
    config.init_from = str(tmp_path / "no_such_ckpt")
    with pytest.raises(UsageError, match=r"config\.init_from=.*no_such_ckpt.*no such file"):
        load_init_params(config, model_config, param_shapes(model_config))
    config.init_from = str(fixtures_dir / "openclip_tiny_gelu")
    with pytest.raises(UsageError) as error:
        load_init_params(config, model_config, param_shapes(model_config))
    message = str(error.value)
    assert "config.init_from=" in message and "openclip_tiny_gelu" in message
    # Every differing parameter is named, with both shapes, not only the first one met.
    assert "text/pos_embedding (16, 32) where the run's model has (32, 32)" in message
    assert "text/token_embedding/embedding (1000, 32) where the run's model has (49408, 32)" in message
    assert "2 parameter(s) differ" in message
    assert "config.init_exclude" in message and "--mode=info" in message

@pytest.mark.slow
@pytest.mark.parametrize("name,terms", [
    # The full objective with text mining runs end to end above; these are the other shapes.
    ("global_only", {"global"}), ("mining_both", {"global", "summary", "local"})])
def test_ablation_configs_run(name, terms):
    from configs import ablations
    from emocap_jax.config_utils import clip_config
    from emocap_jax.models.clip import CLIP, init_params
    from emocap_jax.optim import make_optimizer
    from emocap_jax.train_step import initial_state, make_train_step

    config = ablations.get_config(f"{name},tiny")
    config.model.vision.image_size = 32
    config.loss.mining.warmup_steps = 0  # mining active in the step that runs
    _, _, _, _, batch, _ = _tiny_setup()
    model_config = clip_config(config)
    params = jax.jit(lambda r: init_params(model_config, r))(jax.random.PRNGKey(0))
    optimizer, schedule = make_optimizer(config.optim, 10, params)
    step = jax.jit(make_train_step(CLIP(model_config), optimizer, schedule, config.loss))
    _, metrics = step(initial_state(params, optimizer), batch)
    assert terms == {k for k in ("global", "summary", "local") if k in metrics}
    assert bool(metrics["finite"])


def test_sharded_eval_counts_every_example_once(datasets):
    from emocap_jax import sharding
    from emocap_jax.data.shard_writer import load_metadata
    from emocap_jax.evaluate.features import Encoder
    from emocap_jax.models.clip import init_params
    from emocap_jax.models.config import variant

    _, eval_dir = datasets
    config = variant("tiny")
    params = init_params(config, jax.random.PRNGKey(0))
    mesh = sharding.make_mesh(type("M", (), {"data": -1, "fsdp": 1})())
    assert mesh.devices.size == 8
    num = load_metadata(eval_dir)["num_records"]
    # 16 images over 8 devices in batches of 24 (rounded up from 20): padding must not count.
    out = Encoder(params, config, None, mesh=mesh, batch_size=20).images(eval_dir)
    feats, labels, ids = out.features, out.labels, out.ids
    assert len(ids) == len(set(ids)) == num == feats.shape[0] == labels.shape[0]
    np.testing.assert_allclose(np.linalg.norm(feats, axis=-1), 1.0, atol=1e-5)
    single = Encoder(params, config, None, batch_size=5).images(eval_dir)
    assert single.ids == ids
    np.testing.assert_allclose(single.features, feats, atol=1e-5)


def test_setup_logging_adds_one_handler_however_often_called():
    import logging

    from emocap_jax.train import _setup_logging

    logger = logging.getLogger("emocap_jax")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        for h in list(logger.handlers):
            logger.removeHandler(h)
        for _ in range(3):
            _setup_logging()
        assert len(logger.handlers) == 1 and logger.handlers[0]._emocap
        assert logger.level == logging.INFO and not logger.propagate
    finally:
        for h in list(logger.handlers):
            logger.removeHandler(h)
        for h in saved[0]:
            logger.addHandler(h)
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


def test_config_reaches_every_mining_field():
    from configs import default
    from emocap_jax.train_step import mining_config

    config = default.get_config()
    mining = mining_config(config.loss)
    assert mining.image_threshold is None  # unset: the image guide uses threshold
    assert mining.relative_threshold is None  # unset: no row-relative threshold
    config.loss.mining.image_threshold = 0.35
    config.loss.mining.relative_threshold = 1.5
    mining = mining_config(config.loss)
    assert mining.image_threshold == 0.35 and mining.threshold == config.loss.mining.threshold
    assert mining.relative_threshold == 1.5 and mining.top_k == config.loss.mining.top_k
    config.loss.mining.treshold = 0.5
    with pytest.raises(TypeError, match="treshold"):
        mining_config(config.loss)


def test_an_unknown_mining_guide_is_refused():
    """Any guide but "summary" used to mean the global sentences, silently ("summaries" too)."""
    from configs import default
    from emocap_jax.train_step import mining_config

    config = default.get_config()
    for guide in ("summary", "global"):
        config.loss.mining.guide = guide
        mining_config(config.loss)
    config.loss.mining.guide = "summaries"
    with pytest.raises(ValueError, match=r"mining\.guide='summaries': choose one of "
                                         r"\('summary', 'global'\)"):
        mining_config(config.loss)


def test_mining_terms_choose_which_terms_take_mined_positives():
    """loss.mining.terms=("summary",): the global term is the no-mining one and the summary term
    the mining one, value for value; with both, a mined pair changes both terms; by default
    (configs/default.py) only the global term takes mined positives."""
    import functools

    from configs import tiny
    from emocap_jax.config_utils import clip_config
    from emocap_jax.models.clip import CLIP, init_params
    from emocap_jax.train_step import compute_losses

    config = tiny.get_config()
    config.model.vision.image_size = 32
    config.loss.local_weight = 0.0
    config.loss.summary_weight = 1.0
    model_config = clip_config(config)
    params = jax.jit(lambda r: init_params(model_config, r))(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    b, length = 8, model_config.text.context_length
    summary = rng.integers(1, 49000, (b, length)).astype(np.int32)
    # Four pairs whose summaries differ in their first token only: alike enough to be mined under
    # the text guide, not identical (identical texts would leave the summary term unchanged).
    summary[4:] = summary[:4]
    summary[4:, 0] = summary[:4, 0] + 1
    batch = {"image": rng.integers(0, 255, (b, 32, 32, 3), dtype=np.uint8),
             "global_tokens": rng.integers(1, 49000, (b, length)).astype(np.int32),
             "summary_tokens": summary, "label_id": np.full((b,), -1, np.int32)}

    def terms(mode, mined=None, summary_weight=1.0):
        loss = copy.deepcopy(config.loss)
        loss.impl = "single"
        loss.summary_weight = summary_weight
        loss.mining.update(mode=mode, warmup_steps=0, threshold=0.75, top_k=1, min_spread=0.0)
        if mined is not None:
            loss.mining.terms = mined
        run = functools.partial(compute_losses, model=CLIP(model_config), loss_config=loss,
                                mesh=None, batch_axes=None)
        return {k: float(v) for k, v in run(params, batch, 0)[1].items()}

    off, both = terms("off"), terms("text", ("global", "summary"))
    summary_only, default = terms("text", ("summary",)), terms("text")
    assert default["global"] == pytest.approx(both["global"], abs=1e-6)
    assert default["summary"] == pytest.approx(off["summary"], abs=1e-6)
    assert both["global"] != pytest.approx(off["global"], abs=1e-4)
    assert both["summary"] != pytest.approx(off["summary"], abs=1e-4)
    assert summary_only["global"] == pytest.approx(off["global"], abs=1e-6)
    assert summary_only["summary"] == pytest.approx(both["summary"], abs=1e-6)
    # The log's mining figures: pairs were mined, none with labels (every label id is -1).
    assert "mined_per_row" not in off
    assert 0 < both["mined_per_row"] <= 1
    assert both["mined_labelled_per_row"] == both["mined_other_label_per_row"] == 0
    with pytest.raises(ValueError, match="config.loss.mining.terms"):
        terms("text", ("local",))
    # Without the summary term (configs/ablations.py:global_mining) the summary sentences still
    # guide mining: the global term is the one of the run with both terms.
    guided = terms("text", ("global", "summary"), summary_weight=0.0)
    assert "summary" not in guided
    assert guided["global"] == pytest.approx(both["global"], abs=1e-6)


def test_the_log_line_says_what_mining_found():
    from emocap_jax.train import _mining_note

    assert _mining_note({"loss": 1.0}) == ""
    assert _mining_note({"mined_per_row": 2.07}) == " | mined 2.1/row"
    assert _mining_note({"mined_per_row": 2.07, "mined_labelled_per_row": 1.5,
                         "mined_other_label_per_row": 0.26}) == " | mined 2.1/row (0.3 other label)"
    # No mined pair carries labels (a caption corpus): nothing to say about labels.
    assert _mining_note({"mined_per_row": 2.07, "mined_labelled_per_row": 0.0,
                         "mined_other_label_per_row": 0.0}) == " | mined 2.1/row"


def test_evals_compile_once_and_agree_with_the_cli(tmp_path, datasets, monkeypatch):
    """Three zero-shot evals in one run (steps 2 and 4, and the end) trace each eval tower once:
    they share one set of jitted encoders (features._towers) instead of re-jitting per eval. The
    end-of-training zero-shot is the evaluation CLI's on the same checkpoint and data."""
    from configs import tiny
    from emocap_jax.evaluate import cli, features
    from emocap_jax.train import train_and_evaluate

    traces = []
    real = features.l2_normalize  # called once per trace of the image and of the text tower

    def counting(x):
        traces.append(x.shape)
        return real(x)

    monkeypatch.setattr(features, "l2_normalize", counting)
    features._towers.cache_clear()
    config = tiny.get_config()
    config.data.train_dir, config.eval.zero_shot_dir = datasets
    config.model.vision.image_size = 32
    config.train.num_steps, config.train.eval_every = 6, 2
    config.train.log_every, config.train.checkpoint_every = 6, 6
    result = train_and_evaluate(config, tmp_path / "run")
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
             .splitlines() if json.loads(line)["kind"] == "zero_shot"]
    assert [e["step"] for e in evals] == [2, 4, 6]
    assert 0.0 <= result["zero_shot"]["uar"] <= 1.0
    assert len(traces) == 2, traces  # one image-tower trace, one text-tower trace
    assert features._towers.cache_info().misses == 1
    # The export records the local loss's pooling temperature (EmoCapCLIP.explain uses it).
    description = json.loads((tmp_path / "run" / "export" / "model_config.json").read_text())
    assert description["source"]["local_pool_temperature"] == config.loss.local_pool_temperature

    out = tmp_path / "cli"
    assert cli.main(["--checkpoint", str(tmp_path / "run"), "--benchmark", "synthetic",
                     "--data", datasets[1], "--protocol", "zero_shot", "--output", str(out),
                     "--batch-size", str(config.eval.batch_size), "--quiet"]) == 0
    from_cli = json.loads((out / "results" / "synthetic__zero_shot.json").read_text())
    assert abs(100 * from_cli["report"]["uar"] - 100 * result["zero_shot"]["uar"]) <= 0.1
    assert result["zero_shot"]["benchmark"] == "synthetic"


def test_the_generated_corpus_stores_the_runs_own_token_ids(tmp_path):
    """With a sentencepiece tokenizer, the synthetic corpus a run generates is converted with that
    tokenizer's ids (metadata.json names it), so training reads ids instead of tokenizing."""
    import json as json_lib

    from configs.tiny import get_config
    from emocap_jax import train
    from emocap_jax.data.shard_writer import load_metadata
    from emocap_jax.data.synthetic.corpus import generate_corpus
    from emocap_jax.tokenizers import SentencePieceTokenizer

    generate_corpus(tmp_path / "text", 40, seed=1, size=32, eval_per_class=0)
    sentences = []
    for line in (tmp_path / "text" / "manifest.jsonl").read_text().splitlines():
        record = json_lib.loads(line)
        sentences += [record["global"], record["summary"], *record["local"]]
    sp = SentencePieceTokenizer.train(sentences, tmp_path / "captions", 200, minloglevel=2)

    config = get_config()
    config.tokenizer = str(sp.model_file)
    config.data.train_dir, config.eval.zero_shot_dir = "", ""
    config.data.synthetic.num = 16
    config.data.synthetic.size = 32
    config.data.synthetic.eval_per_class = 1
    train_dir, _ = train.prepare_data(config, str(tmp_path / "work"))
    assert load_metadata(train_dir)["tokenizer"] == sp.identity()


def test_the_workdirs_corpus_is_converted_again_when_its_stored_ids_are_stale(tmp_path):
    """A workdir converted under another tokenizer identity (here: metadata from before the
    identity recorded the ftfy version) would have every later run tokenize every sentence
    again; prepare_data converts the workdir's own train split again instead, to the same
    records with usable ids, and leaves an up-to-date one untouched."""
    from configs.tiny import get_config
    from emocap_jax import train
    from emocap_jax.data.example_codec import decode_record
    from emocap_jax.data.pipeline import stored_tokens_mismatch
    from emocap_jax.data.shard_writer import load_metadata, shard_paths
    from emocap_jax.data.source import ShardedTFRecordSource
    from emocap_jax.tokenizers import get_tokenizer

    config = get_config()
    config.data.train_dir, config.eval.zero_shot_dir = "", ""
    config.data.synthetic.update(num=16, size=32, eval_per_class=1)
    work = str(tmp_path / "work")
    train_dir, _ = train.prepare_data(config, work)

    def records():
        source = ShardedTFRecordSource(shard_paths(train_dir))
        return [decode_record(source[i]) for i in range(len(source))]

    before = records()
    meta_file = tmp_path / "work" / "data" / "train" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    assert stored_tokens_mismatch(meta, get_tokenizer("clip")) is None
    del meta["tokenizer"]["ftfy"]
    meta_file.write_text(json.dumps(meta))
    assert stored_tokens_mismatch(meta, get_tokenizer("clip")) is not None

    train.prepare_data(config, work)
    assert stored_tokens_mismatch(load_metadata(train_dir), get_tokenizer("clip")) is None
    assert records() == before
    mtime = meta_file.stat().st_mtime_ns
    train.prepare_data(config, work)
    assert meta_file.stat().st_mtime_ns == mtime


def test_the_generated_corpus_gives_training_faces_label_ids(tmp_path, datasets):
    """The synthetic corpus's training faces carry label ids over its basic and compound classes,
    so label positives act on it; on a dataset converted without a class order (every id -1)
    `loss.label_positives` is refused with a line that says why, instead of changing nothing."""
    from configs.tiny import get_config
    from emocap_jax import train
    from emocap_jax.cli_errors import UsageError
    from emocap_jax.data.example_codec import decode_record
    from emocap_jax.data.shard_writer import load_metadata, shard_paths
    from emocap_jax.data.source import ShardedTFRecordSource
    from emocap_jax.data.synthetic.faces import BASIC_CLASSES, COMPOUND_CLASSES

    config = get_config()
    config.data.train_dir, config.eval.zero_shot_dir = "", ""
    config.data.synthetic.update(num=24, size=32, eval_per_class=1)
    train_dir, _ = train.prepare_data(config, str(tmp_path / "work"))
    classes = load_metadata(train_dir)["classes"]
    assert classes == list(BASIC_CLASSES) + list(COMPOUND_CLASSES)
    source = ShardedTFRecordSource(shard_paths(train_dir))
    records = [decode_record(source[i]) for i in range(len(source))]
    assert len(records) == 24 and all(classes[r.label_id] == r.label for r in records)

    config.loss.label_positives = True
    train.check_loss_settings(config, train_dir)  # ids there: accepted
    with pytest.raises(UsageError, match=r"label_positives=True.*no class order.*label_id is -1"):
        train.check_loss_settings(config, datasets[0])
    config.loss.label_positives = False
    train.check_loss_settings(config, datasets[0])  # off: nothing to check


def test_bad_loss_impl_settings_stop_the_run_before_it_compiles():
    """loss.impl and its chunk_size are checked with the other loss settings: a misspelt impl, and
    impl="chunked" with the default chunk_size=0 (which default.py once called "whole batch") or
    one that does not divide the step's columns, failed inside the first step's trace."""
    from configs.tiny import get_config
    from emocap_jax import train
    from emocap_jax.cli_errors import UsageError

    config = get_config()   # global batch 16
    config.loss.impl = "shardd"
    with pytest.raises(UsageError, match=r"config\.loss\.impl='shardd': choose one of single, "
                                         r"sharded, chunked"):
        train.check_loss_settings(config, "")
    config.loss.impl = "chunked"
    for chunk in (0, 5, -4):
        config.loss.chunk_size = chunk
        with pytest.raises(UsageError, match=rf"config\.loss\.chunk_size={chunk}: .*divides the "
                                             r"16 columns of a step"):
            train.check_loss_settings(config, "")
    config.loss.chunk_size = 8
    train.check_loss_settings(config, "")
    config.optim.grad_accum_steps = 4   # micro-batches of 4 columns
    with pytest.raises(UsageError, match=r"divides the 4 columns of a step \(global_batch_size 16 "
                                         r"/ optim\.grad_accum_steps 4\)"):
        train.check_loss_settings(config, "")
    config.loss.chunk_size = 2
    train.check_loss_settings(config, "")


@pytest.mark.parametrize("field, value, message", [
    ("model.activation", "relu", r"^config\.model\.activation='relu': expected one of"),
    ("model.vision.image_size", 30, r"^config\.model\.vision\.image_size=30 is not a multiple"),
    ("tokenizer", "bert", r"^config\.tokenizer='bert': unknown tokenizer"),
    ("data.on_corrupt", "skp", r"^config\.data: on_corrupt must be one of \('raise', 'skip'\), "
                               r"got 'skp'"),
    ("data.worker_count", -1, r"^config\.data: worker_count must be >= 0, got -1"),
    ("data.shuffle_seed", -1, r"^config\.data: shuffle_seed must lie in"),
    ("data.local_sentences_per_step", 9, r"^config\.data: local_sentences_per_step \(9\) must "
                                         r"not exceed max_local_sentences \(8\)"),
    ("eval.batch_size", 0, r"^config\.eval\.batch_size=0: give a number of images"),
    ("train.num_steps", -5, r"^config\.train\.num_steps=-5: give a number of steps, at least 0"),
])
def test_bad_model_data_and_eval_settings_are_usage_errors(field, value, message):
    """Each was a ValueError traceback (status 1), the input pipeline's only after the data was
    prepared and eval.batch_size's only after training; a negative num_steps trained nothing
    and exited 0. train_and_evaluate runs these checks before preparing the data."""
    from configs.tiny import get_config
    from emocap_jax import train
    from emocap_jax.cli_errors import UsageError

    config = get_config()
    train.check_train_settings(config)
    train.check_model_and_data_settings(config)
    *parents, name = field.split(".")
    group = config
    for part in parents:
        group = group[part]
    group[name] = value
    with pytest.raises(UsageError, match=message):
        train.check_train_settings(config)
        train.check_model_and_data_settings(config)


def test_bad_mining_settings_stop_the_run_before_it_compiles(datasets):
    """The default mines with the mutual cap, which needs a cap: top_k=0 alone is refused with a
    line that names the setting and the way out, as are a misspelt field and an unknown term."""
    from configs.tiny import get_config
    from emocap_jax import train
    from emocap_jax.cli_errors import UsageError

    config = get_config()
    assert config.loss.mining.mutual and config.loss.mining.top_k > 0
    train.check_loss_settings(config, datasets[0])
    config.loss.mining.top_k = 0
    with pytest.raises(UsageError, match=r"config\.loss\.mining: .*mutual=True needs a cap.*"
                                         r"set top_k > 0 or mutual=False"):
        train.check_loss_settings(config, datasets[0])
    config.loss.mining.mutual = False
    train.check_loss_settings(config, datasets[0])  # no cap, one-sided: fine
    config.loss.mining.terms = ("local",)
    with pytest.raises(UsageError, match=r"config\.loss\.mining: .*terms"):
        train.check_loss_settings(config, datasets[0])
    config.loss.mining.terms = ("global",)
    config.loss.mining.treshold = 0.5
    with pytest.raises(UsageError, match="treshold"):
        train.check_loss_settings(config, datasets[0])
