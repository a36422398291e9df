"""Overlays of the sentence-to-patch maps (`EmoCapCLIP.explain`): where a sentence points in a face.

    python -m emocap_jax.predict --checkpoint runs/demo --explain "raised inner brows" \\
        --explain "open mouth" --output overlays/ faces/

writes one PNG per face: the face as the model sees it (after CLIP's resize and centre crop), then
one panel per sentence with the map laid over the face (bilinear between the tokens' centres,
the colour scale running from the map's minimum to its maximum), the patch it points at
outlined, and the sentence under the panel with the map's peak weight (against 1 / patches, a
flat map).

In Python:

    from emocap_jax.explain import overlay_figure
    maps = model.explain(images, sentences)                    # [N, S, grid, grid]
    fig = overlay_figure(model.preprocess(images)[0], maps[0], sentences,
                         offset=model.config.vision.local_token_offset)
    fig.savefig("overlay.png")
"""
from __future__ import annotations

import os
import pathlib
import textwrap
from typing import Optional, Sequence

import numpy as np

from emocap_jax.preprocess import load_readable_images

CAPTION_WIDTH = 26  # characters per caption line under a panel


def _axis_weights(size: int, grid: int, step: float, offset: float):
    """(lo, hi, w) interpolating `size` pixels from `grid` samples: sample k at coordinate
    offset + k * step, pixel i's centre at i + 0.5; beyond the outer samples their values hold."""
    t = np.clip((np.arange(size) + 0.5 - offset) / step, 0, grid - 1)
    lo = np.floor(t).astype(int)
    return lo, np.minimum(lo + 1, grid - 1), t - lo


def upsample_maps(maps: np.ndarray, height: int, width: int,
                  offset: Optional[float] = None) -> np.ndarray:
    """Maps [..., gh, gw] on the token grid, bilinear to [..., height, width] pixels, each token's
    value at its centre: token (r, c) at pixel coordinates offset + (c, r) * cell, the cell being
    width / gw (height / gh); offset (in these pixels) defaults to half a cell, the patch's centre
    (`VisionConfig.local_token_offset` says where the tokens sit in the model's input; with the
    convolutional stem it is not there). float32."""
    maps = np.asarray(maps, np.float64)
    grid_h, grid_w = maps.shape[-2:]
    cell_h, cell_w = height / grid_h, width / grid_w
    off_h = cell_h / 2 if offset is None else float(offset)
    off_w = cell_w / 2 if offset is None else float(offset)
    lo, hi, w = _axis_weights(height, grid_h, cell_h, off_h)
    rows = maps[..., lo, :] * (1 - w)[:, None] + maps[..., hi, :] * w[:, None]
    lo, hi, w = _axis_weights(width, grid_w, cell_w, off_w)
    return (rows[..., lo] * (1 - w) + rows[..., hi] * w).astype(np.float32)


