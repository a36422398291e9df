"""Losses against independent references: open_clip's ClipLoss fixture, NumPy loops for mined
targets and the local loss, and sharded / chunked forms against the single-device form on the
8 simulated CPU devices set up by conftest.py (value and gradient)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from emocap_jax import losses
from emocap_jax.mining import (MiningConfig, mined_positive_targets, mining_statistics,
                               pair_agreement)
from tests.mining_reference import (CHUNK, DIM, EDGE_ROW, EDGE_TIES, GUIDE_DIM, N, assert_close,
                                    np_label_targets, np_mined_targets, random_batch,
                                    random_labels, threshold_edge_guides, unit)

SCALE = 10.0


@pytest.fixture(scope="module")
def batch():
    return random_batch()


# ------------------------------------------------------------------------------------------------
# NumPy references, written as plainly as possible
# ------------------------------------------------------------------------------------------------


def _np_global_loss(image, text, scale, targets):
    logits = scale * image.astype(np.float64) @ text.astype(np.float64).T
    total = 0.0
    for mat in (logits, logits.T):
        for i in range(mat.shape[0]):
            row = mat[i]
            log_softmax = row - (row.max() + np.log(np.exp(row - row.max()).sum()))
            total -= (targets[i] * log_softmax).sum()
    return total / (2 * logits.shape[0])


def _np_local_loss(patches, sentences, mask, scale, tau, within_image_weight=0.0):
    patches, sentences = patches.astype(np.float64), sentences.astype(np.float64)
    batch, num_slots = mask.shape
    valid = [(i, r) for i in range(batch) for r in range(num_slots) if mask[i, r]]
    score = {}
    for (i, r) in valid:
        u = sentences[i, r]
        for j in range(batch):
            a = patches[j] @ u / tau
            w = np.exp(a - a.max())
            w /= w.sum()
            v = w @ patches[j]
            score[j, (i, r)] = scale * float(v @ u) / np.linalg.norm(v)
    sentence_terms = []
    for (i, r) in valid:
        col = np.array([score[j, (i, r)] for j in range(batch)])
        sentence_terms.append(np.log(np.exp(col).sum()) - col[i])
    image_terms = []
    for j in range(batch):
        own = [(i, r) for (i, r) in valid if i == j]
        if not own:
            continue
        row = np.array([score[j, s] for s in valid])
        lse = np.log(np.exp(row).sum())
        image_terms.append(np.mean([lse - score[j, s] for s in own]))
    mean = lambda xs: float(np.mean(xs)) if xs else 0.0
    loss = 0.5 * (mean(sentence_terms) + mean(image_terms))
    # Within-image term: image i's own sentences told apart by v_i(u_r), both directions.
    within = []
    for i in range(batch):
        own = [r for r in range(num_slots) if mask[i, r]]
        if len(own) < 2:
            continue
        pooled = {}
        for r in own:
            a = patches[i] @ sentences[i, r] / tau
            w = np.exp(a - a.max())
            v = (w / w.sum()) @ patches[i]
            pooled[r] = v / np.linalg.norm(v)
        w_ = {(r, q): scale * float(pooled[r] @ sentences[i, q]) for r in own for q in own}
        for r in own:
            row = np.array([w_[r, q] for q in own])
            col = np.array([w_[q, r] for q in own])
            within.append(0.5 * (np.log(np.exp(row).sum()) + np.log(np.exp(col).sum())) - w_[r, r])
    return loss + within_image_weight * mean(within)


# ------------------------------------------------------------------------------------------------
# Global loss
# ------------------------------------------------------------------------------------------------


def test_matches_open_clip_clip_loss_fixture(fixtures_dir):
    ref = np.load(fixtures_dir / "clip_loss" / "clip_loss.npz")
    image, text, scale = ref["image_features"], ref["text_features"], ref["logit_scale"]
    # The fixture's convention, which global_contrastive_loss documents: unit-norm features and
    # an already-exponentiated scale (1 / 0.07), gradients w.r.t. the normalised features.
    assert_close(np.linalg.norm(image, axis=1), 1.0, atol=1e-6)
    assert_close(scale, 1 / 0.07)
    value, (g_image, g_text) = jax.jit(jax.value_and_grad(losses.global_contrastive_loss, (0, 1)))(
        image, text, scale)
    assert_close(value, ref["loss"])
    assert_close(g_image, ref["grad_image"])
    assert_close(g_text, ref["grad_text"])


def test_soft_target_loss_matches_numpy_reference(batch):
    targets = np_mined_targets(batch["guide"], None, "text", 0.2, 0, 0.7)
    value = jax.jit(losses.global_contrastive_loss)(batch["image"], batch["text"], SCALE,
                                                    targets.astype(np.float32))
    assert_close(value, _np_global_loss(batch["image"], batch["text"], SCALE, targets))


def _value_and_grads(loss_fn):
    return jax.jit(jax.value_and_grad(loss_fn, (0, 1, 2)))


# Mode "text" is covered by the summary-term test below; top-k logic does not depend on the guide.
@pytest.mark.parametrize("mode,top_k,mutual", [("off", 0, False), ("both", 0, False),
                                                ("image", 3, False), ("both", 3, True)])
def test_sharded_and_chunked_equal_single_device(mesh, batch, mode, top_k, mutual):
    cfg = MiningConfig(mode=mode, threshold=0.2, top_k=top_k, weight=0.5, mutual=mutual)
    results = {}
    for impl in ("single", "sharded", "chunked"):
        fn = _value_and_grads(lambda a, b, s: losses.contrastive_loss(
            a, b, s, mesh=mesh, impl=impl, chunk_size=CHUNK, mining=cfg, guide_text=batch["guide"], step=1))
        results[impl] = fn(batch["image"], batch["text"], jnp.float32(SCALE))
    plain = jax.jit(losses.global_contrastive_loss)(batch["image"], batch["text"], SCALE)
    if mode != "off":
        assert abs(float(results["single"][0]) - float(plain)) > 1e-3, "mining should change the loss"
    for impl in ("sharded", "chunked"):
        value, grads = results[impl]
        assert_close(value, results["single"][0])
        for g, g_ref in zip(grads, results["single"][1]):
            assert_close(g, g_ref)


def test_summary_term_guided_by_its_own_embeddings(mesh, batch):
    """The summary term mines with the summary embeddings that are also its text side: the guide
    must be stop-gradient, so gradients equal those with constant targets."""
    cfg = MiningConfig(mode="text", threshold=0.15, weight=1.0)
    image, summary = batch["image"], batch["text"]
    targets = np_mined_targets(summary, None, "text", 0.15, 0, 1.0).astype(np.float32)
    ref_value, ref_grads = _value_and_grads(
        lambda a, b, s: losses.global_contrastive_loss(a, b, s, targets))(image, summary, jnp.float32(SCALE))
    assert_close(ref_value, _np_global_loss(image, summary, SCALE, targets))
    for impl in ("single", "sharded", "chunked"):
        value, grads = _value_and_grads(lambda a, b, s: losses.contrastive_loss(
            a, b, s, mesh=mesh, impl=impl, chunk_size=CHUNK, mining=cfg, guide_text=b))(
                image, summary, jnp.float32(SCALE))
        assert_close(value, ref_value)
        for g, g_ref in zip(grads, ref_grads):
            assert_close(g, g_ref)


def test_mining_that_cannot_fire_equals_plain_infonce(mesh, batch):
    plain = float(jax.jit(losses.global_contrastive_loss)(batch["image"], batch["text"], SCALE))
    warm = MiningConfig(mode="text", threshold=0.2, warmup_steps=100)
    configs = [MiningConfig(mode="off"), MiningConfig(mode="both", threshold=2.0), warm]
    for impl in ("single", "chunked"):
        fn = jax.jit(lambda a, b, step, cfg, impl=impl: losses.contrastive_loss(
            a, b, SCALE, mesh=mesh, impl=impl, chunk_size=CHUNK, mining=cfg, guide_text=batch["guide"],
            step=step), static_argnums=3)
        for cfg in configs:
            assert_close(fn(batch["image"], batch["text"], 99, cfg), plain)
        # The step is traced: the same compiled function switches mining on at warmup_steps.
        assert abs(float(fn(batch["image"], batch["text"], 100, warm)) - plain) > 1e-3


def test_mining_scale_multiplies_the_mined_weight_in_every_form(mesh, batch):
    """The agreement gate's factor: mining_scale s with weight w equals weight s * w (dense
    reference), in value and gradient in the single, sharded and chunked forms; s = 0 is plain
    InfoNCE exactly."""
    cfg = MiningConfig(mode="text", threshold=0.2, weight=0.8, agreement_gate=True)
    targets = np_mined_targets(batch["guide"], None, "text", 0.2, 0, 0.8 * 0.3).astype(np.float32)
    ref_value, ref_grads = _value_and_grads(
        lambda a, b, s: losses.global_contrastive_loss(a, b, s, targets))(
            batch["image"], batch["text"], jnp.float32(SCALE))
    plain = float(jax.jit(losses.global_contrastive_loss)(batch["image"], batch["text"], SCALE))
    for impl in ("single", "sharded", "chunked"):
        fn = jax.jit(jax.value_and_grad(lambda a, b, s, scale, impl=impl: losses.contrastive_loss(
            a, b, s, mesh=mesh, impl=impl, chunk_size=CHUNK, mining=cfg, guide_text=batch["guide"],
            mining_scale=scale), (0, 1, 2)))
        value, grads = fn(batch["image"], batch["text"], jnp.float32(SCALE), jnp.float32(0.3))
        assert_close(value, ref_value)
        for g, g_ref in zip(grads, ref_grads):
            assert_close(g, g_ref)
        assert_close(fn(batch["image"], batch["text"], jnp.float32(SCALE), jnp.float32(0.0))[0],
                      plain)


def test_chunk_size_must_divide_global_batch(mesh, batch):
    with pytest.raises(ValueError, match=r"chunk_size=12 .*N=32"):
        losses.contrastive_loss(batch["image"], batch["text"], SCALE, mesh=mesh, impl="chunked",
                                chunk_size=12)
    with pytest.raises(ValueError, match=r"global batch 12 .*8 devices"):
        losses.contrastive_loss(batch["image"][:12], batch["text"][:12], SCALE, mesh=mesh, impl="sharded")
    with pytest.raises(ValueError, match="guide_text"):
        losses.contrastive_loss(batch["image"], batch["text"], SCALE, mesh=mesh, impl="sharded",
                                mining=MiningConfig(mode="text"))


def test_no_global_batch_squared_arrays_per_device(mesh):
    """Per device, the sharded form holds [n, N] logits and mined targets, the chunked form only
    [n, c]; neither builds [N, N]. Checked on the compiled per-device program (N=64, n=8, c=8)."""
    big_n = 64
    image = jax.ShapeDtypeStruct((big_n, DIM), jnp.float32)
    guide = jax.ShapeDtypeStruct((big_n, GUIDE_DIM), jnp.float32)
    cfg = MiningConfig(mode="both", threshold=0.2, top_k=3)
    shapes = {}
    for impl in ("sharded", "chunked"):
        fn = jax.value_and_grad(lambda a, b, g, impl=impl: losses.contrastive_loss(
            a, b, SCALE, mesh=mesh, impl=impl, chunk_size=8, mining=cfg, guide_text=g), (0, 1))
        hlo = jax.jit(fn).lower(image, image, guide).compile().as_text()
        shapes[impl] = set(re.findall(r"\[(\d+),(\d+)\]", hlo))
    assert ("8", "64") in shapes["sharded"]
    assert ("64", "64") not in shapes["sharded"]
    # In the chunked form the only arrays with a global-batch dimension are the gathered embeddings.
    with_global_dim = {s for s in shapes["chunked"] if "64" in s}
    assert with_global_dim <= {("64", str(DIM)), ("64", str(GUIDE_DIM))}, with_global_dim


# ------------------------------------------------------------------------------------------------
# Local loss
# ------------------------------------------------------------------------------------------------

LOCAL_B, SLOTS, PATCHES, TAU = 16, 3, 5, 0.5


@pytest.fixture(scope="module")
def local_batch():
    rng = np.random.default_rng(1)
    patches = rng.normal(size=(LOCAL_B, PATCHES, DIM)).astype(np.float32)
    sentences = unit(rng.normal(size=(LOCAL_B, SLOTS, DIM)))
    mask = rng.random((LOCAL_B, SLOTS)) < 0.6
    mask[0] = False  # an image without any valid sentence
    mask[1] = True
    return patches, sentences, mask


def test_local_loss_matches_numpy_reference(local_batch):
    patches, sentences, mask = local_batch
    value = jax.jit(losses.local_region_sentence_loss)(patches, sentences, mask, SCALE, TAU)
    assert_close(value, _np_local_loss(patches, sentences, mask, SCALE, TAU))


def test_local_loss_gradient_matches_finite_differences(local_batch):
    patches, sentences, mask = local_batch
    rng = np.random.default_rng(2)
    grads = jax.jit(jax.grad(losses.local_region_sentence_loss, (0, 1, 3, 4)))(
        patches, sentences, mask, SCALE, TAU)
    directions = [rng.normal(size=patches.shape), rng.normal(size=sentences.shape), 1.0, 1.0]
    eps = 1e-4
    for arg, (grad, direction) in enumerate(zip(grads, directions)):
        args = [patches, sentences, SCALE, TAU]
        plus, minus = list(args), list(args)
        plus[arg] = args[arg] + eps * direction
        minus[arg] = args[arg] - eps * direction
        numeric = (_np_local_loss(plus[0], plus[1], mask, plus[2], plus[3])
                   - _np_local_loss(minus[0], minus[1], mask, minus[2], minus[3])) / (2 * eps)
        analytic = float(np.sum(np.asarray(grad) * direction))
        np.testing.assert_allclose(analytic, numeric, rtol=1e-3, atol=1e-5)


def test_within_image_term_matches_numpy_reference(local_batch):
    """The within-image term (each image's own sentences told apart by what it pools for each)
    in value, and in gradient against finite differences of the plain-loop reference."""
    patches, sentences, mask = local_batch
    assert (mask.sum(axis=1) >= 2).any() and (mask.sum(axis=1) == 1).any()  # both kinds counted
    fn = jax.jit(lambda p, s: losses.local_region_sentence_loss(p, s, mask, SCALE, TAU, 0.7))
    assert_close(fn(patches, sentences),
                  _np_local_loss(patches, sentences, mask, SCALE, TAU, within_image_weight=0.7))
    rng = np.random.default_rng(5)
    g_patches, g_sentences = jax.jit(jax.grad(fn, (0, 1)))(patches, sentences)
    eps = 1e-4
    for grad, direction, arg in ((g_patches, rng.normal(size=patches.shape), 0),
                                 (g_sentences, rng.normal(size=sentences.shape), 1)):
        args = [patches, sentences]
        plus, minus = list(args), list(args)
        plus[arg] = args[arg] + eps * direction
        minus[arg] = args[arg] - eps * direction
        numeric = (_np_local_loss(*plus, mask, SCALE, TAU, 0.7)
                   - _np_local_loss(*minus, mask, SCALE, TAU, 0.7)) / (2 * eps)
        np.testing.assert_allclose(float(np.sum(np.asarray(grad) * direction)), numeric,
                                   rtol=1e-3, atol=1e-5)


def test_within_image_term_penalises_one_patch_for_every_sentence():
    """The failure it exists for: when every sentence pools the same patch, the term stays at
    log(R) (nothing tells the sentences apart), and it falls when each sentence pools its own."""
    dim, slots = 4, 3
    sentences = np.eye(dim, dtype=np.float32)[None, :slots]  # three orthogonal sentences
    mask = np.ones((1, slots), bool)
    same = np.tile(np.array([[5.0, 5.0, 5.0, 0.0]], np.float32), (1, slots, 1))
    own = 5.0 * np.eye(dim, dtype=np.float32)[None, :slots]  # patch r matches sentence r only
    within = lambda p: float(losses.local_region_sentence_loss(p, sentences, mask, SCALE, TAU, 1.0)
                             - losses.local_region_sentence_loss(p, sentences, mask, SCALE, TAU))
    assert_close(within(same), np.log(slots), atol=1e-5)
    assert within(own) < 0.01


def test_padded_sentence_slots_do_not_matter(local_batch):
    patches, sentences, mask = local_batch
    rng = np.random.default_rng(3)
    garbage = np.where(mask[..., None], sentences, 1e3 * rng.normal(size=sentences.shape)).astype(np.float32)
    garbage[~mask & (rng.random(mask.shape) < 0.5)] = np.nan
    fn = jax.jit(jax.value_and_grad(losses.local_region_sentence_loss, (0, 1)))
    value, (g_patches, g_sentences) = fn(patches, sentences, mask, SCALE, TAU)
    value_g, (g_patches_g, g_sentences_g) = fn(patches, garbage, mask, SCALE, TAU)
    assert_close(value_g, value)
    assert_close(g_patches_g, g_patches)
    assert_close(g_sentences_g, g_sentences)
    assert np.all(np.asarray(g_sentences_g)[~mask] == 0)


@pytest.mark.parametrize("within", [0.0, 0.7])
def test_sharded_local_loss_is_mean_of_per_device_block_losses(mesh, local_batch, within):
    patches, sentences, mask = local_batch
    block = LOCAL_B // 8

    def blockwise(p, s, scale, tau):
        split = lambda x: x.reshape(8, block, *x.shape[1:])
        per_block = jax.vmap(losses.local_region_sentence_loss, (0, 0, 0, None, None, None))(
            split(p), split(s), split(mask), scale, tau, within)
        return jnp.mean(per_block)

    def sharded(p, s, scale, tau):
        return losses.local_loss(p, s, mask, scale, tau, mesh=mesh, impl="sharded",
                                 within_image_weight=within)

    args = (patches, sentences, jnp.float32(SCALE), jnp.float32(TAU))
    ref_value, ref_grads = jax.jit(jax.value_and_grad(blockwise, (0, 1, 2, 3)))(*args)
    value, grads = jax.jit(jax.value_and_grad(sharded, (0, 1, 2, 3)))(*args)
    assert_close(value, ref_value)
    for g, g_ref in zip(grads, ref_grads):
        assert_close(g, g_ref)
    # Per-device negatives make it a different loss from the global-batch one.
    whole = jax.jit(losses.local_loss)(patches, sentences, mask, SCALE, TAU)
    assert abs(float(whole) - float(value)) > 1e-3


@pytest.mark.parametrize("within", [0.0, 0.7])
def test_a_device_without_local_sentences_does_not_dilute_the_sharded_local_loss(
        mesh, local_batch, within):
    """A device whose faces carry no valid local sentence (a corpus mixing faces with and without
    local captions) has nothing to average; it used to enter the mean over devices as a 0, so the
    loss and its gradient shrank by 1/D for every such device. The mean is over the devices that
    hold a valid sentence, and the within-image part over those holding an image with two, each
    against the plain-loop reference per device; on a device left with one valid sentence per
    image the within-image part has nothing to tell apart."""
    patches, sentences, mask = local_batch
    mask = mask.copy()
    mask[4:6] = False  # device 2: no valid sentence at all
    mask[8:10] = [[True, False, False], [False, True, False]]  # device 4: one per image
    block = LOCAL_B // 8
    blocks = [slice(d * block, (d + 1) * block) for d in range(8)]
    parts = []
    for b in blocks:
        pair = _np_local_loss(patches[b], sentences[b], mask[b], SCALE, TAU)
        parts.append((pair, _np_local_loss(patches[b], sentences[b], mask[b], SCALE, TAU, 1.0) - pair,
                      mask[b].any(), (mask[b].sum(axis=1) >= 2).any()))
    expected = (np.mean([p for p, _, has, _ in parts if has])
                + within * np.mean([w for _, w, _, has_two in parts if has_two]))
    fn = jax.jit(jax.value_and_grad(lambda p, s: losses.local_loss(
        p, s, mask, SCALE, TAU, mesh=mesh, impl="sharded", within_image_weight=within), (0, 1)))
    value, (g_patches, g_sentences) = fn(patches, sentences)
    assert_close(value, expected)
    # The gradient is the per-device losses', each weighted by 1 / (the devices that count).
    count, count_two = sum(p[2] for p in parts), sum(p[3] for p in parts)
    for d, b in enumerate(blocks):
        per_device = jax.grad(lambda p, s, b=b: (
            losses.local_region_sentence_loss(p, s, mask[b], SCALE, TAU) / count
            + within * (losses.local_region_sentence_loss(p, s, mask[b], SCALE, TAU, 1.0)
                        - losses.local_region_sentence_loss(p, s, mask[b], SCALE, TAU)) / count_two),
            (0, 1))(patches[b], sentences[b])
        assert_close(g_patches[b], per_device[0])
        assert_close(g_sentences[b], per_device[1])


def _np_grouped_local_loss(patches, sentences, mask, group, within):
    """The plain-loop local loss of each group of `group` consecutive faces, averaged over the
    groups that have something to average (as the per-device form averages over devices)."""
    pairs, withins = [], []
    for start in range(0, len(mask), group):
        b = slice(start, start + group)
        pair = _np_local_loss(patches[b], sentences[b], mask[b], SCALE, TAU)
        if mask[b].any():
            pairs.append(pair)
        if (mask[b].sum(axis=1) >= 2).any():
            withins.append(_np_local_loss(patches[b], sentences[b], mask[b], SCALE, TAU, 1.0) - pair)
    return np.mean(pairs) + (within * np.mean(withins) if within else 0.0)


@pytest.mark.parametrize("within", [0.0, 0.7])
def test_a_fixed_local_group_size_gives_the_same_loss_on_any_mesh(local_batch, within):
    """With group_size, the local loss's negatives are the same groups of consecutive faces
    whatever the number of devices: on 8, 4, 2 and 1 devices (2 to 16 faces each, 1 to 8 groups
    per device) the value is the plain-loop reference's on those groups and the gradient the
    single-device form's. Without it each device's share is the group, and the value changed
    with the device count (a run resumed on another mesh changed its objective)."""
    patches, sentences, mask = local_batch
    mask = mask.copy()
    mask[4:6] = False  # a group with no valid sentence: it has nothing to average
    group = 2
    expected = _np_grouped_local_loss(patches, sentences, mask, group, within)
    single = jax.jit(jax.value_and_grad(lambda p, s: losses.local_loss(
        p, s, mask, SCALE, TAU, group_size=group, within_image_weight=within), (0, 1)))
    ref_value, ref_grads = single(patches, sentences)
    assert_close(ref_value, expected)
    per_device = {}
    for devices in (8, 4, 2, 1):
        mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
        fn = lambda p, s, mesh=mesh, g=None: losses.local_loss(  # noqa: E731
            p, s, mask, SCALE, TAU, mesh=mesh, impl="sharded", within_image_weight=within,
            group_size=g)
        value, grads = jax.jit(jax.value_and_grad(
            lambda p, s, fn=fn: fn(p, s, g=group), (0, 1)))(patches, sentences)
        assert_close(value, expected)
        for g, g_ref in zip(grads, ref_grads):
            assert_close(g, g_ref)
        per_device[devices] = float(jax.jit(fn)(patches, sentences))
    assert_close(per_device[8], expected)  # 2 faces per device: the same groups
    assert len({round(v, 4) for v in per_device.values()}) == 4, per_device


def test_a_local_group_that_does_not_fit_the_devices_is_refused(mesh, local_batch):
    patches, sentences, mask = local_batch
    with pytest.raises(ValueError, match=r"group_size=4 must be a whole number that divides the "
                                         r"share of each of the 8 devices .* \(2 faces\)"):
        losses.local_loss(patches, sentences, mask, SCALE, TAU, mesh=mesh, impl="sharded",
                          group_size=4)
    with pytest.raises(ValueError, match=r"group_size=3 .* divides the batch \(16 faces\)"):
        losses.local_loss(patches, sentences, mask, SCALE, TAU, group_size=3)


@pytest.mark.parametrize("within", [0.0, 0.7])
def test_invalid_images_leave_each_fixed_local_group_on_any_mesh(local_batch, within):
    """valid and group_size together (records skipped as corrupt in a run with fixed groups):
    each group's loss is that of the group with its invalid images removed, a group left with
    no valid sentence has nothing to average, and the single-device form and the sharded one on
    8, 4, 2 and 1 devices give the plain-loop reference's value, and one gradient."""
    patches, sentences, mask = local_batch
    keep = np.ones(LOCAL_B, bool)
    keep[[2, 5, 6, 7, 12]] = False  # group 3 of 2 (rows 6, 7) has no valid image left
    for group in (2, 4):
        pairs, withins = [], []
        for start in range(0, LOCAL_B, group):
            rows = np.arange(start, start + group)
            rows = rows[keep[rows]]
            m = mask[rows]
            if m.any():
                pairs.append(_np_local_loss(patches[rows], sentences[rows], m, SCALE, TAU))
            if (m.sum(axis=1) >= 2).any():
                withins.append(_np_local_loss(patches[rows], sentences[rows], m, SCALE, TAU, 1.0)
                               - pairs[-1])
        expected = np.mean(pairs) + (within * np.mean(withins) if within else 0.0)
        single = jax.jit(jax.value_and_grad(lambda p, s, g=group: losses.local_loss(
            p, s, mask, SCALE, TAU, group_size=g, within_image_weight=within, valid=keep),
            (0, 1)))
        ref_value, ref_grads = single(patches, sentences)
        assert_close(ref_value, expected)
        for devices in (8, 4, 2, 1):
            if (LOCAL_B // devices) % group:
                continue
            mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
            value, grads = jax.jit(jax.value_and_grad(
                lambda p, s, mesh=mesh, g=group: losses.local_loss(
                    p, s, mask, SCALE, TAU, mesh=mesh, impl="sharded", group_size=g,
                    within_image_weight=within, valid=keep), (0, 1)))(patches, sentences)
            assert_close(value, expected)
            for g, g_ref in zip(grads, ref_grads):
                assert_close(g, g_ref)


# ------------------------------------------------------------------------------------------------
# Label positives and capped mining in every form
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mining", [None, MiningConfig(mode="text", threshold=0.2, top_k=3,
                                                               weight=0.5)])
