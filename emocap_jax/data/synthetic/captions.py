"""EmoCap100K-style captions written from the action units that were drawn on a synthetic face.

A caption has three parts (the manifest schema of emocap_jax/data/manifest.py): a *global* sentence naming the emotion and its
intensity, one *local* sentence per active facial region describing each of its AUs with an
intensity word and its FACS name and code ("... a strong inner brow raiser (AU1)"), and a *summary*
naming the emotion and its strongest cues. Local sentences are derived from the AU intensities
alone, so every drawn AU is mentioned exactly once, by the sentence of its region, and nothing else
is. Wording (templates, synonyms, clause joiners) is chosen by the caller's random generator.

Unilateral AUs are described as "one corner" without saying which, so captions stay true under
horizontal-flip augmentation.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

import numpy as np

from emocap_jax.data.synthetic.faces import AU_NAMES, BASIC_CLASSES, PROTOTYPES

# Facial regions in the order their sentences appear; each AU belongs to exactly one region.
REGIONS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("brows", (1, 2, 4)),
    ("eyes", (5, 7)),
    ("cheeks", (6,)),
    ("nose", (9,)),
    ("lip corners", (12, 14, 15, 20)),
    ("lips", (16, 23)),
    ("jaw", (26,)),
)
REGION_OF_AU: dict[int, str] = {code: region for region, codes in REGIONS for code in codes}
# The face region (faces.FACE_REGIONS, whose boxes faces.face_regions records) each caption region's
# sentence describes: lip-corner and lip movements are both in the mouth.
FACE_REGION_OF: dict[str, str] = {
    "brows": "brows", "eyes": "eyes", "cheeks": "cheeks", "nose": "nose",
    "lip corners": "mouth", "lips": "mouth", "jaw": "jaw",
}

# Intensity bands: slight [threshold, 0.4), moderate [0.4, 0.7), strong [0.7, 1].
_LEVEL_BOUNDS = (0.4, 0.7)
_ADVERBS = (("slightly", "subtly", "faintly"), ("moderately", "noticeably", "visibly"), ("strongly", "markedly", "considerably"))
_ADJECTIVES = (("slight", "subtle", "weak"), ("moderate", "noticeable", "medium-strength"), ("strong", "pronounced", "clear"))
_LEVEL_NOUNS = ("low", "medium", "high")

# Per AU: descriptions with an {adv} slot; unilateral variants for one-sided AUs.
_AU_DESCRIPTIONS: dict[int, tuple[str, ...]] = {
    1: ("the inner corners of the eyebrows are raised {adv}", "the inner ends of the brows are {adv} lifted", "the inner brows are drawn {adv} upward"),
    2: ("the outer parts of the eyebrows are raised {adv}", "the outer ends of the brows lift {adv}", "the outer brows are {adv} pulled up"),
    4: ("the eyebrows are {adv} lowered and drawn together", "the brows are pulled down and knitted {adv}", "the brows {adv} furrow downward and inward"),
    5: ("the upper eyelids are raised {adv}", "the eyes are {adv} widened as the upper lids lift", "the upper lids pull up {adv}, exposing more of the eyes"),
    6: ("the cheeks are raised {adv}, pushing up under the eyes", "the cheeks lift {adv} and crease the outer eye corners", "the cheeks are {adv} pushed upward"),
    7: ("the eyelids are tightened {adv}", "the lower lids are {adv} raised and tensed, narrowing the eyes", "the eyes narrow {adv} as the lids tense"),
    9: ("the nose is wrinkled {adv}", "the skin along the nose {adv} wrinkles as the nostrils lift", "the nose {adv} crinkles upward"),
    12: ("the lip corners are pulled up and back {adv}", "the corners of the mouth {adv} turn upward", "the mouth corners are {adv} drawn up into a smile"),
    14: ("the mouth corners are tightened {adv}, forming dimples", "dimples form {adv} beside the lip corners", "the lip corners are {adv} pulled inward into dimples"),
    15: ("the lip corners are pulled down {adv}", "the corners of the mouth {adv} turn downward", "the mouth corners are {adv} depressed"),
    16: ("the lower lip is pulled down {adv}", "the lower lip is {adv} lowered and pushed out", "the lower lip {adv} drops away from the upper lip"),
    20: ("the lips are stretched sideways {adv}", "the mouth is {adv} pulled wide horizontally", "the lip corners are stretched outward {adv}"),
    23: ("the lips are tightened {adv}", "the lips are {adv} pressed thin", "the lips narrow and tense {adv}"),
    26: ("the jaw drops {adv}, parting the lips", "the mouth falls {adv} open as the jaw lowers", "the jaw is {adv} lowered"),
}
_UNILATERAL_DESCRIPTIONS: dict[int, tuple[str, ...]] = {
    12: ("only one corner of the mouth is pulled up {adv}", "one lip corner alone is {adv} drawn upward", "a single mouth corner {adv} lifts to one side"),
    14: ("a dimple forms {adv} beside one mouth corner", "one lip corner is {adv} tightened into a dimple", "one side of the mouth is {adv} pulled in, forming a dimple"),
}
# How the AU is named after its description; {adj} is an intensity adjective, {level} low/medium/high.
_NAMINGS = (
    ", a {adj} {name} (AU{code})",
    ", showing a {adj} {name} (AU{code})",
    ", indicating a {adj} {name} (AU{code})",
    ", showing a {level} intensity of {name} (AU{code})",
)
_UNILATERAL_NAMINGS = (
    ", a {adj} one-sided {name} (AU{code})",
    ", showing a {adj} unilateral {name} (AU{code})",
)
_JOINERS = (", and ", ", while ", "; ")

# Region sentences with several AUs can outgrow CLIP's 77-token context; past this many pre-tokens
# (CLIP's word/digit/punctuation split, which BPE can only lengthen a little for this vocabulary)
# the sentence is rebuilt from the compact forms below.
_PRETOKEN_BUDGET = 58
_PRETOKEN_PATTERN = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-zA-Z]+|[0-9]|[^\sa-zA-Z0-9]+")
_COMPACT_DESCRIPTIONS: dict[int, str] = {
    1: "the inner brows rise {adv}",
    2: "the outer brows rise {adv}",
    4: "the brows lower and knit {adv}",
    5: "the upper lids rise {adv}",
    6: "the cheeks rise {adv}",
    7: "the lids tighten {adv}",
    9: "the nose wrinkles {adv}",
    12: "the lip corners rise {adv}",
    14: "dimples form {adv}",
    15: "the lip corners drop {adv}",
    16: "the lower lip drops {adv}",
    20: "the lips stretch sideways {adv}",
    23: "the lips tighten {adv}",
    26: "the jaw drops {adv}",
}
_COMPACT_UNILATERAL_DESCRIPTIONS = {12: "one lip corner rises {adv}", 14: "one dimple forms {adv}"}

_RELAXED_SENTENCES = (
    "The face is relaxed, with no visible muscle activity.",
    "All facial muscles appear at rest: brows, eyes and mouth are relaxed.",
    "The brows, eyes and mouth are in a relaxed, resting position.",
    "No action units are active; the face is at rest.",
)

# Noun and adjective of each basic emotion; summaries occasionally use a synonym.
_EMOTION_NOUNS = {
    "neutral": "a neutral expression",
    "happy": "happiness",
    "sad": "sadness",
    "surprise": "surprise",
    "fear": "fear",
    "disgust": "disgust",
    "anger": "anger",
    "contempt": "contempt",
}
_EMOTION_ADJECTIVES = {
    "neutral": "neutral",
    "happy": "happy",
    "sad": "sad",
    "surprise": "surprised",
    "fear": "fearful",
    "disgust": "disgusted",
    "anger": "angry",
    "contempt": "contemptuous",
}
_NOUN_SYNONYMS = {
    "happy": "joy",
    "sad": "sorrow",
    "surprise": "astonishment",
    "fear": "fright",
    "disgust": "revulsion",
    "anger": "ire",
    "contempt": "disdain",
}
_SYNONYM_PROBABILITY = 0.2

_GLOBAL_INTENSITY_ADJECTIVES = (("low-intensity", "mild", "subtle"), ("moderate-intensity", "moderate", "clear"), ("high-intensity", "intense", "strong"))
_GLOBAL_INTENSITY_ADVERBS = (("slightly", "mildly"), ("moderately", "fairly"), ("very", "intensely"))
_BASIC_GLOBALS = (
    "This image portrays a {int_adj} expression of {noun}.",
    "The face conveys {int_adj} {noun}.",
    "Overall, the person looks {int_adv} {adj}.",
    "The overall affective state is {noun} at {level} intensity.",
    "A {int_adj} display of {noun} dominates this face.",
)
_COMPOUND_GLOBALS = (
    "This image portrays a {int_adj} compound expression of someone {compound}.",
    "The person appears {compound}, at {level} intensity.",
    "The face conveys a {int_adj} blend of emotions: {compound}.",
    "Overall, the person looks {compound}, a {int_adj} compound emotion.",
)
_NEUTRAL_GLOBALS = (
    "This image portrays a neutral expression with no clear emotion.",
    "The face is calm and neutral.",
    "The overall affective state is neutral, with no visible emotion.",
    "This is a neutral, emotionless face.",
)

# Short cue phrases for summaries.
_CUES = {
    1: "raised inner brows",
    2: "raised outer brows",
    4: "lowered and knitted brows",
    5: "widened eyes",
    6: "raised cheeks",
    7: "tensed eyelids",
    9: "a wrinkled nose",
    12: "upturned lip corners",
    14: "dimpled mouth corners",
    15: "downturned lip corners",
    16: "a lowered lower lip",
    20: "lips stretched sideways",
    23: "tightly pressed lips",
    26: "a dropped jaw",
}
_UNILATERAL_CUES = {12: "a one-sided smirk", 14: "a dimple on one side"}
_SUMMARIES = (
    "In summary, the face shows {noun}, marked by {cues}.",
    "The expression reads as {adj}, driven mainly by {cues}.",
    "Taken together, {cues} indicate {noun}.",
    "Overall, {cues} make this face look {adj}.",
)
_NEUTRAL_SUMMARIES = (
    "In summary, the face is neutral, with relaxed brows, calm eyes and a closed, resting mouth.",
    "Overall, nothing in the brows, eyes or mouth departs from rest, so the face reads as neutral.",
)
_NEUTRAL_WITH_CUE_SUMMARIES = (
    "In summary, the face is essentially neutral, with only a hint of {cues}.",
    "Overall, the face reads as neutral; nothing more than a hint of {cues} is visible.",
)
_MAX_SUMMARY_CUES = 3


@dataclasses.dataclass(frozen=True)
class Caption:
    global_: str
    local: tuple[str, ...]
    summary: str
    # The face region (FACE_REGIONS) each local sentence describes, aligned with `local`; None for
    # the relaxed-face sentence, which describes no one region.
    local_regions: tuple[str | None, ...] = ()


def intensity_level(value: float) -> int:
    """0 slight, 1 moderate, 2 strong."""
    return int(value >= _LEVEL_BOUNDS[0]) + int(value >= _LEVEL_BOUNDS[1])


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _au_clause(code: int, value: float, unilateral: bool, rng: np.random.Generator) -> str:
    level = intensity_level(value)
    descriptions = _UNILATERAL_DESCRIPTIONS[code] if unilateral else _AU_DESCRIPTIONS[code]
    description = _pick(rng, descriptions).format(adv=_pick(rng, _ADVERBS[level]))
    naming = _pick(rng, _UNILATERAL_NAMINGS if unilateral else _NAMINGS)
    return description + naming.format(adj=_pick(rng, _ADJECTIVES[level]), level=_LEVEL_NOUNS[level], name=AU_NAMES[code], code=code)


def pretoken_count(text: str) -> int:
    """Number of CLIP pre-tokens (words, single digits, punctuation runs): a lower bound on BPE
    tokens that is close to exact for the plain vocabulary used here."""
    return len(_PRETOKEN_PATTERN.findall(text))


def _compact_sentence(codes: Sequence[int], aus: Mapping[int, float], unilateral_aus: frozenset[int], rng: np.random.Generator) -> str:
    clauses = []
    for code in codes:
        table = _COMPACT_UNILATERAL_DESCRIPTIONS if code in unilateral_aus else _COMPACT_DESCRIPTIONS
        description = table[code].format(adv=_pick(rng, _ADVERBS[intensity_level(aus[code])]))
        clauses.append(f"{description} ({AU_NAMES[code]}, AU{code})")
    return ", ".join(clauses[:-1]) + " and " + clauses[-1] if len(clauses) > 1 else clauses[0]


def local_sentences(aus: Mapping[int, float], unilateral_aus: frozenset[int], rng: np.random.Generator) -> list[str]:
    """One sentence per region with an active AU, in ``REGIONS`` order; a relaxed-face sentence
    when no AU is active."""
    return [sentence for _, sentence in tagged_local_sentences(aus, unilateral_aus, rng)]


def tagged_local_sentences(aus: Mapping[int, float], unilateral_aus: frozenset[int], rng: np.random.Generator) -> list[tuple[str | None, str]]:
    """``local_sentences`` with the face region (``FACE_REGION_OF``) each sentence describes:
    [(region, sentence)], region None for the relaxed-face sentence. Same random draws, same
    sentences."""
    unknown = sorted(set(aus) - set(REGION_OF_AU))
    if unknown:
        raise ValueError(f"no caption region for AU codes {unknown}")
    sentences = []
    for caption_region, codes in REGIONS:
        active = [code for code in codes if code in aus]
        if not active:
            continue
        clauses = [_au_clause(code, aus[code], code in unilateral_aus, rng) for code in active]
        sentence = clauses[0]
        for clause in clauses[1:]:
            sentence += _pick(rng, _JOINERS) + clause
        if pretoken_count(sentence) > _PRETOKEN_BUDGET:
            sentence = _compact_sentence(active, aus, unilateral_aus, rng)
        sentences.append((FACE_REGION_OF[caption_region], _capitalize(sentence) + "."))
    if not sentences:
        sentences.append((None, _pick(rng, _RELAXED_SENTENCES)))
    return sentences


def _expression_strength(label: str, aus: Mapping[int, float]) -> float:
    """Mean intensity of the label's own AUs that were drawn (all drawn AUs if none are)."""
    own = [value for code, value in aus.items() if code in PROTOTYPES[label].weights]
    values = own or list(aus.values())
    return float(np.mean(values)) if values else 0.0


