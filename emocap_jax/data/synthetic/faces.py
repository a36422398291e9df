"""Procedural faces whose expression is drawn from FACS action-unit intensities.

A face is fully described by a ``FaceSpec``: an ``Identity`` (face shape, feature geometry and
colours, shared by every face of one person), the action units that are drawn, and the per-image
nuisance factors (pose, scale, lighting, background, noise). ``sample_face_spec`` derives a spec
from ``(seed, split, index)`` alone, so a face never depends on which worker drew it or on what was
drawn before it, and ``render_face`` turns a spec into pixels with no other input.

Every AU in ``FaceSpec.aus`` moves or adds something in the drawing (brows, lids, cheeks, nose
wrinkles, lip corners, lip thickness, mouth opening, chin), and AUs below
``VISIBILITY_THRESHOLD`` are removed from the spec before drawing, so "the AUs in the spec" and "the
AUs visible in the image" are the same set: captions written from the spec describe the picture.

Geometry is expressed in face units (the face is about 2 units wide, origin between the cheekbones,
v pointing down) and mapped to pixels by one rotation + scale + offset, so in-plane pose is exact
and costs nothing. The face is drawn at ``supersample`` times the output size and box-downsampled,
which anti-aliases every edge.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

AU_CODES: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 12, 14, 15, 16, 20, 23, 26)
AU_NAMES: dict[int, str] = {
    1: "inner brow raiser",
    2: "outer brow raiser",
    4: "brow lowerer",
    5: "upper lid raiser",
    6: "cheek raiser",
    7: "lid tightener",
    9: "nose wrinkler",
    12: "lip corner puller",
    14: "dimpler",
    15: "lip corner depressor",
    16: "lower lip depressor",
    20: "lip stretcher",
    23: "lip tightener",
    26: "jaw drop",
}
# Intensities at or below this are not drawn and therefore never captioned.
MIN_FACE_SIZE = 16  # pixels; below it the face features fall under one pixel
VISIBILITY_THRESHOLD = 0.15

# AffectNet-8 order: the class index of a basic label is its position here.
BASIC_CLASSES: tuple[str, ...] = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
# Six of RAF-DB's eleven compound classes (Du, Tao & Martinez 2014), used only for training faces.
COMPOUND_CLASSES: tuple[str, ...] = (
    "happily surprised",
    "happily disgusted",
    "sadly angry",
    "sadly fearful",
    "fearfully surprised",
    "angrily disgusted",
)
ALL_CLASSES: tuple[str, ...] = BASIC_CLASSES + COMPOUND_CLASSES

# Each split draws its people and faces from its own random streams. The benchmark splits of
# emocap_jax.evaluate.synthetic_benchmarks (compound faces, video clips) add their own codes, so their people
# are new and the train and eval faces stay what they were.
SPLIT_CODES = {"train": 0, "eval": 1, "eval_compound": 2, "eval_video": 3}
GROUP_PREFIXES = {"train": "syn_id", "eval": "syn_eval_id", "eval_compound": "syn_cmp_id",
                  "eval_video": "syn_vid_id"}

# Where face unit (0, 0) lands, as a fraction of the image side, and how many image sides one face
# unit spans, before the per-face offset and scale.
FACE_CENTER = (0.5, 0.48)
FACE_UNIT = 0.34

# Facial regions whose boxes ``face_regions`` records (each local caption sentence describes one).
FACE_REGIONS: tuple[str, ...] = ("brows", "eyes", "cheeks", "nose", "mouth", "jaw")

# Random streams are keyed by a tag in the FIRST position of a fixed-length entropy list:
# numpy's SeedSequence pads short entropy with zeros, so [a, b, c] and [a, b, c, 0] would collide.
STREAM_IDENTITY = 1
STREAM_FACE = 2
STREAM_CAPTION = 3
STREAM_SCHEDULE = 4
STREAM_APPEARANCE = 5  # the appearance sentence of `corpus.face_caption` (its own, so others stay)


def stream_rng(tag: int, seed: int, a: int, b: int) -> np.random.Generator:
    """Independent generator for one (stream, seed, a, b) key; equal keys give equal streams."""
    return np.random.default_rng([tag, seed, a, b])


@dataclasses.dataclass(frozen=True)
class Prototype:
    """FACS prototype of one expression class.

    weights: AU -> typical intensity at full expression strength.
    key: AUs that are never dropped (they carry the class).
    unilateral: AUs drawn on one side of the face only.
    """

    weights: Mapping[int, float]
    key: frozenset[int]
    unilateral: frozenset[int] = frozenset()


PROTOTYPES: dict[str, Prototype] = {
    "neutral": Prototype({}, frozenset()),
    "happy": Prototype({6: 0.8, 12: 1.0}, frozenset({12})),
    "sad": Prototype({1: 0.95, 4: 0.7, 15: 1.0}, frozenset({1, 15})),
    "surprise": Prototype({1: 1.0, 2: 1.0, 5: 0.9, 26: 1.0}, frozenset({1, 2, 26})),
    "fear": Prototype({1: 0.9, 2: 0.7, 4: 0.7, 5: 1.0, 7: 0.5, 20: 1.0, 26: 0.7}, frozenset({1, 5, 20})),
    "disgust": Prototype({9: 1.0, 15: 0.75, 16: 0.8}, frozenset({9, 16})),
    "anger": Prototype({4: 1.0, 5: 0.7, 7: 0.8, 23: 1.0}, frozenset({4, 23})),
    "contempt": Prototype({12: 0.85, 14: 0.85}, frozenset({12, 14}), frozenset({12, 14})),
    # Compounds: Du et al.'s prototypical AUs restricted to the AUs this generator draws.
    "happily surprised": Prototype({1: 0.8, 2: 0.8, 5: 0.7, 6: 0.6, 12: 1.0, 26: 0.8}, frozenset({2, 12, 26})),
    "happily disgusted": Prototype({6: 0.7, 9: 0.95, 12: 0.9}, frozenset({9, 12})),
    "sadly angry": Prototype({4: 1.0, 7: 0.7, 15: 1.0}, frozenset({4, 15})),
    "sadly fearful": Prototype({1: 0.9, 4: 0.8, 5: 0.5, 15: 0.7, 20: 0.9}, frozenset({1, 4, 20})),
    "fearfully surprised": Prototype({1: 1.0, 2: 0.9, 5: 1.0, 20: 0.8, 26: 1.0}, frozenset({1, 5, 20, 26})),
    "angrily disgusted": Prototype({4: 1.0, 7: 0.6, 9: 1.0, 15: 0.6}, frozenset({4, 9})),
}

# Pairs that pull the same tissue in opposite directions; an extra weak AU never contradicts the
# prototype.
_CONFLICTS = {12: {15}, 15: {12}, 23: {16, 20, 26}, 26: {23}, 20: {23}, 16: {23}}
# A weak extra AU on a neutral face must not read as a basic emotion (no lip-corner movement).
_NEUTRAL_EXTRAS = (2, 4, 5, 7, 14, 23)
DROP_PROBABILITY = 0.12
EXTRA_PROBABILITY = 0.15
KEY_AU_FLOOR = 0.4


@dataclasses.dataclass(frozen=True)
class Identity:
    """What stays fixed for one synthetic person."""

    face_w: float
    face_top: float
    face_bottom: float
    jaw_exponent: float
    skin: tuple[int, int, int]
    eye_sep: float
    eye_y: float
    eye_w: float
    eye_open: float
    eye_low: float
    eye_tilt: float
    iris_r: float
    iris: tuple[int, int, int]
    brow_th: float
    brow_len: float
    brow_gap: float
    brow_arch: float
    brow_color: tuple[int, int, int]
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_upper: float
    lip_lower: float
    lip_color: tuple[int, int, int]
    hair_style: int  # 0 none/shaved, 1 short cap, 2 long, 3 side fringe
    hair_color: tuple[int, int, int]
    hairline: float
    fold_depth: float  # resting depth of the nasolabial folds (age)
    clothes: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class FaceSpec:
    """Everything ``render_face`` needs; ``aus`` holds only drawn AUs (intensity in (threshold, 1])."""

    label: str
    aus: Mapping[int, float]
    unilateral_side: int  # -1 image-left, +1 image-right, 0 when every AU is bilateral
    unilateral_aus: frozenset[int]
    identity: Identity
    group: str
    rotation_deg: float
    offset: tuple[float, float]
    scale: float
    gaze: tuple[float, float]
    light_angle: float
    light_strength: float
    brightness: float
    color_cast: tuple[float, float, float]
    background_kind: int  # 0 solid, 1 linear gradient, 2 radial, 3 smooth noise
    background_colors: tuple[tuple[int, int, int], tuple[int, int, int]]
    noise_sigma: float
    render_seed: int

    def au_vector(self) -> np.ndarray:
        """Intensities in ``AU_CODES`` order, zero for AUs that are not drawn."""
        return np.array([self.aus.get(code, 0.0) for code in AU_CODES], dtype=np.float32)


_SKIN_TONES = np.array(
    [(255, 226, 200), (243, 200, 166), (226, 176, 136), (199, 140, 100), (163, 108, 74), (120, 78, 54), (86, 56, 40)],
    dtype=np.float64,
)
_HAIR_COLORS = np.array(
    [(22, 18, 16), (50, 34, 24), (92, 62, 40), (128, 70, 38), (190, 158, 100), (150, 146, 140), (210, 206, 198)],
    dtype=np.float64,
)
_IRIS_COLORS = np.array([(70, 44, 28), (104, 72, 40), (96, 110, 60), (70, 110, 150), (110, 120, 130)], dtype=np.float64)


def _luma(color: Sequence[float]) -> float:
    return 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    clipped = np.clip(np.round(values), 0, 255).astype(int)
    return (int(clipped[0]), int(clipped[1]), int(clipped[2]))


def sample_identity(seed: int, split: str, identity_index: int) -> Identity:
    """The person ``identity_index`` of ``split``; train and eval people come from separate streams."""
    rng = stream_rng(STREAM_IDENTITY, seed, SPLIT_CODES[split], identity_index)
    tone = rng.uniform(0, len(_SKIN_TONES) - 1)
    low = int(tone)
    skin = _SKIN_TONES[low] * (1 - (tone - low)) + _SKIN_TONES[min(low + 1, len(_SKIN_TONES) - 1)] * (tone - low)
    skin = skin * rng.uniform(0.95, 1.05, size=3)
    hair = _HAIR_COLORS[rng.integers(len(_HAIR_COLORS))] * rng.uniform(0.85, 1.15)
    # Brows must stay darker than the skin whatever the hair colour, or they vanish at 32 px.
    brow = hair * 0.85
    max_brow_luma = 0.35 * _luma(skin)
    if _luma(brow) > max_brow_luma:
        brow = brow * (max_brow_luma / max(_luma(brow), 1e-6))
    lip = skin * np.array([0.85, 0.55, 0.55]) + np.array([30, 0, 5]) * rng.uniform(0.3, 1.0)
    clothes_hsv_value = rng.uniform(0.2, 0.9)
    clothes = rng.uniform(0, 255, size=3) * 0.5 + 127 * clothes_hsv_value
    return Identity(
        face_w=float(rng.uniform(0.9, 1.06)),
        face_top=float(rng.uniform(1.2, 1.35)),
        face_bottom=float(rng.uniform(1.12, 1.28)),
        jaw_exponent=float(rng.uniform(1.7, 2.5)),
        skin=_rgb(skin),
        eye_sep=float(rng.uniform(0.36, 0.44)),
        eye_y=float(rng.uniform(-0.08, 0.0)),
        eye_w=float(rng.uniform(0.16, 0.2)),
        eye_open=float(rng.uniform(0.065, 0.085)),
        eye_low=float(rng.uniform(0.045, 0.06)),
        eye_tilt=float(rng.uniform(-0.06, 0.12)),
        iris_r=float(rng.uniform(0.075, 0.088)),
        iris=_rgb(_IRIS_COLORS[rng.integers(len(_IRIS_COLORS))] * rng.uniform(0.85, 1.15)),
        brow_th=float(rng.uniform(0.07, 0.11)),
        brow_len=float(rng.uniform(0.34, 0.42)),
        brow_gap=float(rng.uniform(0.2, 0.25)),
        brow_arch=float(rng.uniform(0.02, 0.07)),
        brow_color=_rgb(brow),
        nose_len=float(rng.uniform(0.36, 0.46)),
        nose_w=float(rng.uniform(0.12, 0.16)),
        mouth_y=float(rng.uniform(0.7, 0.78)),
        mouth_w=float(rng.uniform(0.28, 0.34)),
        lip_upper=float(rng.uniform(0.035, 0.055)),
        lip_lower=float(rng.uniform(0.05, 0.075)),
        lip_color=_rgb(lip),
        hair_style=int(rng.integers(4)),
        hair_color=_rgb(hair),
        hairline=float(rng.uniform(-0.92, -0.76)),
        fold_depth=float(rng.uniform(0.0, 0.3)),
        clothes=_rgb(clothes),
    )


def sample_aus(label: str, rng: np.random.Generator, au_drop_probability: float = 0.0) -> tuple[dict[int, float], int]:
    """Samples drawn AU intensities for ``label`` and the side of its unilateral AUs.

    Overall strength varies per face; non-key AUs are occasionally dropped and a weak extra AU is
    occasionally added, so a class is a distribution over AU patterns rather than one template.
    Returned intensities are rounded to 3 decimals (what the manifest stores is what is drawn) and
    every one is above ``VISIBILITY_THRESHOLD``.

    ``au_drop_probability`` > 0 breaks the co-occurrence of a class's AUs: each of them, key AUs
    included, is left out with that probability (at least one kept), so that a raised brow also
    appears without the open mouth it comes with in surprise. The label then no longer fixes the
    AUs, but the local sentences still describe exactly what is drawn: the corpus that teaches a
    local head which region each sentence names (ABLATIONS.md). 0 (the default) is the usual corpus,
    drawn from the same random stream as before the option existed.
    """
    if label not in PROTOTYPES:
        raise ValueError(f"unknown expression label {label!r}; known: {', '.join(ALL_CLASSES)}")
    if not 0.0 <= au_drop_probability < 1.0:
        raise ValueError(f"au_drop_probability must be in [0, 1), got {au_drop_probability!r}")
    proto = PROTOTYPES[label]
    aus: dict[int, float] = {}
    strength = rng.uniform(0.5, 1.0)
    # Two loops, because each keeps its own order of random draws: the default the corpus's
    # original one, so existing corpora regenerate byte for byte.
    if au_drop_probability > 0:
        codes = sorted(proto.weights)
        kept = [code for code in codes if rng.random() >= au_drop_probability]
        if codes and not kept:
            kept = [codes[int(rng.integers(len(codes)))]]
        for code in codes:
            value = proto.weights[code] * strength * rng.uniform(0.85, 1.15) + rng.normal(0.0, 0.04)
            if code in proto.key:
                value = max(value, KEY_AU_FLOOR)
            if code in kept:
                aus[code] = float(np.clip(value, 0.0, 1.0))
    else:
        for code in sorted(proto.weights):
            drop = rng.random() < DROP_PROBABILITY
            value = proto.weights[code] * strength * rng.uniform(0.85, 1.15) + rng.normal(0.0, 0.04)
            if code in proto.key:
                value = max(value, KEY_AU_FLOOR)
            elif drop:
                continue
            aus[code] = float(np.clip(value, 0.0, 1.0))
    if rng.random() < EXTRA_PROBABILITY:
        if label == "neutral":
            candidates = list(_NEUTRAL_EXTRAS)
        else:
            blocked = set(proto.weights)
            for code in proto.weights:
                blocked |= _CONFLICTS.get(code, set())
            candidates = [code for code in AU_CODES if code not in blocked]
        if candidates:
            extra = candidates[int(rng.integers(len(candidates)))]
            aus[extra] = float(rng.uniform(0.18, 0.35))
    drawn = {code: round(value, 3) for code, value in sorted(aus.items()) if round(value, 3) > VISIBILITY_THRESHOLD}
    side = int(rng.choice([-1, 1])) if proto.unilateral else 0
    return drawn, side


def sample_face_spec(seed: int, split: str, index: int, label: str, identity_index: int,
                     au_drop_probability: float = 0.0) -> FaceSpec:
    """The spec of face ``index`` of ``split``: a pure function of its arguments
    (``au_drop_probability``: see ``sample_aus``)."""
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(SPLIT_CODES)}, got {split!r}")
    identity = sample_identity(seed, split, identity_index)
    rng = stream_rng(STREAM_FACE, seed, SPLIT_CODES[split], index)
    aus, side = sample_aus(label, rng, au_drop_probability)
    proto = PROTOTYPES[label]
    background_colors = tuple(
        _rgb(np.array(_hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 0.6), rng.uniform(0.25, 0.95))) * 255)
        for _ in range(2)
    )
    prefix = GROUP_PREFIXES[split]
    return FaceSpec(
        label=label,
        aus=aus,
        unilateral_side=side,
        unilateral_aus=proto.unilateral if side else frozenset(),
        identity=identity,
        group=f"{prefix}{identity_index:05d}",
        rotation_deg=float(rng.uniform(-8, 8)),
        offset=(float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.03, 0.03))),
        scale=float(rng.uniform(0.86, 1.04)),
        gaze=(float(rng.uniform(-0.025, 0.025)), float(rng.uniform(-0.01, 0.01))),
        light_angle=float(rng.uniform(0, 2 * math.pi)),
        light_strength=float(rng.uniform(0.0, 0.3)),
        brightness=float(rng.uniform(0.82, 1.12)),
        color_cast=tuple(float(x) for x in rng.uniform(0.94, 1.06, size=3)),
        background_kind=int(rng.integers(4)),
        background_colors=background_colors,  # type: ignore[arg-type]
        noise_sigma=float(rng.uniform(0.0, 5.0)),
        render_seed=int(rng.integers(2**62)),
    )


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> tuple[int, int, int]:
    t = min(max(t, 0.0), 1.0)
    return _rgb(np.asarray(a, dtype=np.float64) * (1 - t) + np.asarray(b, dtype=np.float64) * t)


def _shade(color: Sequence[float], factor: float) -> tuple[int, int, int]:
    return _rgb(np.asarray(color, dtype=np.float64) * factor)


class _Canvas:
    """Maps face units to supersampled pixels (rotation, scale, offset) and draws in them.

    Drawing calls made inside ``tagged(region, ...)`` also grow that region's extent (in
    supersampled pixels, line widths included), which ``face_regions`` turns into boxes; ``mark``
    grows the extent without drawing (anatomy that has no stroke of its own, such as the jaw line
    or a cheek at rest). With ``image=None`` nothing is drawn and only the extents are kept;
    calls tagged with a region in ``omit`` are not drawn."""

    def __init__(self, image: Image.Image | None, center: tuple[float, float], unit: float, rotation_deg: float,
                 omit: Sequence[str] = ()):
        self.image = image
        self.draw = ImageDraw.Draw(image) if image is not None else None
        self.cx, self.cy = center
        self.unit = unit
        angle = math.radians(rotation_deg)
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        self.omit = frozenset(omit)
        # (region, side) -> [x_min, y_min, x_max, y_max] in supersampled pixel coordinates.
        self.extents: dict[tuple[str, int], list[float]] = {}
        self._tags: tuple[tuple[str, int], ...] = ()

    @contextlib.contextmanager
    def tagged(self, *tags: tuple[str, int]):
        """Drawing inside the block belongs to these (region, side) parts; side -1 is the
        image-left part, +1 the image-right one, 0 a region drawn as one piece."""
        previous, self._tags = self._tags, tuple(tags)
        try:
            yield
        finally:
            self._tags = previous

    def _xy(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        x = self.cx + self.unit * (u * self.cos - v * self.sin)
        y = self.cy + self.unit * (u * self.sin + v * self.cos)
        return np.stack([x, y], axis=-1)

    def points(self, u: np.ndarray, v: np.ndarray) -> list[float]:
        return self._xy(u, v).ravel().tolist()

    def _record(self, xy: np.ndarray, pad: float) -> None:
        if not self._tags or len(xy) == 0:
            return
        low, high = xy.min(axis=0) - pad, xy.max(axis=0) + pad
        for tag in self._tags:
            box = self.extents.get(tag)
            if box is None:
                self.extents[tag] = [float(low[0]), float(low[1]), float(high[0]), float(high[1])]
            else:
                box[0], box[1] = min(box[0], float(low[0])), min(box[1], float(low[1]))
                box[2], box[3] = max(box[2], float(high[0])), max(box[3], float(high[1]))

    def _drawing(self) -> bool:
        return self.draw is not None and not any(region in self.omit for region, _ in self._tags)

    def polygon(self, u: np.ndarray, v: np.ndarray, fill: tuple[int, int, int]) -> None:
        if len(u) >= 3:
            xy = self._xy(np.asarray(u, float), np.asarray(v, float))
            # One pixel of margin: the rasteriser may touch the pixel an edge passes through.
            self._record(xy, 1.0)
            if self._drawing():
                self.draw.polygon(xy.ravel().tolist(), fill=fill)

    def line(self, u: np.ndarray, v: np.ndarray, fill: tuple[int, int, int], width: float) -> None:
        pixels = max(1, int(round(width * self.unit)))
        xy = self._xy(np.asarray(u, float), np.asarray(v, float))
        self._record(xy, pixels / 2 + 1.0)
        if self._drawing():
            self.draw.line(xy.ravel().tolist(), fill=fill, width=pixels, joint="curve")

    def ellipse(self, cu: float, cv: float, ru: float, rv: float, fill: tuple[int, int, int], n: int = 28) -> None:
        theta = np.linspace(0, 2 * math.pi, n, endpoint=False)
        self.polygon(cu + ru * np.cos(theta), cv + rv * np.sin(theta), fill)

    def mark(self, u: np.ndarray, v: np.ndarray) -> None:
        """Grows the tagged regions by these points (plus a polygon's pixel of margin) without
        drawing anything."""
        self._record(self._xy(np.asarray(u, float), np.asarray(v, float)), 1.0)


def _au(aus: Mapping[int, float], code: int) -> float:
    return float(aus.get(code, 0.0))


def _side_au(spec: FaceSpec, code: int, side: int) -> float:
    """Intensity of ``code`` on image side ``side`` (-1 left, +1 right)."""
    value = _au(spec.aus, code)
    if code in spec.unilateral_aus and side != spec.unilateral_side:
        return 0.0
    return value


def _background(spec: FaceSpec, size: int, rng: np.random.Generator) -> Image.Image:
    c0 = np.asarray(spec.background_colors[0], dtype=np.float32)
    c1 = np.asarray(spec.background_colors[1], dtype=np.float32)
    kind = spec.background_kind
    if kind == 0:
        return Image.new("RGB", (size, size), _rgb(c0))
    if kind == 3:
        coarse = rng.uniform(0, 1, size=(5, 5, 1)).astype(np.float32)
        grid = c0 * (1 - coarse) + c1 * coarse
        return Image.fromarray(grid.astype(np.uint8)).resize((size, size), Image.BICUBIC)
    # Gradients are smooth, so a coarse grid upsampled bilinearly is indistinguishable and far cheaper.
    axis = np.linspace(-1, 1, 48, dtype=np.float32)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    if kind == 1:
        angle = rng.uniform(0, 2 * math.pi)
        t = 0.5 + 0.5 * (xx * math.cos(angle) + yy * math.sin(angle)) / math.sqrt(2)
    else:
        t = np.clip(np.sqrt(xx**2 + yy**2) / 1.4, 0, 1)
    pixels = c0 * (1 - t[..., None]) + c1 * t[..., None]
    return Image.fromarray(pixels.astype(np.uint8)).resize((size, size), Image.BILINEAR)


def _supersample_factor(size: int) -> int:
    return 4 if size <= 128 else 3 if size <= 256 else 2


def _face_canvas(spec: FaceSpec, size: int, ss: int, image: Image.Image | None, omit: Sequence[str] = ()) -> _Canvas:
    big = size * ss
    center = (big * (FACE_CENTER[0] + spec.offset[0]), big * (FACE_CENTER[1] + spec.offset[1]))
    return _Canvas(image, center, unit=FACE_UNIT * big * spec.scale, rotation_deg=spec.rotation_deg, omit=omit)


def _draw_face(canvas: _Canvas, spec: FaceSpec) -> None:
    # Region tags of the parts drawn as one piece; eyes, cheeks, mouth and jaw tag inside.
    _draw_head(canvas, spec)
    with canvas.tagged(("brows", 0)):
        _draw_brows_and_forehead(canvas, spec)
    _draw_eyes(canvas, spec)
    _draw_cheeks(canvas, spec)
    with canvas.tagged(("nose", 0)):
        _draw_nose(canvas, spec)
    with canvas.tagged(("mouth", 0), ("jaw", 0)):
        _draw_mouth(canvas, spec)


def _check_omit(omit: Sequence[str]) -> None:
    unknown = sorted(set(omit) - set(FACE_REGIONS))
    if unknown:
        raise ValueError(f"unknown face regions {unknown}; known: {', '.join(FACE_REGIONS)}")


def render_face(spec: FaceSpec, size: int = 96, supersample: int | None = None, *, omit_regions: Sequence[str] = ()) -> Image.Image:
    """Draws ``spec`` as a ``size`` x ``size`` RGB image; deterministic for a spec and size.

    omit_regions: face regions (``FACE_REGIONS``) whose features are left out of the drawing,
    e.g. to see which pixels a region's drawing sets: they all lie inside its boxes from
    ``face_regions``."""
    if size < MIN_FACE_SIZE:
        raise ValueError(f"face size must be at least {MIN_FACE_SIZE} pixels, got {size}")
    _check_omit(omit_regions)
    ss = supersample or _supersample_factor(size)
    big = size * ss
    rng = np.random.default_rng(spec.render_seed)
    image = _background(spec, big, rng)
    _draw_face(_face_canvas(spec, size, ss, image, omit_regions), spec)
    small = image.reduce(ss) if ss > 1 else image
    return _photometric(small, spec, rng)


def face_regions(spec: FaceSpec, size: int = 96, supersample: int | None = None) -> dict[str, list[tuple[int, int, int, int]]]:
    """Where each facial region lies in the ``size`` x ``size`` image ``render_face`` draws.

    Returns {region: boxes} for every region of ``FACE_REGIONS``, each box ``(x0, y0, x1, y1)`` in
    whole output pixels, half-open (pixel columns x0..x1-1 and rows y0..y1-1), clipped to the
    image. Boxes are the extents of the strokes the drawing makes for the region on this face,
    its action-unit marks included (forehead wrinkles with the brows, crow's feet with the cheeks,
    the open mouth with the jaw), line widths and one supersampled pixel of rasterisation margin
    added. Eyes and cheeks have two boxes (image-left first), the other regions one. Two regions
    are anatomy rather than strokes: a cheek at rest is where its raised cheek would be drawn, and
    the jaw spans the face outline below the resting mouth line, together with the mouth (a jaw
    drop also stretches the outline's sides a little above that line, outside the box). Nothing
    is rendered, so this costs a small fraction of ``render_face``.
    """
    if size < MIN_FACE_SIZE:
        raise ValueError(f"face size must be at least {MIN_FACE_SIZE} pixels, got {size}")
    ss = supersample or _supersample_factor(size)
    canvas = _face_canvas(spec, size, ss, None)
    _draw_face(canvas, spec)
    regions: dict[str, list[tuple[int, int, int, int]]] = {}
    for region in FACE_REGIONS:
        boxes = []
        for side in (-1, 0, 1):
            extent = canvas.extents.get((region, side))
            if extent is None:
                continue
            x0 = min(max(int(math.floor(extent[0] / ss)), 0), size)
            y0 = min(max(int(math.floor(extent[1] / ss)), 0), size)
            x1 = min(max(int(math.floor(extent[2] / ss)) + 1, 0), size)
            y1 = min(max(int(math.floor(extent[3] / ss)) + 1, 0), size)
            if x1 > x0 and y1 > y0:
                boxes.append((x0, y0, x1, y1))
        regions[region] = boxes
    return regions


def _photometric(image: Image.Image, spec: FaceSpec, rng: np.random.Generator) -> Image.Image:
    """Directional lighting, exposure, colour cast and sensor noise, applied at output size."""
    size = image.size[0]
    pixels = np.asarray(image, dtype=np.float32)
    axis = np.linspace(-1, 1, size, dtype=np.float32)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    gain = spec.brightness * (1 + spec.light_strength * (math.cos(spec.light_angle) * xx + math.sin(spec.light_angle) * yy))
    pixels = pixels * gain[..., None] * np.asarray(spec.color_cast, dtype=np.float32)
    if spec.noise_sigma > 0:
        pixels = pixels + rng.normal(0.0, spec.noise_sigma, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def _face_outline(spec: FaceSpec, n: int = 72) -> tuple[np.ndarray, np.ndarray]:
    ident = spec.identity
    theta = np.linspace(0, 2 * math.pi, n, endpoint=False)
    c, s = np.cos(theta), np.sin(theta)
    lower = s > 0
    exponent = np.where(lower, ident.jaw_exponent, 2.3)
    # The jaw drop lengthens the lower face: the chin follows the lower jaw.
    height = np.where(lower, ident.face_bottom + 0.24 * _au(spec.aus, 26), ident.face_top)
    u = ident.face_w * np.sign(c) * np.abs(c) ** (2 / exponent)
    v = height * np.sign(s) * np.abs(s) ** (2 / exponent)
    return u, v


def _draw_head(canvas: _Canvas, spec: FaceSpec) -> None:
    ident = spec.identity
    skin = ident.skin
    if ident.hair_style == 2:
        # Long hair hangs behind the head, neck and shoulders.
        theta = np.linspace(math.pi, 2 * math.pi, 24)
        u = np.concatenate([1.18 * ident.face_w * np.cos(theta), [1.24 * ident.face_w, -1.24 * ident.face_w]])
        v = np.concatenate([-0.1 + 1.12 * ident.face_top * np.sin(theta), [1.45, 1.45]])
        canvas.polygon(u, v, ident.hair_color)
    # Shoulders and neck sit behind the face.
    canvas.ellipse(0.0, 2.45, 2.0, 0.9, ident.clothes)
    canvas.polygon(np.array([-0.44, 0.44, 0.5, -0.5]), np.array([0.5, 0.5, 1.9, 1.9]), _shade(skin, 0.82))
    for side in (-1, 1):
        canvas.ellipse(side * ident.face_w * 0.98, 0.02, 0.12, 0.21, _shade(skin, 0.9), n=20)
    u, v = _face_outline(spec)
    canvas.polygon(u, v, _shade(skin, 0.84))
    with canvas.tagged(("jaw", 0)):
        # The jaw region: the face outline from the resting mouth line down to the chin, cut
        # exactly at the line (the mouth, drawn later, is added to it).
        below = v >= ident.mouth_y
        following = np.roll(np.arange(len(v)), -1)
        crossing = below != below[following]
        t = (ident.mouth_y - v[crossing]) / (v[following][crossing] - v[crossing])
        cut_u = u[crossing] + t * (u[following][crossing] - u[crossing])
        canvas.mark(np.concatenate([u[below], cut_u]), np.concatenate([v[below], np.full(len(cut_u), ident.mouth_y)]))
    # A shrunken copy shifted toward the light leaves a soft shadow rim on the far side.
    shift_u, shift_v = 0.05 * math.cos(spec.light_angle), 0.05 * math.sin(spec.light_angle)
    canvas.polygon(u * 0.94 + shift_u, v * 0.95 + shift_v, skin)
    if ident.hair_style in (1, 2, 3):
        _draw_hair_cap(canvas, spec)


def _draw_hair_cap(canvas: _Canvas, spec: FaceSpec) -> None:
    ident = spec.identity
    arc = np.linspace(-0.1 * math.pi, 1.1 * math.pi, 36)
    outer_u = 1.07 * ident.face_w * np.cos(arc)
    outer_v = -1.06 * ident.face_top * np.sin(arc)
    # The hairline runs from the right temple across the forehead to the left temple; it never
    # reaches the raised-brow / forehead-wrinkle band, which carries expression cues.
    across = np.linspace(1, -1, 24)
    line_u = 0.93 * ident.face_w * across
    line_v = ident.hairline + 0.12 * across**4
    if ident.hair_style == 3:
        line_v = line_v + 0.1 * (across + 1) / 2
        line_v = np.minimum(line_v, -0.7)
    # Outer arc runs right -> left over the head, the hairline comes back left -> right.
    u = np.concatenate([outer_u, [-ident.face_w * 0.99], line_u[::-1], [ident.face_w * 0.99]])
    v = np.concatenate([outer_v, [-0.2], line_v[::-1], [-0.2]])
    canvas.polygon(u, v, ident.hair_color)


def _line_color(spec: FaceSpec, strength: float) -> tuple[int, int, int]:
    """Crease colour: the skin darkened in proportion to how deep the crease is."""
    return _mix(spec.identity.skin, _shade(spec.identity.skin, 0.45), strength)


def _draw_brows_and_forehead(canvas: _Canvas, spec: FaceSpec) -> None:
    ident = spec.identity
    base = ident.eye_y - ident.brow_gap
    t = np.linspace(0.0, 1.0, 14)
    au4 = _au(spec.aus, 4)
    au9 = _au(spec.aus, 9)
    for side in (-1, 1):
        au1, au2 = _side_au(spec, 1, side), _side_au(spec, 2, side)
        inner = ident.eye_sep - 0.2
        u = side * (inner + t * ident.brow_len - 0.08 * au4 * (1 - t))
        v = (
            base
            - ident.brow_arch * np.sin(math.pi * t**0.75)
            - 0.22 * au1 * (1 - t) ** 1.5
            - 0.2 * au2 * t**1.2
            - 0.05 * au2 * np.sin(math.pi * t)
            # With AU1 active the brow lowerer mainly knits the brows instead of lowering the
            # inner ends (the oblique "worried" brow of sadness and fear).
            + 0.17 * au4 * (1 - t) ** 0.8 * (1 - 0.7 * au1)
            + 0.03 * au4
            + 0.06 * au9 * (1 - t)
        )
        half = 0.5 * ident.brow_th * (1 - 0.45 * t) * (1 + 0.2 * au4)
        canvas.polygon(np.concatenate([u, u[::-1]]), np.concatenate([v - half, (v + half)[::-1]]), ident.brow_color)
    if au4 > 0:
        # Vertical furrows between knitted brows.
        for side in (-1, 1):
            du = side * (0.05 + 0.02 * (1 - au4))
            canvas.line(np.array([du, du * 1.3]), np.array([base - 0.02, base + 0.12]), _line_color(spec, 0.9 * au4), 0.012 + 0.01 * au4)
    raise_amount = max(_au(spec.aus, 1), _au(spec.aus, 2))
    if raise_amount > 0:
        au1_total, au2_total = _au(spec.aus, 1), _au(spec.aus, 2)
        half_span = 0.2 + 0.2 * raise_amount + 0.2 * au2_total / max(au1_total + au2_total, 1e-6)
        across = np.linspace(-1, 1, 16)
        for k in range(3 if raise_amount > 0.5 else 2):
            row_v = base - 0.3 - 0.075 * k - 0.1 * raise_amount * (k == 0)
            if row_v < ident.hairline + 0.05:
                break
            span = half_span * (1 - 0.15 * k)
            canvas.line(span * across, row_v - 0.025 * (1 - across**2), _line_color(spec, 0.75 * raise_amount), 0.011 + 0.006 * raise_amount)


def _eye_shape(spec: FaceSpec, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Upper and lower lid curves of one eye: (u, v_upper, v_lower, center_u, half_heights)."""
    ident = spec.identity
    au4, au6 = _au(spec.aus, 4), _side_au(spec, 6, side)
    au5, au7 = _side_au(spec, 5, side), _side_au(spec, 7, side)
    upper = ident.eye_open * max(0.2, 1 + 1.4 * au5 - 0.5 * au7 - 0.3 * au6 - 0.25 * au4 * (1 - au5))
    lower = ident.eye_low * max(0.15, 1 - 0.6 * au7 - 0.6 * au6 + 0.15 * au5)
    t = np.linspace(-1, 1, 17)
    center_u = side * ident.eye_sep
    u = center_u + ident.eye_w * t
    tilt = -ident.eye_tilt * side * (u - center_u)
    v_upper = ident.eye_y - upper * (1 - t**2) ** 0.75 + tilt
    v_lower = ident.eye_y + lower * (1 - t**2) ** (0.9 - 0.4 * au7) + tilt
    return u, v_upper, v_lower, np.array(center_u), np.array([upper, lower])


def _draw_eyes(canvas: _Canvas, spec: FaceSpec) -> None:
    for side in (-1, 1):
        with canvas.tagged(("eyes", side)):
            _draw_eye(canvas, spec, side)


def _draw_eye(canvas: _Canvas, spec: FaceSpec, side: int) -> None:
    ident = spec.identity
    skin = ident.skin
    sclera = (238, 234, 228)
    u, v_up, v_lo, center_u, (upper, lower) = _eye_shape(spec, side)
    au5, au6, au7 = _side_au(spec, 5, side), _side_au(spec, 6, side), _side_au(spec, 7, side)
    # Upper-lid crease: rides up and thins out as the lid is raised.
    crease_gap = 0.045 + 0.02 * au5
    canvas.line(u[2:-2], v_up[2:-2] - crease_gap * (1 - 0.5 * np.linspace(-1, 1, 13) ** 2), _shade(skin, 0.78), 0.01)
    eye_u = np.concatenate([u, u[-2:0:-1]])
    eye_v = np.concatenate([v_up, v_lo[-2:0:-1]])
    canvas.polygon(eye_u, eye_v, sclera)
    # Iris and pupil are cut to the lid opening column by column: both lids are functions of u,
    # so the visible part is, per column, the overlap of the disc's and the opening's extents.
    iris_u = float(center_u) + spec.gaze[0]
    iris_v = ident.eye_y + spec.gaze[1] + 0.15 * ident.iris_r
    for radius, color in ((ident.iris_r, ident.iris), (ident.iris_r * 0.45, (18, 14, 14))):
        cols = np.linspace(max(iris_u - radius, u[0]), min(iris_u + radius, u[-1]), 15)
        half = np.sqrt(np.clip(radius**2 - (cols - iris_u) ** 2, 0, None))
        top = np.maximum(iris_v - half, np.interp(cols, u, v_up))
        bottom = np.minimum(iris_v + half, np.interp(cols, u, v_lo))
        keep = top < bottom
        if keep.sum() >= 2:
            canvas.polygon(np.concatenate([cols[keep], cols[keep][::-1]]), np.concatenate([top[keep], bottom[keep][::-1]]), color)
    canvas.line(u, v_up, (34, 26, 24), 0.022)
    canvas.line(u, v_lo, _mix(skin, (60, 40, 36), 0.5 + 0.4 * au7), 0.009 + 0.01 * au7)
    if au7 > 0:
        # Tensed lower lid bulge.
        canvas.line(u[3:-3], v_lo[3:-3] + 0.03 + 0.01 * au7, _line_color(spec, 0.7 * au7), 0.01)
    with canvas.tagged(("cheeks", side)):
        # AU6's marks around the eye belong to the cheek it raises.
        if au6 > 0:
            # Crow's feet at the outer corner and the raised infraorbital furrow.
            corner_u, corner_v = u[-1] if side > 0 else u[0], ident.eye_y
            for angle in (-0.45, 0.0, 0.45):
                length = 0.05 + 0.06 * au6
                end_u = corner_u + side * (0.03 + length * math.cos(angle))
                end_v = corner_v + length * math.sin(angle) + 0.01
                canvas.line(np.array([corner_u + side * 0.03, end_u]), np.array([corner_v + 0.01, end_v]), _line_color(spec, 0.8 * au6), 0.01)
            arc = np.linspace(-1, 1, 12)
            canvas.line(center_u + 0.9 * ident.eye_w * arc, ident.eye_y + lower + 0.075 - 0.03 * au6 + 0.025 * arc**2, _line_color(spec, 0.65 * au6), 0.011)


def _draw_cheeks(canvas: _Canvas, spec: FaceSpec) -> None:
    ident = spec.identity
    for side in (-1, 1):
        au6 = _side_au(spec, 6, side)
        with canvas.tagged(("cheeks", side)):
            if au6 <= 0:
                # A cheek at rest is not drawn: its region is where the raised cheek would be.
                theta = np.linspace(0, 2 * math.pi, 24, endpoint=False)
                canvas.mark(side * (ident.eye_sep + 0.06) + 0.17 * np.cos(theta), ident.eye_y + 0.33 + 0.11 * np.sin(theta))
                continue
            blush = _mix(ident.skin, (235, 120, 110), 0.3 * au6)
            canvas.ellipse(side * (ident.eye_sep + 0.06), ident.eye_y + 0.33 - 0.08 * au6, 0.17, 0.11, blush, n=24)
            highlight = _mix(ident.skin, (255, 250, 245), 0.25 * au6)
            canvas.ellipse(side * (ident.eye_sep + 0.08), ident.eye_y + 0.3 - 0.08 * au6, 0.07, 0.04, highlight, n=16)


def _nose_tip(spec: FaceSpec) -> float:
    return spec.identity.eye_y + spec.identity.nose_len


def _draw_nose(canvas: _Canvas, spec: FaceSpec) -> None:
    ident = spec.identity
    skin = ident.skin
    au9 = _au(spec.aus, 9)
    tip = _nose_tip(spec) - 0.05 * au9
    width = ident.nose_w * (1 + 0.2 * au9)
    light_side = 1 if math.cos(spec.light_angle) < 0 else -1
    canvas.line(np.array([light_side * 0.06, light_side * 0.08]), np.array([ident.eye_y + 0.08, tip - 0.1]), _shade(skin, 0.85), 0.014)
    for side in (-1, 1):
        arc = np.linspace(-0.5 * math.pi, 0.75 * math.pi, 10)
        wing_u = side * (width * 0.62 + 0.055 * np.cos(arc))
        wing_v = tip + 0.0 + 0.055 * np.sin(arc)
        canvas.line(wing_u, wing_v, _shade(skin, 0.62), 0.016)
        canvas.ellipse(side * width * 0.42, tip + 0.035, 0.04, 0.017, _shade(skin, 0.35), n=14)
    canvas.line(np.linspace(-0.05, 0.05, 5), tip + 0.055 - 0.012 * (1 - np.linspace(-1, 1, 5) ** 2), _shade(skin, 0.7), 0.01)
    if au9 > 0:
        # Horizontal wrinkles across the bridge and diagonal ones beside it.
        for k in range(3):
            row_v = ident.eye_y + 0.07 + 0.045 * k
            across = np.linspace(-1, 1, 7)
            canvas.line(0.06 * across, row_v + 0.012 * across**2, _line_color(spec, 0.85 * au9), 0.011 + 0.008 * au9)
        for side in (-1, 1):
            canvas.line(np.array([side * 0.08, side * 0.14]), np.array([ident.eye_y + 0.1, ident.eye_y + 0.19]), _line_color(spec, 0.8 * au9), 0.012)


def _mouth_geometry(spec: FaceSpec) -> dict[str, np.ndarray]:
    """Lip contours along t in [-1, 1] (image left to right)."""
    ident = spec.identity
    a = spec.aus
    au9, au15, au16, au20, au23, au26 = (_au(a, c) for c in (9, 15, 16, 20, 23, 26))
    corners_u, corners_v = [], []
    for side in (-1, 1):
        au12, au14 = _side_au(spec, 12, side), _side_au(spec, 14, side)
        half = ident.mouth_w * (1 + 0.3 * au12 + 0.5 * au20 - 0.15 * au23 - 0.25 * au26 * (1 - au20) - 0.08 * au14 + 0.05 * au16)
        corners_u.append(side * half)
        corners_v.append(ident.mouth_y - 0.3 * au12 - 0.03 * au14 + 0.24 * au15 + 0.05 * au20 + 0.05 * au16 + 0.05 * au26)
    au12_left, au12_right = _side_au(spec, 12, -1), _side_au(spec, 12, 1)
    mid = ident.mouth_y + 0.07 * min(au12_left, au12_right) - 0.05 * au15 - 0.04 * au9
    t = np.linspace(-1, 1, 31)
    u = np.where(t < 0, -t * corners_u[0], t * corners_u[1])
    # Each half of the lip line is a parabola from the middle (flat there) to its own corner: a U
    # for a smile, an inverted U for a frown, and a one-sided smile leaves the other half alone.
    left_v, right_v = corners_v
    center = mid + (np.where(t < 0, left_v, right_v) - mid) * t**2
    smile_open = 0.12 * min(max((min(au12_left, au12_right) - 0.55) / 0.45, 0.0), 1.0)
    gap = 0.4 * au26 + 0.14 * au16 + 0.06 * au20 * (au26 > 0) + smile_open
    taper = np.clip(1 - t**2, 0, 1) ** (0.55 - 0.35 * au20)
    upper_share = 0.3 if au26 + au16 > smile_open else 0.45
    upper_inner = center - (upper_share * gap + 0.04 * au9) * taper
    lower_inner = center + (1 - upper_share) * gap * taper
    # A pulled corner stretches and thins the lips on its own side only.
    au12_here = np.where(t < 0, au12_left, au12_right) * np.abs(t) ** 0.7
    lip_scale = 1 - 0.65 * au23 - 0.3 * au12_here - 0.3 * au20
    thick_upper = ident.lip_upper * np.maximum(0.25, lip_scale)
    thick_lower = ident.lip_lower * np.maximum(0.25, lip_scale + 0.25 * au16)
    cupid = 1 - 0.3 * np.exp(-((t / 0.12) ** 2))
    upper_outer = upper_inner - thick_upper * np.clip(1 - t**2, 0, 1) ** 0.5 * cupid
    lower_outer = lower_inner + thick_lower * np.clip(1 - t**2, 0, 1) ** 0.6
    return {
        "t": t,
        "u": u,
        "center": center,
        "upper_inner": upper_inner,
        "lower_inner": lower_inner,
        "upper_outer": upper_outer,
        "lower_outer": lower_outer,
        "gap": np.array(gap),
        "corners_u": np.array(corners_u),
        "corners_v": np.array(corners_v),
    }


def _draw_mouth(canvas: _Canvas, spec: FaceSpec) -> None:
    ident = spec.identity
    a = spec.aus
    geo = _mouth_geometry(spec)
    u = geo["u"]
    gap = float(geo["gap"])
    au9, au15, au16, au20, au23 = (_au(a, c) for c in (9, 15, 16, 20, 23))
    tip = _nose_tip(spec) - 0.05 * au9
    for index, side in enumerate((-1, 1)):
        corner_u, corner_v = float(geo["corners_u"][index]), float(geo["corners_v"][index])
        au12, au14 = _side_au(spec, 12, side), _side_au(spec, 14, side)
        fold = max(ident.fold_depth, au12, 0.9 * au9, 0.5 * _side_au(spec, 6, side), 0.5 * au20, 0.4 * au14)
        if fold > 0.12:
            # Nasolabial fold from the nose wing to beside the lip corner; it follows the corner.
            s = np.linspace(0, 1, 10)
            p0 = np.array([side * (ident.nose_w + 0.07), tip - 0.02])
            p2 = np.array([corner_u + side * 0.08, corner_v + 0.05])
            p1 = np.array([side * (abs(corner_u) + 0.12), (tip + corner_v) / 2])
            curve = (1 - s)[:, None] ** 2 * p0 + 2 * ((1 - s) * s)[:, None] * p1 + (s**2)[:, None] * p2
            with canvas.tagged():  # the fold runs over the cheek to the nose: in no region's box
                canvas.line(curve[:, 0], curve[:, 1], _line_color(spec, 0.8 * fold), 0.011 + 0.012 * fold)
        if au14 > 0:
            arc = np.linspace(-1, 1, 7)
            canvas.line(corner_u + side * (0.045 + 0.02 * (1 - arc**2)), corner_v + 0.075 * arc, _line_color(spec, min(1.0, 0.5 + 0.6 * au14)), 0.016 + 0.01 * au14)
        if au15 > 0:
            canvas.line(np.array([corner_u + side * 0.02, corner_u + side * 0.06]), np.array([corner_v + 0.03, corner_v + 0.17]), _line_color(spec, 0.8 * au15), 0.012)
        if au20 > 0:
            canvas.line(np.array([corner_u + side * 0.02, corner_u + side * (0.05 + 0.06 * au20)]), np.array([corner_v, corner_v + 0.01]), _line_color(spec, 0.8 * au20), 0.011)
    lip = ident.lip_color
    if gap > 0.01:
        canvas.polygon(np.concatenate([u, u[::-1]]), np.concatenate([geo["upper_inner"], geo["lower_inner"][::-1]]), (62, 18, 22))
        taper = np.clip(1 - geo["t"] ** 2, 0, 1) ** 0.4
        teeth = (236, 232, 220)
        upper_teeth = min(0.07, 0.5 * gap)
        inner = slice(3, -3)
        canvas.polygon(np.concatenate([u[inner], u[inner][::-1]]), np.concatenate([geo["upper_inner"][inner], (geo["upper_inner"] + upper_teeth * taper)[inner][::-1]]), teeth)
        if au16 >= 0.25 or au20 >= 0.35:
            lower_teeth = min(0.05, 0.35 * gap)
            canvas.polygon(np.concatenate([u[inner], u[inner][::-1]]), np.concatenate([(geo["lower_inner"] - lower_teeth * taper)[inner], geo["lower_inner"][inner][::-1]]), teeth)
    canvas.polygon(np.concatenate([u, u[::-1]]), np.concatenate([geo["upper_outer"], geo["upper_inner"][::-1]]), _shade(lip, 0.9))
    canvas.polygon(np.concatenate([u, u[::-1]]), np.concatenate([geo["lower_inner"], geo["lower_outer"][::-1]]), lip)
    line_color = _mix(_shade(lip, 0.45), (40, 16, 16), 0.5 * au23)
    canvas.line(u, geo["upper_inner"], line_color, 0.02 + 0.012 * au23)
    if gap > 0.01:
        canvas.line(u, geo["lower_inner"], _shade(lip, 0.6), 0.01)
    if au23 > 0:
        # Pressed lips bunch the chin below the lower lip.
        across = np.linspace(-1, 1, 7)
        canvas.line(0.12 * across, geo["lower_outer"][15] + 0.06 + 0.015 * across**2, _line_color(spec, 0.7 * au23), 0.012)
