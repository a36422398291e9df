"""Mined and label-positive targets (`emocap_jax.mining`) against plain NumPy loops: the cap, the
mutual cap, the row-relative threshold and the spread gate, the training log's mining figures,
the agreement gate's pair agreement, and the chunked row statistics on the 8 simulated CPU
devices set up by conftest.py."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from emocap_jax import losses, mining
from tests.mining_reference import (CHUNK, DIM, EDGE_ABOVE, EDGE_JUST_ABOVE, EDGE_JUST_BELOW_IN,
                                    EDGE_JUST_BELOW_OUT, EDGE_ROW, EDGE_TIES, GUIDE_DIM, N,
                                    assert_close, np_label_targets, np_mined_targets, random_batch,
                                    random_labels, threshold_edge_guides, unit)

SCALE = 10.0


@pytest.fixture(scope="module")
def batch():
    return random_batch()


@pytest.fixture(scope="module")
def labels():
    return random_labels()


def _assert_targets_and_row_block(cfg, batch, expected):
    """mined_positive_targets over the whole batch equals `expected`, and a row block with its
    offset equals the matching slice (what one device builds)."""
    targets = jax.jit(mining.mined_positive_targets, static_argnums=0, static_argnames="row_offset")
    full = targets(cfg, text_rows=batch["guide"], text_cols=batch["guide"],
                   image_rows=batch["image"], image_cols=batch["image"])
    assert_close(full, expected)
    block = targets(cfg, text_rows=batch["guide"][8:12], text_cols=batch["guide"],
                    image_rows=batch["image"][8:12], image_cols=batch["image"], row_offset=8)
    assert_close(block, expected[8:12])


@pytest.mark.parametrize("mode,top_k", [("text", 0), ("image", 0), ("both", 0), ("text", 3), ("both", 4)])
def test_mined_targets_match_numpy_reference(batch, mode, top_k):
    cfg = mining.MiningConfig(mode=mode, threshold=0.2, top_k=top_k, weight=0.5, image_threshold=0.1)
    expected = np_mined_targets(batch["guide"], batch["image"], mode, 0.2, top_k, 0.5, 0.1)
    assert (expected > 0).sum() > N + 8, "the threshold should mine a fair number of pairs"
    _assert_targets_and_row_block(cfg, batch, expected)
    if top_k:
        assert ((expected > 0).sum(axis=1) <= top_k + 1).all()


@pytest.mark.parametrize("mode,top_k", [("text", 3), ("both", 4)])
def test_mutual_cap_matches_numpy_reference(batch, mode, top_k):
    """Mutual cap: a pair is mined only when each is within the other's top k, so the mined
    pairs are symmetric and a subset of the one-sided cap's."""
    cfg = mining.MiningConfig(mode=mode, threshold=-1.0, top_k=top_k, weight=0.5, mutual=True)
    one_sided = np_mined_targets(batch["guide"], batch["image"], mode, -1.0, top_k, 0.5) > 0
    expected = np_mined_targets(batch["guide"], batch["image"], mode, -1.0, top_k, 0.5,
                                 mutual=True)
    mined = expected > 0
    assert (mined == mined.T).all() and not (mined & ~one_sided).any()
    assert N < mined.sum() < one_sided.sum(), "mutuality should drop some pairs but not all"
    _assert_targets_and_row_block(cfg, batch, expected)


