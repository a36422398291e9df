"""Convert evaluation benchmarks, in the layouts their owners distribute, into TFRecord datasets.

    python -m data_prep.benchmarks --name NAME --root DIR --output OUT \\
        [--split NAME|all] [--fold K] [--frames 16] [--num-shards N] [--workers N] \\
        [--classes a,b,c] [--with-neutral] [--max-side PX] [--overwrite] \\
        [--val-fraction 0.1] [--split-seed 0] [--join-near-copies 0.93]
    python -m data_prep.benchmarks --list

Each split becomes one dataset directory written by ShardedRecordWriter: OUT/<split>/, or
OUT/fold<k>/<split>/ for benchmarks with official folds (DFEW, MAFW). Benchmarks without an
official split have the single split "all" (OUT/all/). `--split all` (the default) converts
every split, and every fold unless `--fold` picks one.

`--val-fraction F` splits a benchmark that has only the split "all" (imagefolder, CK+48, JAFFE,
...) into OUT/train/ and OUT/val/ instead: a record goes to val when a hash of its group (the
subject, so one person's faces stay on one side) or, without a group, of its id falls below F.
Byte-identical image files (or pixel rows) share one coin, so a face stored under two names
never lands on both sides (FER2013's training faces hold 1,035 such sets; split by id alone,
215 of 2,926 validation faces had a twin in train); `--join-near-copies CORR` also joins image
files whose small grayscale thumbnails correlate above CORR, the same photo re-encoded or
re-cropped (data_prep/near_copies.py). metadata.json's layout_info.holdout counts what was
joined. The split depends only on the ids, groups, those contents, F and
`--split-seed`, so it is reproducible and stable when files are added (but for a new copy,
which joins its twins' set).

Records carry the label (class name), label_id (index into metadata.json's `classes`, the
class order the dataset defines), group (subject / actor / identity where the layout gives
it), action units where the benchmark annotates them (FABA-Bench's au split) and empty
captions. Still images are stored as one RGB JPEG; clips as K = --frames JPEG
frames sampled uniformly over the decoded frames. Every input entry (a label-file line, an
image file, a clip) is either written or listed in rejected.jsonl as "<code>: <detail>", once: a
line of a label file that several splits read (RAF-DB, FER2013, FERPlus) but that belongs to
none of them is listed with the first split converted.
metadata.json also records the benchmark, split, fold, per-class counts and rejection counts.

The multiple-choice benchmarks (face-human-bench, facexbench) write one record per image a
question is asked about, plus OUT/<split>/questions.jsonl (what `python -m emocap_jax.evaluate
--protocol multiple_choice` reads): every question either scored (its image and one prompt per
option), skipped with the reason a two-tower model cannot score it, or listed in rejected.jsonl
(malformed entry, missing image); see data_prep/benchmark_formats/questions.py.

The layouts, one per converter, are the registry's (emocap_jax.evaluate.registry.LAYOUTS: the
expected files, splits and folds, listed briefly by --list); their readers are documented in
data_prep/benchmark_formats/*.py.

The decoding workers are forked, or spawned once JAX (or another runtime with native thread
pools) is loaded (`emocap_jax.data.pools`): a script that converts with workers > 1 after
importing JAX needs an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import math
import os
import sys
from typing import Any

from tqdm import tqdm

from data_prep import near_copies
from data_prep.benchmark_formats import READERS, LayoutError, ReaderOptions
from data_prep.benchmark_formats import common, questions
from data_prep.benchmark_formats.decode import DecodeEntry
from emocap_jax.cli_errors import ArgumentParser, entry_point, report
import emocap_jax.storage as storage
from emocap_jax.data import pools, shard_writer
from emocap_jax.data.manifest import JPEG_QUALITY
from emocap_jax.data.shard_writer import REJECTED_FILE, ShardedRecordWriter
from emocap_jax.evaluate.registry import LAYOUTS, Layout

RECORDS_PER_SHARD = {"image": 1000, "video": 100}
MAX_AUTO_SHARDS = 256


def _plan(benchmark: Layout, split: str, fold: int | None) -> list[tuple[int | None, str]]:
    """The (fold, split) pairs to convert, validated against what the benchmark defines."""
    if split == "all":
        splits = list(benchmark.splits)
    elif split in benchmark.splits:
        splits = [split]
    else:
        raise ValueError(f"{benchmark.name} has splits {list(benchmark.splits)}, not {split!r}")
    if benchmark.folds:
        if fold is not None and fold not in benchmark.folds:
            raise ValueError(f"{benchmark.name} has folds {list(benchmark.folds)}, not {fold}")
        folds = [fold] if fold is not None else list(benchmark.folds)
    else:
        if fold is not None:
            raise ValueError(f"{benchmark.name} has no official folds; do not pass a fold")
        folds = [None]
    return [(f, s) for f in folds for s in splits]


def _output_dir(output: str, fold: int | None, split: str) -> str:
    return os.path.join(output, f"fold{fold}", split) if fold is not None \
        else os.path.join(output, split)


def _reject_duplicate_ids(items: list) -> list:
    """Later entries reusing an id become rejections (the first one keeps it)."""
    first: dict[str, common.Entry] = {}
    result = []
    for item in items:
        if isinstance(item, common.Entry):
            if item.id in first:
                owner = first[item.id]
                # A label list may name one file twice: then the line, not the path, tells them
                # apart.
                where = f"first listed on line {owner.line}" if owner.line is not None \
                    else f"the id of {owner.source}"
                item = common.reject(common.DUPLICATE_ID, f"{item.source}"
                                     f"{'' if item.line is None else f' (line {item.line})'} has "
                                     f"{where}", id=item.id, line=item.line)
            else:
                first[item.id] = item
        result.append(item)
    return result


def _reject_names_not_unicode(items: list) -> list:
    """Entries whose id, label or group is not valid Unicode (a file name with bytes that are not
    UTF-8) become bad_file_name rejections, and entries without an id malformed_entry ones: a
    record cannot store them, and one such file must not end the conversion of all the others.
    Rejections get printable ids and reasons."""
    result = []
    for item in items:
        if isinstance(item, common.Entry) and not item.id.strip():
            # No reader should list one; a record cannot be written without an id, and one
            # such entry must not end the conversion of the others.
            where = "" if item.line is None else f" (line {item.line})"
            item = common.reject(common.MALFORMED_ENTRY, f"{common.printable(item.source)}"
                                 f"{where} has no record id", line=item.line)
        if isinstance(item, common.Entry):
            if not all(common.is_unicode(text) for text in (item.id, item.label, item.group)):
                item = common.reject(common.BAD_FILE_NAME, f"{common.printable(item.source)}: "
                                     "the name is not UTF-8, so it cannot be a record id",
                                     id=common.printable(item.id), line=item.line)
        elif not common.is_unicode(item.reason) or \
                (item.id is not None and not common.is_unicode(item.id)):
            item = dataclasses.replace(item, reason=common.printable(item.reason),
                                       id=None if item.id is None else common.printable(item.id))
        result.append(item)
    return result


def _list_splitless_once(listings: list) -> None:
    """Keeps each splitless rejection (a line of a label file several splits read that belongs
    to none of them) in the first listing of its fold only, so it is listed once in all."""
    seen_folds = set()
    for fold, _, listing in listings:
        if fold in seen_folds:
            listing.items = [item for item in listing.items
                             if not isinstance(item, common.SplitlessRejection)]
        seen_folds.add(fold)


def holdout_key_fraction(key: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, key): the hold-out split's coin for one key."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def _content_digest(item) -> str | None:
    """sha256 of what an entry is decoded from (its pixel row, or its image file's bytes); None
    for clips and frame folders, which are split by their group or id alone."""
    if not isinstance(item, common.Entry):
        return None
    if item.kind == common.PIXELS and item.pixels is not None:
        return hashlib.sha256(item.pixels.encode("utf-8")).hexdigest()
    if item.kind == common.IMAGE:
        try:
            with open(item.source, "rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest()
        except OSError:  # unreadable: the decoding worker rejects it with its own reason
            return None
    return None


def _holdout_keys(items: list, near_copy_threshold: float | None = None
                  ) -> tuple[list[str], dict[str, Any]]:
    """Each item's coin key, and what was joined. The key is the group, else the id; items whose
    inputs are byte-identical (FER2013 holds the same face under several file names, some under
    different labels), and with near_copy_threshold the image files whose thumbnails correlate
    above it (near_copies.py), are joined with everything that shares their key, and the joined
    set takes its smallest key's coin, so one face never lands on both sides. Items without a
    twin keep their own key: the split of the others stays put."""
    keys = [(item.group or item.id) if isinstance(item, common.Entry) else (item.id or "")
            for item in items]
    parent = {k: k for k in keys}

    def root(k):
        while parent[k] != k:
            parent[k] = k = parent[parent[k]]
        return k

    def join(a, b) -> bool:
        a, b = root(a), root(b)
        if a != b:
            parent[max(a, b)] = min(a, b)
        return a != b

    first_key: dict[str, str] = {}
    identical = set()
    for item, key in zip(items, keys):
        digest = _content_digest(item)
        if digest is not None and join(key, first_key.setdefault(digest, key)):
            identical.add(digest)
    info: dict[str, Any] = {"identical_content_sets": len(identical)}
    if near_copy_threshold is not None:
        pairs = near_copies.near_copy_pairs(items, near_copy_threshold)
        info["near_copy_threshold"] = near_copy_threshold
        info["near_copy_joins"] = sum(join(keys[i], keys[j]) for i, j in pairs)
    return [root(k) for k in keys], info


def split_holdout(listing: common.SplitListing, val_fraction: float, seed: int,
                  near_copy_threshold: float | None = None
                  ) -> tuple[common.SplitListing, common.SplitListing]:
    """(train, val) listings from one listing: an entry goes to val when the coin of its group
    (or, without a group, of its id) is below val_fraction; byte-identical inputs, and near-copies
    with near_copy_threshold, share one coin (_holdout_keys). Rejections follow their id's coin,
    so every input still ends up written or rejected in exactly one of the two datasets."""
    parts: dict[str, list] = {"train": [], "val": []}
    keys, joined = _holdout_keys(listing.items, near_copy_threshold)
    for item, key in zip(listing.items, keys):
        parts["val" if holdout_key_fraction(key, seed) < val_fraction else "train"].append(item)
    info = {**listing.info, "holdout": {"val_fraction": val_fraction, "seed": seed, **joined}}
    return (common.SplitListing(list(listing.classes), parts["train"], dict(info)),
            common.SplitListing(list(listing.classes), parts["val"], dict(info)))


def _auto_num_shards(num_items: int, video: bool) -> int:
    per_shard = RECORDS_PER_SHARD["video" if video else "image"]
    return max(1, min(MAX_AUTO_SHARDS, math.ceil(num_items / per_shard)))


def _convert_listing(benchmark: Layout, listing: common.SplitListing, out_dir: str, *,
                     split: str, fold: int | None, root: str, frames: int,
                     max_side: int | None, num_shards: int | None, pool, workers: int,
                     overwrite: bool, progress: bool) -> dict[str, Any]:
    items = _reject_duplicate_ids(listing.items)
    shards = num_shards or _auto_num_shards(len(items), benchmark.video)
    metadata = {
        "benchmark": benchmark.name,
        "split": split,
        "fold": fold,
        "source": {"root": os.path.abspath(root), "layout": benchmark.description},
        "frames_per_record": frames if benchmark.video else 1,
        "conversion": {"max_side": max_side, "jpeg_quality": JPEG_QUALITY},
        "layout_info": listing.info,
    }
    decode = DecodeEntry(frames, max_side)
    if pool is None:
        results = map(decode, items)
    else:
        chunksize = 1 if benchmark.video else max(1, min(32, len(items) // (workers * 8)))
        results = pool.imap(decode, items, chunksize)
    rejected_by_reason: collections.Counter[str] = collections.Counter()
    class_counts = {name: 0 for name in listing.classes}
    written_ids: set[str] = set()
    image_rejections: dict[str, str] = {}
    desc = f"{benchmark.name} {'' if fold is None else f'fold{fold}/'}{split}"
    with ShardedRecordWriter(out_dir, shards, metadata=metadata, classes=listing.classes,
                             created_by="data_prep.benchmarks", overwrite=overwrite) as writer:
        for result in tqdm(results, total=len(items), desc=desc,
                           unit="clip" if benchmark.video else "image", disable=not progress):
            if isinstance(result, common.Rejection):
                # Reasons name paths, which may hold bytes that are not UTF-8.
                writer.reject(result.line, None if result.id is None
                              else common.printable(result.id), common.printable(result.reason))
                rejected_by_reason[result.code] += 1
                if result.id is not None:
                    image_rejections[result.id] = result.reason
            else:
                writer.add(result)
                written_ids.add(result.id)
                if result.label:
                    class_counts[result.label] += 1
        if writer.num_records + writer.num_rejected != len(items):
            raise AssertionError(f"{len(items)} inputs but {writer.num_records} written + "
                                 f"{writer.num_rejected} rejected")
        writer.update_metadata({
            "num_inputs": len(items),
            "class_counts": class_counts,
            "rejected_by_reason": dict(sorted(rejected_by_reason.items())),
        })
        question_counts = None
        if listing.questions is not None:
            # After the images: a question whose image was not written is rejected too.
            question_counts = questions.write_questions(out_dir, listing.questions, written_ids,
                                                        image_rejections, writer.reject)
            writer.update_metadata({"questions": question_counts})
        written = writer.close()
    summary = {"split": split, "fold": fold, "output": out_dir, "classes": listing.classes,
               "num_inputs": len(items), "num_written": written["num_records"],
               "num_rejected": len(items) - written["num_records"],
               "rejected_by_reason": dict(sorted(rejected_by_reason.items())),
               "class_counts": class_counts, "num_shards": shards}
    if question_counts is not None:
        summary["questions"] = question_counts
    return summary


def _refuse_output_inside_root(root: str, output: str) -> None:
    """The readers look through the whole root (imagefolder takes every folder as a class, the
    video layouts every file as a clip): datasets written inside it would be read as part of
    the benchmark on the next run, as an extra class that shifts the label ids or as rejected
    inputs. Refused before anything is listed or written."""
    if storage.is_url(output):
        return
    real_root, real_output = os.path.realpath(root), os.path.realpath(output)
    if os.path.commonpath([real_root, real_output]) == real_root:
        raise ValueError(f"output {output} is inside root {root}: the next conversion of the "
                         f"root would read the datasets written there as part of the "
                         f"benchmark; write them outside the root")


def convert_benchmark(name: str, root: str | os.PathLike, output: str | os.PathLike,
                      split: str = "all", fold: int | None = None, frames: int = 16,
                      num_shards: int | None = None, workers: int | None = None,
                      classes: list[str] | None = None, *, with_neutral: bool = False,
                      max_side: int | None = None, overwrite: bool = False,
                      progress: bool = True, val_fraction: float = 0.0,
                      split_seed: int = 0, near_copy_threshold: float | None = None
                      ) -> dict[str, Any]:
    """Converts one benchmark into dataset directories under `output`; returns a summary.

    Args:
      name: a key of emocap_jax.evaluate.registry.LAYOUTS (see `--list`).
      root: the benchmark as distributed (layout in its converter's docstring).
      output: OUT; datasets go to OUT/<split>/ or OUT/fold<k>/<split>/.
      split: one split or "all"; fold: one fold of a 5-fold benchmark, or None for all.
      frames: K frames sampled per clip (video benchmarks).
      num_shards: shards per dataset; None picks ceil(records / 1000) (/ 100 for video).
      workers: decoding processes; None uses every core.
      classes: imagefolder only: class order; folders not listed are rejected.
      with_neutral: ckplus only: add each labelled sequence's first frame as neutral.
      max_side: downscale so the longer side is at most this many pixels (None keeps size).
      overwrite: replace datasets already in the output folders.
      val_fraction: if > 0, a benchmark whose only split is "all" is written as OUT/train and
        OUT/val instead, about this fraction (by group, else by id) in val; split_seed picks
        which. Byte-identical inputs always land on one side.
      near_copy_threshold: with val_fraction, also keep image files whose thumbnails correlate
        above this on one side (data_prep/near_copies.py; O(n^2), so None skips it).

    Returns {"benchmark", "root", "output", "datasets": [per-dataset summary with split,
    fold, output, classes, num_inputs, num_written, num_rejected, rejected_by_reason,
    class_counts, num_shards, and for multiple-choice benchmarks questions: {num_questions,
    num_scored, num_skipped, num_rejected, skipped_by_reason, rejected_by_reason, by_task}]}.
    num_inputs / num_written / num_rejected count images (records); rejected.jsonl also
    lists the rejected questions.

    Raises ValueError for an unknown name, split or fold, LayoutError when root does not have
    the expected layout or a whole label file cannot be read (not UTF-8, a CSV quote left open:
    the error names the file and line; before anything is written), FileExistsError for an
    existing dataset without overwrite.
    """
    if name not in LAYOUTS:
        raise ValueError(f"unknown benchmark {name!r}; supported: {', '.join(LAYOUTS)}")
    benchmark = LAYOUTS[name]
    if classes is not None and name != "imagefolder":
        raise ValueError(f"classes can only be given for imagefolder, not {name} (its class "
                         "order is fixed by the dataset)")
    if with_neutral and name != "ckplus":
        raise ValueError("with_neutral applies to ckplus only")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if num_shards is not None and num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if max_side is not None and max_side <= 0:
        max_side = None
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if near_copy_threshold is not None and not val_fraction:
        raise ValueError("near_copy_threshold applies to a val_fraction split only")
    if near_copy_threshold is not None and not -1.0 <= near_copy_threshold <= 1.0:
        raise ValueError(f"near_copy_threshold must be a correlation in [-1, 1], "
                         f"got {near_copy_threshold}")
    if val_fraction and tuple(benchmark.splits) != ("all",):
        raise ValueError(f"val_fraction applies to benchmarks with the single split 'all'; "
                         f"{name} has official splits {list(benchmark.splits)}")
    root, output = os.fspath(root), os.fspath(output)
    if not os.path.isdir(root):
        raise LayoutError(f"{name}: root {root} is not a directory")
    _refuse_output_inside_root(root, output)
    options = ReaderOptions(classes=tuple(classes) if classes is not None else None,
                            with_neutral=with_neutral)
    # List every split first: a layout problem surfaces before any dataset is written.
    listings = [(f, s, READERS[name](root, s, f, options))
                for f, s in _plan(benchmark, split, fold)]
    for _, _, listing in listings:
        listing.items = _reject_names_not_unicode(listing.items)
    _list_splitless_once(listings)
    if val_fraction:
        (f, _, listing), = listings
        train, val = split_holdout(listing, val_fraction, split_seed, near_copy_threshold)
        listings = [(f, "train", train), (f, "val", val)]
    if not overwrite:
        # Every output folder is checked before the first is written: a dataset left in a later
        # split's folder must not surface only after the earlier splits were converted.
        for f, s, _ in listings:
            existing = shard_writer.existing_dataset_files(_output_dir(output, f, s))
            if existing:
                raise FileExistsError(shard_writer.existing_dataset_message(
                    _output_dir(output, f, s), existing))
    workers = workers or os.cpu_count() or 1
    # Not forked from a process that runs JAX (a notebook, a script that evaluated first): forking
    # it can deadlock the children (see emocap_jax.data.pools).
    pool = pools.pool_context().Pool(workers) if workers > 1 else None
    try:
        datasets = [
            _convert_listing(benchmark, listing, _output_dir(output, f, s), split=s, fold=f,
                             root=root, frames=frames, max_side=max_side,
                             num_shards=num_shards, pool=pool, workers=workers,
                             overwrite=overwrite, progress=progress)
            for f, s, listing in listings]
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return {"benchmark": name, "root": root, "output": output, "datasets": datasets}


def list_benchmarks() -> str:
    width = max(len(n) for n in LAYOUTS)
    lines = []
    for benchmark in LAYOUTS.values():
        folds = f"; folds {benchmark.folds[0]}..{benchmark.folds[-1]}" if benchmark.folds else ""
        lines.append(f"{benchmark.name:<{width}}  {benchmark.description} "
                     f"[splits: {', '.join(benchmark.splits)}{folds}]")
    return "\n".join(lines)


def _split_names() -> list[str]:
    """Every split some benchmark defines, then "all"."""
    names = {s for b in LAYOUTS.values() for s in b.splits} - {"all"}
    order = ["train", "val", "test"]
    return sorted(names, key=lambda s: (order.index(s) if s in order else len(order), s)) + \
        ["all"]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m data_prep.benchmarks",
        description="Convert an evaluation benchmark, in its owners' layout, into TFRecord "
                    "datasets (one per split / fold) with metadata.json and rejected.jsonl.",
        epilog="Run with --list to see the supported benchmarks and the layout each expects.")
    parser.add_argument("--list", action="store_true",
                        help="print the supported benchmark names and expected layouts, then exit")
    parser.add_argument("--name", choices=list(LAYOUTS), metavar="NAME",
                        help="benchmark to convert (see --list)")
    parser.add_argument("--root", help="the benchmark's directory, as distributed")
    parser.add_argument("--output", help="output folder: datasets go to OUT/<split>/ or "
                                         "OUT/fold<k>/<split>/")
    parser.add_argument("--split", default="all", choices=_split_names(),
                        help="split to convert (default: all splits the benchmark defines; "
                             "--list shows each benchmark's)")
    parser.add_argument("--fold", type=int, default=None,
                        help="fold of a 5-fold benchmark (DFEW, MAFW); default: all folds")
    parser.add_argument("--frames", type=int, default=16,
                        help="frames sampled uniformly per video clip (default 16)")
    parser.add_argument("--num-shards", type=int, default=None,
                        help="TFRecord shards per dataset (default: about 1000 images or 100 "
                             "clips per shard)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="decoding processes (default: all cores)")
    parser.add_argument("--classes", default=None,
                        help="imagefolder only: comma-separated class order; other folders "
                             "are rejected")
    parser.add_argument("--with-neutral", action="store_true",
                        help="ckplus only: also take each labelled sequence's first frame as "
                             "neutral")
    parser.add_argument("--max-side", type=int, default=0,
                        help="downscale so the longer side is at most this many pixels "
                             "(default 0: keep the size)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace datasets already in the output folders")
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="for a benchmark with the single split 'all': write OUT/train and "
                             "OUT/val with about this fraction in val, split by subject (group) "
                             "where known, else by id (default 0: one dataset OUT/all)")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the --val-fraction split (default 0)")
    parser.add_argument("--join-near-copies", type=float, default=None, metavar="CORR",
                        help="with --val-fraction: also keep image files whose 16x16 grayscale "
                             "thumbnails correlate above CORR (e.g. 0.93) on one side; compares "
                             "every pair (about 15 s for 28,709 faces)")
    args = parser.parse_args(argv)
    if args.list:
        return args
    for flag in ("name", "root", "output"):
        if getattr(args, flag) is None:
            parser.error(f"--{flag} is required (or use --list)")
    if args.frames < 1:
        parser.error(f"--frames must be >= 1, got {args.frames}")
    if args.num_shards is not None and args.num_shards < 1:
        parser.error(f"--num-shards must be >= 1, got {args.num_shards}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.max_side < 0:
        parser.error(f"--max-side must be >= 0, got {args.max_side}")
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.join_near_copies is not None and not args.val_fraction:
        parser.error("--join-near-copies applies to a --val-fraction split only")
    if args.join_near_copies is not None and not -1.0 <= args.join_near_copies <= 1.0:
        parser.error(f"--join-near-copies must be a correlation in [-1, 1], "
                     f"got {args.join_near_copies}")
    if args.classes is not None:
        args.classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        if not args.classes:
            parser.error("--classes is empty")
    return args


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.list:
        print(list_benchmarks())
        return 0
    try:
        summary = convert_benchmark(
            args.name, args.root, args.output, split=args.split, fold=args.fold,
            frames=args.frames, num_shards=args.num_shards, workers=args.workers,
            classes=args.classes, with_neutral=args.with_neutral,
            max_side=args.max_side or None, overwrite=args.overwrite,
            val_fraction=args.val_fraction, split_seed=args.split_seed,
            near_copy_threshold=args.join_near_copies)
    except FileExistsError as e:
        print(f"error: {e} (pass --overwrite to replace it)", file=sys.stderr)
        return 2
    except (LayoutError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    empty = []
    for dataset in summary["datasets"]:
        print(f"{dataset['output']}: {dataset['num_written']} of {dataset['num_inputs']} "
              f"written ({dataset['num_shards']} shards), {dataset['num_rejected']} rejected")
        for code, count in dataset["rejected_by_reason"].items():
            print(f"  {code}: {count}")
        q = dataset.get("questions")
        if q is not None:
            print(f"  questions: {q['num_scored']} of {q['num_questions']} scored, "
                  f"{q['num_skipped']} skipped, {q['num_rejected']} rejected "
                  f"({os.path.join(dataset['output'], questions.QUESTIONS_FILE)})")
            for kind in ("skipped", "rejected"):
                for code, count in q[f"{kind}_by_reason"].items():
                    print(f"    {kind} {code}: {count}")
        if dataset["num_rejected"] or (q is not None and q["num_rejected"]):
            print(f"  reasons: {os.path.join(dataset['output'], REJECTED_FILE)}")
        if dataset["num_written"] == 0:
            empty.append(dataset["output"])
    if empty:
        # Nothing usable under --root: a user mistake (wrong folder or layout), not a crash.
        return report(f"no record was written to {', '.join(empty)}: --root {args.root} holds "
                      f"no {args.name} entries that could be read (the reasons are listed above "
                      f"and in rejected.jsonl; --list shows the layout {args.name} expects)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
