"""Contrastive losses for EmoCapCLIP as pure functions: single-device, sharded and chunked forms.

What is here (DESIGN sections 2 and 3):

* `global_contrastive_loss`: symmetric CLIP InfoNCE (open_clip `ClipLoss`), optionally with soft
  targets. The summary term of the total loss is this same function applied to
  (image embeddings, summary-sentence embeddings); nothing special is needed for it.
* `mined_positive_targets`: label positives and cross-modal guided positive mining. Row i's
  targets become `normalize_L1(positive_i + weight * mined_i)`. positive_ij holds for j == i and,
  when labels are given, for every j with the same label >= 0 (UniCL's image-label-text target,
  Yang et al. CVPR 2022: the row's mass spread uniformly over its same-label columns). mined_ij
  says that samples i and j (not already positive) are similar according to stop-gradient guide
  embeddings (summary/global sentences, images, or both). The same target row is used for both
  directions: image_i -> texts and text_i -> images.
* Mining that cannot collapse. A fixed cosine threshold alone merges the batch at random init,
  where all guide embeddings look alike (cosines near one value) and every pair passes it. Three
  guards, each optional (`MiningConfig`), are applied per row and per guide: a hard cap (`top_k`:
  at most k mined positives, ties broken towards the lower column, so even identical guides give
  exactly k), a row-relative threshold (`relative_threshold` z: the pair must stand z standard
  deviations above the row's mean similarity, so only pairs that stand out of their own row
  count, whatever the absolute level), and a spread gate (`min_spread`: a row whose similarities
  have a smaller standard deviation carries no evidence of which pairs belong together and mines
  nothing). The row statistics are computed over all N columns in every form (the chunked form in
  a first pass over the column chunks, with Chan's pairwise merge of means and variances).
  Optionally the cap is mutual (`mutual`): the pair must also be within the column's own top k,
  so a row whose class is rare in the batch mines fewer of the next class's faces.
* `local_region_sentence_loss`: region-sentence alignment; each local sentence pools every image's
  patch tokens with itself as the attention query, then InfoNCE sentence->image and multi-positive
  image->sentence over the batch.
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
* Guide embeddings for mining need not be normalised: they are L2-normalised here, under
  stop_gradient, so thresholds are cosine similarities.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

AxisName = str | tuple[str, ...]

MINING_MODES = ("off", "text", "image", "both")
GLOBAL_IMPLS = ("single", "sharded", "chunked")
LOCAL_IMPLS = ("single", "sharded")

# Finite stand-in for -inf on masked logits: exp() of it underflows to exactly 0, yet a row with
# every entry masked still has a finite logsumexp, so no NaN reaches the gradients.
_MASKED_LOGIT = -1e9
_NORM_EPS = 1e-12
# Two cosines of the same pair computed in different matrix products (row i's and row j's) may
# differ in their last bits; the mutual cap must not turn on that.
_MUTUAL_TIE_TOLERANCE = 1e-5


@dataclasses.dataclass(frozen=True)
class MiningConfig:
    """Cross-modal guided positive mining (DESIGN section 2), built so that it cannot collapse.

    mode: "text" (guide = summary or global sentence embeddings), "image" (image-image similarity),
      "both" (a pair must pass both guides) or "off".
    threshold: cosine similarity a pair must reach to be a mined positive (an absolute floor;
      -1 disables it).
    top_k: if > 0, a hard cap: a mined positive must be among its row's k most similar
      off-diagonal columns under each guide, ties broken towards the lower column index, so no
      row ever gets more than k mined positives, whatever the similarities.
    mutual: with top_k, a mined pair must also be within the column's own cap: sim_ij must reach
      the k-th largest off-diagonal similarity of row j (mutual nearest neighbours; within 1e-5
      of it counts, since the two similarities come from different matrix products). A row whose
      class is rare in the batch (one disgust face among 64) fills its k places with the nearest
      other class's faces; when those faces' own k places hold their classmates, the pair is not
      mined. A class with k or fewer faces in the batch still fills its places with other
      classes, so pairs across classes drop but do not vanish (on FER2013 label captions, by
      about 60%; RESULTS.md). Guides are symmetric here (rows are a block of the columns).
    relative_threshold: z; if not None, a mined positive must also stand out of its own row:
      sim_ij >= mean_i + z * std_i over the row's off-diagonal similarities (per guide).
    min_spread: rows whose off-diagonal guide similarities have a standard deviation below this
      mine nothing (per guide). At random init every guide embedding looks alike (cosines all
      near one value), a fixed threshold passes every pair and the targets merge the whole batch
      into one class; a row whose similarities do not spread carries no evidence of which pairs
      belong together, so it keeps its one-hot (or label) target.
    weight: weight of each mined positive relative to each true positive before L1 normalisation.
    warmup_steps: mining is inactive while step < warmup_steps.
    image_threshold: threshold for the image guide; None uses `threshold`. Image-image and
      sentence-sentence cosine similarities have different ranges, so "both" may need two values.
    agreement_gate: if True, the trainer scales `weight` by the in-batch agreement of the model's
      own pairs (`pair_agreement`: the fraction of images whose own caption is their nearest in
      the batch, and vice versa), passed to the losses as `mining_scale`. The guards above stop
      the collapse, but not the dilution: at random init (agreement about 1/N) each of up to k
      guessed positives would take as much target mass as the true pair, and a from-scratch run
      whose only signal is that pair takes off later (RESULTS.md). Gated, mined positives weigh
      nothing until the model's pairs agree and grow with the evidence that its embeddings mean
      something.
    """

    mode: str = "text"
    threshold: float = 0.9
    top_k: int = 0
    weight: float = 1.0
    warmup_steps: int = 0
    image_threshold: float | None = None
    relative_threshold: float | None = None
    min_spread: float = 0.0
    agreement_gate: bool = False
    mutual: bool = False

    def __post_init__(self):
        if self.mode not in MINING_MODES:
            raise ValueError(f"MiningConfig.mode={self.mode!r} is not one of {MINING_MODES}")
        if self.top_k < 0:
            raise ValueError(f"MiningConfig.top_k={self.top_k} must be >= 0 (0 disables top-k)")
        if self.weight < 0:
            raise ValueError(f"MiningConfig.weight={self.weight} must be >= 0")
        if self.min_spread < 0:
            raise ValueError(f"MiningConfig.min_spread={self.min_spread} must be >= 0")
        if self.mutual and self.top_k <= 0:
            raise ValueError("MiningConfig.mutual=True needs a cap (top_k > 0): mutual means within "
                             "each other's top_k")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def uses_text(self) -> bool:
        return self.mode in ("text", "both")

    @property
    def uses_image(self) -> bool:
        return self.mode in ("image", "both")

    @property
    def uses_row_moments(self) -> bool:
        return self.relative_threshold is not None or self.min_spread > 0


# --------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------


def _scaled_logits(rows: jax.Array, cols: jax.Array, logit_scale) -> jax.Array:
    # Float32 accumulation so bf16 embeddings still give float32 logits and softmax.
    return logit_scale * jnp.einsum("nd,md->nm", rows, cols, preferred_element_type=jnp.float32)


def _l2_normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + _NORM_EPS)


def _guide_similarity(rows: jax.Array, cols: jax.Array) -> jax.Array:
    rows = _l2_normalize(jax.lax.stop_gradient(rows))
    cols = _l2_normalize(jax.lax.stop_gradient(cols))
    return rows @ cols.T


@dataclasses.dataclass(frozen=True)
class _Guide:
    """One guide modality: its row block, its columns, and the threshold that applies to it."""

    rows: jax.Array
    cols: jax.Array
    threshold: float


@dataclasses.dataclass(frozen=True)
class _RowStats:
    """Per-row facts about one guide's off-diagonal similarities, each [n] or None when unused:
    the k-th largest value and its column (the cap), and their mean and standard deviation;
    col_kth_value [N]: the k-th largest value of every column's own row (the mutual cap)."""

    kth_value: jax.Array | None = None
    kth_col: jax.Array | None = None
    mean: jax.Array | None = None
    std: jax.Array | None = None
    col_kth_value: jax.Array | None = None


