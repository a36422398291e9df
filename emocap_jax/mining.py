"""Which pairs of a batch are positives of each other: label positives and caption-guided
mining that cannot collapse, as pure functions. `emocap_jax.losses` turns these
targets into the contrastive loss in its single-device, sharded and chunked forms.

* `mined_positive_targets`: row i's soft targets `normalize_L1(positive_i + weight * mined_i)`.
  positive_ij holds for j == i and, when labels are given, for every j with the same label >= 0
  (UniCL's image-label-text target, Yang et al. CVPR 2022: the row's mass spread uniformly over
  its same-label columns). mined_ij says that samples i and j (not already positive) are similar
  according to stop-gradient guide embeddings (summary/global sentences, images, or both). The
  same target row is used for both directions: image_i -> texts and text_i -> images.
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
* The blocks the loss's sharded and chunked forms build a row block (or one column chunk) of the
  targets from: `active_guides`, `guide_row_stats` (each guide's `RowStats` over all N columns),
  `mined_mask` and `positive_mask`. No [N, N] array is needed for them.
* For the training log and the agreement gate: `mining_statistics` (the mined pairs per row and
  those across labels) and `pair_agreement` (the in-batch agreement of the model's own pairs).

Guide embeddings need not be normalised: they are L2-normalised here, under stop_gradient, so
thresholds are cosine similarities.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

MINING_MODES = ("off", "text", "image", "both")

_NORM_EPS = 1e-12
# Two cosines of the same pair computed in different matrix products (row i's and row j's) may
# differ in their last bits; the mutual cap must not turn on that.
_MUTUAL_TIE_TOLERANCE = 1e-5
# Below this standard deviation a row's off-diagonal cosines differ by rounding only (every one
# equal: identical guides, or a guide equally far from all others); float32 cosines carry about
# 1e-7 of it, and the chunked pass's mean rounds differently from the whole-batch one.
_MIN_Z_SCORE_STD = 1e-6


@dataclasses.dataclass(frozen=True)
class MiningConfig:
    """Cross-modal guided positive mining, built so that it cannot collapse.

    mode: "text" (guide = summary or global sentence embeddings), "image" (image-image similarity),
      "both" (a pair must pass both guides) or "off".
    threshold: cosine similarity a pair must reach to be a mined positive (an absolute floor;
      -1 disables it).
    top_k: if > 0, a hard cap: a mined positive must be among its row's k most similar
      off-diagonal columns under each guide, ties broken towards the lower column index, so no
      row ever gets more than k mined positives, whatever the similarities.
    mutual: with top_k, a mined pair must also be within the column's own cap: sim_ij must reach
      the k-th largest off-diagonal similarity of row j (mutual nearest neighbours; within 1e-5
      of it counts, since the two similarities come from different matrix products). A pair tied
      at row j's k-th value passes even where row j's own cap broke the tie against it, so under
      exact ties (one sentence per class) every face of a class of more than k faces still mines
      k classmates. A row whose class is rare in the batch (one disgust face among 64) fills its
      k places with the nearest other class's faces; when those faces' own k places hold their
      classmates, the pair is not mined. A class with k or fewer faces in the batch still fills
      its places with other classes, so pairs across classes drop but do not vanish (on FER2013
      label captions, by about 60%; RESULTS.md). Guides are symmetric here (rows are a block of
      the columns).
    relative_threshold: z; if not None, a mined positive must also stand out of its own row:
      sim_ij >= mean_i + z * std_i over the row's off-diagonal similarities (per guide). A row
      whose std is below 1e-6 (its similarities all equal up to float32 rounding) has no z-score
      and mines nothing under it, for any z.
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
                             "each other's top_k; set top_k > 0 or mutual=False")

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


def _l2_normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + _NORM_EPS)


def _guide_similarity(rows: jax.Array, cols: jax.Array) -> jax.Array:
    rows = _l2_normalize(jax.lax.stop_gradient(rows))
    cols = _l2_normalize(jax.lax.stop_gradient(cols))
    return rows @ cols.T


@dataclasses.dataclass(frozen=True)
class Guide:
    """One guide modality: its row block, its columns, and the threshold that applies to it."""

    rows: jax.Array
    cols: jax.Array
    threshold: float


