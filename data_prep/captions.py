"""Convert a caption-corpus manifest (JSON lines + image files) into TFRecord shards, on the
command line (the conversion is emocap_jax.data.manifest; its docstring describes the manifest,
the rejection codes and the output)::

    python -m data_prep.captions --manifest M.jsonl --root DIR --output OUT \\
        [--num-shards 16] [--max-side PX] [--workers N] [--captions-from-labels] \\
        [--max-sentence-words 200] [--tokenizer clip|PATH.model|none] [--overwrite]

--tokenizer stores each sentence's token ids in the records (and the tokenizer's identity in
metadata.json), so training with that tokenizer reads ids instead of tokenizing every step.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import emocap_jax.storage as storage
from emocap_jax.data.manifest import (IMAGE_NOT_FOUND, EmptyClassesWarning, convert_manifest,
                                      require_utf8_path, wide_text_error)
from emocap_jax.data.shard_writer import REJECTED_FILE
from emocap_jax.cli_errors import ArgumentParser, entry_point, report
from emocap_jax.tokenizers import get_tokenizer

__all__ = ["convert_manifest", "main"]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m data_prep.captions",
        description="Convert a caption-corpus manifest (JSON lines) and its images into "
                    "TFRecord shards with metadata.json and rejected.jsonl.")
    parser.add_argument("--manifest", required=True,
                        help="JSON-lines manifest: id, image, global, local, summary "
                             "[, label, aus, group] per line")
    parser.add_argument("--root", required=True,
                        help="directory that the manifest's relative image paths start from")
    parser.add_argument("--output", required=True,
                        help="output dataset directory: a local folder or a bucket URL "
                             "(gs://BUCKET/PATH)")
    parser.add_argument("--num-shards", type=int, default=16,
                        help="number of TFRecord shards (default 16; use many more than "
                             "hosts x data workers)")
    parser.add_argument("--max-side", type=int, default=0,
                        help="resize so the longer image side is at most this many pixels "
                             "(default 0: keep the size)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="image-processing processes (default: all cores)")
    parser.add_argument("--captions-from-labels", action="store_true",
                        help="lines carry id, image and label only; build global and summary "
                             "captions from the label with templates")
    parser.add_argument("--max-sentence-words", type=int, default=200,
                        help="reject lines with a caption sentence longer than this "
                             "(default 200 words)")
    parser.add_argument("--classes", default="",
                        help="comma-separated class names in label_id order (records whose label "
                             "is not among them are rejected); default: the sorted labels with "
                             "--captions-from-labels, none otherwise")
    parser.add_argument("--tokenizer", default="clip",
                        help="store the token ids of every sentence, from this tokenizer: 'clip' "
                             "(default), a sentencepiece .model file, or 'none' (training then "
                             "tokenizes on the fly; it also does for any other tokenizer)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a dataset already in --output")
    args = parser.parse_args(argv)
    if os.path.isdir(args.manifest):
        inside = os.path.join(args.manifest, "manifest.jsonl")
        parser.error(f"--manifest {args.manifest} is a folder, not the manifest file"
                     + (f": give {inside}" if os.path.isfile(inside) else
                        " (a JSON-lines file, one record per line)"))
    if not os.path.isfile(args.manifest):
        parser.error(f"--manifest {args.manifest} is not a file")
    if not os.path.isdir(args.root):
        parser.error(f"--root {args.root} is not a directory")
    for option, path in (("--manifest", args.manifest), ("--root", args.root)):
        try:
            require_utf8_path(option, path)
        except ValueError as e:
            parser.error(str(e))
    wide = wide_text_error(args.manifest)
    if wide:
        parser.error(f"--manifest {wide} (JSON lines are UTF-8)")
    if args.num_shards < 1:
        parser.error(f"--num-shards must be >= 1, got {args.num_shards}")
    if args.max_side < 0:
        parser.error(f"--max-side must be >= 0, got {args.max_side}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.max_sentence_words < 1:
        parser.error(f"--max-sentence-words must be >= 1, got {args.max_sentence_words}")
    if args.classes:
        classes = [c.strip() for c in args.classes.split(",")]
        if not all(classes):
            parser.error(f"--classes {args.classes!r} has an empty class name (two commas in a "
                         "row, or one at an end?)")
        repeated = sorted({c for c in classes if classes.count(c) > 1})
        if repeated:
            parser.error(f"--classes names {', '.join(repeated)} more than once")
        args.classes = classes
    else:
        args.classes = None
    if args.tokenizer.lower() == "none":
        args.tokenizer = None
    else:
        try:
            args.tokenizer = get_tokenizer(args.tokenizer)
        except FileNotFoundError:
            parser.error(f"--tokenizer {args.tokenizer} is not a file")
        except ValueError as e:
            parser.error(f"--tokenizer: {e}")
    return args


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        with warnings.catch_warnings():
            # Printed below as one plain line, with the rest of the summary.
            warnings.simplefilter("ignore", EmptyClassesWarning)
            summary = convert_manifest(
                args.manifest, args.root, args.output, num_shards=args.num_shards,
                max_side=args.max_side or None, workers=args.workers,
                captions_from_labels=args.captions_from_labels,
                max_sentence_words=args.max_sentence_words, overwrite=args.overwrite,
                tokenizer=args.tokenizer, classes=args.classes)
    except FileExistsError as e:
        print(f"error: {e} (pass --overwrite to replace it)", file=sys.stderr)
        return 2
    print(f"{summary['num_lines']} manifest lines: {summary['num_written']} written to "
          f"{summary['output']} ({args.num_shards} shards), {summary['num_rejected']} rejected")
    for code, count in summary["rejected_by_reason"].items():
        print(f"  {code}: {count}")
    if summary["num_rejected"]:
        print(f"rejected lines and reasons: {storage.join(summary['output'], REJECTED_FILE)}")
    if summary["classes_without_records"]:
        print(f"warning: every line of the classes "
              f"{', '.join(map(repr, summary['classes_without_records']))} was rejected: they "
              "stay in metadata.json's classes (and its classes_without_records) with no record",
              file=sys.stderr)
    if summary["num_written"] == 0:
        hint = ""
        missing = summary["rejected_by_reason"].get(IMAGE_NOT_FOUND, 0)
        if missing:
            # Nothing written and images missing: the paths are most likely relative to
            # another folder than the --root given.
            hint = (f"; {missing} images were not found: the manifest's relative image paths "
                    f"are read below --root {args.root}")
        return report(f"no record was written: none of the {summary['num_lines']} lines of "
                      f"--manifest {args.manifest} could be converted (the reasons are listed "
                      f"above and in rejected.jsonl){hint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
