"""The grounding protocol: does the local loss's sentence-to-patch map point at the facial region
the sentence describes? (the pointing game, Zhang et al., ECCV 2016)

    python -m emocap_jax.evaluate --checkpoint runs/demo --benchmark synthetic \\
        --data runs/demo/data/eval --protocol grounding --output runs/demo/eval

Needs a regions file beside the dataset (`regions.jsonl`, written for the synthetic eval faces by
the corpus generator, `prepare_data` and `data_prep.synthetic_benchmarks`; format:
`emocap_jax.data.synthetic.corpus.grounding_record`): per face, pixel boxes of its brows, eyes,
cheeks, nose, mouth and jaw in the stored image (boxes given for a larger or smaller copy of it
are scaled; boxes of an image with another aspect ratio are refused), and the region each local
sentence describes.

For face i with projected patch tokens P_i ([Np, D], not normalised, the tokens the local loss
pools) and a local sentence u (its unit-norm text embedding, tokenised as in training) whose
region r(u) is known:

    map_i(u)[p] = softmax_p(<P_ip, u> / tau_pool)         (losses.sentence_patch_logits)
    p* = argmax_p map_i(u)[p]                              (independent of tau_pool > 0)
    hit = centre(p*) lies in a box of r(u), dilated by the tolerance

where centre(p*) is where token p* sits in the model's input (the centre of its patch; with the
convolutional stem the centre of its receptive field, (p - 1) / 2 pixels before the patch's
centre in x and y: `VisionConfig.local_token_offset`), mapped back into the stored image's pixel
coordinates through the evaluation preprocessing (shorter side resized to the
model's input size, central square crop). Boxes are half-open in continuous pixel coordinates
(pixel j spans [j, j + 1)). Accuracy = hits / pairs, per region and over all pairs. Chance is the
area fraction of the union of the region's (dilated) boxes in the part of the stored image the
model sees (its central crop: all of a square image), averaged over the pairs: the hit rate of a
point drawn uniformly over the model's input. A box the crop hides counts for nothing, since no
patch can land there. Since the pointer can only land
on patch centres, `patch_chance` (the fraction of patch centres inside the boxes, averaged over
the pairs) is reported too: the hit rate of a uniformly drawn patch, and 0 for a region that no
patch centre reaches on a coarse grid (a larger --grounding-tolerance then helps). Sentences with
no region (the relaxed-face sentence) are counted as skipped.

Chance is a weak baseline where faces are aligned, as the synthetic ones are (the face moves by a
few percent of the image): a pointer that ignores the image and always picks the same patch for a
region can score far above it. `prior` is the accuracy of the best such pointer, per region the
patch that hits most often over the split's own pairs (an upper bound for any image-blind pointer
that knows only the region); overall, the pair-weighted mean. A model grounds sentences in the
image only as far as it beats the prior.
"""
from __future__ import annotations

import functools
import io
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from PIL import Image

from emocap_jax import sharding, storage
from emocap_jax.data import example_codec, json_keys, pipeline, shard_writer
from emocap_jax.data.source import ShardedTFRecordSource
from emocap_jax.data.synthetic.faces import FACE_REGIONS
from emocap_jax.evaluate.features import _to_host, record_indices
from emocap_jax.losses import sentence_patch_logits
from emocap_jax.models.clip import CLIP

REGIONS_FILE = "regions.jsonl"  # = emocap_jax.data.synthetic.corpus.REGIONS_FILE
METRIC = "pointing_accuracy"


# ------------------------------------------------------------------------------------------------
# The regions file


