"""Contrastive losses for EmoCapCLIP as pure functions: single-device, sharded and chunked forms.

What is here:

* `global_contrastive_loss`: symmetric CLIP InfoNCE (open_clip `ClipLoss`), optionally with soft
  targets. The summary term of the total loss is this same function applied to
  (image embeddings, summary-sentence embeddings); nothing special is needed for it.
* Label positives and guided positive mining enter as soft targets, built by
  `emocap_jax.mining` (`MiningConfig`, `mined_positive_targets`): row i's targets are
  `normalize_L1(positive_i + weight * mined_i)`, used for both directions.
* `local_region_sentence_loss`: region-sentence alignment; each local sentence pools every image's
  patch tokens with itself as the attention query, then InfoNCE sentence->image and multi-positive
  image->sentence over the batch. Trained on groups of faces, never the global batch
  (`grouped_local_loss`, `sharded_local_loss`): each device's share, or a fixed group size.
* Sharded forms inside `jax.shard_map` over a data axis: each device holds n = N / D rows,
  all-gathers the other modality and computes [n, N] logits (open_clip's "local loss with gathered
  gradients"; the transpose of all_gather is a reduce-scatter, so gradients need no extra code).
  The chunked form walks the N gathered columns in chunks of c with an online logsumexp, so the
  per-device memory is O(n * c) plus the gathered embeddings O(N * D) instead of O(n * N).
  Mined targets are computed blockwise with the logits: no [N, N] array exists in either form.
* `contrastive_loss` and `local_loss`: the entry points the trainer calls, choosing the form by `impl`.

Memory (bench/loss_memory.py, value_and_grad, D=512, 8 devices): the single form needs about
4 x N^2 floats, the sharded form about 6.5 x n*N per device, the chunked form about 4 x N*D per device
(the two gathered modalities and their cotangents) plus O(n*c). The chunked form therefore pays off
once the per-device batch n is large compared with D; below that the sharded form is as small.

Conventions the caller must follow:

* Embeddings passed to the global loss are already L2-normalised (the model owns normalisation).
  Gradients are taken with respect to those normalised features, exactly as in open_clip, whose
  `ClipLoss` fixture (tests/fixtures/clip_loss: unit-norm features, logit_scale = 14.2857 = 1/0.07)
  this module reproduces in value and gradient.
* `logit_scale` is the already-exponentiated scale (exp of the learnable log-temperature, clipped by
  the model), a scalar.
* Guide embeddings for mining need not be normalised: `emocap_jax.mining` L2-normalises them under
  stop_gradient, so thresholds are cosine similarities.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from emocap_jax.mining import (MiningConfig, active_guides, guide_row_stats, is_active,
                               mined_mask, mined_positive_targets, positive_mask)

AxisName = str | tuple[str, ...]

GLOBAL_IMPLS = ("single", "sharded", "chunked")
LOCAL_IMPLS = ("single", "sharded")

# Finite stand-in for -inf on masked logits: exp() of it underflows to exactly 0, yet a row with
# every entry masked still has a finite logsumexp, so no NaN reaches the gradients.
_MASKED_LOGIT = -1e9
_NORM_EPS = 1e-12


# --------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------


def _scaled_logits(rows: jax.Array, cols: jax.Array, logit_scale) -> jax.Array:
    # Float32 accumulation so bf16 embeddings still give float32 logits and softmax.
    return logit_scale * jnp.einsum("nd,md->nm", rows, cols, preferred_element_type=jnp.float32)


def _check_labels(labels, batch: int):
    if labels is not None and (labels.ndim != 1 or labels.shape[0] != batch):
        raise ValueError(f"labels {labels.shape} must be [N] with N={batch} (label_id, -1 for none)")


def _check_valid(valid, batch: int):
    if valid is not None and (valid.ndim != 1 or valid.shape[0] != batch):
        raise ValueError(f"valid {valid.shape} must be [N] with N={batch} (False: a row skipped "
                         "as corrupt, left out of the loss)")
    return None if valid is None else jnp.asarray(valid).astype(bool)


def _valid_mean(values, valid) -> jax.Array:
    """Mean over the valid rows (all rows when valid is None); 0 when none is valid."""
    if valid is None:
        return jnp.mean(values)
    return jnp.sum(jnp.where(valid, values, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def _mask_columns(logits, col_valid) -> jax.Array:
    """Invalid columns out of a row's softmax: no negative, no mass."""
    return logits if col_valid is None else jnp.where(col_valid[None, :], logits, _MASKED_LOGIT)


