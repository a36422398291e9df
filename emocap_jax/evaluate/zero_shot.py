"""Zero-shot classification: class prompts through the text tower, faces through the image tower,
the nearest class wins. Templates are averaged in embedding space (CLIP's prompt ensembling)."""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np

from emocap_jax.evaluate.metrics import classification_report
from emocap_jax.models.clip import CLIP, l2_normalize

# Face-emotion templates for class nouns ("happiness", "anger"), in the register of EmoCap-style
# global captions, which is what caption-trained models match best.
EMOTION_TEMPLATES = (
    "This image portrays an expression of {}.",
    "The face conveys {}.",
    "A display of {} dominates this face.",
    "The overall affective state is {}.",
    "a photo of a face showing {}.",
)


def text_classifier(params, model_config, tokenizer, class_names: Sequence[str],
                    templates: Sequence[str] = EMOTION_TEMPLATES) -> np.ndarray:
    """[C, D] unit-norm class embeddings: the normalised mean of each class's normalised prompt
    embeddings."""
    model = CLIP(model_config)
    encode = jax.jit(lambda p, t: l2_normalize(model.apply({"params": p}, t,
                                                           method=CLIP.encode_text)))
    prompts = [t.format(c) for c in class_names for t in templates]
    emb = np.asarray(encode(params, tokenizer(prompts)))
    emb = emb.reshape(len(class_names), len(templates), -1).mean(axis=1)
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


def encode_dataset_images(params, model_config, data_dir: str, batch_size: int, mesh=None):
    """Unit-norm image embeddings, labels and ids of every record of a dataset folder, each exactly
    once: the eval iterator pads the last batch and marks padding invalid."""
    from emocap_jax import sharding
    from emocap_jax.data import pipeline

    model = CLIP(model_config)
    if mesh is not None:
        shards = int(np.prod([mesh.shape[a] for a in sharding.batch_axes(mesh)]))
        batch_size = -(-batch_size // shards) * shards  # a multiple of the device count
        encode = jax.jit(
            lambda p, x: l2_normalize(model.apply({"params": p}, x, method=CLIP.encode_image)),
            in_shardings=(None, sharding.batch_sharding(mesh)))
    else:
        encode = jax.jit(
            lambda p, x: l2_normalize(model.apply({"params": p}, x, method=CLIP.encode_image)))
    iterator = pipeline.make_eval_iterator(
        data_dir, None, batch_size, model_config.vision.image_size,
        process_index=jax.process_index(), process_count=jax.process_count())
    feats, labels, ids = [], [], []
    for batch in iterator:
        images = batch["image"]
        if images.ndim == 5:  # video clips: average the frame embeddings
            b, f = images.shape[:2]
            emb = np.asarray(encode(params, images.reshape(b * f, *images.shape[2:])))
            emb = emb.reshape(b, f, -1).mean(axis=1)
            emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
        else:
            emb = np.asarray(encode(params, images))
        valid = np.asarray(batch["valid"], bool)
        feats.append(emb[valid])
        labels.append(np.asarray(batch["label_id"])[valid])
        ids.extend(np.asarray(batch["id"])[valid].tolist())
    return np.concatenate(feats), np.concatenate(labels), ids


def zero_shot_classification(params, model_config, tokenizer, data_dir: str,
                             classes: Optional[Sequence[str]] = None,
                             templates: Sequence[str] = EMOTION_TEMPLATES, batch_size: int = 256,
                             mesh=None) -> dict:
    """UAR/WAR/macro-F1 and the confusion matrix of zero-shot prediction on a labelled dataset.
    `classes` are the prompt words in label_id order (default: the dataset's recorded classes)."""
    from emocap_jax.data.shard_writer import load_metadata

    metadata = load_metadata(data_dir)
    recorded = metadata.get("classes")
    if classes is None:
        if not recorded:
            raise ValueError(f"{data_dir}: metadata.json records no classes; pass them")
        classes = recorded
    elif recorded and len(recorded) != len(classes):
        raise ValueError(f"{len(classes)} class names given but {data_dir} has "
                         f"{len(recorded)} classes {recorded}")
    classifier = text_classifier(params, model_config, tokenizer, classes, templates)
    feats, labels, _ = encode_dataset_images(params, model_config, data_dir, batch_size, mesh)
    predictions = np.argmax(feats @ classifier.T, axis=-1)
    report = classification_report(labels, predictions, list(classes))
    report["dataset"] = str(data_dir)
    return report
