"""Frozen features for evaluation: images and texts through the towers, sharded over a device mesh.

`Encoder` holds a model's parameters on the mesh and its jitted towers, so one checkpoint is placed
on the devices once and reused by every benchmark and protocol.

Image features come back in record order (record i of the dataset's shards is row i), each record
exactly once: the eval iterator (`data.pipeline.make_eval_iterator`) gives every process a
contiguous block of records and pads the last batch with rows marked invalid; here each row of
each global batch is mapped back to its record index, padding is dropped, and a record seen zero
or two times is an error. Global batches are built from every process's rows with
`jax.make_array_from_process_local_data` and gathered back with `process_allgather`, so the same
code runs on one CPU, one host of 8 chips or a pod slice.

Video records hold K frames; `num_frames` of them are sampled uniformly, encoded, and their unit
embeddings averaged (then re-normalised) inside the jitted step.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
from typing import Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

import emocap_jax
from emocap_jax import params_io, sharding, storage
from emocap_jax.data import example_codec, pipeline, shard_writer
from emocap_jax.data.source import ShardedTFRecordSource
from emocap_jax.models.clip import CLIP, l2_normalize
from emocap_jax.models.config import CLIPConfig
from emocap_jax.models.token_rows import check_token_rows

# Text batches are small (prompts) or medium (retrieval captions): one fixed chunk size means one
# compiled text program per model.
TEXT_CHUNK = 256


@dataclasses.dataclass
class ImageFeatures:
    """Unit-norm image (or clip) embeddings of a dataset, in record order."""
    features: np.ndarray   # [N, D] float32
    labels: np.ndarray     # [N] int32 label_id (-1: unlabelled)
    ids: list[str]
    data_dir: str
    num_frames: Optional[int] = None
    # Per record: subject / actor ("" when none), which keeps folds and carve-outs
    # subject-independent, and the 16-byte digest of the encoded images, which finds test faces
    # that are byte copies of training faces. None from encoders that do not read them.
    groups: Optional[list[str]] = None
    digests: Optional[np.ndarray] = None   # [N, 16] uint8


@dataclasses.dataclass
class RecordInfo:
    """What a record says besides its pixels."""
    id: str
    label: str
    label_id: int
    group: str
    aus: dict[str, float]
    global_caption: str
    local_captions: list[str]
    summary: str
    num_frames: int


def default_mesh() -> Mesh:
    """All devices on one process: one device (evaluation of a single checkpoint on a laptop needs
    no mesh); on a multi-process run, the full mesh, since every process must take part."""
    devices = jax.devices() if jax.process_count() > 1 else jax.devices()[:1]
    return Mesh(np.asarray(devices).reshape(len(devices), 1), ("data", "fsdp"))


def batch_shards(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in sharding.batch_axes(mesh)]))


def record_indices(blocks: Sequence[tuple[int, int]], batch_index: int, local_batch: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Record index and validity of every row of global batch `batch_index`.

    Process p contributes rows [p * local_batch, (p + 1) * local_batch) of the global batch: its
    block's records start + batch_index * local_batch + j, valid while below the block's stop.
    """
    index, valid = [], []
    for start, stop in blocks:
        rows = start + batch_index * local_batch + np.arange(local_batch)
        index.append(rows)
        valid.append(rows < stop)
    return np.concatenate(index), np.concatenate(valid)


def _to_host(x) -> np.ndarray:
    """A global (sharded) jax.Array, or each process's NumPy rows concatenated in process order,
    as one NumPy array on every host."""
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def read_records(data_dir: str) -> list[RecordInfo]:
    """Labels, groups, AUs and captions of every record of a dataset, in record order (the
    pixels are not decoded)."""
    source = ShardedTFRecordSource(shard_writer.shard_paths(data_dir), verify=True,
                                   on_corrupt="raise")
    out = []
    for i in range(len(source)):
        rec = example_codec.decode_record(source[i])
        out.append(RecordInfo(rec.id, rec.label, rec.label_id, rec.group, dict(rec.aus),
                              rec.global_caption, list(rec.local_captions), rec.summary,
                              len(rec.images)))
    return out