def test_mutual_cap_keeps_a_rare_class_from_mining_the_next_one():
    """Summaries made from labels, one sentence per class: 5 faces of class A, 1 of class B, whose
    summary is close to A's (cosine 0.9), and 26 of three other classes (cosine 0.6 between
    classes). With a cap of 4 and the row-relative threshold B's row mines four A faces; with the
    mutual cap it mines none, since every A face's four places hold its classmates, and the A
    faces still mine each other."""
    e = np.eye(GUIDE_DIM)
    common = np.sqrt(0.6) * e[0]
    classes = {c: common + np.sqrt(0.4) * e[c] for c in (1, 2, 3, 4)}  # A is class 1
    b = common + np.sqrt(0.4) * (0.75 * e[1] + np.sqrt(1 - 0.75 ** 2) * e[5])
    guide = np.array([classes[1]] * 5 + [b] + [classes[2]] * 9 + [classes[3]] * 9
                     + [classes[4]] * 8, np.float32)
    assert guide.shape[0] == N
    assert_close(guide[5] @ guide[0], 0.9, atol=1e-6)
    capped = mining.MiningConfig(mode="text", threshold=-1.0, top_k=4, relative_threshold=1.5)
    mutual = dataclasses.replace(capped, mutual=True)
    counts = {}
    for name, cfg in (("capped", capped), ("mutual", mutual)):
        targets = np.asarray(mining.mined_positive_targets(cfg, text_rows=guide, text_cols=guide))
        counts[name] = ((targets[5] > 0).sum() - 1, (targets[:5, :5] > 0).sum(axis=1),
                        (targets[6:15, 6:15] > 0).sum(axis=1) - 1)
    assert counts["capped"][0] == 4 and counts["mutual"][0] == 0
    assert (counts["mutual"][1] == 5).all()  # the pair itself + its four classmates
    # Class 2's nine faces are tied: each one's cap holds its four lowest classmates, not every
    # classmate's cap holds it, yet the tie at their k-th value lets each mine all four.
    assert (counts["mutual"][2] == 4).all()


@pytest.mark.parametrize("mode,top_k,max_rows", [("text", 0, 256), ("both", 3, 256), ("text", 3, 10)])
def test_mining_statistics_count_the_mined_pairs(batch, labels, mode, top_k, max_rows):
    """The training log's mining figures against the NumPy reference's mined pairs: per row,
    all of them, those between two labels >= 0 and those across two different labels >= 0,
    over the first max_rows rows."""
    cfg = mining.MiningConfig(mode=mode, threshold=0.2, top_k=top_k, weight=0.5)
    mined = np_mined_targets(batch["guide"], batch["image"], mode, 0.2, top_k, 0.5) > 0
    np.fill_diagonal(mined, False)
    m = min(N, max_rows)
    known = (labels >= 0)[:, None] & (labels >= 0)[None, :]
    other = known & (labels[:, None] != labels[None, :])
    stats = jax.jit(lambda t, i, lab: mining.mining_statistics(
        cfg, guide_text=t, guide_image=i, labels=lab, max_rows=max_rows))(
            batch["guide"], batch["image"], labels)
    assert_close(stats["mined_per_row"], mined[:m].sum(axis=1).mean())
    assert_close(stats["mined_labelled_per_row"], (mined & known)[:m].sum(axis=1).mean())
    assert_close(stats["mined_other_label_per_row"], (mined & other)[:m].sum(axis=1).mean())
    assert (0 < float(stats["mined_other_label_per_row"]) < float(stats["mined_labelled_per_row"])
            < float(stats["mined_per_row"]))
    assert "mined_other_label_per_row" not in mining.mining_statistics(
        cfg, guide_text=batch["guide"], guide_image=batch["image"])
    assert mining.mining_statistics(mining.MiningConfig(mode="off")) == {}


def test_mutual_without_a_cap_is_refused():
    with pytest.raises(ValueError, match="top_k"):
        mining.MiningConfig(mode="text", mutual=True)


def test_pair_agreement_counts_rows_whose_own_pair_is_nearest():
    rng = np.random.default_rng(7)
    image = unit(rng.normal(size=(12, DIM)))
    text = image.copy()
    text[:3] = unit(rng.normal(size=(3, DIM)))  # three pairs that no longer match
    sim = image @ text.T
    expected = 0.5 * (np.mean(sim.argmax(1) == np.arange(12)) + np.mean(sim.argmax(0) == np.arange(12)))
    assert 0.5 < expected < 1.0
    assert_close(mining.pair_agreement(image, text), expected)
    assert_close(mining.pair_agreement(image, image), 1.0)
    # Only the first max_rows pairs count (a fixed-size block however large the batch).
    assert_close(mining.pair_agreement(image, text, max_rows=3),
                  0.5 * (np.mean(sim[:3, :3].argmax(1) == np.arange(3))
                         + np.mean(sim[:3, :3].argmax(0) == np.arange(3))))
    grad = jax.grad(lambda a: mining.pair_agreement(a, text) * jnp.sum(a))(image)
    assert_close(grad, np.full_like(image, float(mining.pair_agreement(image, text))))