def _active_guides(config: MiningConfig, text_rows, text_cols, image_rows, image_cols) -> list[_Guide]:
    guides = []
    if config.uses_text:
        if text_rows is None or text_cols is None:
            raise ValueError(f"mining mode {config.mode!r} needs text guide embeddings (guide_text); "
                             "got None")
        guides.append(_Guide(text_rows, text_cols, config.threshold))
    if config.uses_image:
        if image_rows is None or image_cols is None:
            raise ValueError(f"mining mode {config.mode!r} needs image guide embeddings; got None")
        thr = config.threshold if config.image_threshold is None else config.image_threshold
        guides.append(_Guide(image_rows, image_cols, thr))
    for g in guides:
        if g.rows.ndim != 2 or g.cols.ndim != 2 or g.rows.shape[1] != g.cols.shape[1]:
            raise ValueError(f"guide rows {g.rows.shape} and columns {g.cols.shape} must be [n, D] "
                             "and [N, D]")
    return guides


def _effective_top_k(config: MiningConfig, num_cols: int) -> int:
    """0 when top-k cannot restrict anything (k covers every off-diagonal column)."""
    if config.top_k <= 0 or config.top_k >= num_cols - 1:
        return 0
    return config.top_k


def _row_stats(guide: _Guide, row_offset, k: int, moments: bool) -> _RowStats:
    """`_RowStats` of each row over all columns at once."""
    sim = _guide_similarity(guide.rows, guide.cols)
    row_ids = row_offset + jnp.arange(sim.shape[0])
    off = row_ids[:, None] != jnp.arange(sim.shape[1])[None, :]
    stats = {}
    if k:
        # lax.top_k puts the lower index first among equal values: the k-th (value, column) pair
        # is the k-th in the order (value descending, column ascending).
        values, cols = jax.lax.top_k(jnp.where(off, sim, -jnp.inf), k)
        stats.update(kth_value=values[:, -1], kth_col=cols[:, -1])
    if moments:
        count = sim.shape[1] - 1
        mean = jnp.sum(jnp.where(off, sim, 0.0), axis=1) / count
        var = jnp.sum(jnp.where(off, jnp.square(sim - mean[:, None]), 0.0), axis=1) / count
        stats.update(mean=mean, std=jnp.sqrt(var))
    return _RowStats(**stats)