def _ce_from_parts(lse, pos_logit_sum, pos_count, mined_logit_sum, mined_count,
                   weight: float) -> jax.Array:
    """CE with targets normalize_L1(positive + w * mined): the targets sum to 1, so
    -sum_j t_j log softmax_j = lse - sum_j t_j s_j = lse - (sum_pos s + w * sum_mined s) /
    (|pos| + w * |mined|)."""
    return lse - (pos_logit_sum + weight * mined_logit_sum) / (pos_count + weight * mined_count)


# --------------------------------------------------------------------------------------------------
# Single-device forms
# --------------------------------------------------------------------------------------------------


def _soft_ce_rows(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=1), axis=1)


def global_contrastive_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale,
                            targets: jax.Array | None = None, valid=None) -> jax.Array:
    """Symmetric InfoNCE (open_clip ClipLoss) over a batch held on one device; returns a scalar.

    image_emb, text_emb: [N, D], already L2-normalised. logit_scale: exponentiated scale (scalar).
    targets: optional soft targets [N, N] (rows sum to 1), row i used for image_i -> texts and for
    text_i -> images; None means the diagonal (plain CLIP).
    valid: optional bool [N]; an invalid row (a record skipped as corrupt) is neither an anchor
    nor a negative nor counted in the mean: the loss is that of the batch without it (0 when no
    row is valid). Targets on invalid columns are ignored; a valid row's targets must sum to 1
    over the valid columns (`mined_positive_targets(col_valid=...)` builds them so).
    """
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(f"image_emb {image_emb.shape} and text_emb {text_emb.shape} must both be [N, D]")
    valid = _check_valid(valid, image_emb.shape[0])
    logits = _scaled_logits(image_emb, text_emb, logit_scale)
    columns = _mask_columns(logits, valid)
    rows = _mask_columns(logits.T, valid)
    if targets is None:
        pos = jnp.diagonal(logits)
        image_to_text = jax.nn.logsumexp(columns, axis=1) - pos
        text_to_image = jax.nn.logsumexp(rows, axis=1) - pos
    else:
        if targets.shape != logits.shape:
            raise ValueError(f"targets {targets.shape} must be [N, N] = {logits.shape}")
        if valid is not None:
            targets = jnp.where(valid[None, :], targets, 0.0)
        image_to_text = _soft_ce_rows(columns, targets)
        text_to_image = _soft_ce_rows(rows, targets)
    return 0.5 * (_valid_mean(image_to_text, valid) + _valid_mean(text_to_image, valid))


def mined_global_contrastive_loss(image_emb, text_emb, logit_scale, mining: MiningConfig | None, *,
                                  guide_text=None, guide_image=None, step=0, labels=None,
                                  mining_scale=1.0, valid=None) -> jax.Array:
    """`global_contrastive_loss` with label and mined targets built over the whole batch
    ([N, N] in memory). guide_image defaults to the image embeddings themselves (under
    stop_gradient). labels: int [N] label ids (-1: none) whose equal pairs are positives.
    valid: optional bool [N]; the loss, targets and mining statistics are those of the batch
    without its invalid rows."""
    mining_on = mining is not None and mining.enabled
    _check_labels(labels, image_emb.shape[0])
    valid = _check_valid(valid, image_emb.shape[0])
    if not mining_on and labels is None:
        return global_contrastive_loss(image_emb, text_emb, logit_scale, valid=valid)
    if mining_on and guide_image is None:
        guide_image = image_emb
    targets = mined_positive_targets(
        mining if mining_on else None, text_rows=guide_text if mining_on else None,
        text_cols=guide_text if mining_on else None,
        image_rows=guide_image if mining_on else None, image_cols=guide_image if mining_on else None,
        step=step, row_labels=labels, col_labels=labels, num_cols=image_emb.shape[0],
        mining_scale=mining_scale, col_valid=valid)
    return global_contrastive_loss(image_emb, text_emb, logit_scale, targets, valid)


def sentence_patch_logits(patch_tokens: jax.Array, sentence_emb: jax.Array, tau_pool) -> jax.Array:
    """The local loss's sentence-to-patch map before its softmax: <P_jp, u> / tau_pool.

    patch_tokens: [B, Np, D] projected patch tokens, not normalised; sentence_emb: [S, D]
    L2-normalised sentence embeddings. Returns [B, S, Np] float32; softmax over the last axis gives
    the pooling weights of `local_region_sentence_loss` (the grounding protocol and
    `EmoCapCLIP.explain` show this map)."""
    return jnp.einsum("jpd,sd->jsp", patch_tokens.astype(jnp.float32),
                      sentence_emb.astype(jnp.float32)) / tau_pool


