"""Captions for faces that carry only a class label (benchmark converters, image folders).

A labelled record without a global caption gets, each time it is read, a global sentence drawn
from the zero-shot templates (`evaluate.prompts.EMOTION_TEMPLATES`) filled with the class's prompt
word, and the class's description (the EmoCap summary register, "In summary, the face shows
anger, marked by lowered and knitted brows, ...") as its summary. Training on the very templates
that zero-shot evaluation averages over means the training-time captions and the evaluation
prompts are one vocabulary: the end-of-training zero-shot and `python -m emocap_jax.evaluate`
measure the same thing the model was taught. Labels are mapped to canonical emotions first
("angry", "anger" and "ANGRY" give the same text), as the evaluation registry does.
"""
from __future__ import annotations

from emocap_jax.evaluate import prompts

TEMPLATES = prompts.EMOTION_TEMPLATES


def global_caption(label: str, template_index: int) -> str:
    """The global sentence for `label` with template `template_index` (taken modulo the count)."""
    return TEMPLATES[template_index % len(TEMPLATES)].format(prompts.prompt_word(label))


def summary_caption(label: str) -> str:
    """The summary sentence for `label`: its class description."""
    return prompts.description(label)