def _row_stats_chunked(guide: _Guide, row_offset, k: int, moments: bool, chunk_size: int,
                       axis) -> _RowStats:
    """Same as `_row_stats`, walking the columns in chunks: a running top-k with the columns of its
    entries, and running (count, mean, M2) merged chunk by chunk (Chan et al.'s update, which stays
    exact when every similarity is near one value, where sum-of-squares would cancel). O(n (k + c))."""
    n = guide.rows.shape[0]
    num_cols, dim = guide.cols.shape
    row_ids = row_offset + jnp.arange(n)
    col_chunks = guide.cols.reshape(num_cols // chunk_size, chunk_size, dim)
    offsets = jnp.arange(num_cols // chunk_size) * chunk_size

    def body(carry, xs):
        chunk, offset = xs
        sim = _guide_similarity(guide.rows, chunk)
        col_ids = offset + jnp.arange(chunk_size)
        off = row_ids[:, None] != col_ids[None, :]
        new = {}
        if k:
            values = jnp.concatenate([carry["values"], jnp.where(off, sim, -jnp.inf)], axis=1)
            cols = jnp.concatenate([carry["cols"], jnp.broadcast_to(col_ids, (n, chunk_size))], axis=1)
            # Earlier chunks come first in the concatenation, so ties still favour lower columns.
            new["values"], picked = jax.lax.top_k(values, k)
            new["cols"] = jnp.take_along_axis(cols, picked, axis=1)
        if moments:
            c_count = jnp.sum(off, axis=1).astype(jnp.float32)
            c_mean = jnp.sum(jnp.where(off, sim, 0.0), axis=1) / c_count
            c_m2 = jnp.sum(jnp.where(off, jnp.square(sim - c_mean[:, None]), 0.0), axis=1)
            count = carry["count"] + c_count
            delta = c_mean - carry["mean"]
            new["mean"] = carry["mean"] + delta * c_count / count
            new["m2"] = carry["m2"] + c_m2 + jnp.square(delta) * carry["count"] * c_count / count
            new["count"] = count
        return new, None

    # Inside shard_map the scan carry must be typed device-varying from the start.
    varying = lambda x: jax.lax.pcast(x, axis, to="varying")  # noqa: E731
    init = {}
    if k:
        init.update(values=varying(jnp.full((n, k), -jnp.inf, jnp.float32)),
                    cols=varying(jnp.zeros((n, k), jnp.int32)))
    if moments:
        zeros = varying(jnp.zeros((n,), jnp.float32))
        init.update(count=zeros, mean=zeros, m2=zeros)
    final, _ = jax.lax.scan(body, init, (col_chunks, offsets))
    stats = {}
    if k:
        stats.update(kth_value=final["values"][:, -1], kth_col=final["cols"][:, -1])
    if moments:
        stats.update(mean=final["mean"], std=jnp.sqrt(final["m2"] / final["count"]))
    return _RowStats(**stats)


def _mined_mask(config: MiningConfig, guides: Sequence[_Guide], guide_cols: Sequence[jax.Array],
                stats: Sequence[_RowStats], row_ids, col_ids, active) -> jax.Array:
    """Boolean [n, c]: pair (row, col) is a mined positive under every active guide."""
    mask = jnp.logical_and(active, row_ids[:, None] != col_ids[None, :])
    for guide, cols, st in zip(guides, guide_cols, stats):
        sim = _guide_similarity(guide.rows, cols)
        passes = sim >= guide.threshold
        if st.kth_value is not None:
            kv, kc = st.kth_value[:, None], st.kth_col[:, None]
            within_cap = (sim > kv) | ((sim == kv) & (col_ids[None, :] <= kc))
            passes = jnp.logical_and(passes, within_cap)
        if st.col_kth_value is not None:
            # The guide is symmetric, so sim_ij is also row j's similarity to column i.
            col_kv = jnp.take(st.col_kth_value, col_ids)[None, :]
            passes = jnp.logical_and(passes, sim >= col_kv - _MUTUAL_TIE_TOLERANCE)
        if config.relative_threshold is not None:
            passes = jnp.logical_and(
                passes, sim >= st.mean[:, None] + config.relative_threshold * st.std[:, None])
        if config.min_spread > 0:
            passes = jnp.logical_and(passes, (st.std >= config.min_spread)[:, None])
        mask = jnp.logical_and(mask, passes)
    return mask


def _guide_row_stats(config: MiningConfig, guides: Sequence[_Guide], row_offset, num_cols: int,
                     chunk_size: int | None = None, axis=None) -> list[_RowStats]:
    """Each guide's `_RowStats` for this block of rows. `axis`: the mesh axis inside shard_map
    (None on one device), over which the mutual cap gathers every row's k-th value."""
    k = _effective_top_k(config, num_cols)
    moments = config.uses_row_moments
    if not k and not moments:
        return [_RowStats() for _ in guides]
    if chunk_size is None:
        stats = [_row_stats(g, row_offset, k, moments) for g in guides]
    else:
        stats = [_row_stats_chunked(g, row_offset, k, moments, chunk_size, axis) for g in guides]
    if config.mutual and k:
        stats = [dataclasses.replace(st, col_kth_value=_column_kth_values(g, st, k, axis))
                 for g, st in zip(guides, stats)]
    return stats


def _column_kth_values(guide: _Guide, own: _RowStats, k: int, axis) -> jax.Array:
    """[N]: the k-th largest off-diagonal similarity of every column's own row. Sharded, each
    device holds its rows' values and gathers the rest (N scalars). On one device the rows may be
    a block (the training log's `mining_statistics` scores a few rows), so the columns' rows are
    scored afresh, 256 at a time: O(256 N) memory whatever N."""
    if axis is not None:
        return jax.lax.all_gather(own.kth_value, axis, tiled=True)
    cols = _l2_normalize(jax.lax.stop_gradient(guide.cols))
    num_cols = cols.shape[0]

    def kth(index_and_row):
        index, row = index_and_row
        sim = jnp.where(jnp.arange(num_cols) == index, -jnp.inf, cols @ row)
        return jax.lax.top_k(sim, k)[0][-1]

    return jax.lax.map(kth, (jnp.arange(num_cols), cols), batch_size=min(num_cols, 256))


def pair_agreement(image_emb: jax.Array, text_emb: jax.Array, max_rows: int = 256) -> jax.Array:
    """In-batch agreement of the model's own pairs, in [0, 1], without gradient: the mean over
    both directions of the fraction of rows whose own pair is their most similar column, over the
    first min(N, max_rows) pairs (a [m, m] block, so the cost stays flat for large batches; about
    1/m at random init). `MiningConfig.agreement_gate` scales the mined weight by it."""
    m = min(image_emb.shape[0], max_rows)
    image = jax.lax.stop_gradient(image_emb[:m]).astype(jnp.float32)
    text = jax.lax.stop_gradient(text_emb[:m]).astype(jnp.float32)
    sim = image @ text.T
    own = jnp.arange(m)
    return 0.5 * (jnp.mean(jnp.argmax(sim, axis=1) == own) + jnp.mean(jnp.argmax(sim, axis=0) == own))


def _mining_active(config: MiningConfig, step) -> jax.Array:
    # jnp comparison so a traced step works under jit.
    return jnp.asarray(step) >= config.warmup_steps


def _positive_mask(row_ids, col_ids, row_labels, col_labels) -> jax.Array:
    """Boolean [n, c]: the pair itself, and with labels every pair with the same label >= 0."""
    pos = row_ids[:, None] == col_ids[None, :]
    if row_labels is not None:
        same = (row_labels[:, None] == col_labels[None, :]) & (row_labels >= 0)[:, None]
        pos = jnp.logical_or(pos, same)
    return pos


def _check_labels(labels, batch: int):
    if labels is not None and (labels.ndim != 1 or labels.shape[0] != batch):
        raise ValueError(f"labels {labels.shape} must be [N] with N={batch} (label_id, -1 for none)")


def _ce_from_parts(lse, pos_logit_sum, pos_count, mined_logit_sum, mined_count,
                   weight: float) -> jax.Array:
    """CE with targets normalize_L1(positive + w * mined): the targets sum to 1, so
    -sum_j t_j log softmax_j = lse - sum_j t_j s_j = lse - (sum_pos s + w * sum_mined s) /
    (|pos| + w * |mined|)."""
    return lse - (pos_logit_sum + weight * mined_logit_sum) / (pos_count + weight * mined_count)


# --------------------------------------------------------------------------------------------------
# Single-device forms
# --------------------------------------------------------------------------------------------------


def mined_positive_targets(config: MiningConfig | None = None, *, text_rows=None, text_cols=None,
                           image_rows=None, image_cols=None, row_offset=0, step=0,
                           row_labels=None, col_labels=None, num_cols: int | None = None,
                           mining_scale=1.0) -> jax.Array:
    """Soft InfoNCE targets [n, N] for rows row_offset .. row_offset+n-1 against all N columns.

    Row i is `normalize_L1(positive_i + config.weight * mining_scale * mined_i)` (mining_scale: a
    traced scalar >= 0, the agreement gate's factor; 1 without it). positive_ij holds for j == i
    and, given labels, for every j with label_j == label_i >= 0 (UniCL's image-label-text target:
    the row's mass spread uniformly over its same-label columns; label -1 keeps only the pair).
    mined_ij holds when j is not already positive and the stop-gradient guide similarity passes
    every test of `MiningConfig` (threshold, cap, relative threshold, spread gate) for every guide
    the mode uses. Before `config.warmup_steps` (or with mode "off" / config None) nothing is mined.
    Used for both directions: image_i -> texts and text_i -> images share target row i.
    text_rows/text_cols: guide sentence embeddings [n, D'] / [N, D']; image_*: the same for images.
    row_labels / col_labels: int [n] / [N] label ids; num_cols: N when no guide gives it.
    """
    mining = config is not None and config.enabled
    given = [(r, c) for r, c in ((text_rows, text_cols), (image_rows, image_cols)) if r is not None]
    if given and given[0][1] is not None:
        n, num_cols = given[0][0].shape[0], given[0][1].shape[0]
    elif row_labels is not None and col_labels is not None:
        n, num_cols = row_labels.shape[0], col_labels.shape[0]
    elif num_cols is None or mining:
        raise ValueError("mined_positive_targets needs guide rows and columns (text_* or image_*)"
                         " or labels")
    else:
        n = num_cols
    row_ids = row_offset + jnp.arange(n)
    col_ids = jnp.arange(num_cols)
    positive = _positive_mask(row_ids, col_ids, row_labels, col_labels)
    targets = positive.astype(jnp.float32)
    if mining:
        mined = _dense_mined_mask(config, text_rows, text_cols, image_rows, image_cols, row_offset,
                                  step)
        mined = jnp.logical_and(mined, jnp.logical_not(positive))
        targets = targets + config.weight * mining_scale * mined.astype(jnp.float32)
    return targets / jnp.sum(targets, axis=1, keepdims=True)


def _dense_mined_mask(config: MiningConfig, text_rows, text_cols, image_rows, image_cols,
                      row_offset, step) -> jax.Array:
    """Boolean [n, N]: the guides' mined pairs of rows row_offset .. row_offset+n-1 (label
    positives not removed), row statistics over all N columns."""
    guides = _active_guides(config, text_rows, text_cols, image_rows, image_cols)
    num_cols = guides[0].cols.shape[0]
    row_ids = row_offset + jnp.arange(guides[0].rows.shape[0])
    stats = _guide_row_stats(config, guides, row_offset, num_cols)
    return _mined_mask(config, guides, [g.cols for g in guides], stats, row_ids,
                       jnp.arange(num_cols), _mining_active(config, step))


def mining_statistics(config: MiningConfig, *, guide_text=None, guide_image=None, labels=None,
                      step=0, max_rows: int = 256) -> dict[str, jax.Array]:
    """What the guides mine in this batch, for the training log (no gradient): over the first
    min(N, max_rows) rows against all N columns (row statistics over all N, as in the loss),
    `mined_per_row`, the mean number of mined pairs per row, and with labels
    `mined_other_label_per_row`, those whose two records carry different labels >= 0 (a guide
    that finds only the label mines none of these; a rare class mining the next one shows here).
    Counted before label positives are removed from the mined set."""
    if not config.enabled:
        return {}
    text = None if guide_text is None else jax.lax.stop_gradient(guide_text)
    image = None if guide_image is None else jax.lax.stop_gradient(guide_image)
    num = (text if text is not None else image).shape[0]
    m = min(num, max_rows)
    mined = _dense_mined_mask(config, None if text is None else text[:m], text,
                              None if image is None else image[:m], image, 0, step)
    out = {"mined_per_row": jnp.mean(jnp.sum(mined, axis=1).astype(jnp.float32))}
    if labels is not None:
        other = (labels[:m, None] != labels[None, :]) & (labels[:m, None] >= 0) & (labels[None, :] >= 0)
        out["mined_other_label_per_row"] = jnp.mean(
            jnp.sum(mined & other, axis=1).astype(jnp.float32))
    return out


def _soft_ce_rows(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=1), axis=1)


def global_contrastive_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale,
                            targets: jax.Array | None = None) -> jax.Array:
    """Symmetric InfoNCE (open_clip ClipLoss) over a batch held on one device; returns a scalar.

    image_emb, text_emb: [N, D], already L2-normalised. logit_scale: exponentiated scale (scalar).
    targets: optional soft targets [N, N] (rows sum to 1), row i used for image_i -> texts and for
    text_i -> images; None means the diagonal (plain CLIP).
    """
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(f"image_emb {image_emb.shape} and text_emb {text_emb.shape} must both be [N, D]")
    logits = _scaled_logits(image_emb, text_emb, logit_scale)
    if targets is None:
        pos = jnp.diagonal(logits)
        image_to_text = jax.nn.logsumexp(logits, axis=1) - pos
        text_to_image = jax.nn.logsumexp(logits, axis=0) - pos
    else:
        if targets.shape != logits.shape:
            raise ValueError(f"targets {targets.shape} must be [N, N] = {logits.shape}")
        image_to_text = _soft_ce_rows(logits, targets)
        text_to_image = _soft_ce_rows(logits.T, targets)
    return 0.5 * (jnp.mean(image_to_text) + jnp.mean(text_to_image))


