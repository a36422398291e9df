"""The pre-LayerNorm transformer shared by CLIP's image and text towers.

Layers are stacked with `nn.scan`, so every block parameter has a leading layer axis
(`blocks/attn/qkv/kernel` is [layers, width, 3*width]). One traced block instead of L copies keeps
compile time flat in depth (ViT-L/14 compiles as fast as ViT-B/32), and the weight converter stacks
the per-layer torch tensors along that axis.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from emocap_jax.models.attention import OUT_NAME, PROBS_NAME, dot_product_attention


def quick_gelu(x):
    # OpenAI CLIP's activation: x * sigmoid(1.702 x).
    return x * jax.nn.sigmoid(1.702 * x)


def exact_gelu(x):
    # torch.nn.GELU() is the erf form; flax's nn.gelu defaults to the tanh approximation.
    return jax.nn.gelu(x, approximate=False)


# "full": save nothing inside a block, so the backward pass recomputes it from the block input and
# activation memory is one [B, T, width] per layer. "dots": also save the weight matmuls' outputs
# (matmuls without batch dimensions) and the XLA attention kernel's probabilities and output, so the
# backward pass recomputes only element-wise ops (layer norms, activations, residual adds). The
# saved probabilities cost [B, heads, T, T] float32 per layer (ViT-B/16, batch 32: 60 MB) and took
# 4% off the forward and backward pass of a ViT-B/16 layer stack on CPU; cuDNN's fused attention
# keeps its own residuals and is recomputed.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(PROBS_NAME, OUT_NAME)),
}


ACTIVATION_FNS = {"quick_gelu": quick_gelu, "gelu": exact_gelu}


def _normal(std):
    return nn.initializers.normal(stddev=std)


class MultiHeadAttention(nn.Module):
    """Self-attention with a fused q/k/v projection (torch's `in_proj_weight` layout)."""
    width: int
    heads: int
    layers: int  # depth of the stack, for open_clip's output-projection init scale
    is_causal: bool = False
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x):
        b, t, _ = x.shape
        head_dim = self.width // self.heads
        qkv = nn.Dense(3 * self.width, dtype=self.dtype, name="qkv",
                       kernel_init=_normal(self.width ** -0.5))(x)
        q, k, v = jnp.split(qkv.reshape(b, t, 3, self.heads, head_dim), 3, axis=2)
        q, k, v = (a.squeeze(2) for a in (q, k, v))
        out = dot_product_attention(q, k, v, self.is_causal, self.attention)
        out = out.reshape(b, t, self.width)
        proj_std = (self.width ** -0.5) * ((2 * self.layers) ** -0.5)
        return nn.Dense(self.width, dtype=self.dtype, name="out", kernel_init=_normal(proj_std))(out)


class MLP(nn.Module):
    width: int
    mlp_dim: int
    layers: int
    activation: str
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc",
                     kernel_init=_normal((2 * self.width) ** -0.5))(x)
        x = ACTIVATION_FNS[self.activation](x)
        proj_std = (self.width ** -0.5) * ((2 * self.layers) ** -0.5)
        return nn.Dense(self.width, dtype=self.dtype, name="proj", kernel_init=_normal(proj_std))(x)


class ResidualBlock(nn.Module):
    width: int
    heads: int
    mlp_dim: int
    layers: int
    activation: str
    layer_norm_eps: float
    is_causal: bool = False
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x, _=None):
        ln = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name=name)
        x = x + MultiHeadAttention(self.width, self.heads, self.layers, self.is_causal,
                                   self.dtype, self.attention, name="attn")(ln("ln_1")(x))
        x = x + MLP(self.width, self.mlp_dim, self.layers, self.activation, self.dtype,
                    name="mlp")(ln("ln_2")(x))
        return x, None


class Transformer(nn.Module):
    width: int
    layers: int
    heads: int
    mlp_dim: int
    activation: str
    layer_norm_eps: float
    is_causal: bool = False
    remat: bool = False
    remat_policy: str = "full"
    dtype: jnp.dtype = jnp.float32
    attention: str = "auto"

    @nn.compact
    def __call__(self, x):
        block = ResidualBlock
        if self.remat:
            block = nn.remat(block, prevent_cse=False, policy=REMAT_POLICIES[self.remat_policy])
        stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                        length=self.layers)
        x, _ = stack(self.width, self.heads, self.mlp_dim, self.layers, self.activation,
                     self.layer_norm_eps, self.is_causal, self.dtype, self.attention,
                     name="blocks")(x, None)
        return x