def test_label_positive_targets_match_numpy_reference(labels):
    targets = jax.jit(lambda lab: mining.mined_positive_targets(
        None, row_labels=lab, col_labels=lab))(labels)
    expected = np_label_targets(labels)
    assert_close(targets, expected)
    assert expected[0, 0] == 1.0 and expected[1].max() < 1.0  # -1 alone; labelled rows spread


def _mined_counts(cfg, guide):
    """Mined positives of each row (the nonzero targets besides the pair itself)."""
    targets = np.asarray(mining.mined_positive_targets(cfg, text_rows=guide, text_cols=guide))
    return (targets > 0).sum(axis=1) - 1


def test_identical_guides_never_merge_the_batch():
    """Random init in the extreme: every guide embedding the same. A fixed threshold alone marks
    every pair; the cap bounds each row at top_k, and the spread gate mines nothing at all."""
    guide = np.tile(unit(np.ones((1, GUIDE_DIM))), (N, 1))
    fixed = mining.MiningConfig(mode="text", threshold=0.9)
    assert (_mined_counts(fixed, guide) == N - 1).all()  # the collapse
    capped = mining.MiningConfig(mode="text", threshold=0.9, top_k=4, relative_threshold=0.0)
    assert (_mined_counts(capped, guide) <= 4).all()
    gated = mining.MiningConfig(mode="text", threshold=0.9, top_k=4, min_spread=1e-3)
    assert (_mined_counts(gated, guide) == 0).all()


def test_relative_threshold_keeps_the_outliers_of_each_row(batch):
    """z-score mining against a NumPy loop: a pair is mined when it passes the absolute threshold
    and stands z standard deviations above its row's off-diagonal mean."""
    cfg = mining.MiningConfig(mode="text", threshold=-1.0, relative_threshold=1.5, weight=1.0)
    guide = batch["guide"]
    targets = np.asarray(jax.jit(lambda g: mining.mined_positive_targets(
        cfg, text_rows=g, text_cols=g))(guide))
    expected = _np_relative_mask(guide, 1.5)
    for i in range(N):
        assert {j for j in range(N) if j != i and targets[i, j] > 0} == set(np.flatnonzero(expected[i]))
        assert expected[i].sum() < N // 4


def _np_relative_mask(guide, z):
    """[N, N]: sim_ij >= mean_i + z * std_i over row i's off-diagonal similarities, where std_i
    >= 1e-6 (below it a row's similarities are all equal up to float32 rounding: no z-score)."""
    g = unit(guide.astype(np.float64)).astype(np.float64)
    sim = g @ g.T
    mask = np.zeros((N, N), bool)
    for i in range(N):
        others = np.delete(sim[i], i)
        if others.std() >= 1e-6:
            mask[i] = sim[i] >= others.mean() + z * others.std()
        mask[i, i] = False
    return mask


@pytest.mark.parametrize("c,z", [(0.9, 0.0), (0.6, 1.5)])
def test_relative_threshold_needs_a_spread_in_every_form(mesh, c, z):
    """A hub guide e0 and 31 guides c e0 + sqrt(1 - c^2) e_m: the hub's row is c everywhere (no
    spread), each other row has the hub standing out. The hub's row used to mine all 31 or none
    by the last bit of its mean: with c = 0.9, z = 0 all in the whole-batch and sharded forms and
    none in the chunked one; with c = 0.6, z = 1.5, none against 30. Now it mines nothing in
    every form, and every other row mines the hub."""
    guide = np.zeros((N, N))
    guide[0, 0] = 1.0
    guide[1:, 0] = c
    guide[np.arange(1, N), np.arange(1, N)] = np.sqrt(1.0 - c * c)
    guide = guide.astype(np.float32)
    expected = _np_relative_mask(guide, z)
    assert not expected[0].any() and expected[1:, 0].all()
    cfg = mining.MiningConfig(mode="text", threshold=-1.0, relative_threshold=z)
    for form in ("whole", "sharded", "chunked"):
        assert (_form_mined_mask(cfg, guide, form, mesh) == expected).all(), form