def mined_global_contrastive_loss(image_emb, text_emb, logit_scale, mining: MiningConfig | None, *,
                                  guide_text=None, guide_image=None, step=0, labels=None,
                                  mining_scale=1.0) -> jax.Array:
    """`global_contrastive_loss` with label and mined targets built over the whole batch
    ([N, N] in memory). guide_image defaults to the image embeddings themselves (under
    stop_gradient). labels: int [N] label ids (-1: none) whose equal pairs are positives."""
    mining_on = mining is not None and mining.enabled
    _check_labels(labels, image_emb.shape[0])
    if not mining_on and labels is None:
        return global_contrastive_loss(image_emb, text_emb, logit_scale)
    if mining_on and guide_image is None:
        guide_image = image_emb
    targets = mined_positive_targets(
        mining if mining_on else None, text_rows=guide_text if mining_on else None,
        text_cols=guide_text if mining_on else None,
        image_rows=guide_image if mining_on else None, image_cols=guide_image if mining_on else None,
        step=step, row_labels=labels, col_labels=labels, num_cols=image_emb.shape[0],
        mining_scale=mining_scale)
    return global_contrastive_loss(image_emb, text_emb, logit_scale, targets)


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
                               within_image_weight=0.0) -> jax.Array:
    """Region-sentence alignment loss over one batch (DESIGN section 2); returns a scalar.

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
    """
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
    sentence_to_image = jax.nn.logsumexp(logits, axis=0) - pos
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
    loss = 0.5 * (sentence_term + image_term)
    if within_image_weight:
        # Image i's pooled vector for its own slot r: entry (i, i * R + r) of `pooled`.
        own_pooled = pooled.reshape(batch, batch, num_slots, dim)[jnp.arange(batch), jnp.arange(batch)]
        loss = loss + within_image_weight * _within_image_term(
            own_pooled, sentences.reshape(batch, num_slots, dim),
            valid.reshape(batch, num_slots), logit_scale)
    return loss


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
                         row_labels, *, axis, config, chunk_size, global_batch):
    """Per-device body: this device's n anchors of each modality against all N gathered columns."""
    n = image_rows.shape[0]
    row_offset = jax.lax.axis_index(axis) * n
    row_ids = row_offset + jnp.arange(n)
    all_text = jax.lax.all_gather(text_rows, axis, tiled=True)
    all_image = jax.lax.all_gather(image_rows, axis, tiled=True)
    all_labels = None if row_labels is None else jax.lax.all_gather(row_labels, axis, tiled=True)

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
        guides = _active_guides(config, text_g, text_cols, image_g, image_cols)
        guide_cols = [g.cols for g in guides]
        active = _mining_active(config, step)
        stats = _guide_row_stats(config, guides, row_offset, global_batch, chunk_size, axis)
    weight = config.weight * mining_scale if mining else 0.0

    if chunk_size is None:
        col_ids = jnp.arange(global_batch)
        positive = _positive_mask(row_ids, col_ids, row_labels, all_labels)
        pos_count = jnp.sum(positive, axis=1)
        mask = None
        if mining:
            mask = _mined_mask(config, guides, guide_cols, stats, row_ids, col_ids, active)
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
            lse = jax.nn.logsumexp(logits, axis=1)
            ce_sum = ce_sum + jnp.sum(_ce_from_parts(lse, pos, pos_count, mined_sum, mined_count, weight))
    else:
        ce_sum = _chunked_ce_sum(config, image_rows, text_rows, all_image, all_text, logit_scale,
                                 row_ids, row_labels, all_labels, guides, guide_cols, stats, active,
                                 weight, chunk_size, axis)
    return jax.lax.psum(ce_sum, axis) / (2 * global_batch)


