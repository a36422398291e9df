"""The jitted training step: the EmoCapCLIP objective, gradients, and one optimiser update.

    L = L_global + summary_weight * L_summary + local_weight * L_local

All text (global, summary and the K sampled local sentences of every face) goes through the text
tower in one call, laid out per face ([B, 2 + K, L] -> [B * (2 + K), L]) so each device encodes
only its own faces' sentences and no resharding happens.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from emocap_jax import losses
from emocap_jax.mining import MiningConfig, mining_statistics, pair_agreement
from emocap_jax.models.clip import CLIP, l2_normalize
from emocap_jax.optim import at_schedule_step


MINING_GUIDES = ("summary", "global")


def mining_config(loss_config) -> MiningConfig:
    """`config.loss.mining` as a MiningConfig, field for field (an unknown field is an error);
    its `guide` picks which sentence embeddings the step passes as the text guide (any other
    value is an error: it used to mean the global sentences, silently)."""
    m = loss_config.mining
    fields = dict(m.to_dict() if hasattr(m, "to_dict") else m)
    guide = fields.pop("guide", "summary")
    if guide not in MINING_GUIDES:
        raise ValueError(f"config.loss.mining.guide={guide!r}: choose one of {MINING_GUIDES} "
                         f"(which sentence embeddings judge the similarity of two faces)")
    fields.pop("terms", None)
    return MiningConfig(**fields)


MINING_TERMS = ("global", "summary")


def mining_terms(loss_config) -> tuple[str, ...]:
    """`config.loss.mining.terms`: the contrastive terms whose targets take mined positives (the
    others keep their one-hot or label targets). Default: both."""
    terms = loss_config.mining.get("terms", MINING_TERMS)
    terms = (terms,) if isinstance(terms, str) else tuple(terms)
    unknown = [t for t in terms if t not in MINING_TERMS]
    if unknown or not terms:
        raise ValueError(f"config.loss.mining.terms={terms!r}: choose one or both of "
                         f"{MINING_TERMS}")
    return terms


def uses_summary(loss_config) -> bool:
    return loss_config.summary_weight > 0 or (
        loss_config.mining.mode in ("text", "both") and loss_config.mining.guide == "summary")


def local_group_size(loss_config) -> int | None:
    """`config.loss.local_group_size`: faces per group of the local term's negatives, or None
    (0, or a config from before the field) for each device's share of the (micro-)batch. A run
    sets it at its start (train.resolve_local_group_size), so only steps built outside a run
    see None."""
    size = loss_config.get("local_group_size", 0)
    return int(size) if size else None


def compute_losses(params, batch, step, *, model: CLIP, loss_config, mesh, batch_axes):
    """Returns (total loss, dict of terms) for one batch of uint8 images and token ids.

    batch["valid"] (bool [B], optional): rows marked False (records the input pipeline skipped as
    corrupt) are left out of every term, mining and the agreement gate included: the loss is
    that of the batch without them."""
    image_emb, patch_tokens = model.apply({"params": params}, batch["image"], True,
                                          method=CLIP.encode_image)
    logit_scale = model.apply({"params": params}, method=CLIP.logit_scale)
    b = image_emb.shape[0]
    parts = [batch["global_tokens"][:, None]]
    with_summary = uses_summary(loss_config)
    with_local = loss_config.local_weight > 0
    if with_summary:
        parts.append(batch["summary_tokens"][:, None])
    if with_local:
        parts.append(batch["local_tokens"])
    tokens = jnp.concatenate(parts, axis=1)
    per_face = tokens.shape[1]
    text_emb = model.apply({"params": params}, tokens.reshape(b * per_face, -1),
                           method=CLIP.encode_text).reshape(b, per_face, -1)
    text_emb = l2_normalize(text_emb)
    img = l2_normalize(image_emb)
    global_emb = text_emb[:, 0]
    summary_emb = text_emb[:, 1] if with_summary else None

    mining = mining_config(loss_config)
    guide_text = None
    if mining.uses_text:
        guide_text = summary_emb if loss_config.mining.guide == "summary" else global_emb
    impl = loss_config.impl
    chunk = loss_config.chunk_size or None
    valid = batch.get("valid")
    if impl != "single" and mesh is None:
        impl = "single"
    terms = {}
    mining_scale = 1.0
    if mining.enabled and mining.agreement_gate:
        mining_scale = pair_agreement(img, global_emb, valid=valid)
        terms["mining_scale"] = mining_scale
    if mining.enabled:
        terms.update(mining_statistics(mining, guide_text=guide_text, guide_image=img,
                                              labels=batch.get("label_id"), step=step,
                                              valid=valid))
    contrastive = functools.partial(
        losses.contrastive_loss, logit_scale=logit_scale, mesh=mesh, axis=batch_axes, impl=impl,
        chunk_size=chunk if impl == "chunked" else None,
        guide_text=guide_text, guide_image=img, step=step, mining_scale=mining_scale, valid=valid,
        labels=batch["label_id"] if loss_config.get("label_positives", False) else None)
    mined = mining_terms(loss_config)
    no_mining = MiningConfig(mode="off")
    terms["global"] = contrastive(img, global_emb,
                                  mining=mining if "global" in mined else no_mining)
    total = terms["global"]
    if loss_config.summary_weight > 0:
        terms["summary"] = contrastive(img, summary_emb,
                                       mining=mining if "summary" in mined else no_mining)
        total = total + loss_config.summary_weight * terms["summary"]
    if with_local:
        local_emb = text_emb[:, per_face - batch["local_tokens"].shape[1]:]
        terms["local"] = losses.local_loss(
            patch_tokens, local_emb, batch["local_mask"], logit_scale,
            loss_config.local_pool_temperature, mesh=mesh, axis=batch_axes,
            impl="sharded" if mesh is not None else "single",
            within_image_weight=loss_config.local_within_image_weight, valid=valid,
            group_size=local_group_size(loss_config))
        total = total + loss_config.local_weight * terms["local"]
    terms["logit_scale"] = logit_scale
    return total, terms


TRAIN_FIELDS = ("image", "global_tokens", "summary_tokens", "local_tokens", "local_mask", "label_id",
                "valid")


def make_train_step(model: CLIP, optimizer, schedule, loss_config, *, mesh=None, batch_axes=None,
                    grad_accum_steps: int = 1):
    """Returns step(state, batch) -> (state, metrics). state = {"step", "params", "opt_state",
    "nonfinite": {"count", "first_step"}}.

    A step whose loss or gradient is not finite never changes the parameters or Adam's state
    (moments and count); it is counted in state["nonfinite"], so the loop can stop (or go on)
    without a host sync per step and no checkpoint ever holds a bad update. The learning-rate
    schedule follows the run's step, skipped steps included (optim.at_schedule_step).
    A batch none of whose rows is valid (every record of the step skipped as corrupt; the
    pipeline still yields it so that all processes run the same steps) is skipped the same way,
    without counting as non-finite: its zero gradient would still have moved Adam's moments and
    the parameters. metrics["valid_rows"] counts the batch's valid rows."""
    loss_fn = functools.partial(compute_losses, model=model, loss_config=loss_config, mesh=mesh,
                                batch_axes=batch_axes)

    def grads_of(params, batch, step):
        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, step)
        return loss, terms, grads

    def accumulated(params, batch, step):
        # Micro-batch j takes every k-th face, so each device keeps contributing rows of its own
        # shard to every micro-batch (contiguous splits would idle most devices). Negatives of the
        # contrastive terms span one micro-batch. Each micro-batch's terms are means over its
        # valid rows, and the micro-batches that have a valid row weigh equally whatever their
        # count of invalid ones. A micro-batch with none (every record of it skipped as corrupt)
        # has zero terms and gradient: it is left out of the mean rather than counted as a
        # zero, which would shrink the step's gradient by 1/k.
        k = grad_accum_steps
        micro = jax.tree_util.tree_map(
            lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), batch)
        if "valid" in micro:
            counted = jnp.sum(jnp.any(micro["valid"], axis=1).astype(jnp.float32))
        else:
            counted = jnp.float32(k)

        def body(carry, mb):
            loss, terms, grads = grads_of(params, mb, step)
            acc = jax.tree_util.tree_map(jnp.add, carry, (loss, terms, grads))
            return acc, None

        zeros = jax.tree_util.tree_map(
            jnp.zeros_like, jax.eval_shape(grads_of, params,
                                           jax.tree_util.tree_map(lambda x: x[0], micro), step))
        (loss, terms, grads), _ = jax.lax.scan(body, zeros, micro)
        # No valid row at all: the sums are zero and the step applies no update (step_fn).
        counted = jnp.maximum(counted, 1.0)
        # (Floating sums keep their dtype, as dividing by the Python int k kept it.)
        return jax.tree_util.tree_map(
            lambda x: (x / counted).astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating)
            else x / counted, (loss, terms, grads))

    def step_fn(state, batch):
        batch = {k: batch[k] for k in TRAIN_FIELDS if k in batch}
        step = state["step"]
        if grad_accum_steps > 1:
            loss, terms, grads = accumulated(state["params"], batch, step)
        else:
            loss, terms, grads = grads_of(state["params"], batch, step)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        valid_rows = (jnp.sum(batch["valid"].astype(jnp.int32)) if "valid" in batch
                      else jnp.asarray(batch["image"].shape[0], jnp.int32))

        def update(params, opt_state, grads):
            updates, new_opt_state = optimizer.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            # The model clips the log-temperature where it is used, which passes no gradient
            # above the cap: a parameter the optimiser pushed past it stayed there for good,
            # the temperature pinned at the cap. Clamped here after each update, as CLIP and
            # open_clip do, it stays at the cap, where the gradient still reaches it.
            if "logit_scale" in new_params:
                new_params = dict(new_params, logit_scale=jnp.minimum(
                    new_params["logit_scale"],
                    jnp.asarray(model.config.max_logit_scale, new_params["logit_scale"].dtype)))
            return new_params, new_opt_state

        def skip(params, opt_state, grads):
            del grads
            return params, at_schedule_step(opt_state, step + 1)

        # A conditional, not where(finite, new, old): selecting between old and new made XLA copy
        # the optimiser moments every step (the select reads the old value after the in-place
        # update would have overwritten it), ~1.2 GB of copies per ViT-B/16 step; here the old
        # state is only read on the branch that keeps it. The schedule's counters are set to the
        # step first: a checkpoint written before skips advanced them holds counters that lag.
        new_params, new_opt_state = jax.lax.cond(
            finite & (valid_rows > 0), update, skip, state["params"],
            at_schedule_step(state["opt_state"], step), grads)
        nonfinite = state["nonfinite"]
        new_state = {
            "step": step + 1,
            "params": new_params,
            "opt_state": new_opt_state,
            "nonfinite": {
                "count": nonfinite["count"] + (~finite).astype(jnp.int32),
                "first_step": jnp.where((nonfinite["first_step"] < 0) & ~finite, step,
                                        nonfinite["first_step"]),
            },
        }
        metrics = {"loss": loss, **terms, "grad_norm": grad_norm,
                   "learning_rate": schedule(step), "finite": finite, "valid_rows": valid_rows}
        return new_state, metrics

    return step_fn


def initial_state(params, optimizer):
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": optimizer.init(params),
        "nonfinite": {"count": jnp.zeros((), jnp.int32), "first_step": -jnp.ones((), jnp.int32)},
    }
