"""Overlays of the sentence-to-patch maps (`EmoCapCLIP.explain`): where a sentence points in a face.

    python -m emocap_jax.predict --checkpoint runs/demo --explain "raised inner brows" \\
        --explain "open mouth" --output overlays/ faces/

writes one PNG per face: the face as the model sees it (after CLIP's resize and centre crop), then
one panel per sentence with the map laid over the face (bilinear over the patch grid, the colour
scale running from the map's minimum to its maximum), the patch it points at outlined, and the
sentence under the panel with the map's peak weight (against 1 / patches, a flat map).

In Python:

    from emocap_jax.explain import overlay_figure
    maps = model.explain(images, sentences)                    # [N, S, grid, grid]
    fig = overlay_figure(model.preprocess(images)[0], maps[0], sentences)
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


def overlay_figure(image: np.ndarray, maps: np.ndarray, sentences: Sequence[str],
                   title: Optional[str] = None, panel_inches: float = 2.3):
    """A matplotlib Figure (not registered with pyplot, so loops do not accumulate open figures):
    the face, then one heat-map panel per sentence.

    image: [S, S, 3] uint8, the preprocessed face (`model.preprocess(...)[i]`); maps: [n, gh, gw]
    one map per sentence on the patch grid (`model.explain(...)[i]`)."""
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
    extent = (0, width, height, 0)  # pixel edges, so the map's cells line up with the patches
    axes[0].imshow(image, extent=extent)
    axes[0].set_title("face", fontsize=9)
    flat = 1.0 / (grid_h * grid_w)
    for ax, heat, caption in zip(axes[1:], maps, captions):
        ax.imshow(image, extent=extent)
        ax.imshow(heat, cmap="jet", alpha=0.5, interpolation="bilinear",
                  extent=extent, vmin=float(heat.min()),
                  vmax=float(max(heat.max(), heat.min() + 1e-12)))
        row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
        cell_w, cell_h = width / grid_w, height / grid_h
        ax.add_patch(Rectangle((col * cell_w, row * cell_h), cell_w, cell_h, fill=False,
                               edgecolor="white", linewidth=1.5))
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
    """One PNG file name per image: its path relative to the images' common folder, with the
    folder separators as "__" (faces/happy/1.jpg -> happy__1.png); repeats get a counter."""
    paths = [pathlib.Path(p).absolute() for p in paths]
    root = pathlib.Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else None
    names, used = [], set()
    for path in paths:
        stem = "__".join(path.relative_to(root).with_suffix("").parts)
        name, k = f"{stem}.png", 1
        while name in used:
            name, k = f"{stem}_{k}.png", k + 1
        used.add(name)
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
            fig = overlay_figure(image, face_maps, sentences, title=str(path))
            target = output / name
            fig.savefig(target, dpi=100)
            written.append((str(path), target))
    return written