def load_regions(path) -> dict[str, dict]:
    """{record id: {"image_size": (w, h), "regions": {name: [K, 4] float array}, "local":
    [(region or None, text)]}} from a regions file; a malformed line raises naming file and line."""
    path = storage.fspath(path)
    out: dict[str, dict] = {}
    with storage.open(path, "r") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                entry = json_keys.loads(line)
                repeated = json_keys.repeated_key(entry)
                if repeated:  # json would keep the last value: a box or sentence lost silently
                    raise ValueError(repeated)
                record_id = str(entry["id"])
                width, height = (int(v) for v in entry["image_size"])
                regions = {}
                for name, boxes in entry["regions"].items():
                    array = np.asarray(boxes, np.float64).reshape(-1, 4)
                    if np.any(array[:, 2] < array[:, 0]) or np.any(array[:, 3] < array[:, 1]):
                        raise ValueError(f"region {name!r} has a box with x1 < x0 or y1 < y0")
                    regions[str(name)] = array
                local = [(item["region"], str(item["text"])) for item in entry["local"]]
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{where}: not a regions line ({type(e).__name__}: {e}); expected "
                                 '{"id", "image_size": [w, h], "regions": {name: [[x0, y0, x1, '
                                 'y1], ...]}, "local": [{"region", "text"}, ...]}') from None
            if width < 1 or height < 1:
                raise ValueError(f"{where}: image_size must be positive, got {[width, height]}")
            unknown = sorted({r for r, _ in local if r is not None and r not in regions})
            if unknown:
                raise ValueError(f"{where}: local sentences name regions {unknown} that have no "
                                 f"boxes (regions: {sorted(regions)})")
            if record_id in out:
                raise ValueError(f"{where}: id {record_id!r} appears twice")
            out[record_id] = {"image_size": (width, height), "regions": regions, "local": local}
    return out


# ------------------------------------------------------------------------------------------------
# Geometry and the pointing game (pure NumPy)


def _resized(input_size: int, stored_size: Sequence[int]) -> tuple[int, int, int, int]:
    """(new_w, new_h, left, top) of `augment.resize_center_crop`: the stored image resized so its
    shorter side is `input_size` (the longer truncated to int), and the crop's offset in it."""
    width, height = (int(v) for v in stored_size)
    size = int(input_size)
    if min(width, height) == size:
        new_w, new_h = width, height
    elif height <= width:
        new_h, new_w = size, int(size * width / height)
    else:
        new_h, new_w = int(size * height / width), size
    return new_w, new_h, int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))


def patch_centres(grid: int, patch_size: int, input_size: int, stored_size: Sequence[int],
                  offset: Optional[float] = None) -> np.ndarray:
    """[grid * grid, 2] (x, y) centres of the patches (row-major, the tokens' order) in the
    stored image's continuous pixel coordinates, inverting `augment.resize_center_crop`: the
    shorter side resized to `input_size` (the longer truncated to int), then the central crop.
    In the model's input patch (r, c) is centred at offset + (c, r) * patch_size; offset
    defaults to half a patch (the square's centre)."""
    width, height = (int(v) for v in stored_size)
    new_w, new_h, left, top = _resized(input_size, stored_size)
    offset = patch_size / 2 if offset is None else float(offset)
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    x = (cols.ravel() * patch_size + offset + left) * (width / new_w)
    y = (rows.ravel() * patch_size + offset + top) * (height / new_h)
    return np.stack([x, y], axis=-1)


def token_centres(vision, stored_size: Sequence[int]) -> np.ndarray:
    """patch_centres of the local tokens of a model with VisionConfig `vision`: the local head's
    grid and square side (half the ViT's patch with local_head="patch_fine"), not the ViT's, and
    where its tokens sit (`VisionConfig.local_token_offset`: with the convolutional stem, the
    centre of each token's receptive field, not of its patch)."""
    return patch_centres(vision.local_grid_size, vision.local_patch_size, vision.image_size,
                         stored_size, vision.local_token_offset)


def view_box(input_size: int, stored_size: Sequence[int]) -> np.ndarray:
    """[4] (x0, y0, x1, y1): the part of the stored image the model sees, the central crop of
    `augment.resize_center_crop` in stored pixel coordinates (the whole image when square)."""
    width, height = (int(v) for v in stored_size)
    new_w, new_h, left, top = _resized(input_size, stored_size)
    size = int(input_size)
    return np.array([left * width / new_w, top * height / new_h,
                     (left + size) * width / new_w, (top + size) * height / new_h], np.float64)