def _chunked_ce_sum(config, image_rows, text_rows, all_image, all_text, logit_scale, row_ids,
                    row_labels, all_labels, guides, guide_cols, stats, active, weight, chunk_size,
                    axis):
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
          label_chunks, jnp.arange(num_chunks) * chunk_size)

    def direction_update(carry, rows, cols, positive, mask):
        run_max, run_sum, pos, pos_count, mined_sum, mined_count = carry
        logits = _scaled_logits(rows, cols, logit_scale)
        # The logsumexp does not depend on the shift, so the shift needs no gradient.
        new_max = jnp.maximum(run_max, jax.lax.stop_gradient(jnp.max(logits, axis=1)))
        run_sum = run_sum * jnp.exp(run_max - new_max) + jnp.sum(jnp.exp(logits - new_max[:, None]), axis=1)
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
        text_cols, image_cols, guide_chunks, col_labels, offset = chunk
        col_ids = offset + jnp.arange(chunk_size)
        positive = _positive_mask(row_ids, col_ids, row_labels, col_labels)
        mask = None
        if mining:
            mask = _mined_mask(config, guides, guide_chunks, stats, row_ids, col_ids, active)
            mask = jnp.logical_and(mask, jnp.logical_not(positive))
        image_to_text = direction_update(carry[0], image_rows, text_cols, positive, mask)
        text_to_image = direction_update(carry[1], text_rows, image_cols, positive, mask)
        return (image_to_text, text_to_image), None

    # The carry becomes device-varying inside the loop, so it must start out typed as varying.
    zeros = jax.lax.pcast(jnp.zeros((n,), jnp.float32), axis, to="varying")
    start = (zeros - jnp.inf, zeros, zeros, zeros, zeros, zeros)
    (image_to_text, text_to_image), _ = jax.lax.scan(body, (start, start), xs)
    ce_sum = 0.0
    for run_max, run_sum, pos, pos_count, mined_sum, mined_count in (image_to_text, text_to_image):
        lse = run_max + jnp.log(run_sum)
        ce_sum = ce_sum + jnp.sum(_ce_from_parts(lse, pos, pos_count, mined_sum, mined_count, weight))
    return ce_sum