def test_label_positives_sharded_and_chunked_equal_dense_reference(mesh, batch, mining):
    """Value and gradients of every impl against the plain soft-target loss with NumPy targets."""
    labels = random_labels()
    mined = None
    if mining is not None:
        mined = np_mined_targets(batch["guide"], None, "text", 0.2, 3, 0.5) > 0
        np.fill_diagonal(mined, False)
    targets = np_label_targets(labels, mined, 0.5).astype(np.float32)
    ref_value, ref_grads = _value_and_grads(
        lambda a, b, s: losses.global_contrastive_loss(a, b, s, targets))(
            batch["image"], batch["text"], jnp.float32(SCALE))
    assert_close(ref_value, _np_global_loss(batch["image"], batch["text"], SCALE, targets))
    plain = float(jax.jit(losses.global_contrastive_loss)(batch["image"], batch["text"], SCALE))
    assert abs(float(ref_value) - plain) > 1e-2, "label positives should change the loss"
    for impl in ("single", "sharded", "chunked"):
        value, grads = _value_and_grads(lambda a, b, s, impl=impl: losses.contrastive_loss(
            a, b, s, mesh=mesh, impl=impl, chunk_size=CHUNK, mining=mining,
            guide_text=batch["guide"], labels=labels))(batch["image"], batch["text"], jnp.float32(SCALE))
        assert_close(value, ref_value)
        for g, g_ref in zip(grads, ref_grads):
            assert_close(g, g_ref)