def overlay_figure(image: np.ndarray, maps: np.ndarray, sentences: Sequence[str],
                   title: Optional[str] = None, panel_inches: float = 2.3,
                   offset: Optional[float] = None):
    """A matplotlib Figure (not registered with pyplot, so loops do not accumulate open figures):
    the face, then one heat-map panel per sentence.

    image: [S, S, 3] uint8, the preprocessed face (`model.preprocess(...)[i]`); maps: [n, gh, gw]
    one map per sentence on the patch grid (`model.explain(...)[i]`); offset: where the first
    token's centre lies along either axis in the image's pixels
    (`model.config.vision.local_token_offset` for an image at the model's size; default half a
    cell, the patch's centre). Each map is drawn bilinear between the token centres
    (`upsample_maps`), the token it peaks on outlined by a cell-sized square around its centre."""
    # matplotlib is optional (drawing only): loaded when a figure is drawn.
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    image = np.asarray(image)
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 3 or len(maps) != len(sentences):
        raise ValueError(f"maps {maps.shape} must be [len(sentences)={len(sentences)}, gh, gw]")
    height, width = image.shape[:2]
    grid_h, grid_w = maps.shape[1:]
    captions = [textwrap.fill(s, CAPTION_WIDTH) for s in sentences]
    lines = max([c.count("\n") + 1 for c in captions] + [1])
    fig = Figure(figsize=(panel_inches * (len(sentences) + 1),
                          panel_inches + 0.2 * (lines + 1) + (0.3 if title else 0)))
    axes = fig.subplots(1, len(sentences) + 1, squeeze=False)[0]
    extent = (0, width, height, 0)  # pixel edges, so the heat's pixels line up with the face's
    axes[0].imshow(image, extent=extent)
    axes[0].set_title("face", fontsize=9)
    flat = 1.0 / (grid_h * grid_w)
    cell_w, cell_h = width / grid_w, height / grid_h
    off_w = cell_w / 2 if offset is None else float(offset)
    off_h = cell_h / 2 if offset is None else float(offset)
    pixels = upsample_maps(maps, height, width, offset)
    for ax, heat, up, caption in zip(axes[1:], maps, pixels, captions):
        ax.imshow(image, extent=extent)
        ax.imshow(up, cmap="jet", alpha=0.5, interpolation="bilinear",
                  extent=extent, vmin=float(heat.min()),
                  vmax=float(max(heat.max(), heat.min() + 1e-12)))
        row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
        ax.add_patch(Rectangle((off_w + (col - 0.5) * cell_w, off_h + (row - 0.5) * cell_h),
                               cell_w, cell_h, fill=False, edgecolor="white", linewidth=1.5))
        ax.set_xlim(0, width)  # the conv stem's edge squares reach half a cell past the image
        ax.set_ylim(height, 0)
        ax.set_title(f"peak {heat.max():.2f} (flat {flat:.2f})", fontsize=8)
        ax.set_xlabel(caption, fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def overlay_names(paths: Sequence[os.PathLike]) -> list[str]:
    """One PNG file name per image, distinct for every entry of `paths` and fixed by `paths`
    alone: the image's path relative to the images' common folder, with the folder separators as
    "__" (faces/happy/1.jpg -> happy__1.png), leading dots as "_" (.hidden/1.jpg ->
    _hidden__1.png); an image given twice, or a name already taken, gets a counter (1_1.png)."""
    # normpath: "faces/../faces/1.jpg" is named like faces/1.jpg, not "..__faces__1.png" (a name
    # starting with a dot, which file browsers hide).
    paths = [pathlib.Path(os.path.normpath(pathlib.Path(p).absolute())) for p in paths]
    root = pathlib.Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else None
    names, used = [], set()
    for path in paths:
        stem = "__".join(path.relative_to(root).with_suffix("").parts)
        # A name starting with a dot is a hidden file, which file browsers and `ls` leave out.
        visible = stem.lstrip(".")
        stem = "_" * (len(stem) - len(visible)) + visible
        name, k = f"{stem}.png", 1
        # Compared case-blind: on a case-insensitive output folder (macOS, Windows, exFAT)
        # Happy__1.png and happy__1.png are one file, and the second would overwrite the first.
        while name.casefold() in used:
            name, k = f"{stem}_{k}.png", k + 1
        used.add(name.casefold())
        names.append(name)
    return names


def write_overlays(model, paths: Sequence[os.PathLike], sentences: Sequence[str], output,
                   batch_size: int = 64, on_unreadable=None) -> list[tuple[str, pathlib.Path]]:
    """Explains every image file and writes its overlay PNG into `output` (created); returns
    (image path, PNG path) pairs. A sentence that does not fit the text context raises ValueError
    before any image is read; an unreadable image raises `preprocess.ImageReadError` naming it,
    or, given `on_unreadable`, is passed to `on_unreadable(path, error)` and skipped."""
    sentences = model.check_sentences(sentences)
    output = pathlib.Path(output)
    output.mkdir(parents=True, exist_ok=True)
    names = overlay_names(paths)
    written = []
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start:start + batch_size])
        chunk_names = names[start:start + len(chunk)]
        if on_unreadable is None:
            images = model.load_images(chunk)
        else:
            kept, images = load_readable_images(chunk, model.image_size, on_unreadable)
            chunk, chunk_names = [chunk[i] for i in kept], [chunk_names[i] for i in kept]
            if not kept:
                continue
        maps = model.explain(images, sentences)
        for path, name, image, face_maps in zip(chunk, chunk_names, images, maps):
            fig = overlay_figure(image, face_maps, sentences, title=str(path),
                                 offset=model.config.vision.local_token_offset)
            target = output / name
            fig.savefig(target, dpi=100)
            written.append((str(path), target))
    return written
