"""Image decoding and augmentation on uint8 pixels for the host input pipeline.

Everything here stays in uint8 and in C code (libjpeg-turbo through simplejpeg, OpenCV for the
resize, flip, colour jitter and grayscale), because the host's job is to
keep up with the accelerator: converting to float32 on the host costs about 3x the throughput and
4x the bytes sent to the device, so images leave the pipeline as uint8 and the model normalises
them inside the jitted step.

Training: `augment_image` = random resized crop (torchvision's sampling rule) to S x S
(`resize_crop`: bilinear, antialiased when the crop is over 1.1 x S), horizontal flip,
brightness / contrast / saturation jitter in random order, random grayscale. Every random choice
comes from the `np.random.Generator` passed in, which the pipeline seeds from the record's
position in the stream, so a restored iterator replays the same augmentations.

Evaluation: `resize_center_crop` = resize the shorter side to S with bicubic filtering, then take
the central S x S crop with torchvision's rounding, the preprocessing of OpenAI CLIP / open_clip;
beyond 16:1 only the part of the image the crop keeps is resampled (within a few grey levels).
"""

from __future__ import annotations

import dataclasses
import io
import math

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from emocap_jax.data import rgb

_JPEG_FORMATS = ("jpeg", "jpg")

# The input pipeline parallelises over reader threads and worker processes already; OpenCV's own
# thread pool on top of that only oversubscribes the cores. (Process-wide: nothing else in the
# project uses OpenCV.)
cv2.setNumThreads(1)


def decode_image(data: bytes, image_format: str = "jpeg", min_side: int = 0) -> np.ndarray:
    """Decodes encoded image bytes to an upright RGB uint8 array [H, W, 3]: the pixels inference
    (`emocap_jax.preprocess`) reads from the same file, whatever the format. EXIF orientation is
    applied; grayscale, palette, CMYK, transparent and 16-bit images become RGB by
    `emocap_jax.data.rgb.to_rgb` (transparency onto white, 16 bits scaled to 8, not clipped).
    The converters store upright RGB JPEGs, for which all of that changes nothing; records
    written by other tools may hold anything Pillow reads.

    For JPEG, `min_side` > 0 lets libjpeg-turbo decode at the smallest reduced DCT scale M/8
    (7/8, 3/4, ..., 1/8; Pillow's draft: 1/2, 1/4, 1/8) that keeps both sides at least `min_side`
    pixels: a large photo that ends up as a small crop then costs a fraction of a full decode.
    Scales come in eighths, so even a source only 8/7 of `min_side` is decoded smaller. CMYK
    JPEGs, and those that simplejpeg refuses (progressive oddities, arithmetic coding), are
    decoded by Pillow.
    """
    orientation, components = rgb.jpeg_header(data) if image_format.lower() in _JPEG_FORMATS \
        else (1, 0)
    # CMYK / YCCK (4 components) goes to Pillow: libjpeg-turbo's conversion to RGB differs from
    # Pillow's (which inference uses) by a few levels.
    if image_format.lower() in _JPEG_FORMATS and components in (1, 3):
        try:
            image = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_side,
                                           min_width=min_side)
        except ValueError:
            pass  # Pillow below gives the authoritative error if the file is really broken.
        else:
            return rgb.orient(image, orientation)
    with Image.open(io.BytesIO(data)) as img:
        if min_side > 0 and img.format == "JPEG":
            img.draft("RGB", (min_side, min_side))
        return np.asarray(rgb.upright_rgb(img))


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """Training augmentation settings (see `augment_image`).

    crop_scale: range of the crop's area as a fraction of the image area.
    crop_ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly.
    flip_prob: probability of a horizontal flip (set 0 when captions name left and right).
    brightness, contrast, saturation: jitter strengths s; the factor is drawn uniformly from
        [max(0, 1 - s), 1 + s]; 0 disables that jitter.
    grayscale_prob: probability of converting the image to gray (kept as 3 channels).
    """

    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    grayscale_prob: float = 0.1

    def __post_init__(self):
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        for name in ("flip_prob", "grayscale_prob"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} jitter strength must be >= 0, got {getattr(self, name)}")

    def decode_min_side(self, size: int) -> int:
        """Smallest decoded side (of both) at which every crop the sampler can draw still has
        both sides >= `size` pixels, so the resize never enlarges what a full decode would have
        shrunk. A crop of area fraction s and aspect ratio r of an H x W image has sides
        sqrt(s H W r) and sqrt(s H W / r): the narrowest comes at the smallest s and the ratio
        farthest from 1 on the narrow side, min(r_lo, 1 / r_hi), not at the area alone."""
        lo, hi = self.crop_ratio
        return math.ceil(size / math.sqrt(self.crop_scale[0] * min(lo, 1.0 / hi)))


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale: tuple[float, float], ratio: tuple[float, float]
                            ) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop sampling: returns (left, top, crop_width, crop_height).

    Ten tries at an area fraction in `scale` and a log-uniform aspect ratio in `ratio`; if none
    fits inside the image, the largest centred crop with the aspect ratio clamped to `ratio`.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