def test_cap_and_gate_hold_in_sharded_and_chunked_forms(mesh, batch):
    """With identical guides and the cap, every impl gives the same loss as the single form's
    capped targets (ties broken alike); with the gate the loss is plain InfoNCE in every impl."""
    guide = np.tile(unit(np.ones((1, GUIDE_DIM))), (N, 1))
    plain = float(jax.jit(losses.global_contrastive_loss)(batch["image"], batch["text"], SCALE))
    for cfg, gated in ((MiningConfig(mode="text", threshold=0.9, top_k=4), False),
                       (MiningConfig(mode="text", threshold=0.9, top_k=4, min_spread=1e-3), True)):
        values = [float(jax.jit(lambda a, b, impl=impl, cfg=cfg: losses.contrastive_loss(
            a, b, SCALE, mesh=mesh, impl=impl, chunk_size=CHUNK, mining=cfg, guide_text=guide))(
                batch["image"], batch["text"])) for impl in ("single", "sharded", "chunked")]
        assert_close(values[1:], [values[0]] * 2)
        if gated:
            assert_close(values[0], plain)
        else:
            targets = np.asarray(mined_positive_targets(cfg, text_rows=guide, text_cols=guide))
            assert ((targets > 0).sum(axis=1) == 5).all()  # the pair + exactly the cap
            assert_close(values[0], _np_global_loss(batch["image"], batch["text"], SCALE, targets))


