"""CLIP's text tower: causal transformer over token ids, pooled at the end-of-text token."""
from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from emocap_jax.models.config import TextConfig
from emocap_jax.models.transformer import Transformer


def end_of_text_index(token_ids, eot_token_id):
    """Index of the pooling token in each row: the argmax id (CLIP BPE, whose end-of-text id is the
    largest) or, when `eot_token_id` is given, its first occurrence (Hugging Face's rule).

    A row without `eot_token_id` gets index 0, as in transformers and open_clip: rows this
    module cannot refuse inside jit (padded or masked batch rows hold no sentence). Rows from a
    tokenizer always hold its end-of-text id; `EmoCapCLIP.encode_text`, which takes ids from
    users, refuses rows without it."""
    if eot_token_id is None:
        return jnp.argmax(token_ids, axis=-1)
    return jnp.argmax(token_ids == eot_token_id, axis=-1)


class TextTransformer(nn.Module):
    config: TextConfig
    embed_dim: int
    activation: str
    layer_norm_eps: float = 1e-5
    remat: bool = False
    remat_policy: str = "full"
    attention: str = "auto"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, token_ids):
        """token_ids: [B, T] int, T <= context_length. Returns the projected embedding [B, D]."""
        cfg = self.config
        t = token_ids.shape[-1]
        if t > cfg.context_length:
            raise ValueError(
                f"text tower has context_length={cfg.context_length} but got token ids of length {t}")
        x = nn.Embed(cfg.vocab_size, cfg.width, embedding_init=nn.initializers.normal(0.02),
                     dtype=self.dtype, name="token_embedding")(token_ids)
        pos = self.param("pos_embedding", nn.initializers.normal(0.01),
                         (cfg.context_length, cfg.width))
        x = x + pos[:t].astype(self.dtype)
        # A causal mask alone suffices: padding comes after end-of-text, so no token at or before
        # the pooling position ever attends to it.
        x = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_dim, self.activation,
                        self.layer_norm_eps, is_causal=True, remat=self.remat,
                        remat_policy=self.remat_policy, attention=self.attention,
                        dtype=self.dtype,
                        name="transformer")(x)
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="ln_final")(x)
        idx = end_of_text_index(token_ids, cfg.eot_token_id)
        pooled = jnp.take_along_axis(x, idx[:, None, None], axis=1)[:, 0]
        proj = self.param("proj", nn.initializers.normal(cfg.width ** -0.5),
                          (cfg.width, self.embed_dim))
        return pooled @ proj.astype(self.dtype)
