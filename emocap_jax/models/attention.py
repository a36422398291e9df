"""Scaled dot-product attention for the towers, [B, T, heads, head_dim] in and out.

Three kernels, chosen by `model.attention`:
- "cudnn": cuDNN's fused flash attention (GPU, 16-bit inputs);
- "xla": attention written in XLA ops with a hand-written backward pass (below);
- "auto": cuDNN where it applies, XLA's otherwise. `jax.nn.dot_product_attention`'s own default is
  its unfused XLA kernel on every backend, so asking for cuDNN has to be explicit.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

# Names of the attention residuals, for remat policies that keep them (transformer.REMAT_POLICIES).
PROBS_NAME = "attention_probs"
OUT_NAME = "attention_out"


def dot_product_attention(q, k, v, is_causal: bool, impl: str = "auto"):
    if impl == "auto":
        head_dim = q.shape[-1]
        use_cudnn = (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
                     and head_dim % 8 == 0 and head_dim <= 128)
        impl = "cudnn" if use_cudnn else "xla"
    if impl == "cudnn":
        return padded_attention(q, k, v, is_causal, "cudnn")
    return xla_attention(q, k, v, is_causal)


def padded_attention(q, k, v, is_causal: bool, implementation: str, multiple: int = 8):
    """jax.nn.dot_product_attention over the sequence padded to a multiple of `multiple`, with the
    true length passed so the padded keys are masked and the padded query rows dropped. cuDNN's
    training kernels refuse odd sequence lengths (ViT's 197 tokens, CLIP text's 77)."""
    b, t = q.shape[:2]
    pad = (-t) % multiple
    if not pad:
        return jax.nn.dot_product_attention(q, k, v, is_causal=is_causal,
                                            implementation=implementation)
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    q, k, v = (jnp.pad(a, widths) for a in (q, k, v))
    lengths = jnp.full((b,), t, jnp.int32)
    out = jax.nn.dot_product_attention(q, k, v, is_causal=is_causal, query_seq_lengths=lengths,
                                       key_value_seq_lengths=lengths,
                                       implementation=implementation)
    return out[:, :t]


def xla_attention(q, k, v, is_causal: bool):
    """softmax(q k^T / sqrt(d)) v in plain XLA ops. Heads are moved in front of the sequence first,
    so both products are batched matrix products with contiguous operands; scores and softmax are
    float32 whatever the input dtype. On a 2-core CPU (ViT-B/16, batch 32) this forward and
    backward took half the time of jax.nn.dot_product_attention(implementation="xla")."""
    scale = q.shape[-1] ** -0.5
    heads_first = lambda a: jnp.swapaxes(a, 1, 2)
    out = _attention(heads_first(q * jnp.asarray(scale, q.dtype)), heads_first(k), heads_first(v),
                     is_causal)
    return heads_first(out)


def _probabilities(q, k, is_causal):
    s = jnp.einsum("bnqh,bnkh->bnqk", q, k, preferred_element_type=jnp.float32)
    if is_causal:
        t = s.shape[-1]
        s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
    s = s - jnp.max(s, axis=-1, keepdims=True)
    e = jnp.exp(s)
    return e / jnp.sum(e, axis=-1, keepdims=True)


# The backward pass by hand: autodiff of the softmax makes extra passes over the [T, T] scores;
# this one uses the flash-attention identity dS = P * (dP - rowsum(dO * O)), whose row sum runs
# over head_dim instead of the sequence.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q, k, v, is_causal):
    p = _probabilities(q, k, is_causal)
    return jnp.einsum("bnqk,bnkh->bnqh", p.astype(v.dtype), v)


def _attention_fwd(q, k, v, is_causal):
    # Named so that a remat policy can save them: the backward pass then needs neither the
    # q.k^T product nor the softmax again.
    p = checkpoint_name(_probabilities(q, k, is_causal), PROBS_NAME)
    out = checkpoint_name(jnp.einsum("bnqk,bnkh->bnqh", p.astype(v.dtype), v), OUT_NAME)
    return out, (q, k, v, p, out)


def _attention_bwd(is_causal, residuals, d_out):
    q, k, v, p, out = residuals
    d_v = jnp.einsum("bnqk,bnqh->bnkh", p.astype(d_out.dtype), d_out)
    d_p = jnp.einsum("bnqh,bnkh->bnqk", d_out, v, preferred_element_type=jnp.float32)
    row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    d_s = p * (d_p - row)  # masked entries have p = 0, so no gradient reaches them
    d_q = jnp.einsum("bnqk,bnkh->bnqh", d_s.astype(k.dtype), k)
    d_k = jnp.einsum("bnqk,bnqh->bnkh", d_s.astype(q.dtype), q)
    return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype)


_attention.defvjp(_attention_fwd, _attention_bwd)