@pytest.mark.parametrize("mutual", [False, True])
def test_caps_at_the_precise_threshold_give_the_reference_loss_in_every_form(mesh, batch, mutual):
    """Guides whose similarities sit exactly at a row's k-th value and just either side of it
    (`threshold_edge_guides`): every impl's loss equals the plain soft-target loss with the NumPy
    reference's targets, one-sided and mutual, where one pair more (the second of the tied
    columns) would move it by more than the tolerance."""
    guide = threshold_edge_guides()
    cfg = MiningConfig(mode="text", threshold=-1.0, top_k=3, weight=1.0, mutual=mutual)
    targets = np_mined_targets(guide, None, "text", -1.0, 3, 1.0, mutual=mutual)
    expected = _np_global_loss(batch["image"], batch["text"], SCALE, targets)
    one_more = targets.copy()
    one_more[EDGE_ROW] = (targets[EDGE_ROW] > 0) | (np.arange(N) == EDGE_TIES[1])
    one_more[EDGE_ROW] /= one_more[EDGE_ROW].sum()
    assert abs(_np_global_loss(batch["image"], batch["text"], SCALE, one_more) - expected) > 1e-3
    for impl in ("single", "sharded", "chunked"):
        value = jax.jit(lambda a, b, g, impl=impl: losses.contrastive_loss(
            a, b, SCALE, mesh=mesh, impl=impl, chunk_size=CHUNK, mining=cfg, guide_text=g))(
                batch["image"], batch["text"], guide)
        assert_close(value, expected)



