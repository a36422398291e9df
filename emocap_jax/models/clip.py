"""The two-tower CLIP model. It owns image normalisation and the temperature, so training and
inference code only combine its outputs."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from emocap_jax.models.config import CLIPConfig
from emocap_jax.models.text import TextTransformer
from emocap_jax.models.vit import VisionTransformer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize_images(images):
    """CLIP normalisation of uint8 NHWC images, done on the device: shipping uint8 from the input
    pipeline costs a quarter of float32's host work and transfer."""
    x = images.astype(jnp.float32) * (1.0 / 255.0)
    return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


def l2_normalize(x, axis=-1, eps=1e-12):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


class CLIP(nn.Module):
    config: CLIPConfig

    def setup(self):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        common = dict(embed_dim=cfg.embed_dim, activation=cfg.activation,
                      layer_norm_eps=cfg.layer_norm_eps, remat=cfg.remat,
                      remat_policy=cfg.remat_policy, attention=cfg.attention,
                      dtype=dtype)
        self.visual = VisionTransformer(cfg.vision, **common)
        self.text = TextTransformer(cfg.text, **common)
        self.log_logit_scale = self.param(
            "logit_scale", nn.initializers.constant(cfg.init_logit_scale), ())

    def encode_image(self, images, return_tokens: bool = False):
        """Unnormalised projected image features [B, D] (float32); with `return_tokens`, also the
        projected patch tokens [B, P, D]. uint8 images are CLIP-normalised here; float images must
        already be."""
        if images.dtype == jnp.uint8:
            images = normalize_images(images)
        pooled, tokens = self.visual(images)
        pooled = pooled.astype(jnp.float32)
        return (pooled, tokens.astype(jnp.float32)) if return_tokens else pooled

    def encode_text(self, token_ids):
        """Unnormalised projected text features [B, D] (float32)."""
        return self.text(token_ids).astype(jnp.float32)

    def logit_scale(self):
        """exp of the learnable log-temperature, clipped at max_logit_scale (CLIP's 100)."""
        return jnp.exp(jnp.minimum(self.log_logit_scale, self.config.max_logit_scale))

    def __call__(self, images, token_ids):
        image_emb, patch_tokens = self.encode_image(images, return_tokens=True)
        return dict(image_emb=image_emb, patch_tokens=patch_tokens,
                    text_emb=self.encode_text(token_ids), logit_scale=self.logit_scale())


def init_params(config: CLIPConfig, rng) -> dict:
    """Random float32 parameters for `config` (use under jit with out_shardings to create them
    directly sharded)."""
    v, t = config.vision, config.text
    images = jnp.zeros((1, v.image_size, v.image_size, 3), jnp.float32)
    tokens = jnp.zeros((1, t.context_length), jnp.int32)
    return CLIP(config).init(rng, images, tokens)["params"]


def param_shapes(config: CLIPConfig) -> dict:
    """Shapes of the parameters without allocating them."""
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
    return jax.tree_util.tree_map(lambda s: tuple(s.shape), shapes)


def count_params(params) -> int:
    return int(sum(np.prod(np.shape(p)) for p in jax.tree_util.tree_leaves(params)))