def sharded_global_contrastive_loss(image_emb, text_emb, logit_scale, mesh: Mesh, axis: AxisName = "data",
                                    mining: MiningConfig | None = None, guide_text=None,
                                    guide_image=None, step=0, chunk_size: int | None = None,
                                    labels=None, mining_scale=1.0) -> jax.Array:
    """Same scalar as `mined_global_contrastive_loss`, with the batch sharded over `axis` of `mesh`.

    Takes global [N, D] arrays (sharded or not; shard_map reshards them as needed). Each device
    computes [n, N] logits against the all-gathered other modality, and its [n, N] block of
    positive and mined targets from its own labels and guide rows and the gathered labels and
    guide columns. With chunk_size, columns are processed c at a time (see
    `chunked_global_contrastive_loss`).
    """
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(f"image_emb {image_emb.shape} and text_emb {text_emb.shape} must both be [N, D]")
    global_batch = image_emb.shape[0]
    num_shards = _axis_size(mesh, axis)
    _check_batch("global contrastive loss", global_batch, num_shards, axis)
    _check_labels(labels, global_batch)
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

    body = lambda img, txt, scale, st, ms, g, lab: _sharded_global_body(  # noqa: E731
        img, txt, scale, st, ms, g, lab, axis=axis, config=mining, chunk_size=chunk_size,
        global_batch=global_batch)
    batch_spec = P(axis)
    label_spec = None if labels is None else batch_spec
    fn = jax.shard_map(body, mesh=mesh,
                       in_specs=(batch_spec, batch_spec, P(), P(), P(),
                                 {k: batch_spec for k in guides}, label_spec),
                       out_specs=P())
    if labels is not None:
        labels = jnp.asarray(labels, jnp.int32)
    return fn(image_emb, text_emb, jnp.asarray(logit_scale, jnp.float32), jnp.asarray(step, jnp.int32),
              jnp.asarray(mining_scale, jnp.float32), guides, labels)