def local_region_sentence_loss(patch_tokens: jax.Array, sentence_emb: jax.Array,
                               sentence_mask: jax.Array, logit_scale, tau_pool,
                               within_image_weight=0.0, valid=None) -> jax.Array:
    """Region-sentence alignment loss over one batch; returns a scalar.

    patch_tokens: [B, Np, D] projected patch tokens (not normalised).
    sentence_emb: [B, R, D] L2-normalised local sentence embeddings; slot r of image i is valid
      where sentence_mask[i, r] (bool [B, R]). Padded slots are zeroed before use, so their content
      (even NaN) changes neither value nor gradient.
    For sentence u of image i and every image j: v_j(u) = sum_p softmax_p(<P_jp, u> / tau_pool) P_jp
    and s(j, u) = logit_scale * <normalize(v_j(u)), u>. The loss is the mean of
      sentence->image CE (positive: own image), averaged over valid sentences, and
      image->sentence CE over all valid sentences of the batch with the image's own valid
      sentences as equally weighted positives, averaged over images with >= 1 valid sentence.
    A batch with no valid sentence gives 0.

    within_image_weight w adds w x the within-image term (`_within_image_term`): each image's own
    sentences told apart by the vectors the image pools for them. Without it nothing in the loss
    asks different sentences to pool different patches (every own sentence is a positive of its
    image, and negatives are other images), and one patch that carries the whole face satisfies
    it: measured in ABLATIONS.md, every sentence's map then peaks on the same patch.

    valid: optional bool [B]; an invalid image (a record skipped as corrupt) and its sentences
    take no part: the loss is that of the batch without it.
    """
    # A part with nothing to average is 0 already, so its flag is not needed here.
    pair_term, _, within_term, _ = _local_loss_parts(
        patch_tokens, sentence_emb, sentence_mask, logit_scale, tau_pool, within_image_weight,
        valid)
    return pair_term + within_image_weight * within_term


def _local_loss_parts(patch_tokens, sentence_emb, sentence_mask, logit_scale, tau_pool,
                      within_image_weight, valid=None):
    """The parts of `local_region_sentence_loss`: (the sentence/image term, whether the batch
    holds a valid sentence, the within-image term or 0 when within_image_weight is 0, whether an
    image holds two valid sentences). A part with nothing to average is 0; the sharded form
    averages each part over the devices where it has something to average."""
    if patch_tokens.ndim != 3 or sentence_emb.ndim != 3:
        raise ValueError(f"patch_tokens {patch_tokens.shape} must be [B, Np, D] and sentence_emb "
                         f"{sentence_emb.shape} [B, R, D]")
    batch, _, dim = patch_tokens.shape
    if sentence_emb.shape[0] != batch or sentence_emb.shape[2] != dim:
        raise ValueError(f"sentence_emb {sentence_emb.shape} does not match patch_tokens "
                         f"{patch_tokens.shape}")
    if sentence_mask.shape != sentence_emb.shape[:2]:
        raise ValueError(f"sentence_mask {sentence_mask.shape} must be [B, R] = {sentence_emb.shape[:2]}")
    num_slots = sentence_emb.shape[1]
    images_valid = _check_valid(valid, batch)
    if images_valid is not None:
        sentence_mask = jnp.logical_and(sentence_mask.astype(bool), images_valid[:, None])
    valid = sentence_mask.reshape(batch * num_slots).astype(bool)
    sentences = jnp.where(valid[:, None], sentence_emb.reshape(batch * num_slots, dim), 0)
    sentences = sentences.astype(jnp.float32)
    patches = patch_tokens.astype(jnp.float32)

    scores = sentence_patch_logits(patches, sentences, tau_pool)  # [B images, S sentences, Np]
    pooled = jnp.einsum("jsp,jpd->jsd", jax.nn.softmax(scores, axis=-1), patches)
    pooled = pooled * jax.lax.rsqrt(jnp.sum(pooled * pooled, axis=-1, keepdims=True) + _NORM_EPS)
    logits = logit_scale * jnp.einsum("jsd,sd->js", pooled, sentences)  # [B, S]

    owner = jnp.repeat(jnp.arange(batch), num_slots)  # image index of each sentence slot
    own = owner[None, :] == jnp.arange(batch)[:, None]  # [B, S]
    pos = jnp.sum(jnp.where(own, logits, 0.0), axis=0)  # s(owner(u), u)
    # An invalid image is no negative of any sentence.
    sentence_to_image = jax.nn.logsumexp(_mask_columns(logits.T, images_valid), axis=1) - pos
    num_valid = jnp.sum(valid)
    sentence_term = jnp.sum(jnp.where(valid, sentence_to_image, 0.0)) / jnp.maximum(num_valid, 1)

    masked = jnp.where(valid[None, :], logits, _MASKED_LOGIT)
    own_valid = jnp.logical_and(own, valid[None, :])
    own_count = jnp.sum(own_valid, axis=1)
    own_mean = jnp.sum(jnp.where(own_valid, logits, 0.0), axis=1) / jnp.maximum(own_count, 1)
    image_to_sentence = jax.nn.logsumexp(masked, axis=1) - own_mean
    has_sentences = own_count > 0
    image_term = (jnp.sum(jnp.where(has_sentences, image_to_sentence, 0.0))
                  / jnp.maximum(jnp.sum(has_sentences), 1))
    pair_term = 0.5 * (sentence_term + image_term)
    valid_per_image = valid.reshape(batch, num_slots)
    has_two = jnp.any(jnp.sum(valid_per_image, axis=1) >= 2)
    within_term = jnp.zeros((), jnp.float32)
    if within_image_weight:
        # Image i's pooled vector for its own slot r: entry (i, i * R + r) of `pooled`.
        own_pooled = pooled.reshape(batch, batch, num_slots, dim)[jnp.arange(batch), jnp.arange(batch)]
        within_term = _within_image_term(own_pooled, sentences.reshape(batch, num_slots, dim),
                                         valid_per_image, logit_scale)
    return pair_term, num_valid > 0, within_term, has_two