def test_chunked_row_statistics_equal_full_ones(mesh, batch):
    """The chunked pass's mean / std (Chan's merge over chunks) and its cap (k-th value, top-k columns)
    against float64 NumPy, also when every similarity is near one value, where a sum-of-squares
    variance in float32 would lose most of its digits; and its loss equals the single form's."""

    rng = np.random.default_rng(5)
    near = unit(np.ones((N, GUIDE_DIM)) + 3e-2 * rng.normal(size=(N, GUIDE_DIM)))
    k = 3

    def stats(rows, cols):
        st = mining._row_stats_chunked(mining.Guide(rows, cols, -1.0),
                                       jax.lax.axis_index("data") * rows.shape[0], k, True, CHUNK,
                                       "data")
        return st.mean, st.std, st.kth_value, st.topk_cols

    chunked_stats = jax.jit(jax.shard_map(stats, mesh=mesh, in_specs=(P("data"), P()),
                                          out_specs=P("data")))
    for guide in (batch["guide"], near):
        g = unit(guide.astype(np.float64))
        sim = g @ g.T
        off = [np.delete(sim[i], i) for i in range(N)]
        mean, std, kth, topk_cols = (np.asarray(a) for a in chunked_stats(guide, guide))
        assert_close(mean, [o.mean() for o in off], rtol=1e-6, atol=1e-6)
        assert_close(std, [o.std() for o in off], rtol=1e-3, atol=0)
        assert_close(kth, [np.sort(o)[-k] for o in off], rtol=1e-6, atol=1e-6)
        expected_cols = [np.argsort(-np.where(np.arange(N) == i, -np.inf, sim[i]),
                                    kind="stable")[:k].tolist() for i in range(N)]
        assert topk_cols.tolist() == expected_cols
    cfg = mining.MiningConfig(mode="text", threshold=-1.0, relative_threshold=1.0, top_k=k)
    single = jax.jit(lambda a, b, g: losses.contrastive_loss(
        a, b, SCALE, impl="single", mining=cfg, guide_text=g))(batch["image"], batch["text"],
                                                               batch["guide"])
    chunked = jax.jit(lambda a, b, g: losses.contrastive_loss(
        a, b, SCALE, mesh=mesh, impl="chunked", chunk_size=CHUNK, mining=cfg, guide_text=g))(
            batch["image"], batch["text"], batch["guide"])
    assert_close(chunked, single)


def test_chunks_of_one_column_keep_the_row_statistics(mesh, batch):
    """chunk_size=1 divides every batch: each row then meets a chunk holding only its own
    diagonal, whose empty mean (0 / 0) made the row's mean and std NaN, so the spread gate and the
    relative threshold silently mined nothing. The chunked loss equals the single form's."""
    for cfg in (mining.MiningConfig(mode="text", threshold=0.2, top_k=3, min_spread=0.01),
                mining.MiningConfig(mode="text", threshold=0.2, relative_threshold=0.5)):
        loss = lambda impl, cfg=cfg: float(jax.jit(lambda a, b, g: losses.contrastive_loss(  # noqa: E731
            a, b, SCALE, mesh=mesh, impl=impl, chunk_size=1, mining=cfg, guide_text=g))(
                batch["image"], batch["text"], batch["guide"]))
        plain = float(jax.jit(losses.global_contrastive_loss)(batch["image"], batch["text"], SCALE))
        assert abs(loss("single") - plain) > 1e-3, "the config should mine"
        assert_close(loss("chunked"), loss("single"))