def sharded_local_loss(patch_tokens, sentence_emb, sentence_mask, logit_scale, tau_pool, mesh: Mesh,
                       axis: AxisName = "data", within_image_weight=0.0) -> jax.Array:
    """Local loss on each device's own batch of B / D images, averaged over devices.

    This is NOT the local loss of the global batch: negatives are only the images and sentences on
    the same device (DESIGN allows this; the cost is B x B*R x P x D per device). It equals the mean
    over the D contiguous batch blocks of `local_region_sentence_loss` on each block.
    """
    batch = patch_tokens.shape[0]
    _check_batch("local loss", batch, _axis_size(mesh, axis), axis)

    def body(patches, sentences, mask, scale, tau):
        return jax.lax.pmean(local_region_sentence_loss(patches, sentences, mask, scale, tau,
                                                        within_image_weight), axis)

    fn = jax.shard_map(body, mesh=mesh, in_specs=(P(axis), P(axis), P(axis), P(), P()), out_specs=P())
    return fn(patch_tokens, sentence_emb, sentence_mask, jnp.asarray(logit_scale, jnp.float32),
              jnp.asarray(tau_pool, jnp.float32))


# --------------------------------------------------------------------------------------------------
# Entry points for the trainer
# --------------------------------------------------------------------------------------------------


