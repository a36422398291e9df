"""Zero-shot facial-emotion prediction on image files from the command line.

    python -m emocap_jax.predict --checkpoint runs/demo face1.jpg photos/
    python -m emocap_jax.predict --checkpoint runs/demo --labels happy,sad --top 2 --json photos/
    python -m emocap_jax.predict --checkpoint runs/demo --explain "raised inner brows" \
        --explain "open mouth" --output overlays/ photos/

Prints one row per image (the image, its top label and the probability of every label) or, with
--json, one JSON document. With --explain it writes one overlay PNG per image instead: where each
sentence points in the face (emocap_jax/explain.py). See --help for every option.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np
from absl import logging as absl_logging

import emocap_jax  # cheap: emocap_jax.load imports JAX and the model only when called
import emocap_jax.storage as storage
from emocap_jax.preprocess import (ImageReadError, check_image_file, expand_image_paths,
                                   load_readable_images)
from emocap_jax.cli_errors import ArgumentParser, entry_point, report
from emocap_jax.prompt_templates import template_problem

# The eight basic-emotion nouns the demo and the synthetic corpus use (in their label order).
DEFAULT_LABELS = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger",
                  "contempt")
# A table column shows at most this many characters of a label (full prompts can be long).
_MAX_HEADER = 16

_DESCRIPTION = """\
Zero-shot emotion recognition with an EmoCapCLIP (or any CLIP) checkpoint: each image is compared
with a text embedding per label and the softmax of logit_scale x cosine similarity is printed.

Images are read with Pillow (grayscale, palette, RGBA and 16-bit files become RGB, transparent
pixels white as in training; EXIF rotation is applied), their shorter side resized to the model's
input size (bicubic) and the central square cropped, as CLIP's evaluation preprocessing does."""

_EPILOG = """\
labels:
  A label that starts with the word "a", "an" or "the", or ends in ".", "!" or "?", is a full
  prompt and is encoded as given ("a photo of a smiling face"). Any other label is a class name
  ("happiness", "happily surprised"): it is put into each prompt template (default: the package's
  face-emotion templates, e.g. "The face conveys {}.") and the template embeddings are averaged.
  --label-mode names|prompts applies one treatment to every label instead.

examples:
  python -m emocap_jax.predict --checkpoint runs/demo runs/demo/synthetic/eval
  python -m emocap_jax.predict --checkpoint runs/demo --labels happy,sad,angry --top 1 face.jpg
  python -m emocap_jax.predict --checkpoint ViT-B-16.safetensors --json photos/ > out.json
  python -m emocap_jax.predict --checkpoint runs/demo --label-mode prompts \\
      --labels "a smiling face,a crying face" face.jpg
  python -m emocap_jax.predict --checkpoint runs/demo --explain "raised inner brows" \\
      --explain "open mouth" --output overlays/ faces/

explain:
  Each --explain sentence is scored against every patch of each face as the local loss pools
  them (softmax over patches of patch token . sentence embedding / tau_pool); the overlay shows
  the face, one heat map per sentence with the patch it points at outlined, and the sentence as
  its caption. A sentence longer than the text tower's context is an error, not cut.

unreadable images:
  An image file that cannot be read (not an image, truncated, too large, a macOS "._" file) is
  skipped: it is named on stderr with the reason, every other image is still classified and
  printed (--json also lists it under "skipped"), and the exit status is 2. --strict stops at the
  first one instead, printing no predictions.

exit status: 0 when every image was read; 2 for bad arguments, a missing image path, a
checkpoint that does not load, or any skipped image (one line on stderr each); 1 for an internal
error (a traceback)."""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m emocap_jax.predict", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE",
        help="image files, or directories (searched recursively, files sorted by path, by suffix: "
             ".jpg .jpeg .png .bmp .gif .webp .tif .tiff .ppm .pgm)")
    parser.add_argument(
        "--checkpoint", required=True, metavar="PATH",
        help="an emocap_jax export folder, a training workdir (its export/ is used), or an "
             "open_clip / OpenAI / Hugging Face CLIP checkpoint file or folder")
    parser.add_argument(
        "--source", default="auto", choices=("auto", "emocap", "open_clip", "openai", "hf"),
        help="checkpoint kind (default: recognised from the files)")
    parser.add_argument(
        "--labels", metavar="A,B,...",
        help="comma-separated class names or prompts, in output order (default: "
             + ", ".join(DEFAULT_LABELS) + ")")
    parser.add_argument(
        "--label-mode", default="auto", choices=("auto", "names", "prompts"),
        help="auto: the rule below; names: every label goes into the templates; prompts: every "
             "label is encoded as given (default: auto)")
    parser.add_argument(
        "--template", action="append", metavar="TEXT", dest="templates",
        help="a prompt template with one {} for the class name; repeat for several (default: the "
             "face-emotion templates of emocap_jax.evaluate.zero_shot)")
    parser.add_argument(
        "--top", type=int, metavar="K",
        help="show only the K most probable labels per image (table: label and probability "
             "pairs; JSON: an extra 'top' list)")
    parser.add_argument(
        "--json", action="store_true",
        help="print one JSON document: {checkpoint, labels, predictions: [{image, label, "
             "probability, probabilities: {label: p}, top: [{label, probability}] with --top}], "
             "skipped: [{image, error}]}")
    parser.add_argument(
        "--explain", action="append", metavar="SENTENCE",
        help="instead of classifying, write an overlay PNG per image of where SENTENCE points in "
             "the face (the local loss's sentence-to-patch map); repeat for several sentences, "
             "one panel each; needs --output")
    parser.add_argument(
        "--output", metavar="DIR",
        help="folder for the --explain overlays (created): one PNG per image, named after its "
             "path below the images' common folder (faces/happy/1.jpg -> happy__1.png); an "
             "image given twice, or a name taken (also ignoring case), gets a counter")
    parser.add_argument(
        "--batch-size", type=int, default=64, metavar="N",
        help="images read and encoded per step; bounds memory for large folders (default: 64)")
    parser.add_argument(
        "--strict", action="store_true",
        help="stop at the first image that cannot be read (exit status 2, no predictions) "
             "instead of skipping it and classifying the others")
    return parser


