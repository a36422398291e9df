"""Input pipeline throughput: the Grain training pipeline (and tf.data, when installed) on the same
TFRecord files, in images per second (PERFORMANCE.md, "Input pipeline").

Work per image, as in training: read the record (checksum verified), parse the Example, decode the
JPEG, random resized crop to 224 + horizontal flip, token rows of the global, summary and sampled
local sentences (CLIP BPE, 77 tokens), batch 64, uint8 output. Rows:

  grain, workers 0 / 1 / 2 ...   the training pipeline in-process and with worker processes, token
                                 ids read from the records (stored at conversion)
  grain, tokens on the fly       the same, tokenizing the sentences every step (stored_tokens=False:
                                 what a dataset without ids or another tokenizer costs)
  grain, full augmentation       + colour jitter and random grayscale (the training default)
  grain, images only             token rows replaced by zeros, to show what text costs
  tf.data (stored ids, on the fly, images only)
                                 the same work in tf.data, only when TensorFlow is importable
                                 (it is no dependency of the project: install it beside), else a note
  decode only                    simplejpeg decode of the same JPEGs in one process: a ceiling

Without --data, a dataset of --num synthetic faces at --size px is made once (emocap_jax.data.synthetic
+ emocap_jax.data.manifest) under --work-dir and reused by later runs. Timing starts after --warmup
batches, so worker start-up is reported separately and not counted in images/s. Timings on a shared
2-core machine vary by about 30% between runs: compare rows of one run.

Run:  python bench/input_pipeline.py            (see --help)
"""
import argparse
import os
import pathlib
import shlex
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench_args import refuse_repeated_options  # noqa: E402  (bench/ is sys.path[0])
from emocap_jax.cli_errors import entry_point, non_negative_int, positive_int  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="an existing dataset directory (metadata.json + shards); "
                        "default: make one under --work-dir")
    parser.add_argument("--work-dir", default="/tmp/emocap_bench_input",
                        help="where the fabricated dataset is kept (default: %(default)s)")
    parser.add_argument("--num", type=positive_int, default=3000,
                        help="faces to fabricate when --data is not given (default: %(default)s)")
    parser.add_argument("--size", type=positive_int, default=256,
                        help="side of the fabricated face JPEGs (default: %(default)s)")
    parser.add_argument("--shards", type=positive_int, default=8,
                        help="TFRecord shards of the fabricated dataset (default: %(default)s)")
    parser.add_argument("--image-size", type=positive_int, default=224,
                        help="output side after the random resized crop (default: %(default)s)")
    parser.add_argument("--batch", type=positive_int, default=64, help="batch size (default: %(default)s)")
    parser.add_argument("--workers", type=non_negative_int, nargs="+", default=None,
                        help="Grain worker counts to time (default: 0 1 and the core count)")
    parser.add_argument("--read-threads", type=positive_int, default=None,
                        help="reader threads per process (default: the pipeline's default)")
    parser.add_argument("--steps", type=positive_int, default=30,
                        help="timed batches per row (default: %(default)s)")
    parser.add_argument("--warmup", type=non_negative_int, default=3,
                        help="untimed batches before timing (default: %(default)s)")
    parser.add_argument("--skip-tf", action="store_true", help="do not time tf.data")
    args = parser.parse_args(argv)
    refuse_repeated_options(parser, argv)
    if args.data and not os.path.isfile(os.path.join(args.data, "metadata.json")):
        parser.error(f"--data {args.data} is not a dataset directory (no metadata.json)")
    return args


def fabricate_dataset(args) -> str:
    """Synthetic faces -> manifest -> TFRecord shards (with CLIP token ids), reused when there."""
    from emocap_jax.data.manifest import convert_manifest
    from emocap_jax.data.shard_writer import load_metadata
    from emocap_jax.data.synthetic.corpus import generate_corpus

    out = pathlib.Path(args.work_dir) / f"faces{args.num}_{args.size}px_{args.shards}shards"
    tfrecords = out / "tfrecords"
    if (tfrecords / "metadata.json").exists():
        metadata = load_metadata(tfrecords)
        if metadata["num_records"] == args.num and "tokenizer" in metadata:
            print(f"reusing {tfrecords}")
            return str(tfrecords)
    corpus = out / "corpus"
    if not (corpus / "manifest.jsonl").exists():
        print(f"rendering {args.num} synthetic faces at {args.size} px into {corpus} ...")
        generate_corpus(corpus, args.num, seed=0, size=args.size, eval_per_class=0)
    print(f"converting {corpus} into {tfrecords} (token ids included) ...")
    convert_manifest(corpus / "manifest.jsonl", corpus, tfrecords, num_shards=args.shards,
                     overwrite=True)
    return str(tfrecords)


class ZeroTokenizer:
    """Stands in for the tokenizer to time the image path alone."""

    def __init__(self, context_length: int):
        self.context_length = context_length

    def __call__(self, texts, context_length=None):
        import numpy as np
        return np.zeros((len(texts), context_length or self.context_length), np.int32)