@dataclasses.dataclass(frozen=True)
class RowStats:
    """Per-row facts about one guide's off-diagonal similarities, each [n] or None when unused:
    the k-th largest value, the columns of the k largest (topk_cols [n, k], in the order value
    descending, column ascending: the cap), and their mean and standard deviation;
    col_kth_value [N]: the k-th largest value of every column's own row (the mutual cap)."""

    kth_value: jax.Array | None = None
    topk_cols: jax.Array | None = None
    mean: jax.Array | None = None
    std: jax.Array | None = None
    col_kth_value: jax.Array | None = None


def active_guides(config: MiningConfig, text_rows, text_cols, image_rows, image_cols) -> list[Guide]:
    """The guides `config.mode` uses (text, image or both, in that order), each with its rows,
    columns and threshold; a clear error when the mode's embeddings are missing or misshapen."""
    guides = []
    if config.uses_text:
        if text_rows is None or text_cols is None:
            raise ValueError(f"mining mode {config.mode!r} needs text guide embeddings (guide_text); "
                             "got None")
        guides.append(Guide(text_rows, text_cols, config.threshold))
    if config.uses_image:
        if image_rows is None or image_cols is None:
            raise ValueError(f"mining mode {config.mode!r} needs image guide embeddings; got None")
        thr = config.threshold if config.image_threshold is None else config.image_threshold
        guides.append(Guide(image_rows, image_cols, thr))
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


def _off_diagonal(row_ids, col_ids, col_valid) -> jax.Array:
    """[n, c]: the pairs a row's statistics and mined positives range over: other columns, and
    of those only valid ones (col_valid: bool [c] or None)."""
    off = row_ids[:, None] != col_ids[None, :]
    return off if col_valid is None else jnp.logical_and(off, col_valid[None, :])


def _row_stats(guide: Guide, row_offset, k: int, moments: bool, col_valid=None) -> RowStats:
    """`RowStats` of each row over all (valid) columns at once."""
    sim = _guide_similarity(guide.rows, guide.cols)
    row_ids = row_offset + jnp.arange(sim.shape[0])
    off = _off_diagonal(row_ids, jnp.arange(sim.shape[1]), col_valid)
    stats = {}
    if k:
        # lax.top_k puts the lower index first among equal values: the k-th (value, column) pair
        # is the k-th in the order (value descending, column ascending).
        values, cols = jax.lax.top_k(jnp.where(off, sim, -jnp.inf), k)
        # The k-th value as the least of the k (they come in descending order), not values[:, -1]:
        # XLA folds that into a slice of the whole sort, which then stays a full [n, c] sort
        # instead of becoming the partial TopK call (on CPU the mutual cap's forward pass took
        # 7x longer).
        stats.update(kth_value=jnp.min(values, axis=1), topk_cols=cols)
    if moments:
        # Invalid columns (rows skipped as corrupt) leave the count as well as the sums.
        count = jnp.maximum(jnp.sum(off, axis=1), 1).astype(jnp.float32)
        mean = jnp.sum(jnp.where(off, sim, 0.0), axis=1) / count
        var = jnp.sum(jnp.where(off, jnp.square(sim - mean[:, None]), 0.0), axis=1) / count
        stats.update(mean=mean, std=jnp.sqrt(var))
    return RowStats(**stats)


