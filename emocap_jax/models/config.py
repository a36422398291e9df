"""Architecture description of the two CLIP towers, shared by the model, the weight converter and
checkpoints.

A `CLIPConfig` is plain data (JSON round-trips through `to_dict`/`from_dict`) so that a checkpoint
folder can carry the exact architecture that produced its parameters, and so that `ml_collections`
configs can describe it field by field (`--config.model.vision.image_size=336`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

ACTIVATIONS = ("quick_gelu", "gelu")
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
REMAT_POLICIES = ("full", "dots")
VISION_POOLS = ("token", "gap")
VISION_STEMS = ("patch", "conv")
VISION_LOCAL_HEADS = ("none", "patch_mlp", "patch_conv", "patch_fine")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    # Image embedding: "token" (CLIP: the class token) or "gap" (the mean of the patch tokens, as
    # open_clip's pool_type "avg" and big_vision's ViTs). From random init on small, low-contrast
    # faces the class token hardly depends on the image (cosine ~0.98 between any two faces),
    # while the patch mean follows the image's content from the first step.
    pool: str = "token"
    # Patch embedding: "patch" (CLIP: one stride-p p x p linear projection) or "conv" (Xiao et al.,
    # "Early convolutions help transformers see better", NeurIPS 2021: log2(p) stride-2 3x3
    # convolutions with GELU, then a linear map to the width). A from-scratch ViT with the linear
    # stem learns low-resolution faces very slowly; the convolutional stem gives it the local
    # features a CNN starts from. Neither open_clip nor Hugging Face CLIP can express it.
    stem: str = "patch"
    # The patch tokens the local region-sentence loss pools (and `explain` and the grounding
    # protocol map): "none" (CLIP's: the last layer's patch tokens, projected) or "patch_mlp" (a
    # small head on each patch's own embedding, before any attention: LayerNorm, MLP to mlp_dim,
    # linear map to the embedding) or "patch_conv" (the same with a 3x3 convolution over the
    # patch grid as the hidden layer: a token sees its own patch and its 8 neighbours) or
    # "patch_fine" ("patch_mlp" on the head's own embedding of squares half the patch side, with
    # its own positions: a grid twice as fine, on which brows and eyes fall on different tokens;
    # ABLATIONS.md: that alone did not put their sentences on them). The last
    # layer's tokens have seen the whole face through every attention layer, and trained from
    # scratch the local loss learns to read any sentence off one such token (ABLATIONS.md: every
    # map peaks on the same patch); a token that sees only its own patch (or its neighbourhood)
    # can match a sentence only where the sentence's evidence is. Not part of CLIP: exports to
    # open_clip and Hugging Face refuse it.
    local_head: str = "none"

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def local_patch_size(self) -> int:
        """Side in pixels of the squares the local tokens describe (and `explain` maps)."""
        return self.patch_size // 2 if self.local_head == "patch_fine" else self.patch_size

    @property
    def local_grid_size(self) -> int:
        """Side of the grid of local tokens: the patch grid, twice as fine for "patch_fine"."""
        return self.image_size // self.local_patch_size

    @property
    def local_token_offset(self) -> float:
        """Where the local tokens sit in the model's input: local token (row r, column c) is
        centred at pixel coordinates (x, y) = offset + (c, r) * local_patch_size (continuous
        coordinates: pixel j spans [j, j + 1)). The centre of its square (half a square) for the
        linear patch embeddings; with the convolutional stem (local_head other than
        "patch_fine", which embeds its own squares linearly) the centre of the token's receptive
        field: log2(p) stride-2 3x3 convolutions with one pixel of padding centre output token k
        on input pixel p * k (each layer's output j on its input's 2j), i.e. coordinate
        p * k + 0.5, (p - 1) / 2 pixels before its patch's centre. The field spans pixels
        p * k - (p - 1) .. p * k + (p - 1), so the first row's and column's hang half over the
        zero padding. "patch_conv"'s 3x3 window over the token grid is centred on the token, so
        it moves no centre."""
        if self.stem == "conv" and self.local_head != "patch_fine":
            return 0.5
        return self.local_patch_size / 2

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2


@dataclasses.dataclass(frozen=True)
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_dim: int = 2048
    # Pooling token: None pools at the argmax of the ids (open_clip's default, correct for CLIP BPE
    # where end-of-text has the largest id); an int pools at the first occurrence of that id, which
    # tokenizers whose end token is not the largest id (sentencepiece, Hugging Face) need.
    eot_token_id: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 512
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    # OpenAI's weights were trained with QuickGELU; open_clip's LAION weights and most others with
    # exact (erf) GELU. Using the wrong one costs percent-level accuracy, not an error.
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    # Parameters are always float32; this is the dtype of activations and matmuls.
    dtype: str = "float32"
    # Rematerialise each transformer block in the backward pass (memory for compute).
    remat: bool = False
    # What a remat'ed block keeps for the backward pass: "full" keeps only the block input (least
    # memory), "dots" also keeps the outputs of its weight matmuls and the XLA attention kernel's
    # probabilities and output (recomputes only the cheap element-wise ops; cuDNN attention is
    # recomputed).
    remat_policy: str = "full"
    # Attention kernel: "auto" (cuDNN's fused flash attention on GPU in bf16, XLA's otherwise),
    # "xla" or "cudnn".
    attention: str = "auto"
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100.0)

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model.activation={self.activation!r}: expected one of {ACTIVATIONS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r}: expected one of {DTYPES}")
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"model.attention={self.attention!r}: expected one of "
                             f"{ATTENTION_IMPLS}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"model.remat_policy={self.remat_policy!r}: expected one of "
                             f"{REMAT_POLICIES}")
        v, t = self.vision, self.text
        if v.pool not in VISION_POOLS:
            raise ValueError(f"model.vision.pool={v.pool!r}: expected one of {VISION_POOLS}")
        if v.local_head not in VISION_LOCAL_HEADS:
            raise ValueError(f"model.vision.local_head={v.local_head!r}: expected one of "
                             f"{VISION_LOCAL_HEADS}")
        if v.local_head == "patch_fine" and v.patch_size % 2:
            raise ValueError(f"model.vision.local_head='patch_fine' halves the patch side: "
                             f"model.vision.patch_size={v.patch_size} must be even")
        if v.stem not in VISION_STEMS:
            raise ValueError(f"model.vision.stem={v.stem!r}: expected one of {VISION_STEMS}")
        if v.stem == "conv" and (v.patch_size < 2 or v.patch_size & (v.patch_size - 1)):
            raise ValueError(f"model.vision.stem='conv' needs a power-of-two patch_size >= 2, got "
                             f"{v.patch_size}")
        if v.image_size % v.patch_size:
            raise ValueError(
                f"model.vision.image_size={v.image_size} is not a multiple of "
                f"model.vision.patch_size={v.patch_size}")
        for name, tower in (("vision", v), ("text", t)):
            if tower.width % tower.heads:
                raise ValueError(
                    f"model.{name}.width={tower.width} is not divisible by "
                    f"model.{name}.heads={tower.heads}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CLIPConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        vision = VisionConfig(**dict(d.pop("vision", {})))
        text = TextConfig(**dict(d.pop("text", {})))
        return cls(vision=vision, text=text, **d)

    def replace(self, **changes) -> "CLIPConfig":
        return dataclasses.replace(self, **changes)


def _clip(embed_dim, vision, text, activation="quick_gelu") -> CLIPConfig:
    return CLIPConfig(embed_dim=embed_dim, vision=vision, text=text, activation=activation)


_TEXT_B = TextConfig(width=512, layers=12, heads=8, mlp_dim=2048)
_TEXT_L = TextConfig(width=768, layers=12, heads=12, mlp_dim=3072)

# Standard OpenAI CLIP architectures (open_clip names) and tiny variants for tests and demos.
VARIANTS: dict[str, CLIPConfig] = {
    "ViT-B-32": _clip(512, VisionConfig(224, 32, 768, 12, 12, 3072), _TEXT_B),
    "ViT-B-16": _clip(512, VisionConfig(224, 16, 768, 12, 12, 3072), _TEXT_B),
    "ViT-L-14": _clip(768, VisionConfig(224, 14, 1024, 24, 16, 4096), _TEXT_L),
    "ViT-L-14-336": _clip(768, VisionConfig(336, 14, 1024, 24, 16, 4096), _TEXT_L),
    # The architecture of the peers' tiny fixtures: 32 px images, 8 px patches, 1000-token vocab.
    "tiny": _clip(24, VisionConfig(32, 8, 64, 2, 2, 256), TextConfig(16, 1000, 32, 2, 2, 128)),
    # Small enough to train on a 2-core CPU in minutes, with the real CLIP BPE vocabulary.
    "demo": _clip(128, VisionConfig(64, 8, 192, 4, 3, 768),
                  TextConfig(32, 49408, 128, 4, 2, 512)),
}
# open_clip also spells them with slashes ("ViT-B/16"), as OpenAI and big_vision do.
_ALIASES = {
    "ViT-B/32": "ViT-B-32", "ViT-B/16": "ViT-B-16", "ViT-L/14": "ViT-L-14",
    "ViT-L/14@336px": "ViT-L-14-336", "ViT-L/14-336": "ViT-L-14-336",
}


def variant(name: str) -> CLIPConfig:
    """Returns the architecture registered under `name` ("ViT-B-16", "ViT-B/16", "tiny", ...)."""
    key = name if name in VARIANTS else _ALIASES.get(name)
    if key is None:
        key = {k.lower(): k for k in VARIANTS}.get(name.lower())
    if key is None:
        raise ValueError(f"unknown model variant {name!r}; known: {sorted(VARIANTS)}")
    return VARIANTS[key]
