"""A random-init tiny export and a few synthetic face files for the inference tests (predict CLI,
zero-shot API, Colab notebook): the real load/preprocess/encode path at a size that compiles in
seconds, without training anything."""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

# The synthetic generator's basic classes (its eval folder names) and the demo's prompt nouns.
FACE_CLASSES = ("neutral", "happy", "sad", "surprise")
FACE_SIZE = 40  # not the model's 32 px, so every file goes through resize and centre crop


def tiny_model_config():
    from emocap_jax.models.config import variant

    config = variant("tiny")
    # The tiny variant's 1000-token vocabulary is for weight-parity fixtures; the export records a
    # CLIP BPE tokenizer, whose ids need the full vocabulary (as configs/tiny.py does).
    text = dataclasses.replace(config.text, vocab_size=49408, context_length=16)
    return config.replace(text=text)


def make_tiny_export(path: pathlib.Path, seed: int = 0, config=None) -> pathlib.Path:
    """Writes a random tiny CLIP as an export folder (what training's _export writes: params,
    model config and the tokenizer config).

    The weights are drawn in NumPy over the model's own parameter shapes rather than by the Flax
    initialiser: compiling `init_params` costs 8-13 s on two busy cores, the draw costs nothing,
    and inference needs valid weights, not the initialiser's distribution. Layer-norm scales sit
    near 1 and logit_scale at CLIP's initial log(1/0.07)."""
    import jax

    from emocap_jax import params_io
    from emocap_jax.models.clip import param_shapes
    from emocap_jax.tokenizers import ClipBpeTokenizer

    config = config or tiny_model_config()
    rng = np.random.default_rng(seed)

    def draw(keypath, shape):
        name = jax.tree_util.keystr(keypath)
        if name == "['logit_scale']":
            return np.asarray(config.init_logit_scale, np.float32)
        if "['scale']" in name:
            return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        return (0.05 * rng.standard_normal(shape)).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(
        draw, param_shapes(config), is_leaf=lambda x: isinstance(x, tuple))
    tokenizer = ClipBpeTokenizer(context_length=config.text.context_length)
    return params_io.save_params(path, params, config, tokenizer.to_config(),
                                 {"layout": "tests.inference_fixtures", "seed": seed})


def write_faces(root: pathlib.Path, per_class: int = 1) -> list[pathlib.Path]:
    """Synthetic faces as PNGs in benchmark-style class folders root/<class>/<id>.png."""
    from emocap_jax.data.synthetic.faces import render_face, sample_face_spec

    paths = []
    for c, label in enumerate(FACE_CLASSES):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            index = c * per_class + i
            spec = sample_face_spec(0, "eval", index, label, identity_index=index)
            path = root / label / f"face_{index:03d}.png"
            render_face(spec, size=FACE_SIZE).save(path)
            paths.append(path)
    return paths


def clip_reference_probabilities(model, images_uint8: np.ndarray, labels, templates,
                                 prompt_mask) -> np.ndarray:
    """Zero-shot probabilities in NumPy from the model's raw encoders, one prompt at a time: the
    independent reference for EmoCapCLIP.zero_shot."""
    image = model.encode_image(images_uint8).astype(np.float64)
    image /= np.linalg.norm(image, axis=-1, keepdims=True)
    rows = []
    for label, is_prompt in zip(labels, prompt_mask):
        texts = [label] if is_prompt else [t.format(label) for t in templates]
        emb = np.concatenate([model.encode_text(model.tokenize([t])) for t in texts])
        emb = emb.astype(np.float64)
        emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
        mean = emb.mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
    logits = model.logit_scale * image @ np.stack(rows).T
    logits -= logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=-1, keepdims=True)
