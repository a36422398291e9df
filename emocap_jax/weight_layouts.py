"""The key layouts of open_clip / OpenAI and Hugging Face CLIP checkpoints, as data: for every
Flax parameter, the torch tensor(s) it comes from and the transform between them, plus each
transform's inverse. `emocap_jax.convert` reads checkpoints with these rules; `emocap_jax.export`
writes them by walking the same rules backwards.

Layout facts: torch Linear weights are [out, in] (Flax kernels are [in, out]); attention
`in_proj_weight` fuses q, k, v along its first axis (Hugging Face keeps three Linears); conv
weights are [out, in, kh, kw] (Flax: [kh, kw, in, out]); open_clip's `visual.proj` and
`text_projection` are already [in, out] while Hugging Face's projections are Linears; CLIP's ViT has
no patch-conv bias.
"""
from __future__ import annotations

import numpy as np

from emocap_jax.models.config import CLIPConfig

LAYOUTS = ("open_clip", "hf")

_T = lambda w: w.T  # torch Linear [out, in] -> Flax kernel [in, out]
_ID = lambda w: w
_CONV = lambda w: w.transpose(2, 3, 1, 0)  # [out, in, kh, kw] -> [kh, kw, in, out]
_SCALAR = lambda w: w.reshape(())
# q, k, v Linears fused in the order the Flax kernel's columns expect: [q | k | v].
_FUSE_QKV_KERNEL = lambda *ws: np.concatenate(ws, axis=0).T
_FUSE_QKV_BIAS = lambda *bs: np.concatenate(bs, axis=0)

# The inverse of each transform above, Flax value -> the tuple of torch tensors it was made from:
# what `emocap_jax.export` writes, walking the same rules backwards.
INVERSE_TRANSFORMS = {
    _T: lambda w: (w.T,),
    _ID: lambda w: (w,),
    _CONV: lambda w: (w.transpose(3, 2, 0, 1),),
    _SCALAR: lambda w: (np.asarray(w).reshape(()),),
    _FUSE_QKV_KERNEL: lambda w: tuple(np.split(w.T, 3, axis=0)),
    _FUSE_QKV_BIAS: lambda b: tuple(np.split(b, 3, axis=0)),
}


def _block_rules_open_clip(prefix):
    """(flax sub-path, torch key suffix(es), transform) for one residual block."""
    return [
        ("ln_1/scale", "ln_1.weight", _ID), ("ln_1/bias", "ln_1.bias", _ID),
        ("ln_2/scale", "ln_2.weight", _ID), ("ln_2/bias", "ln_2.bias", _ID),
        ("attn/qkv/kernel", "attn.in_proj_weight", _T), ("attn/qkv/bias", "attn.in_proj_bias", _ID),
        ("attn/out/kernel", "attn.out_proj.weight", _T), ("attn/out/bias", "attn.out_proj.bias", _ID),
        ("mlp/fc/kernel", "mlp.c_fc.weight", _T), ("mlp/fc/bias", "mlp.c_fc.bias", _ID),
        ("mlp/proj/kernel", "mlp.c_proj.weight", _T), ("mlp/proj/bias", "mlp.c_proj.bias", _ID),
    ]


def _block_rules_hf(prefix):
    qkv = ("self_attn.q_proj.{}", "self_attn.k_proj.{}", "self_attn.v_proj.{}")
    return [
        ("ln_1/scale", "layer_norm1.weight", _ID), ("ln_1/bias", "layer_norm1.bias", _ID),
        ("ln_2/scale", "layer_norm2.weight", _ID), ("ln_2/bias", "layer_norm2.bias", _ID),
        ("attn/qkv/kernel", tuple(k.format("weight") for k in qkv), _FUSE_QKV_KERNEL),
        ("attn/qkv/bias", tuple(k.format("bias") for k in qkv), _FUSE_QKV_BIAS),
        ("attn/out/kernel", "self_attn.out_proj.weight", _T),
        ("attn/out/bias", "self_attn.out_proj.bias", _ID),
        ("mlp/fc/kernel", "mlp.fc1.weight", _T), ("mlp/fc/bias", "mlp.fc1.bias", _ID),
        ("mlp/proj/kernel", "mlp.fc2.weight", _T), ("mlp/proj/bias", "mlp.fc2.bias", _ID),
    ]


def tensor_rules(layout: str, config: CLIPConfig):
    """Yields (flax path, torch key groups, transform, stacked) for every parameter; block rules
    are stacked over layers (one key group per layer) because the Flax transformer scans over a
    leading layer axis. `INVERSE_TRANSFORMS[transform]` undoes a transform."""
    if layout == "open_clip":
        top = [
            ("visual/patch_embed/kernel", "visual.conv1.weight", _CONV),
            ("visual/class_embedding", "visual.class_embedding", _ID),
            ("visual/pos_embedding", "visual.positional_embedding", _ID),
            ("visual/ln_pre/scale", "visual.ln_pre.weight", _ID),
            ("visual/ln_pre/bias", "visual.ln_pre.bias", _ID),
            ("visual/ln_post/scale", "visual.ln_post.weight", _ID),
            ("visual/ln_post/bias", "visual.ln_post.bias", _ID),
            ("visual/proj", "visual.proj", _ID),
            ("text/token_embedding/embedding", "token_embedding.weight", _ID),
            ("text/pos_embedding", "positional_embedding", _ID),
            ("text/ln_final/scale", "ln_final.weight", _ID),
            ("text/ln_final/bias", "ln_final.bias", _ID),
            ("text/proj", "text_projection", _ID),
            ("logit_scale", "logit_scale", _SCALAR),
        ]
        towers = [("visual", "visual.transformer.resblocks.", config.vision.layers),
                  ("text", "transformer.resblocks.", config.text.layers)]
        block_rules = _block_rules_open_clip
    else:
        top = [
            ("visual/patch_embed/kernel", "vision_model.embeddings.patch_embedding.weight", _CONV),
            ("visual/class_embedding", "vision_model.embeddings.class_embedding", _ID),
            ("visual/pos_embedding", "vision_model.embeddings.position_embedding.weight", _ID),
            ("visual/ln_pre/scale", "vision_model.pre_layrnorm.weight", _ID),
            ("visual/ln_pre/bias", "vision_model.pre_layrnorm.bias", _ID),
            ("visual/ln_post/scale", "vision_model.post_layernorm.weight", _ID),
            ("visual/ln_post/bias", "vision_model.post_layernorm.bias", _ID),
            ("visual/proj", "visual_projection.weight", _T),
            ("text/token_embedding/embedding", "text_model.embeddings.token_embedding.weight", _ID),
            ("text/pos_embedding", "text_model.embeddings.position_embedding.weight", _ID),
            ("text/ln_final/scale", "text_model.final_layer_norm.weight", _ID),
            ("text/ln_final/bias", "text_model.final_layer_norm.bias", _ID),
            ("text/proj", "text_projection.weight", _T),
            ("logit_scale", "logit_scale", _SCALAR),
        ]
        towers = [("visual", "vision_model.encoder.layers.", config.vision.layers),
                  ("text", "text_model.encoder.layers.", config.text.layers)]
        block_rules = _block_rules_hf
    for path, key, fn in top:
        yield path, [(key,)], fn, False
    for tower, prefix, layers in towers:
        for sub, suffix, fn in block_rules(prefix):
            suffixes = suffix if isinstance(suffix, tuple) else (suffix,)
            per_layer = [tuple(f"{prefix}{i}.{s}" for s in suffixes) for i in range(layers)]
            yield f"{tower}/transformer/blocks/{sub}", per_layer, fn, True
