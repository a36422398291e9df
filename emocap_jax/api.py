"""The user-facing model object: `emocap_jax.load(path)`.

    model = emocap_jax.load("open_clip_model.safetensors")   # or an HF folder, or our own export
    tokens = model.tokenize(["a photo of a happy face"])
    text_features = model.encode_text(tokens)                 # NumPy [B, D], unnormalised
    image_features = model.encode_image(images_nhwc)          # float32, CLIP-normalised (or uint8)

Features are unnormalised like open_clip's `encode_*(normalize=False)`.

Zero-shot classification from image files, PIL images or arrays (CLIP preprocessing inside):

    probs = model.zero_shot(["face1.jpg", "face2.png"], ["happiness", "sadness", "anger"])
    probs = model.zero_shot(images, ["a photo of a smiling face", "a photo of a crying face"])

Where in each face a sentence points (the local loss's sentence-to-patch maps):

    maps = model.explain(["face1.jpg"], ["raised inner brows", "open mouth"])  # [1, 2, gh, gw]
"""
from __future__ import annotations

import numbers
import os
import pathlib
import posixpath
import re
import tempfile
import warnings
from collections.abc import Iterable
from typing import Optional, Sequence

import jax
import numpy as np
from PIL import Image

import emocap_jax.storage as storage
from emocap_jax.convert import (WEIGHT_SUFFIXES, ConversionError, convert,
                                default_tokenizer_config, no_weights_message, not_a_checkpoint,
                                not_weights_message, weights_in, with_image_size)
from emocap_jax.evaluate.prompts import EMOTION_TEMPLATES
from emocap_jax.explain import upsample_maps
from emocap_jax.losses import sentence_patch_logits
from emocap_jax.models.clip import CLIP
from emocap_jax.models.config import CLIPConfig
from emocap_jax.models.token_rows import check_token_rows
from emocap_jax.params_io import find_export, load_params
from emocap_jax.preprocess import channels_first_hint, load_images, preprocess
from emocap_jax.prompt_templates import check_template
from emocap_jax.tokenizers import tokenizer_from_config


