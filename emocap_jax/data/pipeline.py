"""Grain input pipelines: training (shuffled, augmented, resumable) and evaluation (exact, padded).

Training, per process::

    ShardedTFRecordSource (all shards, one global index; checksums verified)
      -> shuffle (a new global permutation every epoch) -> repeat (num_epochs or forever)
      -> step s -> this process's rows of global batch s (process p: rows [p*b, (p+1)*b)),
         each made whole by `_TrainBatch`: parse Example, decode, augment, sample local
         sentences, token rows, stacked into the batch
      -> to_iter_dataset (reader threads make batches side by side)
      -> mp_prefetch(worker_count worker processes; worker w makes steps w, w + W, ...), unless
         worker_count == 0; the workers stack their batches into shared-memory blocks the
         trainer recycles (`shm_transport`)

Token rows come from the token ids the converter stored in the records when the dataset's
metadata.json names a tokenizer with the run tokenizer's identity (`Tokenizer.identity()`); they
are cut and padded to the context length exactly as the tokenizer does. Otherwise (another
tokenizer, a dataset written without ids, `stored_tokens=False`) the sentences are tokenized on
the fly. A stored id outside the tokenizer's vocabulary is a `StoredTokenError` naming the shard and
the record (the embedding lookup would clamp it silently). Label-built captions
(`captions_from_labels`) are tokenized once per worker and memoised.

All randomness (the epoch permutations, the crop, flip, jitter and which local sentences are
used this step) comes from the seed: the shuffle seed and a per-record generator seeded from
(seed, position in the repeated stream), the one Grain's `random_map` would give that position.
The position, not the wall clock or the worker that happens to process it, decides a record's
augmentation, and a step's batch is made from fixed positions, so an iterator restored from
`get_state()` replays the same batches, the batches are the same whatever the worker count, and
all processes together see every record of an epoch exactly once (with num_epochs, but for the
remainder of the last epoch that does not fill a global batch). Each process only computes
the rows it takes.

A batch is a dict of NumPy arrays for this process's rows (b = global_batch_size /
process_count): `image` uint8 [b, S, S, 3] (normalised on the device, inside the jitted step),
`global_tokens` / `summary_tokens` int32 [b, L], `local_tokens` int32 [b, K, L], `local_mask` bool
[b, K], `label_id` int32 [b] and `valid` bool [b] (False on the blank row of a record skipped
as corrupt, see `on_corrupt`). `to_global_batch` turns it into jax.Arrays sharded over the mesh.

Restoring a state needs the same data, seed, batch size, worker_count and process_count as the
run that saved it (Grain's state holds one position per worker process). Save it with the
trainer's other state through Orbax (`iterator_checkpoint_handler`, `iterator_save_args`,
`iterator_restore_args`).

Data wait: time `next(iterator)` in the training loop; the fraction of each step spent there is
the share of time the accelerator waits for input (near 0 when the pipeline keeps up).

A record whose checksums are sound but which does not decode (not a tf.train.Example, an image no
decoder reads, no caption and no label) raises a ValueError naming its shard, its index there and
its byte offset, in training and evaluation alike, as a corrupt record's error does.

Evaluation (`make_eval_iterator`) has no randomness: shorter side to S + centre crop, records in
file order, each process a contiguous block of records, every record exactly once; every process
yields the same number of batches (padded rows have `valid` False, zero images and label_id -1), so
a collective eval step never waits on a process that ran out.

Worker processes are started with "spawn": scripts that use worker_count > 0 need an
`if __name__ == "__main__":` guard. They exit within a second of their parent's death, however it
died; close the iterator (`.close()`) to stop them and free their shared memory before that.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import grain
import grain.checkpoint
import jax
import numpy as np
from absl import flags
from jax.sharding import NamedSharding, PartitionSpec

import emocap_jax.storage as storage
from emocap_jax.data import augment
from emocap_jax.data import example_codec
from emocap_jax.data import label_captions
from emocap_jax.data import shard_writer
from emocap_jax.data import shm_transport
from emocap_jax.data.source import ON_CORRUPT_CHOICES, ShardedTFRecordSource

_LOG = logging.getLogger(__name__)

# How often a worker process checks that its parent (the trainer) is alive.
_PARENT_POLL_S = 0.25

# Distinct streams for the shuffle and the per-record RNG, both derived from one user seed.
_SHUFFLE_STREAM, _AUGMENT_STREAM = 0, 1


@dataclasses.dataclass(frozen=True)
class TrainPipelineConfig:
    """Settings of the training input pipeline.

    data_dir: dataset directory (metadata.json + TFRecord shards).
    image_size: S, the side of the square output images.
    context_length: L, tokens per sentence (each sentence is tokenized on its own).
    max_local_sentences: R, local-sentence slots per record; a record's first R non-empty local
        sentences are valid, the rest of the slots are padding.
    local_sentences_per_step: K, how many of the valid slots are sampled (without replacement)
        for each step; with fewer valid sentences the remaining slots are masked out.
    crop_scale, crop_ratio, flip_prob, brightness, contrast, saturation, grayscale_prob:
        augmentation, see `augment.AugmentParams`.
    seed: seeds the epoch shuffles and the per-record augmentation / sentence sampling.
    num_epochs: None repeats forever; an int ends the iterator after that many epochs, less
        the records past the last whole global batch (batches run across epoch boundaries, so
        only the last epoch loses any: num_epochs * records % global_batch_size of them, which
        a warning counts).
    worker_count: data worker processes; 0 runs everything in the calling process.
    worker_buffer_size: batches each worker process prepares ahead.
    read_threads: threads making batches in each process (the calling one or each worker);
        decoding and resizing release the GIL, so threads help even in one process.
    prefetch_buffer_size: records read ahead by those threads (rounded up to whole batches, at
        least one batch per thread).
    on_corrupt: "raise" or "skip" a record whose checksum fails (see `source`). A skipped
        record's row is blank and marked invalid (`valid` False), which the losses leave out;
        batches keep their shape and every process runs the same number of steps, even one
        whose rows of a step are all skipped.
    verify_checksums: check TFRecord CRCs on every read.
    captions_from_labels: a record with an empty global caption but a label (what the benchmark
        converters and `data_prep.benchmarks --name imagefolder` write) is trained on captions
        built from its label (`label_captions`: a zero-shot template drawn per step, the class
        description as summary); False makes such a record an error.
    stored_tokens: use the token ids stored in the records when the dataset was converted with
        the run's tokenizer (same identity); False always tokenizes the text (same rows, slower).
    """

    data_dir: str
    image_size: int = 224
    context_length: int = 77
    max_local_sentences: int = 8
    local_sentences_per_step: int = 4
    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    grayscale_prob: float = 0.1
    seed: int = 0
    num_epochs: int | None = None
    worker_count: int = 0
    worker_buffer_size: int = 2
    read_threads: int = 2
    prefetch_buffer_size: int = 128
    on_corrupt: str = "raise"
    verify_checksums: bool = True
    captions_from_labels: bool = True
    stored_tokens: bool = True

    def __post_init__(self):
        problems = []
        for name in ("image_size", "context_length", "max_local_sentences",
                     "local_sentences_per_step", "worker_buffer_size", "read_threads",
                     "prefetch_buffer_size"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.local_sentences_per_step > self.max_local_sentences:
            problems.append(f"local_sentences_per_step ({self.local_sentences_per_step}) must not "
                            f"exceed max_local_sentences ({self.max_local_sentences})")
        if self.worker_count < 0:
            problems.append(f"worker_count must be >= 0, got {self.worker_count}")
        if self.num_epochs is not None and self.num_epochs < 1:
            problems.append(f"num_epochs must be None or >= 1, got {self.num_epochs}")
        if self.on_corrupt not in ON_CORRUPT_CHOICES:
            problems.append(f"on_corrupt must be one of {ON_CORRUPT_CHOICES}, got "
                            f"{self.on_corrupt!r}")
        if not 0 <= int(self.seed) < 2**32:
            problems.append(f"seed must lie in [0, 2**32), got {self.seed}")
        if problems:
            raise ValueError("invalid TrainPipelineConfig: " + "; ".join(problems))
        self.augment_params()  # validates the augmentation fields

    def augment_params(self) -> augment.AugmentParams:
        return augment.AugmentParams(
            crop_scale=tuple(self.crop_scale), crop_ratio=tuple(self.crop_ratio),
            flip_prob=self.flip_prob, brightness=self.brightness, contrast=self.contrast,
            saturation=self.saturation, grayscale_prob=self.grayscale_prob)

    @classmethod
    def from_config(cls, config: Any) -> TrainPipelineConfig:
        """Builds the config from a TrainPipelineConfig, an ml_collections ConfigDict or a dict.

        Unknown keys are an error (a typo would otherwise silently keep a default).
        """
        if isinstance(config, cls):
            return config
        if hasattr(config, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
            config = config.to_dict()
        if not isinstance(config, Mapping):
            raise TypeError(f"expected a TrainPipelineConfig, ConfigDict or dict, got "
                            f"{type(config).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown input pipeline settings {unknown}; known: {sorted(known)}")
        values = dict(config)
        for key in ("crop_scale", "crop_ratio"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def _derived_seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([int(seed), stream]).generate_state(1)[0])


def _resolve_processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, process_count = "
                         f"{process_count})")
    return int(process_index), int(process_count)


def _open_dataset(data_dir: str, verify: bool, on_corrupt: str
                  ) -> tuple[ShardedTFRecordSource, dict]:
    metadata = shard_writer.load_metadata(data_dir)
    source = ShardedTFRecordSource(shard_writer.shard_paths(data_dir), verify=verify,
                                   on_corrupt=on_corrupt)
    expected = metadata.get("num_records")
    if expected is not None and expected != len(source):
        raise ValueError(
            f"{storage.join(data_dir, shard_writer.METADATA_FILE)} lists {expected} records but "
            f"the shards hold {len(source)} ({source.shard_sizes})")
    if len(source) == 0:
        raise ValueError(f"dataset {data_dir} has no records")
    return source, metadata


def stored_tokens_usable(metadata: Mapping[str, Any], tokenizer) -> bool:
    """Whether the token ids stored in a dataset (metadata.json's "tokenizer") are the ones
    `tokenizer` gives: its `identity()` equals the recorded one. Tokenizers without an identity
    (any callable) never use them."""
    return stored_tokens_mismatch(metadata, tokenizer) is None


def stored_tokens_mismatch(metadata: Mapping[str, Any], tokenizer) -> str | None:
    """Why the stored token ids of a dataset cannot be used with `tokenizer` (None when they can).

    An identity recorded before a field was added to it (e.g. the ftfy version, which CLIP BPE
    ids depend on and metadata.json has recorded since) counts as different: ids made under an
    unknown ftfy are not trusted, the text is tokenized again (same rows, slower) until the
    dataset is converted again."""
    recorded = metadata.get("tokenizer")
    identity = getattr(tokenizer, "identity", None)
    if recorded is None:
        return "the dataset stores no token ids"
    if identity is None or not hasattr(tokenizer, "rows_from_ids"):
        return f"{tokenizer!r:.80} is not a project tokenizer (no identity() / rows_from_ids)"
    current = identity()
    if current == recorded:
        return None
    if not isinstance(recorded, Mapping) or recorded.get("type") != current.get("type"):
        kind = recorded.get("type") if isinstance(recorded, Mapping) else recorded
        return f"they were made by a {kind!r} tokenizer, this run's is {current.get('type')!r}"
    differs = sorted(k for k in set(current) | set(recorded) if current.get(k) != recorded.get(k))
    return "; ".join(
        f"{key} is {current[key]!r} here but not recorded (metadata.json predates it)"
        if key not in recorded else
        f"{key} was {recorded[key]!r} at conversion, {current.get(key)!r} here"
        for key in differs)


def _mark_absl_flags_parsed() -> None:
    # grain 0.2.18 worker processes read absl flags and crash when they are unparsed (fixed
    # upstream later): a library caller (notebook, pytest) never parses them.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _init_worker(worker_index: int, worker_count: int, parent_pid: int) -> None:
    """Grain worker initialisation: exit with the parent; know which batch blocks are ours."""
    shm_transport.set_worker_index(worker_index)
    _exit_with_parent(worker_index, worker_count, parent_pid)


def _exit_with_parent(worker_index: int, worker_count: int, parent_pid: int) -> None:
    """Grain worker initialisation: the worker exits within a second of its parent's death,
    however the parent died (SIGKILL included), instead of living on as an orphan that reads
    shards. A thread that watches the parent process id, not PR_SET_PDEATHSIG: that signal follows
    the parent *thread* that started the worker, which need not be one that lives as long as the
    trainer. The parent's resource tracker frees the worker's shared memory once it is gone.

    `parent_pid` is the pid of the process that built the pipeline (and starts its workers),
    recorded there, not read here: a loaded machine can take seconds to import a spawned worker,
    and a parent that died meanwhile would otherwise leave the worker watching its new parent."""
    del worker_index, worker_count

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="emocap-parent-watch", daemon=True).start()


def _decode_frames(record: example_codec.FaceRecord, frame_indices, min_side: int
                   ) -> list[np.ndarray]:
    frames = []
    for i in frame_indices:
        try:
            frames.append(augment.decode_image(record.images[i], record.image_format, min_side))
        except Exception as e:  # pylint: disable=broad-except  # re-raised with the record named
            raise ValueError(f"record {record.id!r}: cannot decode {record.image_format} image "
                             f"{i} of {len(record.images)}: {e}") from e
    return frames


def valid_local_sentences(record: example_codec.FaceRecord, max_local_sentences: int
                          ) -> list[str]:
    """The sentences that fill a record's R local slots: its first R non-empty local sentences."""
    sentences = [s for s in record.local_captions if s.strip()]
    return sentences[:max_local_sentences]


def _caption_free_error(record: example_codec.FaceRecord, why: str) -> ValueError:
    return ValueError(f"record {record.id!r} has no global caption and {why}: give it captions "
                      "(python -m data_prep.captions) or a label")


class StoredTokenError(ValueError):
    """A record's stored token ids cannot be this tokenizer's (out of its vocabulary)."""


def _located(error: ValueError, location: tuple[str, int, int]) -> ValueError:
    """`error` (raised while decoding a record whose checksums were sound) with the record's shard,
    index in it and byte offset in front of its message, as a CorruptRecordError names them: a
    record id alone does not say which file to look at, and an unparsable record has none.
    StoredTokenError keeps its type."""
    path, index, offset = location
    kind = StoredTokenError if isinstance(error, StoredTokenError) else ValueError
    return kind(f"{path} (record {index}, offset {offset}): {error}")


class _TrainExample:
    """Serialised record -> augmented uint8 image, tokenized sentences and sampled local slots."""

    # Label-built sentences memoised per worker: (templates + 1) x classes, a few hundred.
    _MAX_MEMO = 4096

    def __init__(self, tokenizer, config: TrainPipelineConfig, use_stored_tokens: bool = False):
        self._tokenizer = tokenizer
        self._use_stored = use_stored_tokens
        # Memoising needs `encode_batch` / `rows_from_ids` (a project Tokenizer), not any callable.
        self._memoise = config.stored_tokens and hasattr(tokenizer, "rows_from_ids") \
            and hasattr(tokenizer, "encode_batch")
        self._memo: dict[str, list[int]] = {}
        self._size = config.image_size
        self._context_length = config.context_length
        self._max_local = config.max_local_sentences
        self._local_per_step = config.local_sentences_per_step
        self._params = config.augment_params()
        self._min_side = self._params.decode_min_side(config.image_size)
        self._captions_from_labels = config.captions_from_labels

    def _label_captions(self, record: example_codec.FaceRecord, rng: np.random.Generator
                        ) -> tuple[str, str]:
        if not self._captions_from_labels:
            raise _caption_free_error(record, "data.captions_from_labels is off")
        if not record.label.strip():
            raise _caption_free_error(record, "no label")
        template = int(rng.integers(len(label_captions.TEMPLATES)))
        return (label_captions.global_caption(record.label, template),
                label_captions.summary_caption(record.label))

    def _memoised_ids(self, texts: list[str]) -> list[list[int]]:
        # Reader threads share the memo: a result never depends on an entry another thread's
        # clear() may remove between two lookups.
        ids = [self._memo.get(t) for t in texts]
        missing = [t for t, found in zip(texts, ids) if found is None]
        if missing:
            encoded = dict(zip(missing, self._tokenizer.encode_batch(missing)))
            if len(self._memo) + len(encoded) > self._MAX_MEMO:
                self._memo.clear()
            self._memo.update(encoded)
            ids = [encoded[t] if found is None else found for t, found in zip(texts, ids)]
        return ids

    def _check_stored_ids(self, record: example_codec.FaceRecord, ids: list, from_labels: bool,
                          chosen: list[int]) -> None:
        """Stored ids outside [0, vocab_size) (a corrupt record, or one written by another
        tokenizer under this one's identity) would index the token embedding out of range, which
        JAX clamps silently: refuse them. Only the rows this step uses are checked (a min and a
        max per sentence, microseconds)."""
        vocab = self._tokenizer.vocab_size
        names = ([] if from_labels else ["tokens/global", "tokens/summary"]) + [
            f"tokens/local (sentence {i})" for i in chosen]
        for name, row in zip(names, ids[len(ids) - len(names):]):
            if row and (min(row) < 0 or max(row) >= vocab):
                bad = next(i for i in row if not 0 <= i < vocab)
                raise StoredTokenError(
                    f"record {record.id!r}: stored token id {bad} in {name} is outside the "
                    f"tokenizer's vocabulary [0, {vocab}): the record is corrupt or was written "
                    "by another tokenizer than metadata.json names (convert the dataset again, "
                    "or set data.stored_tokens=False to tokenize the text)")

    def random_map(self, data: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
        record = example_codec.decode_record(data)
        # A multi-frame (video) record contributes one random frame per step.
        frame = int(rng.integers(len(record.images))) if len(record.images) > 1 else 0
        (pixels,) = _decode_frames(record, [frame], self._min_side)
        image = augment.augment_image(pixels, self._size, rng, self._params)

        # Slots: the first R non-empty local sentences (positions in record.local_captions).
        slots = [i for i, s in enumerate(record.local_captions) if s.strip()][:self._max_local]
        count = min(self._local_per_step, len(slots))
        # K of the slots without replacement, kept in order (a permutation's prefix: a third of
        # Generator.choice's cost).
        chosen = [slots[i] for i in sorted(rng.permutation(len(slots))[:count].tolist())] \
            if count else []
        global_caption, summary = record.global_caption, record.summary
        from_labels = not global_caption.strip()
        if from_labels:
            global_caption, summary = self._label_captions(record, rng)
        stored = self._use_stored and record.has_tokens
        if stored or (from_labels and self._memoise):
            if from_labels:
                ids = self._memoised_ids([global_caption, summary])
            else:
                ids = [record.global_tokens, record.summary_tokens]
            if stored:
                ids += [record.local_tokens[i] for i in chosen]
                self._check_stored_ids(record, ids, from_labels, chosen)
            else:
                ids += self._tokenizer.encode_batch([record.local_captions[i] for i in chosen])
            tokens = self._tokenizer.rows_from_ids(ids, self._context_length)
        else:
            texts = [global_caption, summary] + [record.local_captions[i] for i in chosen]
            tokens = self._tokenizer(texts, context_length=self._context_length)
        local_tokens = np.zeros((self._local_per_step, self._context_length), np.int32)
        local_tokens[:count] = tokens[2:]
        local_mask = np.zeros((self._local_per_step,), bool)
        local_mask[:count] = True
        return {
            "image": image,
            "global_tokens": tokens[0],
            "summary_tokens": tokens[1],
            "local_tokens": local_tokens,
            "local_mask": local_mask,
            "label_id": np.int32(record.label_id),
            "valid": np.bool_(True),
        }

    def blank(self) -> dict[str, np.ndarray]:
        """The row of a record skipped as corrupt: `valid` False, so the losses leave it out (as
        anchor, as negative and from the means); zero image and tokens, no local sentence and
        label -1, so nothing in it can count even where a mask were forgotten."""
        length, k = self._context_length, self._local_per_step
        return {
            "image": np.zeros((self._size, self._size, 3), np.uint8),
            "global_tokens": np.zeros((length,), np.int32),
            "summary_tokens": np.zeros((length,), np.int32),
            "local_tokens": np.zeros((k, length), np.int32),
            "local_mask": np.zeros((k,), bool),
            "label_id": np.int32(-1),
            "valid": np.bool_(False),
        }


class _ShuffledStream:
    """Position in the repeated stream -> record: epoch e is a permutation of the source seeded
    with seed + e, the order Grain's `MapDataset.source(...).shuffle(seed).repeat(n)` gives
    (tests/test_pipeline.py compares the two). Called directly rather than through those
    MapDataset layers: their per-element bookkeeping cost twice the read itself."""

    def __init__(self, source: ShardedTFRecordSource, seed: int, num_epochs: int | None):
        self._source = source
        self._seed = int(seed)
        self._size = len(source)
        self._num_epochs = num_epochs

    def __len__(self) -> int:
        return sys.maxsize if self._num_epochs is None else self._num_epochs * self._size

    def _index(self, position: int) -> int:
        if not 0 <= position < len(self):
            raise IndexError(f"stream position {position} is out of range [0, {len(self)})")
        epoch, index = divmod(position, self._size)
        return grain.experimental.index_shuffle(
            index, max_index=self._size - 1, seed=(self._seed + epoch) % 2**32, rounds=4)

    def __getitem__(self, position: int):
        return self._source[self._index(position)]

    def locate(self, position: int) -> tuple[str, int, int]:
        """(shard path, index within the shard, byte offset) of the record at `position`."""
        return self._source.locate(self._index(position))


class _RecordRng:
    """The per-record generator Grain's `random_map` would pass: Philox keyed by the seed, its
    counter at (0, 0, 0, position in the repeated stream). One generator per call whose state is
    reset per record (a new Philox costs twice as much); tests/test_pipeline.py checks it against
    Grain's own RngPool, so a record's augmentation is what it was when Grain drew it."""

    def __init__(self, seed: int):
        self._key = np.random.Philox(seed).state["state"]["key"]

    def generators(self):
        rng = np.random.Generator(np.random.Philox(key=self._key))
        template = rng.bit_generator.state

        def at(position: int) -> np.random.Generator:
            template["state"]["counter"] = np.array([0, 0, 0, position], np.uint64)
            template["buffer"] = np.zeros(4, np.uint64)
            template["buffer_pos"] = 4
            template["has_uint32"] = 0
            template["uinteger"] = 0
            rng.bit_generator.state = template
            return rng

        return at


class _TrainBatch(grain.transforms.Map):
    """Step -> this process's batch of that step, made whole in one call.

    Process p of P takes rows [p * b, (p + 1) * b) of every global batch of P * b rows, so each
    device gets the rows it gets on one process with all the devices: the run's batches, and so
    its losses, do not depend on how many processes share the devices. Row i of step s is the
    record at position s * P * b + p * b + i of the shuffled, repeated stream, augmented with
    that position's generator, so a batch depends on (seed, step) only: not on the worker that
    makes it, nor on the worker count.

    Why whole batches rather than Grain's per-record maps and batching: Grain's per-element
    machinery (prefetch futures, statistics, RNG pool, the batch tree-map) cost ~300 us of CPU
    per image in one process, as much as the resize (PERFORMANCE.md, "Input pipeline").

    A record skipped as corrupt (on_corrupt="skip") gets a blank row with `valid` False
    (`_TrainExample.blank`): the batch keeps its size and every process its number of steps,
    even when none of a step's rows on a process is readable (a missing step there would leave
    the other processes waiting in the step's collectives). The losses leave invalid rows out;
    a row copied from another record instead would be a second, contradicting "class" of it.
    """

    def __init__(self, stream: _ShuffledStream, example: _TrainExample, seed: int,
                 process_index: int, process_count: int, local_batch_size: int, batch_fn):
        self._stream = stream
        self._example = example
        self._rng = _RecordRng(seed)
        self._offset = process_index * local_batch_size
        self._global = process_count * local_batch_size
        self._local = local_batch_size
        self._batch_fn = batch_fn

    def map(self, step: int):
        first = int(step) * self._global + self._offset
        rng_at = self._rng.generators()
        rows = []
        for position in range(first, first + self._local):
            data = self._stream[position]
            if data is None:  # a corrupt record the source skipped (and counted)
                rows.append(self._example.blank())
                continue
            try:
                rows.append(self._example.random_map(data, rng_at(position)))
            except ValueError as e:
                raise _located(e, self._stream.locate(position)) from e
        return self._batch_fn(rows)


def make_train_dataset(config: TrainPipelineConfig | Any, tokenizer, global_batch_size: int,
                       process_index: int | None = None, process_count: int | None = None,
                       seed: int | None = None
                       ) -> tuple[grain.IterDataset, ShardedTFRecordSource]:
    """The training `IterDataset` of this process and its data source (for `num_skipped`).

    `seed`, when given, replaces `config.seed`. process_index / process_count default to JAX's.
    """
    config = TrainPipelineConfig.from_config(config)
    if seed is not None:
        config = dataclasses.replace(config, seed=seed)
    process_index, process_count = _resolve_processes(process_index, process_count)
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of "
                         f"process_count {process_count}")
    local_batch_size = global_batch_size // process_count
    source, metadata = _open_dataset(config.data_dir, config.verify_checksums, config.on_corrupt)
    use_stored = config.stored_tokens and stored_tokens_usable(metadata, tokenizer)
    if config.stored_tokens and not use_stored and "tokenizer" in metadata and process_index == 0:
        # Same batches either way, but tokenizing every sentence again costs data-loading time.
        _LOG.warning("%s: the token ids stored in the records are not used, the text is "
                     "tokenized on the fly (slower; convert the dataset again with this "
                     "environment to store matching ids): %s", config.data_dir,
                     stored_tokens_mismatch(metadata, tokenizer))

    stream = _ShuffledStream(source, _derived_seed(config.seed, _SHUFFLE_STREAM), config.num_epochs)
    # Equal shares, so every process runs the same number of steps (a multi-host step is a
    # collective); with num_epochs, the last partial global batch is dropped.
    num_steps = len(stream) // global_batch_size  # len is sys.maxsize when repeating forever
    left_out = len(stream) - num_steps * global_batch_size
    if config.num_epochs is not None and left_out:
        # Every process makes the same pipeline: only the first says it.
        if process_index == 0:
            _LOG.warning(
                "num_epochs=%d: the last %d of the %d records in the stream (%d epochs x %d "
                "records) are never read: every step is a whole global batch of %d",
                config.num_epochs, left_out, len(stream), config.num_epochs, len(source),
                global_batch_size)
    example = _TrainExample(tokenizer, config, use_stored)
    seed = _derived_seed(config.seed, _AUGMENT_STREAM)
    # Whole batches are the elements: the reader threads make batches side by side, and
    # prefetch_buffer_size (in records) becomes whole batches ahead.
    read_options = grain.ReadOptions(
        num_threads=config.read_threads,
        prefetch_buffer_size=max(config.read_threads,
                                 math.ceil(config.prefetch_buffer_size / local_batch_size)))
    blocks, batch_fn = None, shm_transport.stack_batch
    if config.worker_count > 0:
        # In flight per worker: its queue and the trainer's read-ahead thread
        # (worker_buffer_size each), the batches its reader threads are making and the one
        # being read.
        blocks = shm_transport.BatchBlocks(
            config.worker_count, 2 * config.worker_buffer_size + config.read_threads + 2,
            _batch_block_bytes(config, local_batch_size))
        batch_fn = blocks.packer()
    builder = _TrainBatch(stream, example, seed, process_index, process_count, local_batch_size,
                          batch_fn)
    ds = grain.MapDataset.range(num_steps).map(builder).to_iter_dataset(read_options)
    if blocks is None:
        return ds, source
    _mark_absl_flags_parsed()
    # Worker w makes steps w, w + W, ...; Grain interleaves them back into step order.
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.worker_count, per_worker_buffer_size=config.worker_buffer_size),
        worker_init_fn=functools.partial(_init_worker, parent_pid=os.getpid()))
    return ds.map(blocks.unpack), source