def dilate(boxes: np.ndarray, tolerance: float, bounds: Sequence[float]) -> np.ndarray:
    """Boxes grown by `tolerance` pixels on every side and clipped to `bounds` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = (float(v) for v in bounds)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4) + np.array([-1, -1, 1, 1]) * tolerance
    return np.clip(boxes, [x0, y0, x0, y0], [x1, y1, x1, y1])


def box_scale(regions_size: Sequence[int], stored_size: Sequence[int]) -> Optional[np.ndarray]:
    """[4] factors taking boxes given for an image of `regions_size` (w, h) to the stored image's
    pixels: the stored image may be a resized copy (sides truncated to int, so each side may be
    up to a pixel short of a uniform scale); None where the aspect ratios differ by more than
    that, i.e. the boxes describe some other image."""
    (rw, rh), (w, h) = ([float(v) for v in regions_size], [float(v) for v in stored_size])
    sx, sy = w / rw, h / rh
    if abs(rw * sy - w) > 1.0 or abs(rh * sx - h) > 1.0:
        return None
    return np.array([sx, sy, sx, sy])


def in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[N] bool: point (x, y) lies in at least one half-open box [x0, x1) x [y0, y1)."""
    points = np.asarray(points, np.float64).reshape(-1, 1, 2)
    boxes = np.asarray(boxes, np.float64).reshape(1, -1, 4)
    x, y = points[..., 0], points[..., 1]
    inside = ((x >= boxes[..., 0]) & (x < boxes[..., 2]) & (y >= boxes[..., 1])
              & (y < boxes[..., 3]))
    return inside.any(axis=1)