def parse_labels(text: Optional[str]) -> list[str]:
    if text is None:
        return list(DEFAULT_LABELS)
    labels = [label.strip() for label in text.split(",")]
    return labels


class _Skipped:
    """The images left out because they cannot be read: each is named on stderr when found (or,
    with --strict, stops the run), and counted for the last line and the exit status."""

    def __init__(self, strict: bool, parser):
        self.strict, self.parser, self.rows = strict, parser, []

    def __call__(self, path, error: ImageReadError) -> None:
        if self.strict:
            self.parser.error(str(error))
        report(f"{error}: skipped")
        self.rows.append({"image": str(path), "error": str(error)})

    def status(self, total: int) -> int:
        """0, or after the last line on stderr 2 (the user's files are at fault)."""
        if not self.rows:
            return 0
        return report(f"{len(self.rows)} of {total} images could not be read and were skipped "
                      f"(named above); the results are for the other {total - len(self.rows)}")


def _validate(args, parser, skipped: _Skipped) -> tuple[list, list[str]]:
    """Everything that can be checked before JAX is imported, so mistakes fail in a second. Image
    files whose header cannot be read go to `skipped`; none readable at all is an error."""
    labels = parse_labels(args.labels)
    if any(not label for label in labels):
        parser.error(f"--labels {args.labels!r}: empty label (check for doubled or trailing "
                     f"commas)")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        parser.error(f"--labels: duplicate labels {duplicates}")
    if args.top is not None and not 1 <= args.top:
        parser.error(f"--top {args.top}: must be at least 1")
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: must be at least 1")
    for template in args.templates or ():
        problem = template_problem(template)
        if problem is not None:
            parser.error(f"--template {template!r}: {problem}")
    if args.explain:
        if not args.output:
            parser.error("--explain needs --output DIR, the folder for the overlay PNGs")
        if os.path.exists(args.output) and not os.path.isdir(args.output):
            parser.error(f"--output {args.output}: exists and is not a directory")
        for sentence in args.explain:
            if not sentence.strip():
                parser.error(f"--explain {sentence!r}: empty sentence")
        for flag, value in (("--labels", args.labels), ("--template", args.templates),
                            ("--top", args.top), ("--json", args.json or None)):
            if value is not None:
                parser.error(f"{flag} classifies; it cannot be combined with --explain")
    elif args.output:
        parser.error("--output is for the overlays of --explain")
    try:  # a bucket too (gs://...): emocap_jax.load reads those through emocap_jax.storage
        found = storage.exists(args.checkpoint)
    except (OSError, ImportError, ValueError) as e:  # no gcsfs, no network, a bad URL
        parser.error(f"--checkpoint {args.checkpoint}: cannot look it up: {e}")
    if not found:
        parser.error(f"--checkpoint {args.checkpoint}: no such file or directory")
    try:
        paths = expand_image_paths(args.images)
    except ImageReadError as e:
        parser.error(str(e))
    readable = []
    for path in paths:
        try:
            check_image_file(path)
        except ImageReadError as e:
            skipped(path, e)
        else:
            readable.append(path)
    if not readable:
        parser.error(f"none of the {len(paths)} image files can be read (named above)")
    return readable, labels