def _batch_block_bytes(config: TrainPipelineConfig, batch: int) -> int:
    """Bytes of one training batch (the fields of `_TrainExample`), laid out in a block."""
    size, length, k = config.image_size, config.context_length, config.local_sentences_per_step
    return shm_transport.block_bytes([batch * size * size * 3, batch * length * 4,
                                      batch * length * 4, batch * k * length * 4, batch * k,
                                      batch * 4, batch])


def make_train_iterator(config: TrainPipelineConfig | Any, tokenizer, global_batch_size: int,
                        process_index: int | None = None, process_count: int | None = None,
                        seed: int | None = None) -> grain.DatasetIterator:
    """Iterator over this process's training batches (see the module docstring for the fields).

    config: a TrainPipelineConfig, or an ml_collections ConfigDict / dict of its fields.
    tokenizer: a picklable callable `tok(list_of_str, context_length) -> int32 [n, L]`.
    global_batch_size: rows per step over all processes; this process gets 1/process_count.
    seed: overrides config.seed when given.
    The iterator supports `get_state()` / `set_state()`; close it (`.close()` if present) to stop
    worker processes early.
    """
    ds, _ = make_train_dataset(config, tokenizer, global_batch_size, process_index,
                               process_count, seed)
    return iter(ds)


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


def uniform_frame_indices(num_available: int, num_frames: int) -> list[int]:
    """`num_frames` indices spread evenly over `num_available` frames (centre of each segment);
    indices repeat when there are fewer frames than asked for."""
    return [min(num_available - 1, int((i + 0.5) * num_available / num_frames))
            for i in range(num_frames)]