# Pillow's RGB -> L weights (ITU-R 601-2 luma in 16-bit fixed point).
_LUMA = np.array([19595, 38470, 7471], np.float64) / 65536


def _scale_shift(img: np.ndarray, factor: float, shift: float = 0.0) -> np.ndarray:
    """saturate(round(pixel * factor + shift)) per channel (OpenCV's SIMD path; its LUT and a
    NumPy table lookup measured 3-8x slower on 224 px images here)."""
    return cv2.addWeighted(img, factor, img, 0.0, shift)


def _adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """ImageEnhance.Brightness: pixel * factor."""
    return _scale_shift(img, factor)


def _adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """ImageEnhance.Contrast: mean + factor * (pixel - mean), mean of the image's luma (from the
    channel means: Pillow's per-pixel rounding of the luma averages out)."""
    mean = int(float(np.dot(cv2.mean(img)[:3], _LUMA)) + 0.5)
    return _scale_shift(img, factor, (1.0 - factor) * mean)


def _gray(img: np.ndarray) -> np.ndarray:
    """The luma as 3 equal channels (Pillow's convert("L").convert("RGB"), up to rounding)."""
    return cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def _adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """ImageEnhance.Color: gray + factor * (pixel - gray), saturated to [0, 255]."""
    return cv2.addWeighted(img, factor, _gray(img), 1.0 - factor, 0.0)


_JITTERS = (("brightness", _adjust_brightness), ("contrast", _adjust_contrast),
            ("saturation", _adjust_saturation))


def color_jitter(img: np.ndarray, rng: np.random.Generator, brightness: float = 0.0,
                 contrast: float = 0.0, saturation: float = 0.0) -> np.ndarray:
    """Brightness, contrast and saturation jitter on an RGB uint8 image [H, W, 3], applied in
    random order (torchvision's ColorJitter on PIL images, computed with OpenCV)."""
    strengths = {"brightness": brightness, "contrast": contrast, "saturation": saturation}
    for j in rng.permutation(len(_JITTERS)):
        name, adjust = _JITTERS[j]
        s = strengths[name]
        if s > 0:
            img = adjust(img, float(rng.uniform(max(0.0, 1.0 - s), 1.0 + s)))
    return img


# Shrinking by less than this, bilinear sampling alone stays within about 0.3 grey levels of the
# antialiased result (mean |diff| on photos: 0.03-0.28 at 1.05x, 0.10-0.58 at 1.1x), and
# aliasing needs a stronger shrink to show; the low-pass costs as much as the resize itself, and
# crops of stored faces a little larger than the output side (the common case) all land here.
_PREFILTER_FROM_SCALE = 1.1


def _antialias_kernel(scale: float) -> np.ndarray | None:
    """1-D low-pass taps applied before bilinear sampling when shrinking by `scale` (None: none).

    Pillow's and torchvision's antialiased bilinear resize widens the triangle filter to `scale`
    input pixels (variance scale^2 / 6 instead of 1 / 6). Bilinear sampling after a blur of
    variance (scale^2 - 1) / 6 has the same width: three taps [e, 1 - 2e, e] (e = variance / 2)
    while that stays a smooth kernel, a sampled Gaussian for stronger shrinking. Below
    `_PREFILTER_FROM_SCALE` there is no blur (its taps would be within 2.5% of the identity).
    """
    if scale <= _PREFILTER_FROM_SCALE:
        return None
    var = (scale * scale - 1.0) / 6.0
    if var <= 1.0 / 3.0:  # scale <= sqrt(3): e <= 1/6
        e = var / 2.0
        return np.array([e, 1.0 - 2.0 * e, e], np.float32)
    radius = math.ceil(3.0 * math.sqrt(var))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-x * x / (2.0 * var))
    return (taps / taps.sum()).astype(np.float32)


_IDENTITY_TAP = np.ones((1,), np.float32)


