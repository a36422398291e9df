"""The optimiser: AdamW with warm-up and cosine decay, no weight decay on biases, norms,
embeddings and the temperature, global-norm clipping, and per-parameter learning-rate multipliers
(multiplier 0 freezes) chosen by regexes over parameter paths such as "visual/transformer/.*".
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax

from emocap_jax.cli_errors import UsageError

# Parameters that must not be decayed: shrinking biases, LayerNorm gains, embedding tables or the
# temperature towards zero has no regularising meaning (CLIP and open_clip exclude them too).
_NO_DECAY = re.compile(r"(bias|scale|embedding|logit_scale)$")


def param_paths(tree):
    """The same tree with each leaf replaced by its "a/b/c" path (leaves may be arrays, shape
    structs or shape tuples)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path), tree,
        is_leaf=lambda x: isinstance(x, tuple))


def learning_rate_schedule(optim_config, num_steps: int):
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim_config.learning_rate,
        warmup_steps=min(optim_config.warmup_steps, max(num_steps - 1, 0)),
        decay_steps=max(num_steps, 1),
        end_value=optim_config.learning_rate * optim_config.end_learning_rate_fraction)


def multiplier_for(path: str, rules) -> float:
    for pattern, mult in rules:
        if re.fullmatch(pattern, path):
            return float(mult)
    return 1.0


def make_optimizer(optim_config, num_steps: int, params):
    """Returns (optax transformation, schedule)."""
    schedule = learning_rate_schedule(optim_config, num_steps)
    rules = tuple(tuple(r) for r in optim_config.lr_multipliers)
    for pattern, _ in rules:
        re.compile(pattern)  # fail early on a malformed regex, naming it
    paths = param_paths(params)
    flat_paths = jax.tree_util.tree_leaves(paths)
    # A pattern that matches no parameter path (a typo) would leave the learning rates it was
    # meant to change, or the tower it was meant to freeze, as they are, silently.
    unmatched = [p for p, _ in rules if not any(re.fullmatch(p, path) for path in flat_paths)]
    if unmatched:
        raise UsageError(f"config.optim.lr_multipliers: {', '.join(map(repr, unmatched))} matches no "
                         f"parameter path (each pattern must match a whole path, such as "
                         f"{flat_paths[0]!r} or 'visual/.*')")
    decay_mask = jax.tree_util.tree_map(lambda p: not _NO_DECAY.search(p), paths)

    def adamw(mult):
        return optax.adamw(lambda step: schedule(step) * mult, b1=optim_config.b1,
                           b2=optim_config.b2, eps=optim_config.eps,
                           weight_decay=optim_config.weight_decay, mask=decay_mask)

    mults = sorted({multiplier_for(p, rules) for p in jax.tree_util.tree_leaves(paths)})
    if mults == [1.0]:
        inner = adamw(1.0)
    else:
        labels = jax.tree_util.tree_map(lambda p: str(multiplier_for(p, rules)), paths)
        inner = optax.multi_transform(
            {str(m): (optax.set_to_zero() if m == 0 else adamw(m)) for m in mults}, labels)
    chain = [inner]
    if optim_config.grad_clip_norm and optim_config.grad_clip_norm > 0:
        if 0.0 in mults:
            # A frozen parameter's gradient is computed but never applied: counted in the
            # global norm it shrank the clip factor of the parameters that do train.
            trained = jax.tree_util.tree_map(lambda p: multiplier_for(p, rules) != 0, paths)
            chain.insert(0, _clip_by_global_norm_of(optim_config.grad_clip_norm, trained))
        else:
            chain.insert(0, optax.clip_by_global_norm(optim_config.grad_clip_norm))
    return optax.chain(*chain), schedule


def at_schedule_step(opt_state, step):
    """`opt_state` with the counter of every learning-rate schedule in it (one per multiplier
    group) set to the run's `step`; Adam's moments and its own count (its bias correction) are
    left as they are. A skipped step (train.on_nonfinite=skip) applies no update, so optax's
    counters stop while the run's step goes on: the schedule fell behind by one step per skip
    and the logged learning rate (schedule(step)) was not the one applied. As in open_clip,
    whose scheduler steps every iteration while Adam's step count stops when AMP skips one.
    Only the counters' values change, never the state's tree (checkpoints keep their layout).
    (The weight decay is a constant; a scheduled one would hold a counter of its own.)"""

    def at_step(state):
        if isinstance(state, optax.ScaleByScheduleState):
            return state._replace(count=jnp.asarray(step, state.count.dtype))
        return state

    return jax.tree_util.tree_map(
        at_step, opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))


def _clip_by_global_norm_of(max_norm: float, mask):
    """optax.clip_by_global_norm with the norm taken over the leaves where `mask` is True (the
    same formula and the same, empty, state, so checkpoints keep their layout)."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        counted = [u for u, keep in zip(jax.tree_util.tree_leaves(updates),
                                        jax.tree_util.tree_leaves(mask)) if keep]
        g_norm = optax.tree.norm(counted)
        trigger = jnp.squeeze(g_norm < max_norm)
        updates = jax.tree_util.tree_map(
            lambda t: jax.lax.select(trigger, t, (t / g_norm.astype(t.dtype)) * max_norm),
            updates)
        return updates, state

    return optax.GradientTransformation(init, update)
