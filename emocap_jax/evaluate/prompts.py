"""Prompt text for the evaluation protocols: class prompt words, templates, one description per
class, and action-unit prompts.

Emotion words differ between benchmarks ("angry" in FER2013, "anger" in CK+, "happily surprised" in
RAF-DB compound, "anger_disgust" in MAFW compound). Every class label is mapped to a canonical
emotion here, and prompts are built from the canonical emotion's noun, adjective and visual cues, so
two benchmarks with the same emotion get the same prompts whatever their label spelling.

Descriptions follow the EmoCap100K summary sentence ("In summary, the face shows X, marked by
<cues>."): caption-trained models match that register best, and the cues are the FACS prototype of
the emotion (Ekman & Friesen; compounds after Du, Tao & Martinez 2014).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Emotion:
    noun: str        # prompt word for templates ("This image portrays an expression of {noun}.")
    adjective: str   # "The person appears {adjective}."
    cues: str        # visible facial cues, for descriptions


EMOTIONS: dict[str, Emotion] = {
    "neutral": Emotion("neutral", "neutral",
                       "relaxed brows, calm eyes and a closed, resting mouth"),
    "happiness": Emotion("happiness", "happy", "raised cheeks and lip corners pulled up into a smile"),
    "sadness": Emotion("sadness", "sad", "raised inner brows and lip corners pulled down"),
    "surprise": Emotion("surprise", "surprised", "raised brows, widened eyes and a dropped jaw"),
    "fear": Emotion("fear", "fearful",
                    "raised and drawn-together brows, widened eyes and lips stretched sideways"),
    "disgust": Emotion("disgust", "disgusted",
                       "a wrinkled nose, a raised upper lip and a lowered lower lip"),
    "anger": Emotion("anger", "angry",
                     "lowered and knitted brows, tensed eyelids and tightly pressed lips"),
    "contempt": Emotion("contempt", "contemptuous",
                        "a one-sided smirk, with one lip corner tightened and raised"),
    # RAVDESS and MAFW classes beyond the basic eight.
    "calm": Emotion("calm", "calm", "relaxed brows, soft eyes and a gently closed mouth"),
    "anxiety": Emotion("anxiety", "anxious",
                       "raised, drawn-together brows, tensed eyelids and tightened lips"),
    "helplessness": Emotion("helplessness", "helpless",
                            "raised inner brows, a slightly open mouth and drooping lip corners"),
    "disappointment": Emotion("disappointment", "disappointed",
                              "lowered brows, a downcast gaze and lip corners pulled down"),
}

# Every spelling the benchmark converters use, plus the adverbs of compound names.
_ALIASES = {
    "angry": "anger", "angrily": "anger", "ang": "anger",
    "happy": "happiness", "happily": "happiness", "joy": "happiness", "hap": "happiness",
    "sad": "sadness", "sadly": "sadness",
    "surprised": "surprise", "surprisedly": "surprise",
    "fearful": "fear", "fearfully": "fear", "afraid": "fear",
    "disgusted": "disgust", "disgustedly": "disgust",
    "contemptuous": "contempt",
    "anxious": "anxiety", "helpless": "helplessness", "disappointed": "disappointment",
}

# Class-noun templates in the register of EmoCap global captions.
EMOTION_TEMPLATES = (
    "This image portrays an expression of {}.",
    "The face conveys {}.",
    "A display of {} dominates this face.",
    "The overall affective state is {}.",
    "a photo of a face showing {}.",
)
# Compound classes are named by adjectives ("happily surprised", "angry and disgusted").
COMPOUND_TEMPLATES = (
    "This image portrays a compound expression of someone {}.",
    "The person appears {}.",
    "The face conveys a blend of emotions: {}.",
    "a photo of a face that looks {}.",
)


def canonical(label: str) -> str | None:
    """The canonical emotion of a single-emotion label, or None when it is not one we know."""
    key = label.strip().lower().replace("-", " ")
    if key in EMOTIONS:
        return key
    return _ALIASES.get(key)


def compound_parts(label: str) -> list[str] | None:
    """Canonical emotions of a compound label ("happily surprised", "anger_disgust"), or None."""
    words = label.strip().lower().replace("_", " ").replace(" and ", " ").split()
    parts = [canonical(w) for w in words]
    if len(parts) < 2 or any(p is None for p in parts):
        return None
    return parts


def prompt_word(label: str) -> str:
    """The word a template is filled with: the canonical noun for single emotions, the label in
    lower case for compounds written as adverb + adjective (RAF-DB "happily surprised"; a class
    folder's "Happily Surprised" gives the same), adjectives joined by "and" for compounds written
    as parts (MAFW "anger_disgust" -> "angry and disgusted"), else the label."""
    single = canonical(label)
    if single is not None:
        return EMOTIONS[single].noun
    parts = compound_parts(label)
    if "_" in label:
        if parts is not None:
            return " and ".join(EMOTIONS[p].adjective for p in parts)
        return label.replace("_", " ")
    if parts is not None:
        # Every word is an emotion word that `canonical` reads in any case, so the lower-case,
        # single-spaced label is the one spelling of this compound: the synthetic corpus's captions
        # and the RAF-DB compound prompts say "happily surprised", and a dataset whose folder says
        # "Happily Surprised" must train on and be scored with the same text (a case-sensitive
        # tokenizer, e.g. SentencePiece, would otherwise see two different classes).
        return " ".join(label.lower().split())
    return label


def compound_prompt_word(label: str) -> str:
    """Adjective form for compound templates; a single emotion becomes its adjective."""
    single = canonical(label)
    if single is not None:
        return EMOTIONS[single].adjective
    return prompt_word(label)


def description(label: str) -> str:
    """One sentence describing what a face of this class looks like (EmoCap summary style)."""
    single = canonical(label)
    if single == "neutral":
        return f"In summary, the face is neutral, with {EMOTIONS['neutral'].cues}."
    if single is not None:
        e = EMOTIONS[single]
        return f"In summary, the face shows {e.noun}, marked by {e.cues}."
    parts = compound_parts(label)
    if parts is not None:
        nouns = " and ".join(EMOTIONS[p].noun for p in parts)
        cues = ", together with ".join(EMOTIONS[p].cues for p in parts)
        return f"In summary, the face shows a blend of {nouns}, marked by {cues}."
    return f"In summary, the face shows {label.replace('_', ' ')}."


def fill(templates: Sequence[str], word: str) -> list[str]:
    return [t.format(word) for t in templates]


# ------------------------------------------------------------------------------------------------
# Action units: FACS names, and what the face looks like with and without each AU.

@dataclasses.dataclass(frozen=True)
class ActionUnit:
    name: str
    present: str   # the face with the AU
    absent: str    # the same region at rest


ACTION_UNITS: dict[int, ActionUnit] = {
    1: ActionUnit("inner brow raiser", "the inner corners of the eyebrows are raised",
                  "the inner brows rest level"),
    2: ActionUnit("outer brow raiser", "the outer parts of the eyebrows are raised",
                  "the outer brows rest level"),
    4: ActionUnit("brow lowerer", "the eyebrows are lowered and drawn together",
                  "the brows are smooth and apart"),
    5: ActionUnit("upper lid raiser", "the upper eyelids are raised, widening the eyes",
                  "the upper eyelids rest normally"),
    6: ActionUnit("cheek raiser", "the cheeks are raised, pushing up under the eyes",
                  "the cheeks are relaxed"),
    7: ActionUnit("lid tightener", "the eyelids are tightened, narrowing the eyes",
                  "the eyelids are relaxed"),
    9: ActionUnit("nose wrinkler", "the nose is wrinkled", "the nose is smooth"),
    10: ActionUnit("upper lip raiser", "the upper lip is raised", "the upper lip rests"),
    12: ActionUnit("lip corner puller", "the lip corners are pulled up and back",
                   "the lip corners rest level"),
    14: ActionUnit("dimpler", "the mouth corners are tightened, forming dimples",
                   "no dimples form beside the mouth"),
    15: ActionUnit("lip corner depressor", "the lip corners are pulled down",
                   "the lip corners rest level"),
    16: ActionUnit("lower lip depressor", "the lower lip is pulled down",
                   "the lower lip rests against the upper lip"),
    17: ActionUnit("chin raiser", "the chin is pushed up", "the chin is relaxed"),
    20: ActionUnit("lip stretcher", "the lips are stretched sideways",
                   "the lips keep their resting width"),
    23: ActionUnit("lip tightener", "the lips are tightened", "the lips are relaxed"),
    24: ActionUnit("lip pressor", "the lips are pressed together", "the lips are relaxed"),
    25: ActionUnit("lips part", "the lips are parted", "the lips are closed"),
    26: ActionUnit("jaw drop", "the jaw drops, opening the mouth", "the jaw is closed"),
    27: ActionUnit("mouth stretch", "the mouth is stretched wide open", "the mouth is closed"),
    43: ActionUnit("eyes closed", "the eyes are closed", "the eyes are open"),
}

# Positive and negative sentences in the style of EmoCap local sentences ("..., showing a high
# intensity of inner brow raiser (AU1)"), averaged in embedding space like class templates.
AU_POSITIVE_TEMPLATES = (
    "{present}, showing {name} (AU{code}).",
    "The face shows an active {name} (AU{code}).",
    "{present}.",
)
AU_NEGATIVE_TEMPLATES = (
    "{absent}, with no {name} (AU{code}).",
    "The face shows no {name} (AU{code}).",
    "{absent}.",
)


def au_code(name: str) -> int:
    """"AU12", "au12", "12" -> 12."""
    text = str(name).strip().upper().removeprefix("AU")
    if not text.isdigit():
        raise ValueError(f"action unit {name!r} is not of the form AU<number>")
    return int(text)


def au_prompts(code: int, templates: Sequence[str], present: bool) -> list[str]:
    if code not in ACTION_UNITS:
        raise ValueError(f"no prompt text for AU{code}; known: "
                         f"{', '.join(f'AU{c}' for c in ACTION_UNITS)}")
    au = ACTION_UNITS[code]
    phrase = au.present if present else au.absent
    return [_capitalize(t.format(present=phrase, absent=phrase, name=au.name, code=code))
            for t in templates]


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]