def _format_table(rows: list[dict], labels: Sequence[str], top: Optional[int]) -> str:
    def short(label):
        return label if len(label) <= _MAX_HEADER else label[:_MAX_HEADER - 1] + "…"

    image_width = max([len("image")] + [len(r["image"]) for r in rows])
    if top is None:
        label_width = max(len(short(label)) for label in labels)
        columns = [short(label) for label in labels]
        header = (f"{'image':<{image_width}}  {'prediction':<{label_width}}  "
                  + "  ".join(f"{c:>{max(5, len(c))}}" for c in columns))
        lines = [header]
        for r in rows:
            cells = "  ".join(f"{r['probabilities'][label]:>{max(5, len(c))}.3f}"
                              for label, c in zip(labels, columns))
            lines.append(f"{r['image']:<{image_width}}  "
                         f"{short(r['label']):<{label_width}}  {cells}")
    else:
        lines = [f"{'image':<{image_width}}  top {top} (probability)"]
        for r in rows:
            cells = "  ".join(f"{short(t['label'])} {t['probability']:.3f}" for t in r["top"])
            lines.append(f"{r['image']:<{image_width}}  {cells}")
    return "\n".join(lines)


def run(args, parser) -> int:
    skipped = _Skipped(args.strict, parser)
    paths, labels = _validate(args, parser, skipped)
    total = len(paths) + len(skipped.rows)
    try:
        model = emocap_jax.load(args.checkpoint, source=args.source)
    except (OSError, ValueError, KeyError) as e:
        # A checkpoint of the wrong kind (or broken): say which, and what loads.
        return report(f"--checkpoint {args.checkpoint}: cannot load: {e} (give an emocap_jax "
                      f"export folder, a training workdir with export/, or open_clip / Hugging "
                      f"Face CLIP weights)")
    if model.tokenizer is None:  # labels and --explain sentences are text: both need one
        return report(f"--checkpoint {args.checkpoint}: this model has no known tokenizer (its "
                      f"vocabulary is not CLIP BPE and its checkpoint records none), so it cannot "
                      f"encode labels or sentences; give a checkpoint with CLIP's vocabulary or "
                      f"an emocap_jax export, which records its tokenizer")
    if args.explain:
        # Only --explain draws (explain loads matplotlib): plain predictions never import it.
        from emocap_jax.explain import write_overlays
        try:
            # A file whose header was fine but whose data is not goes to `skipped` too.
            written = write_overlays(model, paths, args.explain, args.output, args.batch_size,
                                     on_unreadable=skipped)
        except ValueError as e:  # a sentence longer than the text context
            parser.error(f"--explain: {e}")
        for image, overlay in written:
            print(f"{image} -> {overlay}")
        print(f"wrote {len(written)} overlays to {args.output}")
        return skipped.status(total)
    templates = tuple(args.templates) if args.templates else None
    try:  # before any image is read; zero_shot reuses these (they are cached)
        model.encode_labels(labels, templates, args.label_mode)
    except ValueError as e:  # e.g. "sad,Sad": one text to the tokenizer
        parser.error(f"--labels: {e}")
    rows = []
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start:start + args.batch_size]
        # A file whose header was fine but whose data is not goes to `skipped` too.
        kept, images = load_readable_images(chunk, model.image_size, skipped)
        if not kept:
            continue
        chunk = [chunk[i] for i in kept]
        probs = model.zero_shot(images, labels, templates=templates,
                               label_mode=args.label_mode)
        for path, p in zip(chunk, probs):
            order = np.argsort(-p, kind="stable")
            row = {"image": str(path), "label": labels[order[0]],
                   "probability": float(p[order[0]]),
                   "probabilities": {label: float(q) for label, q in zip(labels, p)}}
            if args.top is not None:
                row["top"] = [{"label": labels[i], "probability": float(p[i])}
                              for i in order[:args.top]]
            rows.append(row)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "labels": labels,
                          "predictions": rows, "skipped": skipped.rows}, indent=1))
    elif rows:
        print(_format_table(rows, labels, args.top))
    return skipped.status(total)


@entry_point
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Orbax logs every file it restores at INFO through absl; a prediction tool prints results only.
    absl_logging.set_verbosity(absl_logging.WARNING)
    # A reader that closes stdout early (`... | head`) is handled by entry_point.
    return run(args, parser)


if __name__ == "__main__":
    sys.exit(main())