class EmoCapCLIP:
    """Parameters, architecture and tokenizer of a CLIP model, with jitted encoders."""

    def __init__(self, params, config: CLIPConfig, tokenizer=None,
                 description: Optional[dict] = None, batch_size: int = 256):

        self.config = config
        self.params = jax.tree_util.tree_map(jax.numpy.asarray, params)
        self.tokenizer = tokenizer
        self.description = description or {}
        self.batch_size = batch_size
        self._label_cache: dict = {}  # (labels, templates, label_mode) -> [C, D]
        self._label_cache_params = None  # the params the cached embeddings were computed with
        module = CLIP(config)
        self._encode_image = jax.jit(
            lambda p, x: module.apply({"params": p}, x, method=CLIP.encode_image))
        self._encode_text = jax.jit(
            lambda p, t: module.apply({"params": p}, t, method=CLIP.encode_text))
        self._patch_tokens = jax.jit(
            lambda p, x: module.apply({"params": p}, x, True, method=CLIP.encode_image)[1])
        self._module = module
        self._logit_scale_of = (None, None)  # (params, their logit scale)

    @property
    def batch_size(self) -> int:
        """Images or texts per encoder call (the last chunk is padded); bounds device memory."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if (not isinstance(value, numbers.Integral) or isinstance(value, bool)
                or value < 1):
            raise ValueError(f"batch_size must be a positive integer, got {value!r}")
        self._batch_size = int(value)

    @property
    def logit_scale(self) -> float:
        """exp of the learnt temperature of the current params (recomputed after a swap)."""
        params, scale = self._logit_scale_of
        if params is not self.params:
            scale = float(self._module.apply({"params": self.params}, method=CLIP.logit_scale))
            self._logit_scale_of = (self.params, scale)
        return scale

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    def _batched(self, fn, x, empty_shape=None):
        # Fixed-size chunks bound memory; the last one is padded so only one shape is compiled.
        # Below one full chunk the size is rounded up to a power of two, so calls with varying
        # numbers of images or prompts (zero-shot with a new label set) reuse a few executables
        # instead of compiling one per count.
        n = x.shape[0]
        if n == 0:
            return np.zeros((0, *(empty_shape or (self.config.embed_dim,))), np.float32)
        bs = min(self.batch_size, 1 << (n - 1).bit_length())
        outs = []
        for start in range(0, n, bs):
            chunk = x[start:start + bs]
            valid = chunk.shape[0]
            if valid < bs:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - valid, axis=0)])
            outs.append(np.asarray(fn(self.params, chunk))[:valid])
        return np.concatenate(outs)

    def encode_image(self, images) -> np.ndarray:
        """images: [B, H, W, 3] NHWC, float32 already CLIP-normalised, or uint8 (normalised here).
        The raw encoder: a float batch is taken as it is (zero_shot and explain check its range)."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            hint = channels_first_hint(images.shape)
            raise ValueError(f"encode_image expects NHWC images [B, H, W, 3], got {images.shape}"
                             + (f": {hint}" if hint else ""))
        size = self.image_size
        if images.shape[1:3] != (size, size):
            raise ValueError(f"encode_image takes images at the model's {size}x{size} input size, "
                             f"got {images.shape}: model.preprocess(images) resizes and crops "
                             f"uint8 pixels to it (zero_shot and explain take any size)")
        if images.dtype != np.uint8:
            images = images.astype(np.float32)
        return self._batched(self._encode_image, images)

    def encode_text(self, token_ids) -> np.ndarray:
        """token_ids: [B, T] integer ids, T <= the text tower's context length, each in the
        vocabulary; with `config.text.eot_token_id` set, every row must hold that end-of-text id
        (its pooling position), as `tokenize` gives."""
        if isinstance(token_ids, str):
            token_ids = [token_ids]
        token_ids = np.asarray(token_ids)
        if token_ids.dtype.kind in "US" or (token_ids.dtype.kind == "O" and any(
                isinstance(x, str) for x in token_ids.ravel())):
            raise TypeError("encode_text takes token ids, not texts: "
                            "model.encode_text(model.tokenize(texts))")
        if token_ids.ndim != 2:
            raise ValueError(f"encode_text expects token ids [B, T], got {token_ids.shape}")
        if token_ids.dtype.kind == "f":
            fractional = np.flatnonzero((token_ids != np.round(token_ids)).any(axis=-1))
            if fractional.size:
                raise ValueError(f"token ids must be whole numbers, got {token_ids.dtype} ids with "
                                 f"a fractional part in row {int(fractional[0])}")
        check_token_rows(token_ids, self.config.text.vocab_size, self.config.text.eot_token_id)
        return self._batched(self._encode_text, token_ids.astype(np.int32))

    def tokenize(self, texts: Sequence[str] | str) -> np.ndarray:
        """[N, context_length] token ids of one text or a sequence of texts."""
        if not isinstance(texts, (str, Iterable)):  # None, a number: the tokenizer's own
            # error ("'NoneType' object is not iterable") did not say what it wanted
            raise TypeError(f"tokenize takes a text or a sequence of texts, got "
                            f"{type(texts).__name__}")
        if self.tokenizer is None:
            raise ValueError(
                "this model has no known tokenizer (its vocabulary is not CLIP BPE and its "
                "checkpoint records none): tokenize with your own tokenizer and call encode_text")
        return self.tokenizer(texts, context_length=self.config.text.context_length)

    # ------------------------------------------------------------------ images from files or memory

    def preprocess(self, images) -> np.ndarray:
        """CLIP preprocessing at this model's image size: RGB, shorter side resized (bicubic),
        central square crop -> [N, S, S, 3] uint8. Takes one image or a sequence of paths, PIL
        images or uint8 arrays (see `emocap_jax.preprocess.preprocess`)."""
        return preprocess(images, self.image_size)

    def load_images(self, paths) -> np.ndarray:
        """Reads image files and preprocesses them -> [N, S, S, 3] uint8; a file that is missing
        or cannot be decoded raises `emocap_jax.preprocess.ImageReadError` naming it."""
        return load_images(paths, self.image_size)

    def _image_batch(self, images) -> np.ndarray:
        """A batch encode_image takes: 4-D arrays already at the model's size pass through (uint8
        pixels, or float32 already CLIP-normalised as encode_image documents, which is checked as
        far as it can be: see `_check_normalised`); everything else is preprocessed."""
        if (not isinstance(images, (str, os.PathLike, Image.Image, list, tuple, np.ndarray))
                and hasattr(images, "__array__")):
            images = np.asarray(images)  # e.g. a jax.Array
        if isinstance(images, np.ndarray) and images.ndim == 4:
            size = self.image_size
            at_size = images.shape[1:] == (size, size, 3)
            if images.dtype == np.uint8 and at_size:
                return images
            if images.dtype != np.uint8:
                if not at_size:
                    hint = channels_first_hint(images.shape)
                    raise ValueError(
                        f"a float image batch must already be CLIP-normalised at the model's "
                        f"size [N, {size}, {size}, 3], got {images.shape}; "
                        + (hint if hint else "pass uint8 pixels to have them resized and cropped"))
                _check_normalised(images)
                return images
        return self.preprocess(images)

    # ------------------------------------------------------------------ zero-shot classification

    def encode_labels(self, labels: Sequence[str], templates: Optional[Sequence[str]] = None,
                      label_mode: str = "auto") -> np.ndarray:
        """[C, D] unit-norm text embeddings, one per label (read-only: they are cached). A class
        name is put into every template and the normalised template embeddings are averaged, then
        renormalised (CLIP's prompt ensembling, as `emocap_jax.evaluate.zero_shot.class_embeddings`
        does); a full prompt is encoded as given. `label_mode` decides which labels are which: see
        `zero_shot`."""
        labels, templates = _check_labels(labels, templates, label_mode)
        # A model whose params were swapped must not reuse the old embeddings. The cache belongs
        # to one params object, held while it is cached (an id alone could be reused by a later
        # object once the old one is freed), and is emptied when self.params is another.
        if self._label_cache_params is not self.params:
            self._label_cache.clear()
            self._label_cache_params = self.params
        key = (labels, templates, label_mode)
        cached = self._label_cache.get(key)
        if cached is not None:
            return cached
        groups, prompts = [], []
        for label in labels:
            if _as_prompt(label, label_mode):
                texts = [label]
            else:
                texts = [t.format(label) for t in templates]
            groups.append((len(prompts), len(prompts) + len(texts)))
            prompts.extend(texts)
        self._warn_truncated(prompts)
        tokens = self.tokenize(prompts)
        seen: dict = {}
        for label, (a, b) in zip(labels, groups):
            other = seen.setdefault(tokens[a:b].tobytes(), label)
            if other != label:
                raise ValueError(
                    f"labels {other!r} and {label!r} are the same text to the tokenizer (CLIP's "
                    f"lowercases, collapses whitespace and cuts long prompts): their columns would "
                    f"be identical, sharing one class's probability; keep one of them")
        emb = _unit(self.encode_text(tokens).astype(np.float64))
        classes = _unit(np.stack([emb[a:b].mean(axis=0) for a, b in groups]))
        classes = classes.astype(np.float32)
        classes.flags.writeable = False
        if len(self._label_cache) >= 16:  # a handful of label sets per session; stay bounded
            self._label_cache.pop(next(iter(self._label_cache)))
        self._label_cache[key] = classes
        return classes

    def zero_shot(self, images, class_names_or_prompts: Sequence[str],
                  templates: Optional[Sequence[str]] = None,
                  label_mode: str = "auto") -> np.ndarray:
        """Zero-shot class probabilities [N, C] (float32, rows sum to 1): the softmax over labels
        of logit_scale x the cosine similarity between each image and each label's embedding.

        images: a path, PIL image or uint8 array, a sequence of those, or a 4-D batch (uint8
            pixels at any size, or float32 already CLIP-normalised at the model's size: a float
            batch with values beyond +-3 is refused as pixels, not normalised values, and one
            entirely within [0, 1] is warned about).
        class_names_or_prompts: the labels, in the output's column order. Which are class names
            (put into `templates`, embeddings averaged) and which are full prompts (encoded as
            given) follows `label_mode`: "auto" (the rule of `label_is_prompt`), "names" (all
            class names) or "prompts" (all used as given).
        templates: strings with one "{}" for the class name; default
            `emocap_jax.evaluate.prompts.EMOTION_TEMPLATES`.
        """
        text = self.encode_labels(class_names_or_prompts, templates, label_mode)
        image = _unit(self.encode_image(self._image_batch(images)).astype(np.float64))
        logits = self.logit_scale * (image @ text.T.astype(np.float64))
        logits -= logits.max(axis=-1, keepdims=True)
        probs = np.exp(logits)
        return (probs / probs.sum(axis=-1, keepdims=True)).astype(np.float32)

    # ------------------------------------------------------------------ sentence-to-patch maps

    @property
    def pool_temperature(self) -> float:
        """tau_pool of the local loss: the training run's when its export records it, else the
        default config's."""
        source = self.description.get("source") or {}
        return float(source.get("local_pool_temperature") or DEFAULT_POOL_TEMPERATURE)

    def check_sentences(self, sentences: Sequence[str]) -> list[str]:
        """The sentences as a list; ValueError for one that is empty or longer than the text
        tower's context (named, with its token count against the limit)."""
        if isinstance(sentences, str):
            sentences = [sentences]
        sentences = list(sentences)
        if not sentences:
            raise ValueError("explain needs at least one sentence")
        limit = self.config.text.context_length
        for sentence in sentences:
            if not isinstance(sentence, str) or not sentence.strip():
                raise ValueError(f"sentences must be non-empty strings, got {sentence!r}")
            encode = getattr(self.tokenizer, "encode", None)
            if encode is not None:
                count = len(encode(sentence)) + 2  # with the start- and end-of-text tokens
                if count > limit:
                    raise ValueError(
                        f"sentence {sentence!r} is {count} tokens long (with start and end of "
                        f"text), more than the text tower's {limit}-token context: shorten it")
        return sentences

    def explain(self, images, sentences: Sequence[str], upsample: bool = False,
                pool_temperature: Optional[float] = None) -> np.ndarray:
        """Where each sentence points in each image: the local loss's sentence-to-patch maps.

        maps[i, s] = softmax over the patches p of <P_ip, u_s> / tau_pool, with P_i image i's
        projected patch tokens (not normalised) and u_s sentence s's unit-norm text embedding:
        the pooling weights with which the local region-sentence loss pools image i for sentence
        s (`emocap_jax.losses.sentence_patch_logits`). Every sentence is scored on every image.

        images: as `zero_shot` takes them (paths, PIL images, uint8 arrays, or a batch already at
            the model's size); they are preprocessed as CLIP does (shorter side resized, central
            square crop), and the maps cover that square, `self.preprocess(images)`.
        sentences: texts, each within the text tower's context (a longer one is an error naming
            it, not silently cut).
        upsample: False returns the patch grid [N, S, grid, grid] (grid = image_size //
            patch_size, twice that with vision.local_head="patch_fine"; row-major:
            maps[i, s, r, c] is the patch in row r, column c); True resizes each map bilinearly
            to the model's input pixels [N, S, image_size, image_size], each token's value at
            its centre (`VisionConfig.local_token_offset`: its patch's centre; with the
            convolutional stem its receptive field's, (patch_size - 1) / 2 pixels up and left
            of the patch's), held beyond the outer tokens (values interpolated, so an upsampled
            map no longer sums to 1).
        pool_temperature: tau_pool (default `self.pool_temperature`); it sharpens or flattens the
            maps but never moves their maximum.
        Returns float32 maps; on the patch grid each map sums to 1.
        """
        sentences = self.check_sentences(sentences)
        if self.tokenizer is None:
            self.tokenize(sentences)  # raises: no tokenizer
        tau = self.pool_temperature if pool_temperature is None else float(pool_temperature)
        if not tau > 0:
            raise ValueError(f"pool_temperature must be positive, got {tau}")
        batch = self._image_batch(images)
        if batch.dtype != np.uint8:
            batch = batch.astype(np.float32)
        vision = self.config.vision
        grid = vision.local_grid_size
        tokens = self._batched(self._patch_tokens, batch,
                               empty_shape=(grid * grid, self.config.embed_dim))
        text = _unit(self.encode_text(self.tokenize(sentences)).astype(np.float32))
        logits = np.asarray(sentence_patch_logits(tokens, text, tau), np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        maps = np.exp(logits)
        maps = (maps / maps.sum(axis=-1, keepdims=True)).astype(np.float32)
        maps = maps.reshape(len(batch), len(sentences), grid, grid)
        if upsample:
            size = vision.image_size
            maps = upsample_maps(maps, size, size, vision.local_token_offset)
        return maps

    def _warn_truncated(self, prompts: Sequence[str]) -> None:
        # The tokenizer cuts long prompts silently (as open_clip does); say which ones, since a
        # cut prompt loses exactly the words that came last.
        encode = getattr(self.tokenizer, "encode", None)
        if encode is None:
            return
        limit = self.config.text.context_length - 2  # room for start- and end-of-text
        for prompt in dict.fromkeys(prompts):
            if len(encode(prompt)) > limit:
                warnings.warn(f"prompt {prompt!r} is longer than the text tower's "
                              f"{limit + 2}-token context and is cut", stacklevel=3)

    def __repr__(self):
        v, t = self.config.vision, self.config.text
        return (f"EmoCapCLIP(ViT {v.image_size}px/{v.patch_size} w{v.width} L{v.layers}, "
                f"text w{t.width} L{t.layers}, embed {self.config.embed_dim})")


LABEL_MODES = ("auto", "names", "prompts")
# configs/default.py's loss.local_pool_temperature, for exports that do not record theirs.
DEFAULT_POOL_TEMPERATURE = 0.1
_SENTENCE_END = re.compile(r"[.!?]\s*$")
_ARTICLE_START = re.compile(r"^\s*(a|an|the)\s", re.IGNORECASE)


def label_is_prompt(label: str) -> bool:
    """The "auto" rule for zero-shot labels: a label is a full prompt, encoded as given, when it
    reads as a sentence or a noun phrase, i.e. it ends in ".", "!" or "?" or starts with the word
    "a", "an" or "the" ("a photo of a smiling face", "She looks happy."). Anything else is a class
    name, whatever its length ("happiness", "happily surprised", "angry and disgusted"), and is put
    into each prompt template."""
    return bool(_SENTENCE_END.search(label) or _ARTICLE_START.match(label))


def _as_prompt(label: str, label_mode: str) -> bool:
    return label_mode == "prompts" or (label_mode == "auto" and label_is_prompt(label))


def _check_labels(labels, templates, label_mode) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode={label_mode!r}: expected one of {LABEL_MODES}")
    if isinstance(labels, str):
        raise TypeError(f"labels must be a sequence of strings, got the single string {labels!r} "
                        f"(wrap it in a list, or split a comma-separated string)")
    labels = tuple(labels)
    if not labels:
        raise ValueError("zero-shot classification needs at least one label")
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"labels must be non-empty strings, got {label!r}")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"duplicate labels {duplicates}: each column of the output is one label")
    if templates is None:
        templates = EMOTION_TEMPLATES
    if isinstance(templates, str):
        templates = (templates,)
    templates = tuple(templates)
    if not templates:
        raise ValueError("templates is empty: give at least one, e.g. "
                         "'a photo of a face showing {}.'")
    for template in templates:
        check_template(template)
    return labels, templates


