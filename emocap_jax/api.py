"""The user-facing model object: `emocap_jax.load(path)`.

    model = emocap_jax.load("open_clip_model.safetensors")   # or an HF folder, or our own export
    tokens = model.tokenize(["a photo of a happy face"])
    text_features = model.encode_text(tokens)                 # NumPy [B, D], unnormalised
    image_features = model.encode_image(images_nhwc)          # float32, CLIP-normalised (or uint8)

Features are unnormalised like open_clip's `encode_*(normalize=False)`.
"""
from __future__ import annotations

import pathlib
from typing import Optional, Sequence

import numpy as np

from emocap_jax.models.config import CLIPConfig


class EmoCapCLIP:
    """Parameters, architecture and tokenizer of a CLIP model, with jitted encoders."""

    def __init__(self, params, config: CLIPConfig, tokenizer=None,
                 description: Optional[dict] = None, batch_size: int = 256):
        import jax
        from emocap_jax.models.clip import CLIP

        self.config = config
        self.params = jax.tree_util.tree_map(jax.numpy.asarray, params)
        self.tokenizer = tokenizer
        self.description = description or {}
        self.batch_size = batch_size
        module = CLIP(config)
        self._encode_image = jax.jit(
            lambda p, x: module.apply({"params": p}, x, method=CLIP.encode_image))
        self._encode_text = jax.jit(
            lambda p, t: module.apply({"params": p}, t, method=CLIP.encode_text))
        self._logit_scale = float(module.apply({"params": self.params}, method=CLIP.logit_scale))

    @property
    def logit_scale(self) -> float:
        return self._logit_scale

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    def _batched(self, fn, x):
        # Fixed-size chunks bound memory; the last one is padded so only one shape is compiled.
        n = x.shape[0]
        if n == 0:
            return np.zeros((0, self.config.embed_dim), np.float32)
        bs = min(self.batch_size, n)
        outs = []
        for start in range(0, n, bs):
            chunk = x[start:start + bs]
            valid = chunk.shape[0]
            if valid < bs:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - valid, axis=0)])
            outs.append(np.asarray(fn(self.params, chunk))[:valid])
        return np.concatenate(outs)

    def encode_image(self, images) -> np.ndarray:
        """images: [B, H, W, 3] NHWC, float32 already CLIP-normalised, or uint8 (normalised here)."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"encode_image expects NHWC images [B, H, W, 3], got {images.shape}")
        if images.dtype != np.uint8:
            images = images.astype(np.float32)
        return self._batched(self._encode_image, images)

    def encode_text(self, token_ids) -> np.ndarray:
        """token_ids: [B, T] integer ids, T <= the text tower's context length."""
        token_ids = np.asarray(token_ids)
        if token_ids.ndim != 2:
            raise ValueError(f"encode_text expects token ids [B, T], got {token_ids.shape}")
        return self._batched(self._encode_text, token_ids.astype(np.int32))

    def tokenize(self, texts: Sequence[str] | str) -> np.ndarray:
        if self.tokenizer is None:
            raise ValueError(
                "this model has no known tokenizer (its vocabulary is not CLIP BPE and its "
                "checkpoint records none): tokenize with your own tokenizer and call encode_text")
        return self.tokenizer(texts, context_length=self.config.text.context_length)

    def __repr__(self):
        v, t = self.config.vision, self.config.text
        return (f"EmoCapCLIP(ViT {v.image_size}px/{v.patch_size} w{v.width} L{v.layers}, "
                f"text w{t.width} L{t.layers}, embed {self.config.embed_dim})")


def _tokenizer_for(tokenizer_config):
    if not tokenizer_config:
        return None
    from emocap_jax.tokenizers import tokenizer_from_config
    return tokenizer_from_config(tokenizer_config)


def load(path, source: str = "auto", image_size: Optional[int] = None,
         activation: Optional[str] = None, dtype: Optional[str] = None) -> EmoCapCLIP:
    """Loads a model from an emocap_jax export or training folder, an open_clip/OpenAI checkpoint
    (file or folder) or a Hugging Face CLIP checkpoint (file or folder).

    source: "auto" (recognise the kind), "emocap", "open_clip", "openai" or "hf".
    image_size: run at another resolution (position embeddings are resized).
    activation: override for open_clip weights that come without their config.
    dtype: compute dtype ("float32" or "bfloat16"); parameters stay float32.
    """
    from emocap_jax import convert, params_io

    path = pathlib.Path(path)
    if source in ("auto", "emocap") and path.is_dir():
        export = _find_export(path)
        if export is not None:
            params, config, description = params_io.load_params(export)
            tokenizer_cfg = description.get("tokenizer")
        elif source == "emocap":
            raise FileNotFoundError(f"{path}: no emocap_jax export (model_config.json + params/)")
    if source not in ("auto", "emocap") or not path.is_dir() or export is None:
        params, config, description = convert.convert(path, source, activation)
        tokenizer_cfg = convert.default_tokenizer_config(config)
    if image_size:
        params, config = convert.with_image_size(params, config, image_size)
    if dtype:
        config = config.replace(dtype=dtype)
    return EmoCapCLIP(params, config, _tokenizer_for(tokenizer_cfg), description)


def _find_export(path: pathlib.Path) -> Optional[pathlib.Path]:
    """An export folder itself, or a training workdir's latest export."""
    from emocap_jax import params_io

    if params_io.is_params_dir(path):
        return path
    exported = path / "export"
    if params_io.is_params_dir(exported):
        return exported
    return None