@pytest.mark.parametrize("impl", ["single", "sharded"])
def test_a_batch_without_local_sentences_gives_zero_loss_and_gradient(mesh, local_batch, impl):
    """Nothing to average (every slot masked, e.g. a label-only corpus): the local term is 0 with
    a zero, finite gradient, not 0 / 0."""
    patches, sentences, _ = local_batch
    none = np.zeros((LOCAL_B, SLOTS), bool)
    value, grads = jax.jit(jax.value_and_grad(lambda p, s, scale: losses.local_loss(
        p, s, none, scale, TAU, mesh=mesh, impl=impl, within_image_weight=0.5), (0, 1, 2)))(
            patches, sentences, jnp.float32(SCALE))
    assert float(value) == 0.0
    for g in grads:
        assert np.all(np.asarray(g) == 0)


# ------------------------------------------------------------------------------------------------
# Rows marked invalid (records the input pipeline skipped as corrupt)
# ------------------------------------------------------------------------------------------------

# Rows 9 and 10 share a device (4 rows each on 8 devices) and chunk 1; row 31 is the last column.
INVALID = np.array([3, 9, 10, 31])


def _with_invalid_copies(x):
    """x with its INVALID rows overwritten by copies of row 0: the duplicate that the pipeline
    used to put in a skipped record's place, a false negative unless masked."""
    x = np.array(x, copy=True)
    x[INVALID] = x[0]
    return x