def _within_image_term(own_pooled: jax.Array, own_sentences: jax.Array, valid: jax.Array,
                       logit_scale) -> jax.Array:
    """Telling an image's own sentences apart by what the image pools for each (the fine-grained
    term of SPARC, Bica et al., ICML 2024, with the local loss's pooling).

    own_pooled: [B, R, D] unit-norm v_i(u_r), image i pooled with its own sentence r as query;
    own_sentences: [B, R, D] unit-norm u_r (zeros where invalid); valid: bool [B, R].
    W[i, r, s] = logit_scale * <v_i(u_r), u_s>. The term is the mean of the pooled->sentence CE
    (row r of W over image i's valid sentences s, positive s = r) and the sentence->pooled CE
    (column s over valid r, positive r = s), over the valid sentences of images with at least
    two (one sentence has nothing to be told apart from). A batch without such an image gives 0.
    """
    logits = logit_scale * jnp.einsum("ird,isd->irs", own_pooled, own_sentences)
    pair_valid = jnp.logical_and(valid[:, :, None], valid[:, None, :])
    masked = jnp.where(pair_valid, logits, _MASKED_LOGIT)
    diagonal = jnp.diagonal(logits, axis1=1, axis2=2)  # [B, R]
    pooled_to_sentence = jax.nn.logsumexp(masked, axis=2) - diagonal
    sentence_to_pooled = jax.nn.logsumexp(masked, axis=1) - diagonal
    counted = jnp.logical_and(valid, (jnp.sum(valid, axis=1) >= 2)[:, None])
    total = jnp.sum(jnp.where(counted, pooled_to_sentence + sentence_to_pooled, 0.0))
    return 0.5 * total / jnp.maximum(jnp.sum(counted), 1)


# --------------------------------------------------------------------------------------------------
# Sharded and chunked forms
# --------------------------------------------------------------------------------------------------


def _axis_names(axis: AxisName) -> tuple[str, ...]:
    return (axis,) if isinstance(axis, str) else tuple(axis)


def _axis_size(mesh: Mesh, axis: AxisName) -> int:
    names = _axis_names(axis)
    for name in names:
        if name not in mesh.shape:
            raise ValueError(f"axis {name!r} is not in the mesh axes {tuple(mesh.shape)}")
    return math.prod(mesh.shape[name] for name in names)


def _check_batch(name: str, batch: int, num_shards: int, axis: AxisName):
    if batch % num_shards:
        raise ValueError(f"{name}: global batch {batch} is not divisible by the {num_shards} devices "
                         f"of mesh axis {axis!r}")