@functools.lru_cache(maxsize=8)
def _towers(model_config: CLIPConfig, mesh: Mesh):
    """The jitted image tower, text tower and logit scale of an architecture on a mesh, built once
    per process: every Encoder of a run (training's periodic and final evaluations, each protocol
    of `--mode=eval`) shares them, so each tower compiles once per input shape, not once per
    evaluation."""
    model = CLIP(model_config)

    def encode_images(p, x):
        if x.ndim == 5:  # clips [b, F, S, S, 3]: mean of the frames' unit embeddings
            b, f = x.shape[:2]
            emb = model.apply({"params": p}, x.reshape(b * f, *x.shape[2:]),
                              method=CLIP.encode_image)
            return l2_normalize(l2_normalize(emb).reshape(b, f, -1).mean(axis=1))
        return l2_normalize(model.apply({"params": p}, x, method=CLIP.encode_image))

    out = NamedSharding(mesh, PartitionSpec(sharding.batch_axes(mesh)))
    encode_text = jax.jit(
        lambda p, t: l2_normalize(model.apply({"params": p}, t, method=CLIP.encode_text)),
        out_shardings=out)
    logit_scale = jax.jit(lambda p: model.apply({"params": p}, method=CLIP.logit_scale))
    return jax.jit(encode_images, out_shardings=out), encode_text, logit_scale