# CLIP-normalised pixels, (x / 255 - mean) / std per channel, lie within about [-1.8, 2.2]. A float
# batch beyond this limit holds pixels (0..255), not normalised values.
NORMALISED_LIMIT = 3.0


def _check_normalised(images: np.ndarray) -> None:
    """ValueError for a float batch that cannot be CLIP-normalised (values beyond
    +-NORMALISED_LIMIT, or not finite); a warning for one entirely within [0, 1], which is what
    pixels scaled to [0, 1] look like (a normalised face has negative values, wherever a channel
    is darker than CLIP's mean, about 0.45)."""
    if images.size == 0:
        return
    low, high = float(np.min(images)), float(np.max(images))
    fix = ("pass uint8 pixels (0..255) to have them normalised here, or normalise with "
           "emocap_jax.models.clip.CLIP_MEAN and CLIP_STD first")
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("the float image batch holds NaN or infinite values")
    if low < -NORMALISED_LIMIT or high > NORMALISED_LIMIT:
        raise ValueError(
            f"a float image batch must be CLIP-normalised (values within about -1.8..2.2), got "
            f"values in [{low:.4g}, {high:.4g}], which look like pixels: {fix}")
    if low >= 0.0 and high <= 1.0:
        warnings.warn(f"every value of the float image batch is within [0, 1], as pixels scaled "
                      f"to [0, 1] are, while CLIP-normalised faces have negative values; if these "
                      f"are pixels, {fix}", stacklevel=4)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _tokenizer_for(tokenizer_config):
    if not tokenizer_config:
        return None
    return tokenizer_from_config(tokenizer_config)