def time_batches(iterator, warmup: int, steps: int, batch: int) -> tuple[float, float]:
    """(seconds to the end of the warm-up, images per second over the timed batches)."""
    start = time.perf_counter()
    for _ in range(warmup):
        next(iterator)
    ready = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    elapsed = time.perf_counter() - ready
    return ready - start, steps * batch / elapsed


def grain_row(data_dir, args, tokenizer, workers: int, full_augmentation: bool,
              stored_tokens: bool = True):
    from emocap_jax.data import pipeline

    overrides = {} if full_augmentation else dict(brightness=0.0, contrast=0.0, saturation=0.0,
                                                  grayscale_prob=0.0)
    overrides["stored_tokens"] = stored_tokens
    if args.read_threads is not None:
        overrides["read_threads"] = args.read_threads
    config = pipeline.TrainPipelineConfig(data_dir=data_dir, image_size=args.image_size,
                                          worker_count=workers, **overrides)
    iterator = pipeline.make_train_iterator(config, tokenizer, args.batch, 0, 1)
    try:
        return time_batches(iterator, args.warmup, args.steps, args.batch)
    finally:
        if hasattr(iterator, "close"):
            iterator.close()


def tf_data_row(data_dir, args, tokenizer, stored_tokens: bool = False):
    """The same work in tf.data: parse, decode-and-crop, resize, flip, token rows, batch.

    stored_tokens: token rows built in TensorFlow ops from the ids stored in the records (parsed
    as features, sampled, cut and padded as the tokenizer does); else the sentences are tokenized
    by the project's tokenizer through tf.numpy_function."""
    import numpy as np
    import tensorflow as tf

    from emocap_jax.data.shard_writer import shard_paths

    size, length, local_k, local_r = args.image_size, 77, 4, 8
    rng = np.random.default_rng(0)

    def tokenize(global_caption, summary, local_captions):
        local = [s.decode() for s in local_captions[:local_r] if s.strip()]
        chosen = sorted(rng.choice(len(local), size=min(local_k, len(local)), replace=False)) \
            if local else []
        tokens = tokenizer([global_caption.decode(), summary.decode()] +
                           [local[i] for i in chosen], context_length=length)
        local_tokens = np.zeros((local_k, length), np.int32)
        local_tokens[:len(chosen)] = tokens[2:]
        mask = np.arange(local_k) < len(chosen)
        return tokens[0], tokens[1], local_tokens, mask

    sot, eot, pad = (getattr(tokenizer, name, 0) for name in ("sot_id", "eot_id", "pad_id"))

    def rows(ragged_ids):
        """[n, None] ids -> [n, length] int32: SOT + ids + EOT, cut (EOT kept last), padded."""
        n = ragged_ids.nrows()
        full = tf.concat([tf.fill([n, 1], tf.constant(sot, tf.int64)), ragged_ids,
                          tf.fill([n, 1], tf.constant(eot, tf.int64))], axis=1)
        dense = full.to_tensor(default_value=pad, shape=[None, length])
        cut = full.row_lengths() > length
        last = tf.where(cut, tf.constant(eot, tf.int64), dense[:, length - 1])
        dense = tf.concat([dense[:, :length - 1], last[:, None]], axis=1)
        return tf.cast(dense, tf.int32)

    def stored_rows(example, local_texts):
        flat = example["tokens/local"].values
        lengths = example["tokens/local/lengths"].values
        local = tf.RaggedTensor.from_row_lengths(flat, lengths)
        # Slots: the first R non-empty local sentences; K of them sampled, kept in order.
        slots = tf.where(tf.strings.length(tf.strings.strip(local_texts)) > 0)[:, 0][:local_r]
        count = tf.minimum(local_k, tf.size(slots))
        chosen = tf.sort(tf.random.shuffle(slots)[:count])
        head = rows(tf.ragged.stack([example["tokens/global"].values,
                                     example["tokens/summary"].values]))
        local_rows = rows(tf.gather(local, chosen))
        local_tokens = tf.pad(local_rows, [[0, local_k - count], [0, 0]])
        mask = tf.range(local_k) < count
        return head[0], head[1], tf.ensure_shape(local_tokens, [local_k, length]), mask

    features = {
        "image": tf.io.VarLenFeature(tf.string),
        "caption/global": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "caption/summary": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "caption/local": tf.io.VarLenFeature(tf.string),
        "label_id": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    }
    if stored_tokens:
        features.update({key: tf.io.VarLenFeature(tf.int64) for key in (
            "tokens/global", "tokens/summary", "tokens/local", "tokens/local/lengths")})

    def parse(serialized):
        example = tf.io.parse_single_example(serialized, features)
        jpeg = example["image"].values[0]
        begin, crop_size, _ = tf.image.sample_distorted_bounding_box(
            tf.image.extract_jpeg_shape(jpeg), tf.zeros([0, 0, 4], tf.float32),
            min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.6, 1.0),
            max_attempts=10, use_image_if_no_bounding_boxes=True)
        window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
        image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
        image = tf.image.resize(image, [size, size], antialias=True)  # like PIL's resize
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        image = tf.image.random_flip_left_right(image)
        out = {"image": image, "label_id": tf.cast(example["label_id"], tf.int32)}
        if stored_tokens:
            g, s, lt, lm = stored_rows(example, example["caption/local"].values)
        else:
            g, s, lt, lm = tf.numpy_function(
                tokenize, [example["caption/global"], example["caption/summary"],
                           example["caption/local"].values],
                [tf.int32, tf.int32, tf.int32, tf.bool], stateful=False)
        out.update(global_tokens=tf.ensure_shape(g, [length]),
                   summary_tokens=tf.ensure_shape(s, [length]),
                   local_tokens=tf.ensure_shape(lt, [local_k, length]),
                   local_mask=tf.ensure_shape(lm, [local_k]))
        return out

    ds = tf.data.TFRecordDataset(shard_paths(data_dir), num_parallel_reads=tf.data.AUTOTUNE)
    ds = ds.shuffle(2048, seed=0).repeat()
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.batch(args.batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    iterator = ds.as_numpy_iterator()
    return time_batches(iterator, args.warmup, args.steps, args.batch)


def decode_only_row(data_dir, limit: int) -> float:
    """simplejpeg decodes of the dataset's JPEGs in one process, images per second."""
    import simplejpeg

    from emocap_jax.data.example_codec import decode_record
    from emocap_jax.data.shard_writer import shard_paths
    from emocap_jax.data.source import ShardedTFRecordSource

    source = ShardedTFRecordSource(shard_paths(data_dir))
    jpegs = [decode_record(source[i]).images[0] for i in range(min(limit, len(source)))]
    start = time.perf_counter()
    for data in jpegs:
        simplejpeg.decode_jpeg(data, colorspace="RGB")
    return len(jpegs) / (time.perf_counter() - start)


def main(argv=None):
    args = parse_args(argv)
    print("reproduce: python bench/input_pipeline.py " + shlex.join(sys.argv[1:] if argv is None
                                                                    else argv))
    from emocap_jax.data import pipeline  # noqa: F401  (import cost outside the timings)
    from emocap_jax.tokenizers import get_tokenizer

    data_dir = args.data or fabricate_dataset(args)
    cores = os.cpu_count() or 1
    workers = args.workers if args.workers is not None else sorted({0, 1, cores})
    tokenizer = get_tokenizer("clip", 77)
    print(f"data: {data_dir}; {cores} cores; batch {args.batch}; {args.steps} timed batches "
          f"after {args.warmup} warm-up batches\n")

    rows = []

    def report(name, work, startup, rate):
        rows.append((name, work, startup, rate))
        print(f"  {name:<24} {work:<48} {startup:8.1f} s {rate:10.0f}", flush=True)

    print(f"  {'pipeline':<24} {'work per image':<48} {'start-up':>10} {'images/s':>10}")
    crop_tokens = f"crop {args.image_size} + flip + tokens"
    stored, fly = " (stored ids)", " (on the fly)"
    for w in workers:
        report(f"grain, workers {w}", crop_tokens + stored,
               *grain_row(data_dir, args, tokenizer, w, full_augmentation=False))
    most = max(workers)
    report(f"grain, workers {most}", crop_tokens + fly,
           *grain_row(data_dir, args, tokenizer, most, full_augmentation=False,
                      stored_tokens=False))
    report(f"grain, workers {most}", "full augmentation + tokens" + stored,
           *grain_row(data_dir, args, tokenizer, most, full_augmentation=True))
    report(f"grain, workers {most}", f"crop {args.image_size} + flip, no tokens",
           # The ids stored in the records are not read: this row times the image path alone
           # (reading them would be the project tokenizer's work, and the pipeline would warn
           # that they do not match the stand-in tokenizer).
           *grain_row(data_dir, args, ZeroTokenizer(77), most, full_augmentation=False,
                      stored_tokens=False))
    if args.skip_tf:
        print("  tf.data                  skipped (--skip-tf)")
    else:
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            print("  tf.data                  skipped: TensorFlow is not installed "
                  "(the project runtime does not need it)")
        else:
            report("tf.data, AUTOTUNE", crop_tokens + stored,
                   *tf_data_row(data_dir, args, tokenizer, stored_tokens=True))
            report("tf.data, AUTOTUNE", crop_tokens + fly,
                   *tf_data_row(data_dir, args, tokenizer))
            report("tf.data, AUTOTUNE", f"crop {args.image_size} + flip, no tokens",
                   *tf_data_row(data_dir, args, ZeroTokenizer(77)))
    report("decode only, 1 process", "simplejpeg decode", 0.0, decode_only_row(data_dir, 1000))
    return 0


if __name__ == "__main__":
    sys.exit(entry_point(main)())