class _EvalExample(grain.transforms.Map):
    """Row `i` of this process's eval block -> preprocessed record, or a padding row."""

    def __init__(self, source: ShardedTFRecordSource, start: int, stop: int, tokenizer,
                 image_size: int, context_length: int, max_local_sentences: int,
                 num_frames: int | None):
        self._source = source
        self._start, self._stop = start, stop
        self._tokenizer = tokenizer
        self._size = image_size
        self._context_length = context_length
        self._max_local = max_local_sentences
        self._num_frames = num_frames

    def _image_shape(self) -> tuple[int, ...]:
        still = (self._size, self._size, 3)
        return still if self._num_frames is None else (self._num_frames, *still)

    def map(self, row: int) -> dict[str, np.ndarray]:
        index = self._start + int(row)
        if index >= self._stop:
            return self._padding()
        data = self._source[index]  # a CorruptRecordError names its file and offset itself
        try:
            return self._element(data)
        except ValueError as e:
            raise _located(e, self._source.locate(index)) from e

    def _element(self, data: bytes) -> dict[str, np.ndarray]:
        record = example_codec.decode_record(data)
        if self._num_frames is None:
            frame_indices = [0]
        else:
            frame_indices = uniform_frame_indices(len(record.images), self._num_frames)
        # Decode each distinct frame once even when short clips repeat frames.
        unique = sorted(set(frame_indices))
        # Full-resolution decode (no DCT downscaling) to match open_clip's preprocessing.
        decoded = dict(zip(unique, _decode_frames(record, unique, 0)))
        frames = {i: augment.resize_center_crop(decoded[i], self._size) for i in unique}
        image = np.stack([frames[i] for i in frame_indices])
        if self._num_frames is None:
            image = image[0]
        element = {
            "image": image,
            "label_id": np.int32(record.label_id),
            "valid": np.bool_(True),
            "id": np.array(record.id, dtype=object),
            "group": np.array(record.group, dtype=object),
            "image_digest": np.frombuffer(example_codec.image_digest(record.images), np.uint8),
        }
        if self._tokenizer is not None:
            sentences = valid_local_sentences(record, self._max_local)
            tokens = self._tokenizer([record.global_caption, record.summary] + sentences,
                                     context_length=self._context_length)
            local_tokens = np.zeros((self._max_local, self._context_length), np.int32)
            local_tokens[:len(sentences)] = tokens[2:]
            local_mask = np.zeros((self._max_local,), bool)
            local_mask[:len(sentences)] = True
            element.update(global_tokens=tokens[0], summary_tokens=tokens[1],
                           local_tokens=local_tokens, local_mask=local_mask)
        return element

    def _padding(self) -> dict[str, np.ndarray]:
        element = {
            "image": np.zeros(self._image_shape(), np.uint8),
            "label_id": np.int32(-1),
            "valid": np.bool_(False),
            "id": np.array("", dtype=object),
            "group": np.array("", dtype=object),
            "image_digest": np.zeros((example_codec.IMAGE_DIGEST_SIZE,), np.uint8),
        }
        if self._tokenizer is not None:
            length = self._context_length
            element.update(global_tokens=np.zeros((length,), np.int32),
                           summary_tokens=np.zeros((length,), np.int32),
                           local_tokens=np.zeros((self._max_local, length), np.int32),
                           local_mask=np.zeros((self._max_local,), bool))
        return element


