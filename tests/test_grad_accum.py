"""Gradient accumulation in the training step (train_step.make_train_step, grad_accum_steps=k):
what one accumulated step computes, sharded over the 8 simulated CPU devices set up by
conftest.py."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from configs import tiny
from emocap_jax.config_utils import clip_config
from emocap_jax.models.clip import CLIP, init_params
from emocap_jax.train_step import compute_losses, initial_state, make_train_step
from tests.conftest import random_train_batch

B, K = 32, 2


@pytest.fixture(scope="module")
def setup():
    config = tiny.get_config()
    config.model.vision.image_size = 32
    config.loss.summary_weight = 1.0
    config.loss.label_positives = True
    config.loss.mining.update(mode="text", warmup_steps=0, threshold=0.5, top_k=2,
                              min_spread=0.0, mutual=True)
    model_config = clip_config(config)
    params = jax.jit(lambda r: init_params(model_config, r))(jax.random.PRNGKey(0))
    batch = random_train_batch(B, model_config.text.context_length)
    return config, CLIP(model_config), params, batch


def test_an_accumulated_step_is_the_mean_over_micro_batches_of_every_kth_face(setup):
    """With grad_accum_steps=k the step's loss and gradient are the mean over j < k of those of
    micro-batch j = faces j, j + k, j + 2k, ... (each device keeps its own faces), so the
    contrastive negatives span B / k faces: it is not the loss of the whole batch. Checked on the
    update of plain SGD with learning rate 1, which is minus the gradient; sharded, so that a
    micro-batch taking faces out of order across devices would show."""
    config, model, params, batch = setup
    mesh, axes = Mesh(np.array(jax.devices()), ("data",)), ("data",)
    placed = jax.device_put(batch, NamedSharding(mesh, P("data")))
    optimizer = optax.sgd(1.0)
    step = jax.jit(make_train_step(model, optimizer, lambda s: 1.0, config.loss, mesh=mesh,
                                   batch_axes=axes, grad_accum_steps=K))
    new_state, metrics = step(initial_state(params, optimizer), placed)
    update = jax.tree_util.tree_map(lambda old, new: old - new, params, new_state["params"])

    loss_and_grad = jax.jit(jax.value_and_grad(lambda p, b: compute_losses(
        p, b, 0, model=model, loss_config=config.loss, mesh=mesh, batch_axes=axes)[0]))
    micro = [loss_and_grad(params, {k: v[j::K] for k, v in batch.items()}) for j in range(K)]
    expected_loss = np.mean([float(v) for v, _ in micro])
    expected_grad = jax.tree_util.tree_map(lambda *g: sum(g) / K, *[g for _, g in micro])
    np.testing.assert_allclose(float(metrics["loss"]), expected_loss, rtol=1e-5)
    for got, want in zip(jax.tree_util.tree_leaves(update), jax.tree_util.tree_leaves(expected_grad)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)
    assert float(jnp.abs(update["logit_scale"])) > 0
    whole = float(jax.jit(lambda p, b: compute_losses(
        p, b, 0, model=model, loss_config=config.loss, mesh=mesh, batch_axes=axes)[0])(params, batch))
    assert abs(whole - expected_loss) > 1e-3, "the whole batch's negatives would differ"


INVALID = [3, 9, 10, 31]


def _keep():
    keep = np.ones(B, bool)
    keep[INVALID] = False
    return keep


@pytest.mark.parametrize("impl", ["single", "sharded", "chunked"])
def test_rows_marked_invalid_leave_the_terms_of_the_batch_without_them(setup, impl):
    """A record skipped as corrupt: its row (here a copy of face 0, the duplicate the pipeline
    used to put there) marked valid=False. Every term, with label positives, mutual top-k text
    mining and the summary term, equals the term over the batch with those rows removed. Sharded,
    the local term is per device (another loss), so only the global terms are compared there."""
    config, model, params, batch = setup
    config = config.copy_and_resolve_references()
    config.loss.impl, config.loss.chunk_size = impl, 8
    keep = _keep()
    masked = {k: np.where(keep.reshape(-1, *[1] * (v.ndim - 1)), v, v[:1]) for k, v in batch.items()}
    masked["valid"] = keep
    mesh, axes = (None, None) if impl == "single" else (Mesh(np.array(jax.devices()), ("data",)),
                                                        ("data",))
    loss_fn = lambda mesh: jax.jit(jax.value_and_grad(lambda p, b: compute_losses(  # noqa: E731
        p, b, 0, model=model, loss_config=config.loss, mesh=mesh, batch_axes=axes), has_aux=True))
    (loss, terms), grads = loss_fn(mesh)(params, masked)
    (ref_loss, ref_terms), ref_grads = loss_fn(None)(params, {k: v[keep] for k, v in batch.items()})
    assert float(ref_terms["mined_per_row"]) > 0, "mining should fire"
    compared = ["global", "summary", "mined_per_row"] + (["local"] if impl == "single" else [])
    for name in compared:
        np.testing.assert_allclose(float(terms[name]), float(ref_terms[name]), rtol=2e-5, err_msg=name)
    if impl == "single":
        np.testing.assert_allclose(float(loss), float(ref_loss), rtol=2e-5)
        for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-3, atol=2e-6)


def test_a_step_without_a_valid_row_changes_neither_parameters_nor_adam(setup):
    """Every record of the step skipped as corrupt: the pipeline still yields the (blank) batch so
    that all processes take the step; the step applies no update (a zero gradient would still
    move Adam's moments and the parameters) and is not counted as non-finite."""
    config, model, params, batch = setup
    optimizer = optax.adam(1e-3)
    step = jax.jit(make_train_step(model, optimizer, lambda s: 1e-3, config.loss))
    state = initial_state(params, optimizer)
    # The pipeline's blank rows (zero image and tokens, no local sentence, label -1) among
    # genuine ones: a finite step, which leaves Adam's moments non-zero.
    keep = _keep()
    blank = {k: np.where(keep.reshape(-1, *[1] * (v.ndim - 1)), v, np.zeros_like(v))
             for k, v in batch.items()}
    blank["label_id"] = np.where(keep, batch["label_id"], -1).astype(np.int32)
    state, metrics = step(state, dict(blank, valid=keep))
    assert bool(metrics["finite"]) and int(metrics["valid_rows"]) == B - len(INVALID)
    new_state, metrics = step(state, dict(blank, valid=np.zeros(B, bool)))
    assert int(metrics["valid_rows"]) == 0 and float(metrics["loss"]) == 0.0
    assert bool(metrics["finite"]) and int(new_state["nonfinite"]["count"]) == 0
    for old, new in zip(jax.tree_util.tree_leaves((state["params"], state["opt_state"])),
                        jax.tree_util.tree_leaves((new_state["params"], new_state["opt_state"]))):
        np.testing.assert_array_equal(np.asarray(old), np.asarray(new))
    assert int(new_state["step"]) == 2


def test_a_micro_batch_without_a_valid_row_is_left_out_of_the_mean(setup):
    """Every record of one micro-batch skipped as corrupt (here micro-batch 1 = the odd faces):
    the accumulated step is the other micro-batch's loss and gradient, not half of them (a zero
    counted in a mean over k would shrink the update by 1/k)."""
    config, model, params, batch = setup
    valid = np.arange(B) % K == 0
    optimizer = optax.sgd(1.0)
    step = jax.jit(make_train_step(model, optimizer, lambda s: 1.0, config.loss,
                                   grad_accum_steps=K))
    new_state, metrics = step(initial_state(params, optimizer), dict(batch, valid=valid))
    update = jax.tree_util.tree_map(lambda old, new: old - new, params, new_state["params"])
    (want_loss, _), want_grad = jax.jit(jax.value_and_grad(lambda p, b: compute_losses(
        p, b, 0, model=model, loss_config=config.loss, mesh=None, batch_axes=None),
        has_aux=True))(params, {k: v[0::K] for k, v in batch.items()})
    assert int(metrics["valid_rows"]) == B // K
    np.testing.assert_allclose(float(metrics["loss"]), float(want_loss), rtol=1e-5)
    for got, want in zip(jax.tree_util.tree_leaves(update), jax.tree_util.tree_leaves(want_grad)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)