def union_area(boxes: np.ndarray) -> float:
    """Exact area of the union of axis-aligned boxes (coordinate compression)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    if len(boxes) == 0:
        return 0.0
    xs, ys = np.unique(boxes[:, [0, 2]]), np.unique(boxes[:, [1, 3]])
    cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
    cells = np.stack(np.meshgrid(cx, cy, indexing="ij"), axis=-1).reshape(-1, 2)
    covered = in_boxes(cells, boxes).reshape(len(cx), len(cy))
    return float(np.sum(covered * np.outer(np.diff(xs), np.diff(ys))))


def point(scores: np.ndarray, centres: np.ndarray, boxes: np.ndarray, view: Sequence[float],
          tolerance: float = 0.0) -> dict:
    """The pointing game for one (face, sentence) pair.

    scores: [Np] the sentence's map over the patches (any monotone transform of the local
    loss's logits: only the argmax matters); centres: [Np, 2] patch centres in image pixels;
    boxes: [K, 4] the region's boxes; view: (x0, y0, x1, y1) the part of the image the model
    sees (`view_box`). Returns the argmax patch, its centre, whether it hits, the fraction of the
    view the (dilated) boxes cover (chance: a non-square image's crop hides part of it, and a
    pointer can never land there) and the fraction of patch centres inside them (patch chance)."""
    x0, y0, x1, y1 = (float(v) for v in view)
    grown = dilate(boxes, tolerance, view)
    best = int(np.argmax(scores))
    inside = in_boxes(centres, grown)  # the centres lie in the view
    return {"patch": best, "x": float(centres[best, 0]), "y": float(centres[best, 1]),
            "hit": bool(inside[best]), "chance": union_area(grown) / ((x1 - x0) * (y1 - y0)),
            "patch_chance": float(inside.mean()), "patch_hits": inside}


def summarize(regions: Sequence[str], hits: Sequence[bool], chance: Sequence[float],
              patch_chance: Sequence[float], patch_hits: np.ndarray, order: Sequence[str] = ()
              ) -> dict:
    """Accuracy, chance and the fixed-patch prior over the pairs, overall and per region
    (regions in `order` first). patch_hits: [pairs, Np] whether each patch would hit."""
    regions = list(regions)
    hits = np.asarray(hits, bool)
    chance, patch_chance = np.asarray(chance, np.float64), np.asarray(patch_chance, np.float64)
    patch_hits = np.asarray(patch_hits, bool).reshape(len(regions), -1)

    def block(mask):
        n = int(mask.sum())
        return {"pairs": n, "hits": int(hits[mask].sum()),
                "accuracy": float(hits[mask].mean()) if n else None,
                "chance": float(chance[mask].mean()) if n else None,
                "patch_chance": float(patch_chance[mask].mean()) if n else None}

    names = [r for r in order if r in regions] + sorted(set(regions) - set(order))
    per_region, prior_hits = {}, 0
    for name in names:
        mask = np.asarray([r == name for r in regions], bool)
        rate = patch_hits[mask].mean(axis=0)
        best = int(np.argmax(rate))
        per_region[name] = {**block(mask), "prior": float(rate[best]), "prior_patch": best}
        prior_hits += int(patch_hits[mask][:, best].sum())
    overall = block(np.ones(len(regions), bool))
    overall["prior"] = prior_hits / len(regions) if len(regions) else None
    return {**overall, "per_region": per_region}


# ------------------------------------------------------------------------------------------------
# Running a model


@functools.lru_cache(maxsize=8)
def _patch_tower(model_config, mesh):
    """The jitted image tower returning the projected patch tokens [b, Np, D] (float32)."""
    model = CLIP(model_config)
    out = NamedSharding(mesh, PartitionSpec(sharding.batch_axes(mesh)))
    return jax.jit(lambda p, x: model.apply({"params": p}, x, True, method=CLIP.encode_image)[1],
                   out_shardings=out)


def _stored_sizes(data_dir: str) -> tuple[list[str], list[tuple[int, int]], list[list[str]]]:
    """Ids, (width, height) of the first stored image (header only) and local captions of every
    record, in record order."""
    source = ShardedTFRecordSource(shard_writer.shard_paths(data_dir), verify=True,
                                   on_corrupt="raise")
    ids, sizes, local = [], [], []
    for i in range(len(source)):
        record = example_codec.decode_record(source[i])
        with Image.open(io.BytesIO(record.images[0])) as image:
            sizes.append(tuple(image.size))
        ids.append(record.id)
        local.append(list(record.local_captions))
    return ids, sizes, local


def patch_tokens(encoder, data_dir: str):
    """Yields (record indices [b], patch tokens [b, Np, D]) over every record of the dataset,
    each once, through the encoder's mesh (as `Encoder.images` does for pooled features)."""
    num_records = shard_writer.load_metadata(data_dir)["num_records"]
    pc, pi = jax.process_count(), jax.process_index()
    local_batch = encoder.global_batch // pc
    blocks, _ = pipeline.eval_blocks(num_records, local_batch, pc)
    iterator = pipeline.make_eval_iterator(data_dir, None, local_batch,
                                           encoder.config.vision.image_size, pi, pc)
    tower = _patch_tower(encoder.config, encoder.mesh)
    sharding = encoder._batch_sharding
    for i, batch in enumerate(iterator):
        x = jax.make_array_from_process_local_data(sharding, np.asarray(batch["image"]))
        tokens = _to_host(tower(encoder.params, x))
        index, valid = record_indices(blocks, i, local_batch)
        yield index[valid], tokens[valid]


