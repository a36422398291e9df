"""The Flax towers' own behaviour: precision options, remat, pooling, configs, the info command."""
import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

from emocap_jax.models.clip import CLIP, init_params, normalize_images, CLIP_MEAN, CLIP_STD
from emocap_jax.models.config import CLIPConfig, variant


@pytest.fixture(scope="module")
def tiny():
    config = variant("tiny")
    return config, init_params(config, jax.random.PRNGKey(0))


def _inputs(config, b=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((b, 32, 32, 3)).astype(np.float32)
    tokens = np.zeros((b, config.text.context_length), np.int32)
    tokens[:, 0] = 998
    tokens[:, 1:6] = rng.integers(1, 900, (b, 5))
    tokens[:, 6] = 999
    return images, tokens


def test_bfloat16_compute_stays_close_to_float32(tiny):
    config, params = tiny
    images, tokens = _inputs(config)
    f32 = CLIP(config).apply({"params": params}, images, tokens)
    bf16 = CLIP(config.replace(dtype="bfloat16")).apply({"params": params}, images, tokens)
    assert bf16["image_emb"].dtype == jnp.float32  # outputs are always float32
    for k in ("image_emb", "text_emb"):
        cos = np.sum(f32[k] * bf16[k], -1) / (np.linalg.norm(f32[k], axis=-1)
                                              * np.linalg.norm(bf16[k], axis=-1))
        assert np.all(cos > 0.99), (k, cos)
    # Parameters stay float32 whatever the compute dtype.
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))


def test_remat_changes_memory_not_gradients(tiny):
    config, params = tiny
    images, tokens = _inputs(config)

    def loss(p, cfg):
        out = CLIP(cfg).apply({"params": p}, images, tokens)
        return jnp.sum(out["image_emb"] * out["text_emb"]) + jnp.sum(out["patch_tokens"] ** 2)

    g1 = jax.grad(loss)(params, config)
    for policy in ("full", "dots"):
        g2 = jax.grad(loss)(params, config.replace(remat=True, remat_policy=policy))
        for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_dots_remat_keeps_the_attention_softmax(tiny):
    # The "dots" policy saves the XLA attention kernel's probabilities, so the backward pass does
    # not redo the softmax: fewer exp ops than under "full" (one per tower's scanned block).
    config, params = tiny
    images, tokens = _inputs(config)

    def exp_ops(policy):
        cfg = config.replace(remat=True, remat_policy=policy, attention="xla")
        def loss(p):
            out = CLIP(cfg).apply({"params": p}, images, tokens)
            return jnp.sum(out["image_emb"] * out["text_emb"])
        return str(jax.make_jaxpr(jax.grad(loss))(params)).count(" exp ")

    assert exp_ops("dots") == exp_ops("full") - 2


@pytest.mark.parametrize("field,value", [("remat_policy", "most"), ("attention", "flash")])
def test_unknown_remat_policy_or_attention_is_refused(tiny, field, value):
    config, _ = tiny
    with pytest.raises(ValueError, match=field):
        config.replace(**{field: value})


@pytest.mark.parametrize("t,causal", [(197, False), (77, True), (16, True)])
def test_padded_attention_equals_unpadded(t, causal):
    # The cuDNN path pads odd sequence lengths and masks the padding; the same padding through
    # XLA's kernel must give the unpadded attention, values and gradients.
    from emocap_jax.models.attention import padded_attention

    q, k, v, g = (jax.random.normal(key, (2, t, 3, 8))
                  for key in jax.random.split(jax.random.PRNGKey(t), 4))

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v) * g)

    plain = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                                         implementation="xla")
    padded = lambda q, k, v: padded_attention(q, k, v, causal, "xla")
    np.testing.assert_allclose(padded(q, k, v), plain(q, k, v), atol=1e-5)
    g_plain = jax.grad(lambda *a: loss(plain, *a), argnums=(0, 1, 2))(q, k, v)
    g_padded = jax.grad(lambda *a: loss(padded, *a), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_padded, g_plain):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_text_pooling_ignores_tokens_after_end_of_text(tiny):
    config, params = tiny
    _, tokens = _inputs(config)
    garbage = tokens.copy()
    garbage[:, 7:] = 123  # causal attention: positions after EOT cannot influence the EOT token
    enc = lambda t: CLIP(config).apply({"params": params}, t, method=CLIP.encode_text)
    np.testing.assert_allclose(enc(tokens), enc(garbage), atol=1e-6)
    # ...but a change before EOT does.
    changed = tokens.copy()
    changed[:, 2] = 5
    assert np.abs(enc(tokens) - enc(changed)).max() > 1e-4


