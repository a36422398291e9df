"""The embedded synthetic-faces corpus on the command line (the generator is
emocap_jax.data.synthetic.corpus; its docstring describes the output)::

    python -m data_prep.synthetic --output data/synthetic --num 10000 --seed 0
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from emocap_jax.data.synthetic.corpus import (
    DEFAULT_COMPOUND_FRACTION,
    DEFAULT_FACES_PER_IDENTITY,
    DEFAULT_JPEG_QUALITY,
    IMAGE_FORMATS,
    JPEG_QUALITY_RANGE,
    SIZE_RANGE,
    generate_corpus,
    plan_corpus,
)
from emocap_jax.cli_errors import (
    ArgumentParser,
    entry_point,
    float_in,
    int_in,
    non_negative_int,
    positive_int,
)

__all__ = ["generate_corpus", "plan_corpus", "main"]


def _build_parser() -> argparse.ArgumentParser:
    # The ranges are generate_corpus's (corpus._check_arguments), checked here so that a bad value is
    # named by its option (--size) rather than by the library's argument name (size).
    parser = ArgumentParser(
        prog="python -m data_prep.synthetic",
        description="Generate the synthetic-faces caption corpus (AU-driven expressions, EmoCap-style captions).",
    )
    parser.add_argument("--output", required=True, help="output directory (new, empty, or a previous synthetic corpus to replace)")
    parser.add_argument("--num", type=non_negative_int, required=True, help="number of training faces")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed; equal arguments give byte-identical output (default 0)")
    parser.add_argument("--size", type=int_in(*SIZE_RANGE), default=96, help=f"image side in pixels, {SIZE_RANGE[0]} to {SIZE_RANGE[1]} (default 96)")
    parser.add_argument("--eval-per-class", type=non_negative_int, default=40, help="held-out faces per basic class (default 40)")
    parser.add_argument("--workers", type=non_negative_int, default=None, help="worker processes (default: all cores for large corpora)")
    parser.add_argument("--format", dest="image_format", choices=sorted(IMAGE_FORMATS) + ["jpg"], default="jpeg", help="image format (default jpeg)")
    parser.add_argument("--compound-fraction", type=float_in(0, 1), default=DEFAULT_COMPOUND_FRACTION, help=f"share of training faces with compound expressions (default {DEFAULT_COMPOUND_FRACTION})")
    parser.add_argument("--faces-per-identity", type=positive_int, default=DEFAULT_FACES_PER_IDENTITY, help=f"faces drawn per synthetic person (default {DEFAULT_FACES_PER_IDENTITY})")
    parser.add_argument("--jpeg-quality", type=int_in(*JPEG_QUALITY_RANGE), default=DEFAULT_JPEG_QUALITY, help=f"JPEG quality, {JPEG_QUALITY_RANGE[0]} to {JPEG_QUALITY_RANGE[1]} (default {DEFAULT_JPEG_QUALITY})")
    parser.add_argument("--au-drop-probability", type=float_in(0, 1, high_open=True), default=0.0, help="leave out each action unit of a face's class, key ones included, with this probability, so a class's movements no longer come together (default 0: the usual corpus)")
    parser.add_argument("--appearance-captions", action="store_true", help="follow each global sentence with one on what the face looks like (skin, hair, tilt, light, background, clothes); the images are the same as without it")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.num == 0 and args.eval_per_class == 0:
        parser.error("nothing to generate: --num and --eval-per-class are both 0")
    try:
        summary = generate_corpus(
            args.output,
            args.num,
            seed=args.seed,
            size=args.size,
            eval_per_class=args.eval_per_class,
            workers=args.workers,
            image_format=args.image_format,
            compound_fraction=args.compound_fraction,
            faces_per_identity=args.faces_per_identity,
            jpeg_quality=args.jpeg_quality,
            au_drop_probability=args.au_drop_probability,
            appearance_captions=args.appearance_captions,
            progress=not args.no_progress,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {summary['num_train']} training and {summary['num_eval']} eval faces to {summary['output_dir']} "
        f"in {summary['seconds']:.1f} s ({summary['faces_per_second']:.1f} faces/s)"
    )
    for split, counts in summary["counts"].items():
        print(f"  {split}: " + ", ".join(f"{label} {count}" for label, count in counts.items()))
    print(f"  preview: {summary['preview']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