def _global_level(strength: float) -> int:
    return int(strength >= 0.45) + int(strength >= 0.72)


def global_sentence(label: str, aus: Mapping[int, float], rng: np.random.Generator) -> str:
    if label == "neutral":
        return _pick(rng, _NEUTRAL_GLOBALS)
    level = _global_level(_expression_strength(label, aus))
    fields = {
        "int_adj": _pick(rng, _GLOBAL_INTENSITY_ADJECTIVES[level]),
        "int_adv": _pick(rng, _GLOBAL_INTENSITY_ADVERBS[level]),
        "level": ("low", "moderate", "high")[level],
    }
    if label in BASIC_CLASSES:
        template = _pick(rng, _BASIC_GLOBALS)
        return template.format(noun=_EMOTION_NOUNS[label], adj=_EMOTION_ADJECTIVES[label], **fields)
    return _pick(rng, _COMPOUND_GLOBALS).format(compound=label, **fields)


def _join_cues(cues: Sequence[str]) -> str:
    if len(cues) == 1:
        return cues[0]
    return ", ".join(cues[:-1]) + " and " + cues[-1]


def summary_sentence(label: str, aus: Mapping[int, float], unilateral_aus: frozenset[int], rng: np.random.Generator) -> str:
    ranked = sorted(aus, key=lambda code: (-aus[code], code))[:_MAX_SUMMARY_CUES]
    cues = [(_UNILATERAL_CUES[code] if code in unilateral_aus else _CUES[code]) for code in ranked]
    if label == "neutral":
        if not cues:
            return _pick(rng, _NEUTRAL_SUMMARIES)
        return _pick(rng, _NEUTRAL_WITH_CUE_SUMMARIES).format(cues=_join_cues(cues))
    if label in BASIC_CLASSES:
        noun = _EMOTION_NOUNS[label]
        if label in _NOUN_SYNONYMS and rng.random() < _SYNONYM_PROBABILITY:
            noun = _NOUN_SYNONYMS[label]
        adj = _EMOTION_ADJECTIVES[label]
    else:
        noun, adj = f"a {label} expression", label
    text = _pick(rng, _SUMMARIES).format(noun=noun, adj=adj, cues=_join_cues(cues))
    return _capitalize(text)


def write_caption(label: str, aus: Mapping[int, float], unilateral_aus: frozenset[int], rng: np.random.Generator) -> Caption:
    """Global, local and summary sentences for a face with drawn ``aus`` (code -> intensity), and
    the face region of each local sentence."""
    global_ = global_sentence(label, aus, rng)
    tagged = tagged_local_sentences(aus, unilateral_aus, rng)
    return Caption(
        global_=global_,
        local=tuple(sentence for _, sentence in tagged),
        summary=summary_sentence(label, aus, unilateral_aus, rng),
        local_regions=tuple(region for region, _ in tagged),
    )