def _form_mined_mask(cfg, guide, form, mesh):
    """[N, N] mined pairs (label positives not removed) of one form of the loss, built from the
    calls `emocap_jax.losses` makes: "whole" (one device, all rows), "sharded" (N / 8 rows per
    device against the gathered columns) or "chunked" (the same, the columns CHUNK at a time in a
    checkpointed scan, row statistics from the chunked pass)."""
    num = guide.shape[0]
    if form == "whole":
        return np.asarray(jax.jit(lambda g: mining._dense_mined_mask(cfg, g, g, None, None, 0, 0))(
            guide))
    chunk_size = CHUNK if form == "chunked" else None

    def per_device(rows):
        n = rows.shape[0]
        offset = jax.lax.axis_index("data") * n
        cols = jax.lax.all_gather(rows, "data", tiled=True)
        guides = mining.active_guides(cfg, rows, cols, None, None)
        stats = mining.guide_row_stats(cfg, guides, offset, num, chunk_size, "data")
        row_ids, active = offset + jnp.arange(n), mining.is_active(cfg, 0)
        if chunk_size is None:
            return mining.mined_mask(cfg, guides, [cols], stats, row_ids, jnp.arange(num), active)

        @jax.checkpoint
        def body(_, chunk):
            col_chunk, col_offset = chunk
            return None, mining.mined_mask(cfg, guides, [col_chunk], stats, row_ids,
                                           col_offset + jnp.arange(chunk_size), active)

        _, masks = jax.lax.scan(body, None, (cols.reshape(num // chunk_size, chunk_size, -1),
                                             jnp.arange(num // chunk_size) * chunk_size))
        return jnp.transpose(masks, (1, 0, 2)).reshape(n, num)

    return np.asarray(jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P("data"),
                                            out_specs=P("data")))(guide))


def _reference_mask(guide, **kwargs):
    mined = np_mined_targets(guide, None, "text", -1.0, 3, 1.0, **kwargs) > 0
    np.fill_diagonal(mined, False)
    return mined


def test_cap_membership_comes_from_the_selected_columns():
    """The cap's members are the columns the row statistics' top-k pass selected. It used to test
    `sim == k-th value` on the similarity recomputed in `mined_mask`, which only holds when the two
    products round alike: with the statistics from the whole-batch product and the mask over
    column chunks of 8 (the same math, another matrix shape), 22 of 64 rows got k - 1 positives;
    XLA on GPU / TPU may fuse or tile the two products differently in any form. Nudging every
    guide value by one ulp in the mask's product must not move a pair in or out either."""
    rng = np.random.default_rng(0)
    num, k, chunk = 64, 4, 8
    guide = rng.normal(size=(num, 64)).astype(np.float32)
    cfg = mining.MiningConfig(mode="text", threshold=-1.0, top_k=k)
    guides = mining.active_guides(cfg, guide, guide, None, None)
    stats = mining.guide_row_stats(cfg, guides, 0, num)
    rows = jnp.arange(num)
    whole = np.asarray(mining.mined_mask(cfg, guides, [guide], stats, rows, jnp.arange(num), True))
    selected = np.zeros((num, num), bool)
    np.put_along_axis(selected, np.asarray(stats[0].topk_cols), True, axis=1)
    assert (whole == selected).all() and (whole.sum(axis=1) == k).all()
    for cols in (guide, np.nextafter(guide, np.inf)):
        chunked = np.concatenate([np.asarray(mining.mined_mask(
            cfg, guides, [cols[o:o + chunk]], stats, rows, o + jnp.arange(chunk), True))
            for o in range(0, num, chunk)], axis=1)
        assert (chunked == whole).all()


def test_cap_membership_stores_no_n_by_c_by_k_comparison():
    """The cap's membership ([n, c] from the [n, k] selected columns) must not cost memory that
    grows with k: comparing every column with every selected one built an [n, c, k] array, which
    XLA on CPU stored once k reached 64 (256 MiB at N=2048, k=64; 512 MiB at k=128, above the
    [N, N] logits themselves). Compiled only, nothing runs: the program's scratch memory with a
    cap of 128 stays within that of a cap of 8 plus two [n, c] boolean masks (room for the
    [n, k] top-k values and columns, which do grow with k; the comparison was 128 such masks)."""
    num, dim = 1024, 16
    guide = jax.ShapeDtypeStruct((num, dim), jnp.float32)

    def temp_bytes(k):
        cfg = mining.MiningConfig(mode="text", threshold=-1.0, top_k=k, mutual=False)
        fn = jax.jit(lambda g: mining.mined_positive_targets(cfg, text_rows=g, text_cols=g))
        return fn.lower(guide).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(128) <= temp_bytes(8) + 2 * num * num, (temp_bytes(8), temp_bytes(128))


@pytest.mark.parametrize("mutual", [False, True])
def test_caps_at_the_precise_threshold_in_every_form(mesh, mutual):
    """Similarities exactly at a row's k-th value and just either side of it
    (`threshold_edge_guides`), one-sided and mutual cap, against the NumPy reference in every
    form: the whole batch, a row block (whose mutual cap rescores the columns' rows itself),
    sharded over 8 devices and chunked. One-sided, row EDGE_ROW mines the columns above its k-th
    value and, of the three tied at it (in three chunks, on three devices), the lowest only.
    Mutual, a pair (i, EDGE_ROW) passes at exactly EDGE_ROW's k-th value and 2e-6 below it (the
    documented 1e-5 slack between two products), not 1e-4 below."""
    cfg = mining.MiningConfig(mode="text", threshold=-1.0, top_k=3, mutual=mutual)
    guide = threshold_edge_guides()
    expected = _reference_mask(guide, mutual=mutual)
    capped = {EDGE_ABOVE, EDGE_JUST_ABOVE, EDGE_TIES[0]}
    assert set(np.flatnonzero(expected[EDGE_ROW])) == capped
    into_edge_row = {i for i in range(N) if expected[i, EDGE_ROW]}
    if mutual:
        assert into_edge_row == capped | set(EDGE_TIES) | {EDGE_JUST_BELOW_IN}
        assert EDGE_JUST_BELOW_OUT not in into_edge_row
    else:
        assert len(into_edge_row) == N - 1  # every other record has EDGE_ROW first
    for form in ("whole", "sharded", "chunked"):
        assert (_form_mined_mask(cfg, guide, form, mesh) == expected).all(), form
    block = np.asarray(mining.mined_positive_targets(
        cfg, text_rows=guide[8:12], text_cols=guide, row_offset=8)) > 0
    block[np.arange(4), np.arange(8, 12)] = False
    assert (block == expected[8:12]).all()


@pytest.mark.parametrize("mutual", [False, True])
def test_forms_mine_the_same_pairs_with_tied_guides(mesh, mutual):
    """Guides made from labels (one sentence per class, so every similarity within a class and
    between two classes is an exact tie): the whole-batch, sharded and chunked forms mine exactly
    the reference's pairs, ties broken towards the lower column."""
    rng = np.random.default_rng(12)
    guide = unit(rng.normal(size=(5, GUIDE_DIM)))[rng.integers(0, 5, size=N)]
    cfg = mining.MiningConfig(mode="text", threshold=-1.0, top_k=3, mutual=mutual)
    expected = _reference_mask(guide, mutual=mutual)
    assert 0 < expected.sum() <= 3 * N
    for form in ("whole", "sharded", "chunked"):
        assert (_form_mined_mask(cfg, guide, form, mesh) == expected).all(), form


def test_the_sharded_mutual_cap_compiles_to_a_partial_top_k_not_a_full_sort(mesh):
    """The mutual cap reads each row's k-th value. Taken as values[:, -1], XLA folded it into a
    slice of the whole sort, and the top-k stayed a full sort of the [n, N] similarities instead
    of the partial TopK call: the sharded loss with the default config's mutual cap took 7x
    longer on CPU (bench/loss_memory.py --time; PERFORMANCE.md). A check of the compiled program,
    not of its time."""
    config = mining.MiningConfig(mode="text", threshold=0.5, top_k=4, mutual=True)
    emb = jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=NamedSharding(mesh, P("data")))

    def loss(image, text, logit_scale, guide):
        return losses.contrastive_loss(image, text, logit_scale, mesh=mesh, impl="sharded",
                                       mining=config, guide_text=guide)

    program = jax.jit(loss).lower(emb, emb, jax.ShapeDtypeStruct((), jnp.float32),
                                  emb).compile().as_text()
    assert not re.search(r" sort\(", program), "the mining top-k is a full sort"
