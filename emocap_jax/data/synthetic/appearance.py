"""What a synthetic face looks like apart from its expression, in words.

Real caption corpora describe the person and the picture as well as the emotion ("a
dark-haired woman in a red coat, lit from the side, looks astonished"). Those words tell faces of
one emotion apart, so a contrastive loss that takes every other caption of the batch as a negative
must also learn hair, skin, lighting and background: the false negatives that caption-guided
positive mining is meant to remove (emocap_jax/mining.py). `config.data.synthetic.appearance_captions`
adds such a sentence to each global caption (after the affect, so a short context cuts the
appearance, never the emotion); the images are unchanged.

Every phrase is read off the face's spec, so it is true of the drawn face: skin tone and hair from
the identity, in-plane head tilt, the side the directional light comes from, the background's
colour and pattern, the clothes' colour. Image sides are the viewer's, as in the captions of
one-sided action units.
"""
from __future__ import annotations

import colorsys
import math
from typing import Sequence

import numpy as np

from emocap_jax.data.synthetic.faces import _HAIR_COLORS, FaceSpec, _luma

# Tilts and lights weaker than this are not mentioned: they are hard to see at 48-64 px.
_MIN_TILT_DEG = 3.0
_MIN_LIGHT = 0.12
ATTRIBUTES_PER_CAPTION = 2

_HAIR_STYLES = {1: "short", 2: "long", 3: "fringed"}
# The names of `faces._HAIR_COLORS`, in its order (an identity's colour is one of those scaled by
# 0.85-1.15, so the nearest one names it).
_HAIR_COLOR_NAMES = ("black", "dark brown", "brown", "auburn", "blond", "grey", "white")
_BACKGROUND_PATTERNS = ("plain", "gradient", "radial", "mottled")
_HUES = ((0.04, "red"), (0.11, "orange"), (0.19, "yellow"), (0.45, "green"), (0.53, "teal"),
         (0.72, "blue"), (0.83, "purple"), (0.95, "pink"), (1.01, "red"))


def colour_name(rgb: Sequence[float]) -> str:
    """A plain colour word for an RGB triple (0-255)."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    if s < 0.2 or v < 0.2:
        return "black" if v < 0.25 else "grey" if v < 0.75 else "white"
    name = next(name for limit, name in _HUES if h < limit)
    return f"dark {name}" if v < 0.45 else name


def skin_phrase(spec: FaceSpec) -> str:
    luma = _luma(spec.identity.skin)
    return "fair skin" if luma >= 190 else "medium skin" if luma >= 120 else "dark skin"


def hair_phrase(spec: FaceSpec) -> str:
    ident = spec.identity
    if ident.hair_style == 0:
        return "a shaved head"
    distances = np.sum((_HAIR_COLORS - np.asarray(ident.hair_color, float)) ** 2, axis=1)
    colour = _HAIR_COLOR_NAMES[int(np.argmin(distances))]
    return f"{_HAIR_STYLES[ident.hair_style]} {colour} hair"


def tilt_phrase(spec: FaceSpec) -> str | None:
    # `faces._Canvas` turns the face by +rotation_deg in image coordinates (y down): the top of
    # the head moves to the viewer's right.
    if abs(spec.rotation_deg) < _MIN_TILT_DEG:
        return None
    return "head tilted right" if spec.rotation_deg > 0 else "head tilted left"


def light_phrase(spec: FaceSpec) -> str | None:
    # `faces._photometric`: gain 1 + strength * (cos a * x + sin a * y), x right, y down.
    if spec.light_strength < _MIN_LIGHT:
        return None
    sides = ("the right", "below", "the left", "above")
    quadrant = int(round(spec.light_angle / (math.pi / 2))) % 4
    return f"lit from {sides[quadrant]}"


def background_phrase(spec: FaceSpec) -> str:
    # `faces._background`: a plain one is its first colour; a radial one has the first colour at
    # the centre, behind the head, so what shows is mostly the second; gradients and mottled
    # ones show both.
    pattern = _BACKGROUND_PATTERNS[spec.background_kind]
    first, second = (colour_name(c) for c in spec.background_colors)
    if pattern == "plain":
        return f"a plain {first} background"
    if pattern == "radial":
        return f"a radial {second} background"
    colours = first if first == second else f"{first}-{second}"
    return f"a {colours} {pattern} background"


def clothes_phrase(spec: FaceSpec) -> str:
    return f"{colour_name(spec.identity.clothes)} clothes"


def appearance_phrases(spec: FaceSpec) -> list[str]:
    """Every phrase that is true of this face, in a fixed order."""
    phrases = [skin_phrase(spec), hair_phrase(spec), tilt_phrase(spec), light_phrase(spec),
               background_phrase(spec), clothes_phrase(spec)]
    return [p for p in phrases if p]


def appearance_sentence(spec: FaceSpec, rng: np.random.Generator) -> str:
    """`ATTRIBUTES_PER_CAPTION` of the face's phrases, drawn at random, kept in their order."""
    phrases = appearance_phrases(spec)
    chosen = sorted(rng.permutation(len(phrases))[:ATTRIBUTES_PER_CAPTION].tolist())
    return join_phrases([phrases[i] for i in chosen])


def join_phrases(words: Sequence[str]) -> str:
    """["fair skin", "lit from above"] -> "Fair skin and lit from above." """
    text = ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else words[0]
    return text[0].upper() + text[1:] + "."


def with_appearance(global_sentence: str, spec: FaceSpec, rng: np.random.Generator) -> str:
    """The global sentence followed by the appearance sentence (affect first: see the module)."""
    return f"{global_sentence} {appearance_sentence(spec, rng)}"