def _sharded_global_body(image_rows, text_rows, logit_scale, step, mining_scale, guide_rows,
                         row_labels, row_valid, *, axis, config, chunk_size, global_batch):
    """Per-device body: this device's n anchors of each modality against all N gathered columns.
    Invalid rows (row_valid False) are left out as anchors, as columns and from the mean."""
    n = image_rows.shape[0]
    row_offset = jax.lax.axis_index(axis) * n
    row_ids = row_offset + jnp.arange(n)
    all_text = jax.lax.all_gather(text_rows, axis, tiled=True)
    all_image = jax.lax.all_gather(image_rows, axis, tiled=True)
    all_labels = None if row_labels is None else jax.lax.all_gather(row_labels, axis, tiled=True)
    all_valid = jax.lax.all_gather(row_valid, axis, tiled=True)

    guides, guide_cols, stats, active = [], [], [], None
    mining = config is not None and config.enabled
    if mining:
        # stop_gradient before the gather keeps the guides out of the backward pass entirely.
        gather = lambda g: jax.lax.all_gather(jax.lax.stop_gradient(g), axis, tiled=True)  # noqa: E731
        text_g = guide_rows.get("text")
        text_cols = gather(text_g) if config.uses_text and text_g is not None else None
        # The image guide is the image embeddings themselves unless the caller gave one.
        if "image" in guide_rows:
            image_g = guide_rows["image"]
            image_cols = gather(image_g) if config.uses_image else None
        else:
            image_g, image_cols = image_rows, jax.lax.stop_gradient(all_image)
        guides = active_guides(config, text_g, text_cols, image_g, image_cols)
        guide_cols = [g.cols for g in guides]
        active = is_active(config, step)
        stats = guide_row_stats(config, guides, row_offset, global_batch, chunk_size, axis,
                                all_valid)
    weight = config.weight * mining_scale if mining else 0.0

    if chunk_size is None:
        col_ids = jnp.arange(global_batch)
        positive = positive_mask(row_ids, col_ids, row_labels, all_labels, all_valid)
        pos_count = jnp.sum(positive, axis=1)
        mask = None
        if mining:
            mask = mined_mask(config, guides, guide_cols, stats, row_ids, col_ids, active,
                              all_valid)
            mask = jnp.logical_and(mask, jnp.logical_not(positive))
        ce_sum = 0.0
        for rows, cols in ((image_rows, all_text), (text_rows, all_image)):
            logits = _scaled_logits(rows, cols, logit_scale)
            pos = jnp.sum(jnp.where(positive, logits, 0.0), axis=1)
            if mining:
                mined_sum = jnp.sum(jnp.where(mask, logits, 0.0), axis=1)
                mined_count = jnp.sum(mask, axis=1)
            else:
                mined_sum = mined_count = 0.0
            lse = jax.nn.logsumexp(_mask_columns(logits, all_valid), axis=1)
            ce = _ce_from_parts(lse, pos, pos_count, mined_sum, mined_count, weight)
            ce_sum = ce_sum + jnp.sum(jnp.where(row_valid, ce, 0.0))
    else:
        ce_sum = _chunked_ce_sum(config, image_rows, text_rows, all_image, all_text, logit_scale,
                                 row_ids, row_labels, all_labels, guides, guide_cols, stats, active,
                                 weight, chunk_size, axis, row_valid, all_valid)
    num_valid = jax.lax.psum(jnp.sum(row_valid.astype(jnp.float32)), axis)
    return jax.lax.psum(ce_sum, axis) / (2 * jnp.maximum(num_valid, 1.0))


def _chunked_ce_sum(config, image_rows, text_rows, all_image, all_text, logit_scale, row_ids,
                    row_labels, all_labels, guides, guide_cols, stats, active, weight, chunk_size,
                    axis, row_valid, all_valid):
    """Sum over this device's rows of both CE directions, walking columns in chunks.

    Both directions share the column chunk index, so the positive and mined masks of a chunk are
    computed once. Per row and direction the scan carries the running max m, the running sum of
    exp(s - m), the sum and count of positive logits, the sum of mined logits and the mined
    count; all are [n] vectors.
    """
    n = image_rows.shape[0]
    global_batch = all_text.shape[0]
    num_chunks = global_batch // chunk_size
    mining = active is not None
    to_chunks = lambda x: x.reshape(num_chunks, chunk_size, *x.shape[1:])  # noqa: E731
    label_chunks = None if all_labels is None else to_chunks(all_labels)
    xs = (to_chunks(all_text), to_chunks(all_image), [to_chunks(c) for c in guide_cols],
          label_chunks, jnp.arange(num_chunks) * chunk_size, to_chunks(all_valid))

    def direction_update(carry, rows, cols, positive, mask, col_valid):
        run_max, run_sum, pos, pos_count, mined_sum, mined_count = carry
        logits = _scaled_logits(rows, cols, logit_scale)
        lse_logits = _mask_columns(logits, col_valid)
        # The logsumexp does not depend on the shift, so the shift needs no gradient.
        new_max = jnp.maximum(run_max, jax.lax.stop_gradient(jnp.max(lse_logits, axis=1)))
        run_sum = run_sum * jnp.exp(run_max - new_max) + jnp.sum(
            jnp.exp(lse_logits - new_max[:, None]), axis=1)
        pos = pos + jnp.sum(jnp.where(positive, logits, 0.0), axis=1)
        pos_count = pos_count + jnp.sum(positive, axis=1)
        if mask is not None:
            mined_sum = mined_sum + jnp.sum(jnp.where(mask, logits, 0.0), axis=1)
            mined_count = mined_count + jnp.sum(mask, axis=1)
        return new_max, run_sum, pos, pos_count, mined_sum, mined_count

    # Recompute each chunk's logits in the backward pass instead of storing all of them, which
    # would bring back the O(n * N) memory the chunking removes.
    @jax.checkpoint
    def body(carry, chunk):
        text_cols, image_cols, guide_chunks, col_labels, offset, col_valid = chunk
        col_ids = offset + jnp.arange(chunk_size)
        positive = positive_mask(row_ids, col_ids, row_labels, col_labels, col_valid)
        mask = None
        if mining:
            mask = mined_mask(config, guides, guide_chunks, stats, row_ids, col_ids, active,
                              col_valid)
            mask = jnp.logical_and(mask, jnp.logical_not(positive))
        image_to_text = direction_update(carry[0], image_rows, text_cols, positive, mask, col_valid)
        text_to_image = direction_update(carry[1], text_rows, image_cols, positive, mask, col_valid)
        return (image_to_text, text_to_image), None

    # The carry becomes device-varying inside the loop, so it must start out typed as varying.
    zeros = jax.lax.pcast(jnp.zeros((n,), jnp.float32), axis, to="varying")
    start = (zeros - jnp.inf, zeros, zeros, zeros, zeros, zeros)
    (image_to_text, text_to_image), _ = jax.lax.scan(body, (start, start), xs)
    ce_sum = 0.0
    for run_max, run_sum, pos, pos_count, mined_sum, mined_count in (image_to_text, text_to_image):
        lse = run_max + jnp.log(run_sum)
        ce = _ce_from_parts(lse, pos, pos_count, mined_sum, mined_count, weight)
        ce_sum = ce_sum + jnp.sum(jnp.where(row_valid, ce, 0.0))
    return ce_sum