def _valid_rows():
    valid = np.ones(N, bool)
    valid[INVALID] = False
    return valid


def test_a_duplicated_row_changes_the_plain_loss(batch):
    """What the mask is for: the copy is a second "class" of row 0."""
    keep = _valid_rows()
    plain = losses.global_contrastive_loss(batch["image"][keep], batch["text"][keep], SCALE)
    with_copies = losses.global_contrastive_loss(_with_invalid_copies(batch["image"]),
                                                 _with_invalid_copies(batch["text"]), SCALE)
    assert abs(float(with_copies) - float(plain)) > 1e-2


# k = 27 = N' - 1 on the 28 valid rows: the smaller batch has no cap; the masked one must not either.
@pytest.mark.parametrize("mining,labelled", [
    (None, False), (None, True),
    (MiningConfig(mode="both", threshold=0.2, weight=0.5), False),
    (MiningConfig(mode="text", threshold=0.0, top_k=3, weight=0.5, mutual=True), True),
    (MiningConfig(mode="image", threshold=-1.0, top_k=27, weight=0.7, mutual=True), False),
    (MiningConfig(mode="text", threshold=-1.0, relative_threshold=0.5, min_spread=0.05,
                  weight=0.5), False)])
@pytest.mark.parametrize("impl", ["single", "sharded", "chunked"])
def test_invalid_rows_leave_the_global_loss_of_the_batch_without_them(mesh, batch, impl, mining,
                                                                      labelled):
    """Independent reference: the single-device loss (plain, label or mined targets) of the
    batch with the invalid rows removed; the masked batch holds copies of row 0 in their place."""
    keep = _valid_rows()
    labels = random_labels() if labelled else None
    guide = _with_invalid_copies(batch["guide"])
    image, text = _with_invalid_copies(batch["image"]), _with_invalid_copies(batch["text"])

    def masked(a, b, s):
        return losses.contrastive_loss(a, b, s, mesh=mesh, impl=impl, chunk_size=CHUNK,
                                       mining=mining, guide_text=guide, step=1, labels=labels,
                                       valid=keep)

    def removed(a, b, s):
        return losses.contrastive_loss(a, b, s, impl="single", mining=mining,
                                       guide_text=guide[keep], step=1,
                                       labels=None if labels is None else labels[keep])

    value, grads = _value_and_grads(masked)(image, text, jnp.float32(SCALE))
    ref_value, ref_grads = _value_and_grads(removed)(image[keep], text[keep], jnp.float32(SCALE))
    assert_close(value, ref_value)
    assert_close(grads[0][keep], ref_grads[0])
    assert_close(grads[1][keep], ref_grads[1])
    assert_close(grads[2], ref_grads[2])
    assert not np.asarray(grads[0])[~keep].any() and not np.asarray(grads[1])[~keep].any()