def resize_crop(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The crop `box` = (left, top, width, height) of `image` resized to [size, size], uint8.

    Bilinear (OpenCV INTER_LINEAR, pixel centres aligned as in Pillow and torchvision), and
    antialiased along an axis the crop shrinks by more than 1.1x: that axis is low-passed first
    with a filter as wide as Pillow's antialiasing one (`_antialias_kernel`), so a strong
    downscale does not alias. Enlarging is plain bilinear, as in Pillow. Compared with Pillow's
    `resize((size, size), BILINEAR, box=...)` on photos the result differs by about one grey
    level on average (tests/test_pipeline.py bounds it), at about a quarter of the time.
    """
    left, top, w, h = box
    crop = image[top:top + h, left:left + w]
    kx, ky = _antialias_kernel(w / size), _antialias_kernel(h / size)
    if kx is not None or ky is not None:
        crop = cv2.sepFilter2D(crop, -1, _IDENTITY_TAP if kx is None else kx,
                               _IDENTITY_TAP if ky is None else ky,
                               borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)


def augment_image(image: np.ndarray, size: int, rng: np.random.Generator,
                  params: AugmentParams) -> np.ndarray:
    """Random resized crop to [size, size], flip, colour jitter, grayscale; uint8 in and out."""
    height, width = image.shape[:2]
    box = random_resized_crop_box(height, width, rng, params.crop_scale, params.crop_ratio)
    out = resize_crop(image, box, size)
    if rng.random() < params.flip_prob:
        # A copy, not the reversed view: batching copies a reversed view ~40x slower (element by
        # element, 3 bytes at a time) than cv2.flip makes it.
        out = cv2.flip(out, 1)
    if params.brightness or params.contrast or params.saturation:
        out = color_jitter(out, rng, params.brightness, params.contrast, params.saturation)
    if rng.random() < params.grayscale_prob:
        out = _gray(out)
    return out


# Above this aspect ratio (long side over short side) `resize_center_crop` resamples only the
# central part of the image the crop keeps: resizing all of a 1 x 20000 strip to a short side of
# 224 would allocate a 224 x 4,480,000 image (3 GiB) to keep 224 x 224 of it. Pillow's
# resize(box=...) is not bit-exact against a full resize, so up to this ratio (every real face
# crop) the full resize is kept and outputs stay identical to before.
FULL_RESIZE_MAX_ASPECT = 16.0


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """CLIP evaluation preprocessing: shorter side to `size` (bicubic), then the central crop."""
    height, width = image.shape[:2]
    short, long_ = sorted((height, width))
    if short != size and long_ > FULL_RESIZE_MAX_ASPECT * short:
        return _resize_central_crop(image, size)
    img = Image.fromarray(image)
    if min(height, width) != size:
        # torchvision.transforms.Resize(int): the longer side is truncated, not rounded.
        if height <= width:
            new_h, new_w = size, int(size * width / height)
        else:
            new_h, new_w = int(size * height / width), size
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        height, width = new_h, new_w
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    if (height, width) != (size, size):
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img)


def _resize_central_crop(image: np.ndarray, size: int) -> np.ndarray:
    """`resize_center_crop` of an elongated image by resampling only the source span that maps to
    the crop along the long axis (plus the bicubic filter's reach), with the same geometry: the
    same truncated resized length and rounded crop offset, so the crop covers the same source
    region. The short axis is resampled whole, as the crop keeps all of it."""
    height, width = image.shape[:2]
    wide = height <= width
    short, long_ = (height, width) if wide else (width, height)
    resized = int(size * long_ / short)              # torchvision's truncation, as above
    offset = int(round((resized - size) / 2.0))
    scale = long_ / resized                          # source pixels per output pixel, long axis
    start, stop = offset * scale, (offset + size) * scale
    # Pillow's bicubic filter reaches 2 output pixels either side, i.e. 2 * max(scale, 1) source
    # pixels; one more on each side absorbs the rounding of the span's ends.
    reach = int(math.ceil(2.0 * max(scale, 1.0))) + 1
    lo = max(0, int(math.floor(start)) - reach)
    hi = min(long_, int(math.ceil(stop)) + reach)
    if wide:
        part, box = image[:, lo:hi], (start - lo, 0.0, stop - lo, float(height))
    else:
        part, box = image[lo:hi], (0.0, start - lo, float(width), stop - lo)
    img = Image.fromarray(np.ascontiguousarray(part))
    return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC, box=box))