def load(path, source: str = "auto", image_size: Optional[int] = None,
         activation: Optional[str] = None, dtype: Optional[str] = None) -> EmoCapCLIP:
    """Loads a model from an emocap_jax export or training folder, an open_clip/OpenAI checkpoint
    (file or folder) or a Hugging Face CLIP checkpoint (file or folder). Any of them may be on a
    bucket (`gs://...`, see emocap_jax.storage): an export is read in place, a peer checkpoint is
    copied to a temporary local folder first.

    source: "auto" (recognise the kind), "emocap", "open_clip", "openai" or "hf".
    image_size: run at another resolution (position embeddings are resized): a positive multiple
        of the model's patch size, else a ValueError; None keeps the model's own.
    activation: override for open_clip or Hugging Face weights that come without their config.
    dtype: compute dtype ("float32" or "bfloat16"); parameters stay float32.
    """
    path = storage.fspath(path)
    if not storage.is_url(path):
        path = os.path.expanduser(path)  # "~/ckpt", as a notebook user writes it
    export = None
    is_dir = storage.isdir(path)
    if source in ("auto", "emocap") and is_dir:
        export = find_export(path)
        if export is not None:
            params, config, description = load_params(export)
            tokenizer_cfg = description.get("tokenizer")
        elif source == "emocap":
            raise FileNotFoundError(
                not_a_checkpoint(path) or f"{path}: no emocap_jax export (model_config.json + "
                                          f"params/)")
    if export is None:
        if storage.is_url(path):
            if not (is_dir or storage.isfile(path)):
                raise FileNotFoundError(f"no such file or folder: {path}")
            params, config, description = _convert_remote(path, source, activation)
        else:
            params, config, description = convert(pathlib.Path(path), source, activation)
        tokenizer_cfg = default_tokenizer_config(config, description)
    if image_size is not None:  # 0 is refused by with_image_size, not taken as "keep"
        params, config = with_image_size(params, config, image_size)
    if dtype is not None:  # "" is refused by CLIPConfig's check, not taken as "keep"
        config = config.replace(dtype=dtype)
    return EmoCapCLIP(params, config, _tokenizer_for(tokenizer_cfg), description)