def _row_stats_chunked(guide: Guide, row_offset, k: int, moments: bool, chunk_size: int,
                       axis, col_valid=None) -> RowStats:
    """Same as `_row_stats`, walking the columns in chunks: a running top-k with the columns of its
    entries, and running (count, mean, M2) merged chunk by chunk (Chan et al.'s update, which stays
    exact when every similarity is near one value, where sum-of-squares would cancel). O(n (k + c))."""
    n = guide.rows.shape[0]
    num_cols, dim = guide.cols.shape
    row_ids = row_offset + jnp.arange(n)
    col_chunks = guide.cols.reshape(num_cols // chunk_size, chunk_size, dim)
    offsets = jnp.arange(num_cols // chunk_size) * chunk_size
    if col_valid is None:
        col_valid = jnp.ones((num_cols,), bool)
    valid_chunks = col_valid.reshape(num_cols // chunk_size, chunk_size)

    def body(carry, xs):
        chunk, offset, chunk_valid = xs
        sim = _guide_similarity(guide.rows, chunk)
        col_ids = offset + jnp.arange(chunk_size)
        off = _off_diagonal(row_ids, col_ids, chunk_valid)
        new = {}
        if k:
            values = jnp.concatenate([carry["values"], jnp.where(off, sim, -jnp.inf)], axis=1)
            cols = jnp.concatenate([carry["cols"], jnp.broadcast_to(col_ids, (n, chunk_size))], axis=1)
            # Earlier chunks come first in the concatenation, so ties still favour lower columns.
            new["values"], picked = jax.lax.top_k(values, k)
            new["cols"] = jnp.take_along_axis(cols, picked, axis=1)
        if moments:
            c_count = jnp.sum(off, axis=1).astype(jnp.float32)
            # A chunk of one column holds nothing but the row's own diagonal (c_count 0), and it
            # may come first (count 0): the floors keep 0 / 0 from making the moments NaN, and
            # the merge with an empty side leaves the other side as it is.
            c_mean = jnp.sum(jnp.where(off, sim, 0.0), axis=1) / jnp.maximum(c_count, 1.0)
            c_m2 = jnp.sum(jnp.where(off, jnp.square(sim - c_mean[:, None]), 0.0), axis=1)
            count = carry["count"] + c_count
            delta = c_mean - carry["mean"]
            share = c_count / jnp.maximum(count, 1.0)
            new["mean"] = carry["mean"] + delta * share
            new["m2"] = carry["m2"] + c_m2 + jnp.square(delta) * carry["count"] * share
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
    final, _ = jax.lax.scan(body, init, (col_chunks, offsets, valid_chunks))
    stats = {}
    if k:
        stats.update(kth_value=final["values"][:, -1], topk_cols=final["cols"])
    if moments:
        stats.update(mean=final["mean"], std=jnp.sqrt(final["m2"] / jnp.maximum(final["count"], 1.0)))
    return RowStats(**stats)


def _cap_members(topk_cols, col_ids) -> jax.Array:
    """Boolean [n, c]: column col_ids[j] is one of row i's k selected columns (topk_cols [n, k]).
    col_ids are consecutive (all columns, or a chunk offset + arange(c), as every caller passes).
    The selected columns are scattered into the mask (O(n c + n k)); comparing every column with
    every selected one builds an [n, c, k] array, which XLA on CPU stored from k = 64 on (256 MiB
    at N = 2048, more than the [N, N] logits)."""
    n, c = topk_cols.shape[0], col_ids.shape[0]
    local = topk_cols - col_ids[0]
    # A selected column outside this chunk goes to index c, which the scatter drops (a negative
    # index would wrap around instead).
    local = jnp.where((local >= 0) & (local < c), local, c)
    return jnp.zeros((n, c), bool).at[jnp.arange(n)[:, None], local].set(True, mode="drop")


def mined_mask(config: MiningConfig, guides: Sequence[Guide], guide_cols: Sequence[jax.Array],
                stats: Sequence[RowStats], row_ids, col_ids, active, col_valid=None) -> jax.Array:
    """Boolean [n, c]: pair (row, col) is a mined positive under every active guide; never an
    invalid column (col_valid: bool [c], False where a row was skipped as corrupt)."""
    mask = jnp.logical_and(active, _off_diagonal(row_ids, col_ids, col_valid))
    for guide, cols, st in zip(guides, guide_cols, stats):
        sim = _guide_similarity(guide.rows, cols)
        passes = sim >= guide.threshold
        if st.topk_cols is not None:
            # Membership is read off the columns the row's top-k pass selected, not re-derived by
            # comparing `sim` with the k-th value: `sim` is recomputed here in another product
            # (a column chunk, another fusion), whose last bits may differ from the pass's, and
            # an equality test on them gave k - 1 or k + 1 positives (or ones that differ
            # between the whole-batch, sharded and chunked forms). Ties stay broken as the pass
            # broke them, towards the lower column.
            within_cap = _cap_members(st.topk_cols, col_ids)
            passes = jnp.logical_and(passes, within_cap)
        if st.col_kth_value is not None:
            # The guide is symmetric, so sim_ij is also row j's similarity to column i.
            col_kv = jnp.take(st.col_kth_value, col_ids)[None, :]
            passes = jnp.logical_and(passes, sim >= col_kv - _MUTUAL_TIE_TOLERANCE)
        if config.relative_threshold is not None:
            # In a row without spread, sim and mean + z * std are one value up to rounding, so
            # the comparison was decided by the last bit: all pairs or none, one way in the
            # whole-batch form and the other in the chunked one.
            bar = st.mean + config.relative_threshold * st.std
            stands_out = (sim >= bar[:, None]) & (st.std >= _MIN_Z_SCORE_STD)[:, None]
            passes = jnp.logical_and(passes, stands_out)
        if config.min_spread > 0:
            passes = jnp.logical_and(passes, (st.std >= config.min_spread)[:, None])
        mask = jnp.logical_and(mask, passes)
    return mask


def guide_row_stats(config: MiningConfig, guides: Sequence[Guide], row_offset, num_cols: int,
                     chunk_size: int | None = None, axis=None, col_valid=None) -> list[RowStats]:
    """Each guide's `RowStats` for this block of rows. `axis`: the mesh axis inside shard_map
    (None on one device), over which the mutual cap gathers every row's k-th value.
    col_valid: bool [N] or None; the statistics range over the valid columns only, so they are
    those of the batch without its invalid rows. (The cap k stays the one of N columns: with
    fewer than k valid ones a row's k-th value is -inf and the cap passes every column, as the
    smaller batch's lifted cap would.)"""
    k = _effective_top_k(config, num_cols)
    moments = config.uses_row_moments
    if not k and not moments:
        return [RowStats() for _ in guides]
    if chunk_size is None:
        stats = [_row_stats(g, row_offset, k, moments, col_valid) for g in guides]
    else:
        stats = [_row_stats_chunked(g, row_offset, k, moments, chunk_size, axis, col_valid)
                 for g in guides]
    if config.mutual and k:
        stats = [dataclasses.replace(st, col_kth_value=_column_kth_values(g, st, k, axis,
                                                                          col_valid))
                 for g, st in zip(guides, stats)]
    return stats


def _column_kth_values(guide: Guide, own: RowStats, k: int, axis, col_valid=None) -> jax.Array:
    """[N]: the k-th largest off-diagonal similarity of every column's own row. Sharded, each
    device holds its rows' values and gathers the rest (N scalars). On one device the rows may be
    a block (the training log's `mining_statistics` scores a few rows), so the columns' rows are
    scored afresh, 256 at a time: O(256 N) memory whatever N."""
    if axis is not None:
        return jax.lax.all_gather(own.kth_value, axis, tiled=True)
    if guide.rows.shape[0] == guide.cols.shape[0]:
        return own.kth_value  # the rows, a block of the columns, are all of them
    cols = _l2_normalize(jax.lax.stop_gradient(guide.cols))
    num_cols = cols.shape[0]
    ids = jnp.arange(num_cols)

    def kth(index_and_row):
        index, row = index_and_row
        off = _off_diagonal(index[None], ids, col_valid)[0]
        sim = jnp.where(off, cols @ row, -jnp.inf)
        return jnp.min(jax.lax.top_k(sim, k)[0])  # the k-th value; see _row_stats

    return jax.lax.map(kth, (jnp.arange(num_cols), cols), batch_size=min(num_cols, 256))


def pair_agreement(image_emb: jax.Array, text_emb: jax.Array, max_rows: int = 256,
                   valid=None) -> jax.Array:
    """In-batch agreement of the model's own pairs, in [0, 1], without gradient: the mean over
    both directions of the fraction of rows whose own pair is their most similar column, over the
    first min(N, max_rows) pairs (a [m, m] block, so the cost stays flat for large batches; about
    1/m at random init). `MiningConfig.agreement_gate` scales the mined weight by it.
    valid: bool [N] or None; invalid pairs (rows skipped as corrupt) are neither rows nor
    columns (0 when none of the m is valid)."""
    m = min(image_emb.shape[0], max_rows)
    image = jax.lax.stop_gradient(image_emb[:m]).astype(jnp.float32)
    text = jax.lax.stop_gradient(text_emb[:m]).astype(jnp.float32)
    ok = jnp.ones((m,), bool) if valid is None else jnp.asarray(valid[:m], bool)
    pair_ok = ok[:, None] & ok[None, :]
    sim = jnp.where(pair_ok, image @ text.T, -jnp.inf)
    own = jnp.arange(m)
    count = jnp.maximum(jnp.sum(ok), 1)
    hits = lambda axis: jnp.sum((jnp.argmax(sim, axis=axis) == own) & ok) / count  # noqa: E731
    return 0.5 * (hits(1) + hits(0))


def is_active(config: MiningConfig, step) -> jax.Array:
    # jnp comparison so a traced step works under jit.
    return jnp.asarray(step) >= config.warmup_steps


def positive_mask(row_ids, col_ids, row_labels, col_labels, col_valid=None) -> jax.Array:
    """Boolean [n, c]: the pair itself, and with labels every pair with the same label >= 0 whose
    column is valid (col_valid: bool [c] or None). The pair itself stays even on an invalid row,
    so every row has a positive and nothing divides by 0 (the losses leave such rows out)."""
    pos = row_ids[:, None] == col_ids[None, :]
    if row_labels is not None:
        same = (row_labels[:, None] == col_labels[None, :]) & (row_labels >= 0)[:, None]
        if col_valid is not None:
            same = same & col_valid[None, :]
        pos = jnp.logical_or(pos, same)
    return pos


def mined_positive_targets(config: MiningConfig | None = None, *, text_rows=None, text_cols=None,
                           image_rows=None, image_cols=None, row_offset=0, step=0,
                           row_labels=None, col_labels=None, num_cols: int | None = None,
                           mining_scale=1.0, col_valid=None) -> jax.Array:
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
    col_valid: bool [N] or None: invalid columns (rows skipped as corrupt) get no target mass and
    are left out of the mining statistics, so a valid row's targets are those of the batch
    without the invalid rows (padded with zeros).
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
    positive = positive_mask(row_ids, col_ids, row_labels, col_labels, col_valid)
    targets = positive.astype(jnp.float32)
    if mining:
        mined = _dense_mined_mask(config, text_rows, text_cols, image_rows, image_cols, row_offset,
                                  step, col_valid)
        mined = jnp.logical_and(mined, jnp.logical_not(positive))
        targets = targets + config.weight * mining_scale * mined.astype(jnp.float32)
    return targets / jnp.sum(targets, axis=1, keepdims=True)


def _dense_mined_mask(config: MiningConfig, text_rows, text_cols, image_rows, image_cols,
                      row_offset, step, col_valid=None) -> jax.Array:
    """Boolean [n, N]: the guides' mined pairs of rows row_offset .. row_offset+n-1 (label
    positives not removed), row statistics over all N columns."""
    guides = active_guides(config, text_rows, text_cols, image_rows, image_cols)
    num_cols = guides[0].cols.shape[0]
    row_ids = row_offset + jnp.arange(guides[0].rows.shape[0])
    stats = guide_row_stats(config, guides, row_offset, num_cols, col_valid=col_valid)
    return mined_mask(config, guides, [g.cols for g in guides], stats, row_ids,
                       jnp.arange(num_cols), is_active(config, step), col_valid)


def mining_statistics(config: MiningConfig, *, guide_text=None, guide_image=None, labels=None,
                      step=0, max_rows: int = 256, valid=None) -> dict[str, jax.Array]:
    """What the guides mine in this batch, for the training log (no gradient): over the first
    min(N, max_rows) rows against all N columns (row statistics over all N, as in the loss),
    `mined_per_row`, the mean number of mined pairs per row. With labels, also
    `mined_labelled_per_row`, the mined pairs whose two records both carry a label id >= 0, and
    `mined_other_label_per_row`, those of them whose labels differ (a guide that finds only the
    label mines none of these; a rare class mining the next one shows here). Where no record
    carries a label id (a caption corpus: every id -1), both are 0 and say nothing about the
    guide. Counted before label positives are removed from the mined set. valid: bool [N] or
    None; invalid rows (skipped as corrupt) are neither counted nor mined."""
    if not config.enabled:
        return {}
    text = None if guide_text is None else jax.lax.stop_gradient(guide_text)
    image = None if guide_image is None else jax.lax.stop_gradient(guide_image)
    num = (text if text is not None else image).shape[0]
    m = min(num, max_rows)
    mined = _dense_mined_mask(config, None if text is None else text[:m], text,
                              None if image is None else image[:m], image, 0, step,
                              None if valid is None else jnp.asarray(valid, bool))
    rows = jnp.ones((m,), bool) if valid is None else jnp.asarray(valid[:m], bool)

    def per_row(pairs):
        counts = jnp.sum(pairs, axis=1).astype(jnp.float32)
        return jnp.sum(jnp.where(rows, counts, 0.0)) / jnp.maximum(jnp.sum(rows), 1)

    out = {"mined_per_row": per_row(mined)}
    if labels is not None:
        labelled = mined & (labels[:m, None] >= 0) & (labels[None, :] >= 0)
        out["mined_labelled_per_row"] = per_row(labelled)
        out["mined_other_label_per_row"] = per_row(labelled & (labels[:m, None] != labels[None, :]))
    return out