def eval_blocks(num_records: int, batch_size: int, process_count: int
                ) -> tuple[list[tuple[int, int]], int]:
    """Each process's contiguous [start, stop) block of records and the common batch count."""
    blocks = [(p * num_records // process_count, (p + 1) * num_records // process_count)
              for p in range(process_count)]
    largest = max(stop - start for start, stop in blocks)
    return blocks, max(1, math.ceil(largest / batch_size))


def make_eval_iterator(data_dir: str, tokenizer, batch_size: int, image_size: int,
                       process_index: int | None = None, process_count: int | None = None, *,
                       context_length: int | None = None, max_local_sentences: int = 8,
                       num_frames: int | None = None, worker_count: int = 0,
                       read_threads: int = 2, verify_checksums: bool = True
                       ) -> grain.DatasetIterator:
    """Deterministic evaluation batches of this process; every record exactly once overall.

    Fields: `image` uint8 [b, S, S, 3] ([b, F, S, S, 3] with num_frames=F: F frames spread
    evenly over each record's frames), `label_id` int32 [b] (-1 on padding), `valid` bool [b],
    `id` and `group` (subject / actor, "" when none) object [b] of str ("" on padding),
    `image_digest` uint8 [b, 16] (`example_codec.image_digest` of the record's encoded images,
    zeros on padding); with a tokenizer also `global_tokens`,
    `summary_tokens` int32 [b, L], `local_tokens` int32 [b, R, L] and `local_mask` bool [b, R]
    (R = max_local_sentences, all valid sentences, no sampling). L = context_length, default the
    tokenizer's. A corrupt record always raises: an eval number computed on silently fewer
    records would be wrong.
    """
    process_index, process_count = _resolve_processes(process_index, process_count)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be None or >= 1, got {num_frames}")
    if context_length is None and tokenizer is not None:
        context_length = tokenizer.context_length
    source, _ = _open_dataset(data_dir, verify_checksums, "raise")
    blocks, num_batches = eval_blocks(len(source), batch_size, process_count)
    start, stop = blocks[process_index]
    ds = grain.MapDataset.range(num_batches * batch_size)
    ds = ds.map(_EvalExample(source, start, stop, tokenizer, image_size, context_length,
                             max_local_sentences, num_frames))
    # Batching before the worker split keeps the batch order independent of worker_count.
    ds = ds.batch(batch_size, drop_remainder=False)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                              prefetch_buffer_size=2 * read_threads))
    if worker_count > 0:
        _mark_absl_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count),
                            worker_init_fn=functools.partial(_exit_with_parent,
                                                             parent_pid=os.getpid()))
    return iter(ds)