@pytest.mark.parametrize("impl", ["single", "sharded", "chunked"])
def test_a_batch_with_no_valid_row_gives_zero_loss_and_gradient(mesh, batch, impl):
    cfg = MiningConfig(mode="both", threshold=0.0, top_k=3, relative_threshold=0.0, weight=0.5)
    fn = _value_and_grads(lambda a, b, s: losses.contrastive_loss(
        a, b, s, mesh=mesh, impl=impl, chunk_size=CHUNK, mining=cfg, guide_text=batch["guide"],
        step=1, labels=random_labels(), valid=np.zeros(N, bool)))
    value, grads = fn(batch["image"], batch["text"], jnp.float32(SCALE))
    assert float(value) == 0.0
    for g in grads:
        assert np.all(np.asarray(g) == 0)


def test_mining_statistics_and_agreement_leave_invalid_rows_out(batch):
    keep = _valid_rows()
    cfg = MiningConfig(mode="text", threshold=0.0, top_k=3, weight=0.5)
    labels = random_labels()
    guide = _with_invalid_copies(batch["guide"])
    stats = mining_statistics(cfg, guide_text=guide, labels=labels, step=1, valid=keep)
    ref = mining_statistics(cfg, guide_text=guide[keep], labels=labels[keep], step=1)
    for key in ref:
        assert_close(stats[key], ref[key])
    image, text = _with_invalid_copies(batch["image"]), _with_invalid_copies(batch["text"])
    assert_close(pair_agreement(image, text, valid=keep), pair_agreement(image[keep], text[keep]))


