"""A plain NumPy forward pass of open_clip's CLIP, straight from a torch-layout state dict.

Independent of the Flax model and of the converter's key mapping: it reads open_clip's tensor names
directly and follows open_clip's `VisionTransformer`/`TextTransformer` code. It is checked against
the peers' own outputs on the tiny fixtures, then used as the reference for full-size shapes whose
real weights are not in the repository.
"""
import math

import numpy as np
from scipy.special import erf


def _ln(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _act(x, quick_gelu):
    if quick_gelu:
        return x / (1 + np.exp(-1.702 * x))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def _attention(x, sd, p, heads, causal):
    t, w = x.shape
    qkv = x @ sd[p + "in_proj_weight"].T + sd[p + "in_proj_bias"]
    q, k, v = np.split(qkv, 3, axis=-1)
    hd = w // heads
    q, k, v = (a.reshape(t, heads, hd).transpose(1, 0, 2) for a in (q, k, v))
    s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
    if causal:
        s = s + np.triu(np.full((t, t), -np.inf), 1)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    o = (s @ v).transpose(1, 0, 2).reshape(t, w)
    return o @ sd[p + "out_proj.weight"].T + sd[p + "out_proj.bias"]


def _transformer(x, sd, prefix, heads, quick_gelu, causal):
    i = 0
    while f"{prefix}{i}.ln_1.weight" in sd:
        p = f"{prefix}{i}."
        x = x + _attention(_ln(x, sd[p + "ln_1.weight"], sd[p + "ln_1.bias"]), sd, p + "attn.",
                           heads, causal)
        h = _ln(x, sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = _act(h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"], quick_gelu)
        x = x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
        i += 1
    return x


def encode_image(sd, image_chw, heads, quick_gelu):
    """image_chw: [3, H, W] normalised. Returns [D]."""
    conv = sd["visual.conv1.weight"]  # [w, 3, p, p]
    w, _, p, _ = conv.shape
    c, h, wd = image_chw.shape
    g = h // p
    patches = image_chw.reshape(c, g, p, g, p).transpose(1, 3, 0, 2, 4).reshape(g * g, c * p * p)
    x = patches @ conv.reshape(w, -1).T
    x = np.concatenate([sd["visual.class_embedding"][None], x]) + sd["visual.positional_embedding"]
    x = _ln(x, sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    x = _transformer(x, sd, "visual.transformer.resblocks.", heads, quick_gelu, causal=False)
    x = _ln(x, sd["visual.ln_post.weight"], sd["visual.ln_post.bias"])
    return x[0] @ sd["visual.proj"]


def encode_text(sd, tokens, heads, quick_gelu):
    """tokens: [T] ids. Returns [D] pooled at argmax (open_clip's default)."""
    t = len(tokens)
    x = sd["token_embedding.weight"][tokens] + sd["positional_embedding"][:t]
    x = _transformer(x, sd, "transformer.resblocks.", heads, quick_gelu, causal=True)
    x = _ln(x, sd["ln_final.weight"], sd["ln_final.bias"])
    return x[int(np.argmax(tokens))] @ sd["text_projection"]


def open_clip_shapes(image_size, patch, v_width, v_layers, v_mlp, embed_dim, ctx, vocab, t_width,
                     t_layers, t_mlp):
    """Tensor names and shapes of an open_clip CLIP ViT state dict, as open_clip names them."""
    shapes = {
        "visual.conv1.weight": (v_width, 3, patch, patch),
        "visual.class_embedding": (v_width,),
        "visual.positional_embedding": ((image_size // patch) ** 2 + 1, v_width),
        "visual.ln_pre.weight": (v_width,), "visual.ln_pre.bias": (v_width,),
        "visual.ln_post.weight": (v_width,), "visual.ln_post.bias": (v_width,),
        "visual.proj": (v_width, embed_dim),
        "token_embedding.weight": (vocab, t_width),
        "positional_embedding": (ctx, t_width),
        "ln_final.weight": (t_width,), "ln_final.bias": (t_width,),
        "text_projection": (t_width, embed_dim),
        "logit_scale": (),
    }
    for prefix, w, layers, mlp in (("visual.transformer.resblocks.", v_width, v_layers, v_mlp),
                                   ("transformer.resblocks.", t_width, t_layers, t_mlp)):
        for i in range(layers):
            p = f"{prefix}{i}."
            shapes.update({
                p + "ln_1.weight": (w,), p + "ln_1.bias": (w,),
                p + "ln_2.weight": (w,), p + "ln_2.bias": (w,),
                p + "attn.in_proj_weight": (3 * w, w), p + "attn.in_proj_bias": (3 * w,),
                p + "attn.out_proj.weight": (w, w), p + "attn.out_proj.bias": (w,),
                p + "mlp.c_fc.weight": (mlp, w), p + "mlp.c_fc.bias": (mlp,),
                p + "mlp.c_proj.weight": (w, mlp), p + "mlp.c_proj.bias": (w,),
            })
    return shapes


def open_clip_to_hf_names(sd):
    """Renames an open_clip state dict to Hugging Face CLIPModel's names (splitting in_proj)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("visual.transformer.resblocks.") or k.startswith("transformer.resblocks."):
            tower = "vision_model" if k.startswith("visual.") else "text_model"
            rest = k.split("resblocks.", 1)[1]
            i, name = rest.split(".", 1)
            p = f"{tower}.encoder.layers.{i}."
            if name.startswith("attn.in_proj_"):
                kind = name.rsplit("_", 1)[1]  # weight / bias
                for part, t in zip("qkv", np.split(v, 3, axis=0)):
                    out[f"{p}self_attn.{part}_proj.{kind}"] = t
                continue
            name = (name.replace("attn.out_proj", "self_attn.out_proj")
                    .replace("ln_1", "layer_norm1").replace("ln_2", "layer_norm2")
                    .replace("mlp.c_fc", "mlp.fc1").replace("mlp.c_proj", "mlp.fc2"))
            out[p + name] = v
            continue
        out[{
            "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
            "visual.class_embedding": "vision_model.embeddings.class_embedding",
            "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
            "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
            "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
            "visual.ln_post.weight": "vision_model.post_layernorm.weight",
            "visual.ln_post.bias": "vision_model.post_layernorm.bias",
            "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
            "positional_embedding": "text_model.embeddings.position_embedding.weight",
            "ln_final.weight": "text_model.final_layer_norm.weight",
            "ln_final.bias": "text_model.final_layer_norm.bias",
            "logit_scale": "logit_scale",
        }.get(k, k)] = v
    out["visual_projection.weight"] = out.pop("visual.proj").T
    out["text_projection.weight"] = out.pop("text_projection").T
    return out