def sharded_global_contrastive_loss(image_emb, text_emb, logit_scale, mesh: Mesh, axis: AxisName = "data",
                                    mining: MiningConfig | None = None, guide_text=None,
                                    guide_image=None, step=0, chunk_size: int | None = None,
                                    labels=None, mining_scale=1.0, valid=None) -> jax.Array:
    """Same scalar as `mined_global_contrastive_loss`, with the batch sharded over `axis` of `mesh`.

    Takes global [N, D] arrays (sharded or not; shard_map reshards them as needed). Each device
    computes [n, N] logits against the all-gathered other modality, and its [n, N] block of
    positive and mined targets from its own labels and guide rows and the gathered labels and
    guide columns. With chunk_size, columns are processed c at a time (see
    `chunked_global_contrastive_loss`). valid: optional bool [N]; invalid rows (records skipped
    as corrupt) are left out: the loss is that of the batch without them.
    """
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(f"image_emb {image_emb.shape} and text_emb {text_emb.shape} must both be [N, D]")
    global_batch = image_emb.shape[0]
    num_shards = _axis_size(mesh, axis)
    _check_batch("global contrastive loss", global_batch, num_shards, axis)
    _check_labels(labels, global_batch)
    valid = _check_valid(valid, global_batch)
    if valid is None:
        valid = jnp.ones((global_batch,), bool)
    if chunk_size is not None and (chunk_size <= 0 or global_batch % chunk_size):
        raise ValueError(f"chunk_size={chunk_size} does not divide the global batch N={global_batch}")
    if mining is not None and not mining.enabled:
        mining = None
    guides = {}
    if mining is not None:
        if mining.uses_text:
            if guide_text is None:
                raise ValueError(f"mining mode {mining.mode!r} needs guide_text; got None")
            guides["text"] = guide_text
        if mining.uses_image and guide_image is not None:
            guides["image"] = guide_image
        for name, g in guides.items():
            if g.ndim != 2 or g.shape[0] != global_batch:
                raise ValueError(f"guide_{name} {g.shape} must be [N, D'] with N={global_batch}")

    body = lambda img, txt, scale, st, ms, g, lab, ok: _sharded_global_body(  # noqa: E731
        img, txt, scale, st, ms, g, lab, ok, axis=axis, config=mining, chunk_size=chunk_size,
        global_batch=global_batch)
    batch_spec = P(axis)
    label_spec = None if labels is None else batch_spec
    fn = jax.shard_map(body, mesh=mesh,
                       in_specs=(batch_spec, batch_spec, P(), P(), P(),
                                 {k: batch_spec for k in guides}, label_spec, batch_spec),
                       out_specs=P())
    if labels is not None:
        labels = jnp.asarray(labels, jnp.int32)
    return fn(image_emb, text_emb, jnp.asarray(logit_scale, jnp.float32), jnp.asarray(step, jnp.int32),
              jnp.asarray(mining_scale, jnp.float32), guides, labels, valid)


