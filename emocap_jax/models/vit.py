"""CLIP's image tower: a ViT with a class token, `ln_pre`, no patch-embedding bias, and a linear
projection applied to the pooled class token and (for the local loss) to every patch token."""
from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from emocap_jax.models.config import VisionConfig
from emocap_jax.models.transformer import ACTIVATION_FNS, Transformer


class PatchEmbed(nn.Module):
    """The stride-p, p x p patch convolution without bias, done as patchify + one matmul. Same
    parameter ("kernel", [p, p, 3, width], HWIO) and initialisation as nn.Conv, and the same
    result; XLA's convolution backward was 4x slower than the matmul's on CPU."""
    width: int
    patch_size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        p = self.patch_size
        b, h, w, c = images.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, c, self.width))
        patches = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(b, (h // p) * (w // p), p * p * c).astype(self.dtype)
        return patches @ kernel.reshape(p * p * c, self.width).astype(self.dtype)


class ConvStem(nn.Module):
    """log2(p) stride-2 3x3 convolutions (GELU after each, channels doubling up to the width),
    then a linear map to the width: [B, H, W, C] -> [B, (H/p) * (W/p), width]."""
    width: int
    patch_size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        num_convs = self.patch_size.bit_length() - 1
        x = images.astype(self.dtype)
        for i in range(num_convs):
            channels = max(self.width // 2 ** (num_convs - 1 - i), 16)
            x = nn.Conv(channels, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                        dtype=self.dtype, name=f"conv{i}")(x)
            x = nn.gelu(x)
        b, h, w, c = x.shape
        return nn.Dense(self.width, use_bias=False, dtype=self.dtype, name="proj")(
            x.reshape(b, h * w, c))


class VisionTransformer(nn.Module):
    config: VisionConfig
    embed_dim: int
    activation: str
    layer_norm_eps: float = 1e-5
    remat: bool = False
    remat_policy: str = "full"
    attention: str = "auto"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        """images: [B, H, W, 3] CLIP-normalised. Returns (pooled [B, D], patch tokens [B, P, D])."""
        cfg = self.config
        if images.shape[1:3] != (cfg.image_size, cfg.image_size):
            raise ValueError(
                f"image tower expects {cfg.image_size}x{cfg.image_size} images, got "
                f"{images.shape[1]}x{images.shape[2]} (input shape {images.shape})")
        scale = cfg.width ** -0.5
        if cfg.stem == "conv":
            x = ConvStem(cfg.width, cfg.patch_size, self.dtype, name="conv_stem")(images)
        else:
            x = PatchEmbed(cfg.width, cfg.patch_size, self.dtype, name="patch_embed")(images)
        patch_embeddings = x  # each a function of its own patch's pixels only
        b = x.shape[0]
        cls = self.param("class_embedding", nn.initializers.normal(scale), (cfg.width,))
        pos = self.param("pos_embedding", nn.initializers.normal(scale),
                         (cfg.num_patches + 1, cfg.width))
        cls = jnp.broadcast_to(cls.astype(self.dtype), (b, 1, cfg.width))
        x = jnp.concatenate([cls, x], axis=1) + pos.astype(self.dtype)
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="ln_pre")(x)
        x = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_dim, self.activation,
                        self.layer_norm_eps, is_causal=False, remat=self.remat,
                        remat_policy=self.remat_policy, attention=self.attention,
                        dtype=self.dtype,
                        name="transformer")(x)
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="ln_post")(x)
        proj = self.param("proj", nn.initializers.normal(scale), (cfg.width, self.embed_dim))
        x = x @ proj.astype(self.dtype)
        pooled = x[:, 1:].mean(axis=1) if cfg.pool == "gap" else x[:, 0]
        if cfg.local_head == "patch_fine":
            return pooled, self._local_head(self._fine_patch_embeddings(images))
        if cfg.local_head != "none":
            return pooled, self._local_head(patch_embeddings + pos[1:].astype(self.dtype))
        return pooled, x[:, 1:]

    def _fine_patch_embeddings(self, images):
        """"patch_fine": the local head's own embedding of non-overlapping local_patch_size
        pixel squares (half the ViT's patch side, so 4x the tokens) plus its own positions. At the
        demo's 6x6 ViT grid the brows and the eyes fall into the same patch, as do the mouth and
        the jaw, so no map on that grid can tell them apart (measured in ABLATIONS.md: the finer
        grid alone did not put the brow and eye sentences on their regions)."""
        cfg = self.config
        s = cfg.local_patch_size
        x = nn.Conv(cfg.width, (s, s), strides=(s, s), padding="VALID", use_bias=False,
                    dtype=self.dtype, name="local_embed")(images.astype(self.dtype))
        b, h, w, c = x.shape
        pos = self.param("local_pos_embedding", nn.initializers.normal(cfg.width ** -0.5),
                         (h * w, cfg.width))
        return x.reshape(b, h * w, c) + pos.astype(self.dtype)

    def _local_head(self, tokens):
        """Per-patch tokens for the local loss from the patch embeddings (plus position), with no
        attention in between: LayerNorm, then a hidden layer of mlp_dim units (per patch for
        "patch_mlp"; a 3x3 convolution over the patch grid for "patch_conv", so a token also
        sees its 8 neighbours), then a linear map to the embedding dimension."""
        cfg = self.config
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="local_ln")(tokens)
        if cfg.local_head == "patch_conv":
            b, n, c = x.shape
            grid = cfg.image_size // cfg.patch_size
            x = nn.Conv(cfg.mlp_dim, (3, 3), padding="SAME", dtype=self.dtype,
                        name="local_conv")(x.reshape(b, grid, grid, c)).reshape(b, n, cfg.mlp_dim)
        else:
            x = nn.Dense(cfg.mlp_dim, dtype=self.dtype, name="local_fc")(x)
        x = ACTIVATION_FNS[self.activation](x)
        return nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype, name="local_proj")(x)