def test_first_eot_pooling_equals_argmax_when_eot_is_largest(tiny):
    config, params = tiny
    _, tokens = _inputs(config)
    by_argmax = CLIP(config).apply({"params": params}, tokens, method=CLIP.encode_text)
    cfg_eot = config.replace(text=config.text.__class__(**{**config.text.__dict__,
                                                           "eot_token_id": 999}))
    by_eot = CLIP(cfg_eot).apply({"params": params}, tokens, method=CLIP.encode_text)
    np.testing.assert_allclose(by_argmax, by_eot, atol=1e-6)


def test_uint8_images_are_normalised_on_device(tiny):
    config, params = tiny
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    manual = (raw / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(normalize_images(raw), manual, atol=1e-6)
    enc = lambda x: CLIP(config).apply({"params": params}, x, method=CLIP.encode_image)
    np.testing.assert_allclose(enc(raw), enc(manual.astype(np.float32)), atol=1e-5)


def test_logit_scale_is_clipped_at_100(tiny):
    config, params = tiny
    p = dict(params, logit_scale=jnp.asarray(10.0))
    assert float(CLIP(config).apply({"params": p}, method=CLIP.logit_scale)) == pytest.approx(100.0)
    assert float(CLIP(config).apply({"params": params}, method=CLIP.logit_scale)) == \
        pytest.approx(1 / 0.07, rel=1e-5)


def test_config_round_trip_and_validation():
    for name in ("ViT-B-32", "ViT-B/16", "ViT-L-14", "ViT-L-14-336", "tiny", "demo"):
        c = variant(name)
        assert CLIPConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="image_size=225.*patch_size=16"):
        variant("ViT-B-16").replace(vision=variant("ViT-B-16").vision.__class__(image_size=225))
    with pytest.raises(ValueError, match="activation"):
        variant("tiny").replace(activation="relu")
    with pytest.raises(ValueError, match="unknown model variant"):
        variant("ViT-H-99")


def test_main_info_prints_summary_with_overrides():
    out = subprocess.run(
        [sys.executable, "-m", "emocap_jax.main", "--config=configs/vitb16.py", "--mode=info",
         "--config.model.vision.image_size=336"], capture_output=True, text=True, check=True)
    assert "ViT 336px, patch 16 (441 patches)" in out.stdout
    assert "total: 149,8" in out.stdout  # 149.6M at 224 px plus 245 more position rows


@pytest.mark.parametrize("name", ["default", "demo", "real_faces", "tiny", "vitb32", "vitb16", "vitl14"])
def test_every_config_describes_a_valid_model(name):
    """Each committed config builds its model (CLIPConfig checks the sizes itself), its tokenizer's
    ids fit the text tower's vocabulary, and the tower pools every caption, short or cut to the
    context length, at the caption's end-of-text token."""
    import importlib

    from emocap_jax.config_utils import clip_config
    from emocap_jax.models.text import end_of_text_index
    from emocap_jax.tokenizers import get_tokenizer

    config = importlib.import_module(f"configs.{name}").get_config()
    model = clip_config(config)
    tokenizer = get_tokenizer(config.tokenizer, model.text.context_length)
    assert tokenizer.vocab_size <= model.text.vocab_size
    ids = tokenizer(["happy", "a face with raised eyebrows and a wide open mouth, surprised " * 8])
    pooled = np.asarray(end_of_text_index(jnp.asarray(ids), model.text.eot_token_id))
    assert [int(ids[i, p]) for i, p in enumerate(pooled)] == [tokenizer.eot_id] * 2
    assert pooled[1] == model.text.context_length - 1  # the long caption was cut
    assert config.train.global_batch_size > 0 and config.train.num_steps > 0


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_xla_attention_equals_jax_reference(causal, dtype):
    # The towers' XLA attention has a hand-written backward pass: values and gradients must match
    # jax.nn.dot_product_attention (whose gradient is autodiff's).
    from emocap_jax.models.attention import xla_attention

    q, k, v, g = (jax.random.normal(key, (2, 13, 3, 8)).astype(dtype)
                  for key in jax.random.split(jax.random.PRNGKey(int(causal)), 4))
    reference = lambda q, k, v: jax.nn.dot_product_attention(
        q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), is_causal=causal)
    ours = lambda q, k, v: xla_attention(q, k, v, causal).astype(jnp.float32)
    tol = 1e-5 if dtype == jnp.float32 else 3e-2
    np.testing.assert_allclose(ours(q, k, v), reference(q, k, v), atol=tol)
    loss = lambda fn: lambda *a: jnp.sum(fn(*a) * g.astype(jnp.float32))
    for a, b in zip(jax.grad(loss(ours), argnums=(0, 1, 2))(q, k, v),
                    jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)):
        assert a.dtype == dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol)