# What `convert.locate` reads beside a weights file.
CONFIG_FILES_BESIDE_WEIGHTS = ("open_clip_config.json", "config.json")


def _convert_remote(url: str, source: str, activation: Optional[str]):
    """A peer checkpoint (file, or folder with its config) at a URL: its weights file and the
    config files beside it are copied to a temporary local folder and read there, as `convert`
    reads them locally. A folder's weights file is found from its listing first, so a folder that
    holds none (a training run without export/ yet, its checkpoints) fails with the message a local
    one gets, having copied nothing, and of a Hub folder only the weights that load are copied."""
    fs, remote = storage.filesystem(url)
    is_dir = fs.isdir(remote)
    if is_dir:
        name = weights_in(storage.listdir(url), source)
        if name is None:
            raise ConversionError(no_weights_message(url, source))
        weights = storage.join(url, name)
    elif posixpath.splitext(remote)[1] in WEIGHT_SUFFIXES:
        weights = url
    else:
        raise ConversionError(not_weights_message(url))
    with tempfile.TemporaryDirectory(prefix="emocap_load_") as tmp:
        local = os.path.join(tmp, storage.basename(weights))
        fs.get_file(storage.filesystem(weights)[1], local)
        for config_name in CONFIG_FILES_BESIDE_WEIGHTS:
            sibling = storage.join(storage.dirname(weights), config_name)
            if storage.isfile(sibling):
                fs.get_file(storage.filesystem(sibling)[1], os.path.join(tmp, config_name))
        params, config, description = convert(pathlib.Path(tmp if is_dir else local), source,
                                              activation)
        if description.get("weights") == str(pathlib.Path(local).absolute()):
            # Where the weights are, not the deleted temporary copy.
            description = dict(description, weights=weights)
    return params, config, description
