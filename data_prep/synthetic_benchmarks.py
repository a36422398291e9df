"""Synthetic benchmark splits on the command line (the generator is
emocap_jax.evaluate.synthetic_benchmarks; its docstring describes the splits)::

    python -m data_prep.synthetic_benchmarks --output DIR [--per-class 40] [--compound-per-class 20]
        [--clips-per-class 10] [--frames 8] [--size 96] [--seed 0] [--overwrite]
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from emocap_jax.data.synthetic.faces import MIN_FACE_SIZE
from emocap_jax.evaluate.synthetic_benchmarks import SPLITS, generate_benchmarks
from emocap_jax.cli_errors import ArgumentParser, entry_point, int_in, non_negative_int, positive_int

__all__ = ["generate_benchmarks", "main"]


def _splits(text: str) -> list[str]:
    """argparse type of --splits: a comma-separated, non-empty subset of SPLITS."""
    splits = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise argparse.ArgumentTypeError(
            f"{'unknown splits ' + repr(unknown) if unknown else 'no splits given'} in {text!r}; "
            f"choose from {list(SPLITS)}")
    return splits


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m data_prep.synthetic_benchmarks",
                                     description="Write synthetic benchmark splits (basic faces with captions, AUs and "
                                                 "multiple-choice questions; compound faces; video clips) as TFRecords.")
    parser.add_argument("--output", required=True, help="output folder: OUT/basic, OUT/compound, OUT/video")
    # NumPy refuses a negative seed with a message that names no option.
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    parser.add_argument("--per-class", type=positive_int, default=40, help="basic faces per class (default 40, as the corpus's eval split)")
    parser.add_argument("--compound-per-class", type=positive_int, default=20, help="compound faces per class (default 20)")
    parser.add_argument("--clips-per-class", type=positive_int, default=10, help="video clips per basic class (default 10)")
    parser.add_argument("--frames", type=positive_int, default=8, help="frames per clip (default 8)")
    parser.add_argument("--size", type=int_in(MIN_FACE_SIZE), default=96, help=f"image side in pixels, at least {MIN_FACE_SIZE} (default 96)")
    parser.add_argument("--splits", type=_splits, default=list(SPLITS), help=f"comma-separated subset of {','.join(SPLITS)}")
    parser.add_argument("--overwrite", action="store_true", help="replace splits already in the output folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    # The ranges are generate_benchmarks's, checked here so that a bad value is named by its option
    # (--size) rather than by the library's argument name (size).
    args = parser.parse_args(argv)
    try:
        summary = generate_benchmarks(args.output, args.seed, args.per_class, args.compound_per_class,
                                      args.clips_per_class, args.frames, args.size,
                                      splits=args.splits,
                                      overwrite=args.overwrite, progress=not args.no_progress)
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for split in SPLITS:
        if split in summary:
            print(f"{split}: {summary[split]}")
    if "questions" in summary:
        print(f"questions: {summary['questions']} ({summary['num_questions']} questions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