def contrastive_loss(image_emb, text_emb, logit_scale, *, mesh: Mesh | None = None, axis: AxisName = "data",
                     impl: str = "single", chunk_size: int | None = None,
                     mining: MiningConfig | None = None, guide_text=None, guide_image=None,
                     step=0, labels=None, mining_scale=1.0) -> jax.Array:
    """Global (or summary) contrastive term; every impl returns the same scalar.

    impl: "single" (whole [N, N] logits, any placement), "sharded" ([n, N] per device; needs mesh),
    "chunked" ([n, chunk_size] per device; needs mesh and chunk_size dividing N).
    labels: optional int [N] label ids; pairs with the same label >= 0 are positives too.
    mining_scale: factor on the mined weight (the agreement gate's `pair_agreement`; 1 without it).
    For the summary term pass the summary-sentence embeddings as text_emb.
    """
    if impl not in GLOBAL_IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {GLOBAL_IMPLS}")
    if impl == "single":
        return mined_global_contrastive_loss(image_emb, text_emb, logit_scale, mining,
                                             guide_text=guide_text, guide_image=guide_image, step=step,
                                             labels=labels, mining_scale=mining_scale)
    if mesh is None:
        raise ValueError(f"impl={impl!r} needs a mesh")
    if impl == "chunked" and chunk_size is None:
        raise ValueError("impl='chunked' needs chunk_size")
    return sharded_global_contrastive_loss(image_emb, text_emb, logit_scale, mesh, axis, mining, guide_text,
                                           guide_image, step, chunk_size if impl == "chunked" else None,
                                           labels=labels, mining_scale=mining_scale)


def local_loss(patch_tokens, sentence_emb, sentence_mask, logit_scale, tau_pool, *, mesh: Mesh | None = None,
               axis: AxisName = "data", impl: str = "single", within_image_weight=0.0) -> jax.Array:
    """Local region-sentence term. impl "single": over the whole batch; "sharded": per-device
    batches averaged over devices (a different, cheaper loss; see `sharded_local_loss`).
    within_image_weight: see `local_region_sentence_loss`."""
    if impl not in LOCAL_IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {LOCAL_IMPLS}")
    if impl == "single":
        return local_region_sentence_loss(patch_tokens, sentence_emb, sentence_mask, logit_scale, tau_pool,
                                          within_image_weight)
    if mesh is None:
        raise ValueError("impl='sharded' needs a mesh")
    return sharded_local_loss(patch_tokens, sentence_emb, sentence_mask, logit_scale, tau_pool, mesh, axis,
                              within_image_weight)