def test_patch_embedding_equals_convolution():
    from emocap_jax.models.vit import PatchEmbed

    images = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    module = PatchEmbed(width=24, patch_size=8)
    params = module.init(jax.random.PRNGKey(1), images)
    conv = nn.Conv(24, (8, 8), strides=8, padding="VALID", use_bias=False)
    conv_params = conv.init(jax.random.PRNGKey(1), images)
    # Same parameter shape and initial values as the nn.Conv it replaces (checkpoints unchanged).
    np.testing.assert_array_equal(params["params"]["kernel"], conv_params["params"]["kernel"])
    expected = conv.apply(params, images).reshape(2, 16, 24)
    np.testing.assert_allclose(module.apply(params, images), expected, atol=1e-5)


def test_gap_pooling_is_the_mean_of_the_patch_tokens(tiny):
    config, params = tiny
    gap = config.replace(vision=dataclasses.replace(config.vision, pool="gap"))
    images, _ = _inputs(config)
    pooled, tokens = CLIP(gap).apply({"params": params}, images, True, method=CLIP.encode_image)
    np.testing.assert_allclose(pooled, np.asarray(tokens).mean(axis=1), rtol=1e-5, atol=1e-6)
    token_pooled = CLIP(config).apply({"params": params}, images, method=CLIP.encode_image)
    assert not np.allclose(pooled, token_pooled)  # the class token is another vector


def test_conv_stem_shapes_and_validation(tiny):
    config, _ = tiny
    conv = config.replace(vision=dataclasses.replace(config.vision, stem="conv"))
    params = init_params(conv, jax.random.PRNGKey(1))
    stem = params["visual"]["conv_stem"]
    # patch 8: three stride-2 convolutions (32 -> 16 -> 8 -> 4 px), then a map to the width.
    assert [stem[f"conv{i}"]["kernel"].shape[:2] for i in range(3)] == [(3, 3)] * 3
    assert "patch_embed" not in params["visual"]
    images, _ = _inputs(config)
    pooled, tokens = CLIP(conv).apply({"params": params}, images, True, method=CLIP.encode_image)
    assert tokens.shape == (3, conv.vision.num_patches, conv.embed_dim)
    assert np.isfinite(np.asarray(pooled)).all()
    with pytest.raises(ValueError, match="power-of-two patch_size"):
        config.replace(vision=dataclasses.replace(config.vision, stem="conv", patch_size=6,
                                                  image_size=48))
    with pytest.raises(ValueError, match="stem"):
        config.replace(vision=dataclasses.replace(config.vision, stem="resnet"))
    with pytest.raises(ValueError, match="pool"):
        config.replace(vision=dataclasses.replace(config.vision, pool="max"))


def _with_local_head(tiny, kind):
    """The tiny model with vision.local_head=kind: its config, params (the plain model's plus the
    head's own, whose names are returned) and an image encoder."""
    config, params = tiny
    head = config.replace(vision=dataclasses.replace(config.vision, local_head=kind))
    head_params = init_params(head, jax.random.PRNGKey(1))
    new_names = sorted(set(head_params["visual"]) - set(params["visual"]))
    head_params = {**head_params, "visual": {**head_params["visual"], **params["visual"]},
                   "text": params["text"], "logit_scale": params["logit_scale"]}
    encode = lambda cfg, p, x: CLIP(cfg).apply({"params": p}, x, True, method=CLIP.encode_image)
    return head, head_params, new_names, encode