@pytest.mark.parametrize("within", [0.0, 0.7])
def test_invalid_images_leave_the_local_loss_of_the_batch_without_them(local_batch, within):
    patches, sentences, mask = local_batch
    keep = np.ones(LOCAL_B, bool)
    keep[[1, 6, 7]] = False
    copy = lambda x: np.where(keep.reshape(-1, *[1] * (x.ndim - 1)), x, x[2:3])  # noqa: E731
    fn = lambda p, s, m, ok: jax.value_and_grad(  # noqa: E731
        lambda p, s: losses.local_loss(p, s, m, SCALE, TAU, within_image_weight=within,
                                       valid=ok), (0, 1))(p, s)
    value, grads = jax.jit(fn)(copy(patches), copy(sentences), copy(mask), keep)
    ref_value, ref_grads = jax.jit(lambda p, s, m: fn(p, s, m, None))(
        patches[keep], sentences[keep], mask[keep])
    assert_close(value, ref_value)
    for g, g_ref in zip(grads, ref_grads):
        assert_close(np.asarray(g)[keep], g_ref)
        assert not np.asarray(g)[~keep].any()


@pytest.mark.parametrize("within", [0.0, 0.7])
def test_invalid_images_leave_each_block_of_the_sharded_local_loss(mesh, local_batch, within):
    """Reference: the mean, over the devices' blocks holding a valid sentence, of the
    single-device loss of each block with its invalid images removed."""
    patches, sentences, mask = local_batch
    keep = np.ones(LOCAL_B, bool)
    keep[[1, 6, 7]] = False  # block 3 (rows 6, 7) has no valid image left
    block = LOCAL_B // 8
    value = jax.jit(lambda p, s: losses.local_loss(
        p, s, mask, SCALE, TAU, mesh=mesh, impl="sharded", within_image_weight=within,
        valid=keep))(patches, sentences)
    pair_terms, within_terms = [], []
    for d in range(8):
        rows = np.arange(d * block, (d + 1) * block)
        rows = rows[keep[rows]]
        m = mask[rows]
        if m.any():
            pair_terms.append(losses.local_loss(patches[rows], sentences[rows], m, SCALE, TAU))
        if within and (m.sum(axis=1) >= 2).any():
            within_terms.append(losses.local_loss(patches[rows], sentences[rows], m, SCALE, TAU,
                                                  within_image_weight=1.0) - pair_terms[-1])
    expected = np.mean(pair_terms) + (within * np.mean(within_terms) if within_terms else 0.0)
    assert_close(value, expected, rtol=1e-5, atol=1e-5)