def evaluate_split(encoder, data_dir: str, regions_path: Optional[str] = None,
                   tolerance: float = 0.0) -> tuple[dict, list[dict]]:
    """(report, per-pair rows) of the pointing game on one dataset folder."""
    regions_path = regions_path or storage.join(data_dir, REGIONS_FILE)
    if not storage.isfile(regions_path):
        raise FileNotFoundError(
            f"{regions_path}: no regions file; grounding needs the facial-region boxes of each "
            f"face and the region of each local sentence ({REGIONS_FILE} beside the dataset: "
            "`python -m data_prep.synthetic_benchmarks` writes one into OUT/basic/, and training "
            "on the synthetic corpus into WORKDIR/data/eval/), or pass --regions FILE")
    if not tolerance >= 0:  # NaN too: it would dilate every box into nothing
        raise ValueError(f"--grounding-tolerance must be >= 0, got {tolerance}")

    entries = load_regions(regions_path)
    ids, sizes, record_local = _stored_sizes(data_dir)
    matched = [i for i, record_id in enumerate(ids) if record_id in entries]
    if not matched:
        raise ValueError(f"{regions_path}: none of its ids are records of {data_dir} (first ids: "
                         f"{ids[:3]} vs {list(entries)[:3]})")
    for i in matched:
        texts = [text for _, text in entries[ids[i]]["local"]]
        if texts != record_local[i]:
            raise ValueError(f"{regions_path}: record {ids[i]!r} has local sentences "
                             f"{record_local[i]} in {data_dir} but {texts} in the regions file "
                             "(a regions file of other faces?)")
        scale = box_scale(entries[ids[i]]["image_size"], sizes[i])
        if scale is None:
            raise ValueError(f"{regions_path}: record {ids[i]!r} is {sizes[i][0]}x{sizes[i][1]} "
                             f"pixels in {data_dir} but its boxes are for a "
                             f"{entries[ids[i]]['image_size'][0]}x"
                             f"{entries[ids[i]]['image_size'][1]} image (another aspect ratio: a "
                             "regions file of other images?)")
    # Pairs: (record row, sentence, region); sentences without a region are skipped.
    pairs, skipped = [], 0
    for i in matched:
        for k, (region, text) in enumerate(entries[ids[i]]["local"]):
            if region is None:
                skipped += 1
            else:
                pairs.append((i, k, region, text))
    if not pairs:
        raise ValueError(f"{regions_path}: no local sentence of these faces names a region")
    sentences = sorted({text for _, _, _, text in pairs})
    row_of = {text: j for j, text in enumerate(sentences)}
    embeddings = encoder.texts(sentences)  # unit-norm, tokenised as training does
    vision = encoder.config.vision
    grid = vision.local_grid_size
    pairs_of: dict[int, list] = {}
    for pair in pairs:
        pairs_of.setdefault(pair[0], []).append(pair)
    rows, results = [], []
    for index, tokens in patch_tokens(encoder, data_dir):
        for row, face_tokens in zip(index, tokens):
            face_pairs = pairs_of.get(int(row))
            if not face_pairs:
                continue
            entry = entries[ids[row]]
            size = sizes[row]
            scale = box_scale(entry["image_size"], size)  # checked above
            centres = token_centres(vision, size)
            view = view_box(vision.image_size, size)
            u = embeddings[[row_of[text] for _, _, _, text in face_pairs]]
            # The local loss's map; its softmax (tau_pool) does not move the argmax.
            logits = np.asarray(sentence_patch_logits(face_tokens[None], u, 1.0))[0]
            for (i, k, region, text), scores in zip(face_pairs, logits):
                boxes = entry["regions"][region] * scale
                out = point(scores, centres, boxes, view, tolerance)
                results.append((region, out))
                rows.append({"id": ids[i], "sentence": k, "region": region,
                             "patch_row": out["patch"] // grid, "patch_col": out["patch"] % grid,
                             "x": round(out["x"], 2), "y": round(out["y"], 2),
                             "hit": int(out["hit"]), "chance": round(out["chance"], 5),
                             "text": text})
    if len(results) != len(pairs):
        raise RuntimeError(f"{data_dir}: scored {len(results)} of {len(pairs)} pairs")
    report = summarize([r for r, _ in results], [o["hit"] for _, o in results],
                       [o["chance"] for _, o in results],
                       [o["patch_chance"] for _, o in results],
                       np.stack([o["patch_hits"] for _, o in results]), FACE_REGIONS)
    report.update(num_pairs=len(results), num_examples=len(results),
                  num_faces=len({row["id"] for row in rows}), skipped_sentences=skipped,
                  records_without_regions=len(ids) - len(matched), grid=[grid, grid],
                  tolerance=float(tolerance), dataset=str(data_dir), regions=str(regions_path))
    return report, rows


def run_grounding(encoder, spec, splits, options) -> dict:
    """The runner's entry point (emocap_jax.evaluate.runner.PROTOCOL_RUNNERS)."""
    reports, predictions = [], []
    for split in splits:
        report, rows = evaluate_split(encoder, split.test, options.regions,
                                      options.grounding_tolerance)
        report["fold"] = split.fold
        reports.append(report)
        predictions += [dict(row, fold=split.fold) if split.fold is not None else row
                        for row in rows]
    value = float(np.mean([r["accuracy"] for r in reports]))
    return {"report": reports[0] if len(reports) == 1 else None, "folds": reports,
            "predictions": predictions, "value": value, "metric": METRIC}