def test_local_patch_head_tokens_see_only_their_own_patch(tiny):
    """vision.local_head='patch_mlp': the tokens the local loss pools are functions of their own
    patch (changing another patch's pixels leaves them unchanged), the pooled embedding is the
    plain model's, and the head's parameters are the only new ones."""
    config, params = tiny
    head, head_params, new_names, encode = _with_local_head(tiny, "patch_mlp")
    assert new_names == ["local_fc", "local_ln", "local_proj"]
    images, _ = _inputs(config)
    pooled, tokens = encode(head, head_params, images)
    plain_pooled, plain_tokens = encode(config, params, images)
    np.testing.assert_allclose(pooled, plain_pooled, rtol=1e-6)
    assert tokens.shape == plain_tokens.shape
    p = config.vision.patch_size
    changed = np.array(images).copy()
    changed[:, :p, :p] += 1.0  # patch (0, 0) only
    _, new_tokens = encode(head, head_params, changed)
    _, new_plain = encode(config, params, changed)
    np.testing.assert_allclose(np.asarray(new_tokens)[:, 1:], np.asarray(tokens)[:, 1:], atol=1e-6)
    assert not np.allclose(np.asarray(new_tokens)[:, 0], np.asarray(tokens)[:, 0])
    # The last layer's tokens, by contrast, all change (attention mixes the patches).
    assert not np.allclose(np.asarray(new_plain)[:, 1:], np.asarray(plain_tokens)[:, 1:], atol=1e-4)
    with pytest.raises(ValueError, match="local_head"):
        config.replace(vision=dataclasses.replace(config.vision, local_head="conv"))


def test_local_conv_head_tokens_see_their_3x3_neighbourhood(tiny):
    """vision.local_head='patch_conv': a token is a function of its own patch and its 8
    neighbours on the patch grid: changing patch (0, 0) changes tokens (0, 0), (0, 1), (1, 0)
    and (1, 1) and no other; the pooled embedding is the plain model's."""
    config, params = tiny
    head, head_params, new_names, encode = _with_local_head(tiny, "patch_conv")
    assert new_names == ["local_conv", "local_ln", "local_proj"]
    images, _ = _inputs(config)
    pooled, tokens = encode(head, head_params, images)
    np.testing.assert_allclose(pooled, encode(config, params, images)[0], rtol=1e-6)
    p, grid = config.vision.patch_size, config.vision.image_size // config.vision.patch_size
    assert grid >= 3
    changed = np.array(images).copy()
    changed[:, :p, :p] += 1.0  # patch (0, 0) only
    _, new_tokens = encode(head, head_params, changed)
    moved = ~np.isclose(np.asarray(new_tokens), np.asarray(tokens), atol=1e-6).all(axis=(0, 2))
    expected = np.zeros((grid, grid), bool)
    expected[:2, :2] = True
    np.testing.assert_array_equal(moved.reshape(grid, grid), expected)


def test_local_fine_head_tokens_see_only_their_own_half_patch(tiny):
    """vision.local_head='patch_fine': the local tokens lie on a grid twice as fine as the patch
    grid, each a function of its own (patch_size / 2)-pixel square only; the pooled embedding is
    the plain model's; an odd patch size is refused."""
    config, params = tiny
    head, head_params, new_names, encode = _with_local_head(tiny, "patch_fine")
    assert new_names == ["local_embed", "local_fc", "local_ln", "local_pos_embedding",
                         "local_proj"]
    images, _ = _inputs(config)
    pooled, tokens = encode(head, head_params, images)
    np.testing.assert_allclose(pooled, encode(config, params, images)[0], rtol=1e-6)
    grid = config.vision.image_size // config.vision.patch_size
    assert head.vision.local_grid_size == 2 * grid
    assert tokens.shape == (images.shape[0], (2 * grid) ** 2, config.embed_dim)
    s = head.vision.local_patch_size
    assert s == config.vision.patch_size // 2
    changed = np.array(images).copy()
    changed[:, s:2 * s, :s] += 1.0  # fine square (1, 0) only
    _, new_tokens = encode(head, head_params, changed)
    moved = ~np.isclose(np.asarray(new_tokens), np.asarray(tokens), atol=1e-6).all(axis=(0, 2))
    expected = np.zeros((2 * grid, 2 * grid), bool)
    expected[1, 0] = True
    np.testing.assert_array_equal(moved.reshape(2 * grid, 2 * grid), expected)
    with pytest.raises(ValueError, match="must be even"):
        config.replace(vision=dataclasses.replace(config.vision, patch_size=7,
                                                  local_head="patch_fine"))


def test_config_model_maps_onto_clip_config_field_for_field():
    from configs import default
    from emocap_jax.config_utils import clip_config
    from emocap_jax.models.config import variant

    config = default.get_config()
    assert clip_config(config) == variant("ViT-B-16")  # eot_token_id None: argmax pooling
    config.model.text.eot_token_id = 2  # the placeholder takes a token id
    assert clip_config(config).text.eot_token_id == 2
    config.model.vision.typo = 1
    with pytest.raises(TypeError, match="typo"):
        clip_config(config)