# ------------------------------------------------------------------------------------------------
# Device transfer and checkpointing
# ------------------------------------------------------------------------------------------------


def to_global_batch(local_batch: Mapping[str, Any], mesh, axis: str | tuple[str, ...] = "data"
                    ) -> dict[str, Any]:
    """Global jax.Arrays, sharded along their first axis over `axis` of `mesh`.

    Every process passes its own rows (as from `make_train_iterator`); the result has
    process_count times as many rows. Non-numeric fields (e.g. `id` strings) cannot live on a
    device and are left out: read them from the local batch.
    """
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    out = {}
    for name, value in local_batch.items():
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            continue
        out[name] = jax.make_array_from_process_local_data(sharding, array)
    return out


ITERATOR_CHECKPOINT_ITEM = "data"


def iterator_checkpoint_handler():
    """The Orbax handler for Grain iterator state: pass it as
    `ocp.CheckpointManager(dir, item_handlers={ITERATOR_CHECKPOINT_ITEM: handler, ...})`.

    It writes one small JSON file per process (`process_<i>-of-<n>.json`)."""
    return grain.checkpoint.CheckpointHandler()


def iterator_save_args(iterator: grain.DatasetIterator):
    """Orbax save args for the iterator: `ocp.args.Composite(data=iterator_save_args(it), ...)`."""
    return grain.checkpoint.CheckpointSave(iterator)


def iterator_restore_args(iterator: grain.DatasetIterator):
    """Orbax restore args: restores the saved state into `iterator` (a fresh one built with the
    same settings) in place; `manager.restore(...)[ITERATOR_CHECKPOINT_ITEM]` is that iterator."""
    return grain.checkpoint.CheckpointRestore(iterator)