class Encoder:
    """A model's towers on a mesh: `images(data_dir)` and `texts(list_of_str)` return unit-norm
    NumPy features; `logit_scale` is the model's learnt temperature."""

    def __init__(self, params, model_config: CLIPConfig, tokenizer, mesh: Optional[Mesh] = None,
                 batch_size: int = 256, progress: bool = False, description: str = ""):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.config = model_config
        self.tokenizer = tokenizer
        self.mesh = mesh if mesh is not None else default_mesh()
        self.batch_size = batch_size
        self.progress = progress
        self.description = description
        self.shards = batch_shards(self.mesh)
        self._batch_sharding = sharding.batch_sharding(self.mesh)
        # Parameters follow the training layout (replicated, or split over `fsdp`).
        self.params = jax.device_put(params, sharding.param_sharding(params, self.mesh))
        self._encode_images, self._encode_text, logit_scale = _towers(model_config, self.mesh)
        self.logit_scale = float(jax.device_get(logit_scale(self.params)))

    @classmethod
    def load(cls, checkpoint, mesh: Optional[Mesh] = None, batch_size: int = 256,
             progress: bool = False) -> "Encoder":
        """From anything `emocap_jax.load` reads (export folder, training workdir, open_clip or
        Hugging Face checkpoint)."""
        model = emocap_jax.load(checkpoint)
        if model.tokenizer is None:
            raise ValueError(f"{checkpoint}: the checkpoint records no tokenizer, so prompts "
                             "cannot be encoded")
        # One name per model, however it was given (workdir, its export/, relative or absolute),
        # so reports from `--mode=eval` and from this CLI collect into the same checkpoint's table.
        path = (storage.fspath(checkpoint) if storage.is_url(checkpoint)
                else pathlib.Path(checkpoint).absolute())
        export = params_io.find_export(path) if storage.isdir(path) else None
        return cls(model.params, model.config, model.tokenizer, mesh, batch_size, progress,
                   description=str(export or path))

    @property
    def global_batch(self) -> int:
        """batch_size rounded up to a multiple of the batch shards (every device gets rows)."""
        return -(-self.batch_size // self.shards) * self.shards

    def images(self, data_dir: str, num_frames: Optional[int] = None) -> ImageFeatures:
        """Features of every record of the dataset folder, in record order, each exactly once."""
        data_dir = storage.fspath(data_dir)
        num_records = shard_writer.load_metadata(data_dir)["num_records"]
        pc, pi = jax.process_count(), jax.process_index()
        if self.global_batch % pc:
            raise ValueError(f"global eval batch {self.global_batch} does not split over {pc} "
                             "processes")
        local_batch = self.global_batch // pc
        blocks, num_batches = pipeline.eval_blocks(num_records, local_batch, pc)
        iterator = pipeline.make_eval_iterator(
            data_dir, None, local_batch, self.config.vision.image_size, pi, pc,
            num_frames=num_frames)
        features = np.zeros((num_records, self.config.embed_dim), np.float32)
        labels = np.full((num_records,), -1, np.int32)
        digests = np.zeros((num_records, example_codec.IMAGE_DIGEST_SIZE), np.uint8)
        seen = np.zeros((num_records,), np.int64)
        ids: list[Optional[str]] = [None] * num_records
        groups: list[Optional[str]] = [None] * num_records
        batches = iterator
        if self.progress and pi == 0:
            unit = "clips" if num_frames else "images"
            batches = tqdm(iterator, total=num_batches, unit="batch",
                           desc=f"encoding {num_records} {unit} of {data_dir}")
        count = 0
        for i, batch in enumerate(batches):
            x = jax.make_array_from_process_local_data(self._batch_sharding,
                                                       np.asarray(batch["image"]))
            emb = _to_host(self._encode_images(self.params, x))
            batch_labels = _to_host(np.asarray(batch["label_id"], np.int32))
            index, valid = record_indices(blocks, i, local_batch)
            if not np.array_equal(valid, _to_host(np.asarray(batch["valid"], bool))):
                raise RuntimeError(f"{data_dir}: batch {i} padding does not match the record "
                                   "blocks (eval iterator and evaluator disagree)")
            rows = index[valid]
            features[rows] = emb[valid]
            labels[rows] = batch_labels[valid]
            digests[rows] = _to_host(np.asarray(batch["image_digest"], np.uint8))[valid]
            seen[rows] += 1
            if pc == 1:
                for row, record_id, group in zip(rows, np.asarray(batch["id"])[valid],
                                                 np.asarray(batch["group"])[valid]):
                    ids[row], groups[row] = str(record_id), str(group)
            count += 1
        if count != num_batches or not np.all(seen == 1):
            missing, repeated = int(np.sum(seen == 0)), int(np.sum(seen > 1))
            raise RuntimeError(f"{data_dir}: {missing} records never encoded and {repeated} "
                               f"encoded more than once ({count} of {num_batches} batches)")
        if pc > 1:  # other processes' strings are not on this host: read them from the shards
            records = read_records(data_dir)
            ids, groups = [r.id for r in records], [r.group for r in records]
        return ImageFeatures(features, labels, list(ids), data_dir, num_frames, list(groups),
                             digests)

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        return self.tokenizer(list(texts), context_length=self.config.text.context_length)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), D] unit-norm text embeddings (padded to fixed chunks, sharded)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.config.embed_dim), np.float32)
        tokens = np.asarray(self.tokenize(texts), np.int32)
        # The checkpoint's own tokenizer, yet not necessarily one ending rows in the tower's
        # pooling id (a SentencePiece model with another end-of-sentence id): every class prompt
        # would get one and the same embedding, and the protocol would measure nothing.
        check_token_rows(tokens, self.config.text.vocab_size, self.config.text.eot_token_id,
                         texts)
        chunk = -(-TEXT_CHUNK // self.shards) * self.shards
        padded = np.zeros((math.ceil(len(texts) / chunk) * chunk, tokens.shape[1]), np.int32)
        padded[:len(texts)] = tokens
        outs = []
        for start in range(0, padded.shape[0], chunk):
            part = padded[start:start + chunk]
            # Every process holds all the tokens: each device takes its rows from them.
            x = jax.make_array_from_callback(part.shape, self._batch_sharding,
                                             lambda idx, part=part: part[idx])
            outs.append(_to_host(self._encode_text(self.params, x)))
        return np.concatenate(outs)[:len(texts)]