def _local_group_sums(patch_tokens, sentence_emb, sentence_mask, logit_scale, tau_pool,
                      within_image_weight, group_size: int | None, valid=None):
    """`_local_loss_parts` of each group of `group_size` consecutive faces (None: the whole
    batch is one group), summed over the groups that have something to average: (sum of the
    sentence/image terms, how many groups hold a valid sentence, sum of the within-image terms,
    how many groups hold an image with two), all float32 scalars. valid: optional bool [B],
    invalid images (records skipped as corrupt) left out of their group."""
    batch = patch_tokens.shape[0]
    valid = _check_valid(valid, batch)
    if group_size is None or group_size == batch:
        pair_term, has_sentences, within_term, has_two = _local_loss_parts(
            patch_tokens, sentence_emb, sentence_mask, logit_scale, tau_pool, within_image_weight,
            valid)
        has_sentences, has_two = has_sentences.astype(jnp.float32), has_two.astype(jnp.float32)
        return pair_term * has_sentences, has_sentences, within_term * has_two, has_two
    if valid is None:
        valid = jnp.ones((batch,), bool)
    split = lambda x: x.reshape(batch // group_size, group_size, *x.shape[1:])  # noqa: E731
    # within_image_weight stays a Python number (it decides whether the term is built at all).
    parts = jax.vmap(lambda p, s, m, ok: _local_loss_parts(p, s, m, logit_scale, tau_pool,
                                                           within_image_weight, ok))
    pair_term, has_sentences, within_term, has_two = parts(
        split(patch_tokens), split(sentence_emb), split(sentence_mask), split(valid))
    has_sentences, has_two = has_sentences.astype(jnp.float32), has_two.astype(jnp.float32)
    return (jnp.sum(pair_term * has_sentences), jnp.sum(has_sentences),
            jnp.sum(within_term * has_two), jnp.sum(has_two))


def _check_group_size(group_size, batch: int, where: str):
    if group_size is not None and (not isinstance(group_size, int) or group_size < 1
                                   or batch % group_size):
        raise ValueError(f"local loss: group_size={group_size!r} must be a whole number that "
                         f"divides {where} ({batch} faces)")


def grouped_local_loss(patch_tokens, sentence_emb, sentence_mask, logit_scale, tau_pool,
                       group_size: int | None = None, within_image_weight=0.0,
                       valid=None) -> jax.Array:
    """The local loss with the batch cut into consecutive groups of `group_size` faces, each
    group its own set of negatives, on one device: the mean of `local_region_sentence_loss`'s
    sentence/image term over the groups holding a valid sentence, plus within_image_weight x the
    mean of its within-image term over the groups holding an image with two. group_size None:
    one group, `local_region_sentence_loss` itself. The single-device reference of
    `sharded_local_loss`, which computes the same groups where each device holds whole ones.
    valid: optional bool [B]; each group's loss is that of the group without its invalid images."""
    _check_group_size(group_size, patch_tokens.shape[0], "the batch")
    pair_sum, pair_count, within_sum, within_count = _local_group_sums(
        patch_tokens, sentence_emb, sentence_mask, logit_scale, tau_pool, within_image_weight,
        group_size, valid)
    loss = pair_sum / jnp.maximum(pair_count, 1.0)
    if within_image_weight:
        loss = loss + within_image_weight * within_sum / jnp.maximum(within_count, 1.0)
    return loss


def sharded_local_loss(patch_tokens, sentence_emb, sentence_mask, logit_scale, tau_pool, mesh: Mesh,
                       axis: AxisName = "data", within_image_weight=0.0, valid=None,
                       group_size: int | None = None) -> jax.Array:
    """Local loss on groups of faces that never straddle devices, averaged over the groups.

    This is NOT the local loss of the global batch: a sentence's negatives are only the faces of
    its group (by design; the cost is B x B*R x P x D per device). group_size None: each device's
    B / D faces are one group, so the value depends on the number of devices. A fixed group_size
    (dividing B / D) cuts the batch into the same consecutive groups on any mesh, so the value
    is `grouped_local_loss` of the whole batch whatever the device count. The mean of the
    sentence/image term is over the groups holding a valid sentence, and the within-image part's
    over the groups holding an image with two. A group without one has nothing to average;
    counting it as 0 would shrink the loss and its gradient for each such group. No valid
    sentence anywhere gives 0.
    valid: optional bool [B]; each group's loss is that of the group without its invalid images.
    """
    batch = patch_tokens.shape[0]
    num_shards = _axis_size(mesh, axis)
    _check_batch("local loss", batch, num_shards, axis)
    _check_group_size(group_size, batch // num_shards,
                      f"the share of each of the {num_shards} devices of mesh axis {axis!r}")
    valid = _check_valid(valid, batch)
    if valid is None:
        valid = jnp.ones((batch,), bool)

    def body(patches, sentences, mask, scale, tau, ok):
        pair_sum, pair_count, within_sum, within_count = _local_group_sums(
            patches, sentences, mask, scale, tau, within_image_weight, group_size, ok)
        mean = lambda total, count: (  # noqa: E731
            jax.lax.psum(total, axis) / jnp.maximum(jax.lax.psum(count, axis), 1.0))
        loss = mean(pair_sum, pair_count)
        if within_image_weight:
            loss = loss + within_image_weight * mean(within_sum, within_count)
        return loss

    fn = jax.shard_map(body, mesh=mesh, in_specs=(P(axis), P(axis), P(axis), P(), P(), P(axis)),
                       out_specs=P())
    return fn(patch_tokens, sentence_emb, sentence_mask, jnp.asarray(logit_scale, jnp.float32),
              jnp.asarray(tau_pool, jnp.float32), valid)


# --------------------------------------------------------------------------------------------------
# Entry points for the trainer
# --------------------------------------------------------------------------------------------------


def contrastive_loss(image_emb, text_emb, logit_scale, *, mesh: Mesh | None = None, axis: AxisName = "data",
                     impl: str = "single", chunk_size: int | None = None,
                     mining: MiningConfig | None = None, guide_text=None, guide_image=None,
                     step=0, labels=None, mining_scale=1.0, valid=None) -> jax.Array:
    """Global (or summary) contrastive term; every impl returns the same scalar.

    impl: "single" (whole [N, N] logits, any placement), "sharded" ([n, N] per device; needs mesh),
    "chunked" ([n, chunk_size] per device; needs mesh and chunk_size dividing N).
    labels: optional int [N] label ids; pairs with the same label >= 0 are positives too.
    mining_scale: factor on the mined weight (the agreement gate's `pair_agreement`; 1 without it).
    For the summary term pass the summary-sentence embeddings as text_emb.
    valid: optional bool [N]; False rows (records skipped as corrupt, `TrainPipelineConfig`'s
    on_corrupt) are neither anchors nor negatives nor counted: the loss is that of the batch
    without them, 0 when none is valid.
    """
    if impl not in GLOBAL_IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {GLOBAL_IMPLS}")
    if impl == "single":
        return mined_global_contrastive_loss(image_emb, text_emb, logit_scale, mining,
                                             guide_text=guide_text, guide_image=guide_image, step=step,
                                             labels=labels, mining_scale=mining_scale, valid=valid)
    if mesh is None:
        raise ValueError(f"impl={impl!r} needs a mesh")
    if impl == "chunked" and chunk_size is None:
        raise ValueError("impl='chunked' needs chunk_size")
    return sharded_global_contrastive_loss(image_emb, text_emb, logit_scale, mesh, axis, mining, guide_text,
                                           guide_image, step, chunk_size if impl == "chunked" else None,
                                           labels=labels, mining_scale=mining_scale, valid=valid)


def local_loss(patch_tokens, sentence_emb, sentence_mask, logit_scale, tau_pool, *, mesh: Mesh | None = None,
               axis: AxisName = "data", impl: str = "single", within_image_weight=0.0,
               valid=None, group_size: int | None = None) -> jax.Array:
    """Local region-sentence term. impl "single": on one device; "sharded": each device's faces
    on their own (see `sharded_local_loss`). group_size: faces per group of negatives (see
    `grouped_local_loss`); None: the whole batch ("single") or each device's share ("sharded"),
    which makes the sharded value depend on the device count. Both impls give the same value
    for the same group_size. within_image_weight: see `local_region_sentence_loss`. valid:
    optional bool [B], invalid images (records skipped as corrupt) left out."""
    if impl not in LOCAL_IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {LOCAL_IMPLS}")
    if impl == "single":
        if group_size is None:
            return local_region_sentence_loss(patch_tokens, sentence_emb, sentence_mask,
                                              logit_scale, tau_pool, within_image_weight, valid)
        return grouped_local_loss(patch_tokens, sentence_emb, sentence_mask, logit_scale,
                                  tau_pool, group_size, within_image_weight, valid)
    if mesh is None:
        raise ValueError("impl='sharded' needs a mesh")
    return sharded_local_loss(patch_tokens, sentence_emb, sentence_mask, logit_scale, tau_pool, mesh, axis,
                              within_image_weight, valid, group_size)
