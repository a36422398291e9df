"""The synthetic-faces corpus: determinism, caption/AU agreement, layout, and that the drawn
expressions carry signal a trivial classifier can learn."""
from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import pathlib
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from data_prep import synthetic as synthetic_cli
from data_prep import synthetic_benchmarks as synthetic_benchmarks_cli
from emocap_jax.data.synthetic import corpus as synthetic
from emocap_jax.evaluate.synthetic_benchmarks import generate_benchmarks
from emocap_jax.data.synthetic.captions import _ADJECTIVES, _ADVERBS, _LEVEL_NOUNS, REGION_OF_AU, intensity_level, write_caption
from emocap_jax.data.synthetic.faces import (
    AU_CODES,
    BASIC_CLASSES,
    FACE_CENTER,
    FACE_UNIT,
    PROTOTYPES,
    VISIBILITY_THRESHOLD,
    render_face,
    sample_aus,
    sample_face_spec,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
AU_PATTERN = re.compile(r"\bAU(\d+)\b")

SEED = 11
NUM_TRAIN = 400
EVAL_PER_CLASS = 15
SIZE = 64


def _read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _tree_bytes(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    summary = synthetic.generate_corpus(out, NUM_TRAIN, seed=SEED, size=SIZE, eval_per_class=EVAL_PER_CLASS, workers=2, progress=False)
    return out, summary, _read_jsonl(out / "manifest.jsonl"), _read_jsonl(out / "eval" / "manifest.jsonl")


def test_same_arguments_give_identical_bytes_whatever_the_worker_count(tmp_path):
    args = dict(num=20, seed=3, size=48, eval_per_class=2, progress=False)
    synthetic.generate_corpus(tmp_path / "a", workers=1, **args)
    synthetic.generate_corpus(tmp_path / "b", workers=2, **args)
    first, second = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert len(first) == 20 + 16 + 5  # images, two manifests, eval regions, preview, corpus.json
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []

    synthetic.generate_corpus(tmp_path / "c", workers=1, **{**args, "seed": 4})
    other = _tree_bytes(tmp_path / "c")
    assert other["images/syn_000000.jpg"] != first["images/syn_000000.jpg"]
    assert other["manifest.jsonl"] != first["manifest.jsonl"]


def test_manifest_records_have_the_corpus_schema(corpus):
    out, summary, train, evaluation = corpus
    assert len(train) == NUM_TRAIN and len(evaluation) == EVAL_PER_CLASS * len(BASIC_CLASSES)
    for record in train + evaluation:
        assert list(record) == ["id", "image", "global", "local", "summary", "label", "aus", "group"]
        assert record["global"] and record["summary"] and record["local"]
        assert all(isinstance(s, str) and s[0].isupper() and s.endswith(".") for s in [record["global"], record["summary"], *record["local"]])
        assert all(VISIBILITY_THRESHOLD < value <= 1.0 for value in record["aus"].values())
    assert all(record["image"].startswith("images/") for record in train)
    assert len({record["id"] for record in train + evaluation}) == len(train) + len(evaluation)
    labels = collections.Counter(record["label"] for record in train)
    assert set(labels) == set(PROTOTYPES)  # basic and compound classes both appear in training
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["classes"] == list(BASIC_CLASSES)
    assert meta["counts"]["train"] == dict(labels) and meta["num_eval"] == len(evaluation)
    assert summary["counts"] == meta["counts"]


def test_captions_mention_exactly_the_drawn_aus(corpus):
    _, _, train, evaluation = corpus
    train_tasks, eval_tasks = synthetic.plan_corpus(NUM_TRAIN, SEED, EVAL_PER_CLASS)
    by_id = {record["id"]: record for record in train + evaluation}
    for task in train_tasks + eval_tasks:
        record = by_id[task.record_id]
        spec = sample_face_spec(SEED, task.split, task.index, task.label, task.identity_index)
        drawn = {f"AU{AU_CODES[i]}" for i in np.flatnonzero(spec.au_vector())}
        assert record["aus"] == {f"AU{code}": value for code, value in spec.aus.items()}, task.record_id
        mentioned = [f"AU{code}" for sentence in record["local"] for code in AU_PATTERN.findall(sentence)]
        assert collections.Counter(mentioned) == collections.Counter(drawn), (task.record_id, record["local"])
        # One sentence per active region, each naming only its own region's AUs.
        regions = [{REGION_OF_AU[int(code)] for code in AU_PATTERN.findall(sentence)} for sentence in record["local"]]
        if drawn:
            assert all(len(r) == 1 for r in regions) and len(regions) == len({REGION_OF_AU[int(c[2:])] for c in drawn})
        else:
            assert regions == [set()]
        assert not AU_PATTERN.search(record["global"]) and not AU_PATTERN.search(record["summary"])


def test_intensity_words_match_the_drawn_intensity(corpus):
    _, _, train, _ = corpus
    level_words = [set(_ADVERBS[k]) | set(_ADJECTIVES[k]) | {_LEVEL_NOUNS[k]} for k in range(3)]
    level_words = [{w for phrase in words for w in re.split(r"[^a-z]+", phrase) if w and w != "strength"} for words in level_words]
    checked = 0
    for record in train:
        for sentence in record["local"]:
            # The clause of an AU is the text between the previous AU code and its own.
            pieces = re.split(r"\bAU\d+\b", sentence)
            for clause, code in zip(pieces, AU_PATTERN.findall(sentence)):
                words = set(re.split(r"[^a-z]+", clause.lower()))
                expected = intensity_level(record["aus"][f"AU{code}"])
                assert words & level_words[expected], (record["id"], clause)
                for other in {0, 1, 2} - {expected}:
                    assert not words & (level_words[other] - level_words[expected]), (record["id"], clause)
                checked += 1
    assert checked > NUM_TRAIN


def test_eval_folders_hold_every_basic_class_with_the_requested_count(corpus):
    out, _, _, evaluation = corpus
    for label in BASIC_CLASSES:
        files = sorted((out / "eval" / label).iterdir())
        assert len(files) == EVAL_PER_CLASS, label
    assert collections.Counter(r["label"] for r in evaluation) == {label: EVAL_PER_CLASS for label in BASIC_CLASSES}
    for record in evaluation:
        assert record["image"].split("/")[0] == record["label"]
        assert (out / "eval" / record["image"]).is_file()


def test_eval_identities_are_disjoint_from_training(corpus):
    _, _, train, evaluation = corpus
    train_groups = {r["group"] for r in train}
    eval_groups = {r["group"] for r in evaluation}
    assert train_groups.isdisjoint(eval_groups)
    # Identities repeat within a split (several expressions per person).
    assert len(train_groups) < len(train) and len(eval_groups) < len(evaluation)
    # Different people, not only different names: eval identity 0 is not train identity 0.
    assert sample_face_spec(SEED, "eval", 0, "neutral", 0).identity != sample_face_spec(SEED, "train", 0, "neutral", 0).identity


def test_images_decode_at_the_requested_size(corpus):
    out, _, train, evaluation = corpus
    for root, records in ((out, train), (out / "eval", evaluation)):
        for record in records:
            with Image.open(root / record["image"]) as image:
                assert image.format == "JPEG" and image.mode == "RGB" and image.size == (SIZE, SIZE)


def _plain_spec(label: str, aus: dict[int, float]):
    """A spec without pose, lighting or noise so pixel differences come from AUs alone."""
    spec = sample_face_spec(5, "train", 0, "neutral", 2)
    unilateral = PROTOTYPES[label].unilateral
    return dataclasses.replace(
        spec, label=label, aus=aus, unilateral_side=1 if unilateral else 0, unilateral_aus=unilateral,
        rotation_deg=0.0, offset=(0.0, 0.0), scale=1.0, light_strength=0.0, brightness=1.0,
        color_cast=(1.0, 1.0, 1.0), noise_sigma=0.0, background_kind=0,
    )


def _gray(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float32)


def _rows_of(v_low: float, v_high: float, size: int) -> slice:
    # Image rows of a band of face units, for a face at scale 1 with no offset or rotation.
    return slice(int(size * (FACE_CENTER[1] + FACE_UNIT * v_low)), int(size * (FACE_CENTER[1] + FACE_UNIT * v_high)) + 1)


def test_happy_and_neutral_differ_in_the_mouth_region():
    size = 96
    neutral = _gray(render_face(_plain_spec("neutral", {}), size))
    happy = _gray(render_face(_plain_spec("happy", {6: 0.8, 12: 0.9}), size))
    diff = np.abs(happy - neutral)
    mouth = diff[_rows_of(0.5, 1.0, size), int(size * 0.3) : int(size * 0.7)]
    forehead = diff[_rows_of(-0.9, -0.6, size), int(size * 0.3) : int(size * 0.7)]
    assert mouth.mean() > 8.0
    assert forehead.max() == 0.0


# Face-unit vertical band where each AU must change the drawing.
_AU_BANDS = {
    1: (-0.95, -0.1), 2: (-0.95, -0.1), 4: (-0.5, 0.0), 5: (-0.25, 0.15), 6: (-0.1, 0.5), 7: (-0.2, 0.2),
    9: (-0.35, 0.8), 12: (0.4, 1.0), 14: (0.5, 1.0), 15: (0.5, 1.2), 16: (0.6, 1.2), 20: (0.5, 1.0),
    23: (0.5, 1.2), 26: (0.5, 1.6),
}


@pytest.mark.parametrize("code", AU_CODES)
def test_every_au_visibly_deforms_its_region(code):
    size = 96
    neutral = _gray(render_face(_plain_spec("neutral", {}), size))
    moved = _gray(render_face(_plain_spec("neutral", {code: 1.0}), size))
    diff = np.abs(moved - neutral)
    band = diff[_rows_of(*_AU_BANDS[code], size)]
    assert band.sum() > 0.6 * diff.sum(), f"AU{code} changes pixels mostly outside its region"
    assert (band > 25).sum() >= 25, f"AU{code} barely changes the drawing"


def test_contempt_is_one_sided():
    size = 96
    neutral = _gray(render_face(_plain_spec("contempt", {}), size))
    smirk = _gray(render_face(_plain_spec("contempt", {12: 0.9, 14: 0.9}), size))
    diff = np.abs(smirk - neutral)[_rows_of(0.4, 1.1, size)]
    # The spec lifts the image-right corner: nearly all change lies right of the face's midline.
    assert diff[:, size // 2 + 2 :].sum() > 5 * diff[:, : size // 2 - 2].sum()


def test_sampled_aus_follow_the_facs_prototypes():
    rng = np.random.default_rng(0)
    for label, proto in PROTOTYPES.items():
        frequency = collections.Counter()
        for _ in range(300):
            aus, side = sample_aus(label, rng)
            assert all(VISIBILITY_THRESHOLD < v <= 1.0 for v in aus.values())
            assert all(aus.get(code, 0) >= 0.4 for code in proto.key), (label, aus)
            assert side in ((-1, 1) if proto.unilateral else (0,))
            if label == "neutral":
                assert len(aus) <= 1 and all(v < 0.4 for v in aus.values())
            frequency.update(aus.keys())
        common = {code for code, count in frequency.items() if count > 150}
        assert common == set(proto.weights), label


def test_au_drop_probability_lets_a_class_s_movements_appear_apart():
    """With au_drop_probability, a surprised face's raised brows also come without its dropped
    jaw (the co-occurrence the local term cannot see past), every face keeps one of its class's
    AUs, and the default draws exactly what it drew before the option existed."""
    rng = np.random.default_rng(0)
    proto = PROTOTYPES["surprise"]
    faces = [sample_aus("surprise", rng, au_drop_probability=0.5)[0] for _ in range(600)]
    for code in proto.key:
        absent = np.mean([code not in aus for aus in faces])
        assert 0.4 < absent < 0.6, (code, absent)
    assert all(set(aus) & set(proto.weights) for aus in faces)
    brows_without_jaw = np.mean([1 in aus and 26 not in aus for aus in faces])
    assert brows_without_jaw > 0.15
    # Without the option, the key AUs are always there (test_sampled_aus_follow_the_facs_prototypes)
    # and 0 is the same random stream as no argument.
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert [sample_aus("fear", a) for _ in range(50)] == [sample_aus("fear", b, 0.0) for _ in range(50)]
    with pytest.raises(ValueError, match="au_drop_probability must be in"):
        sample_aus("fear", rng, au_drop_probability=1.0)


def test_the_default_corpus_is_the_one_written_before_au_drop_existed(tmp_path):
    """Existing corpora and every result measured on them stay reproducible: the manifests and
    regions of a small default corpus hash to what the generator wrote at commit 48a3d3d."""
    import hashlib

    synthetic.generate_corpus(tmp_path, 20, seed=3, size=48, eval_per_class=2, workers=1, progress=False)
    digest = lambda name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
    assert digest("manifest.jsonl") == "18ad9c296d9adb1fba667d4164920dfb911c92c49aa8e8ae07d114c241cc415f"
    assert digest("eval/manifest.jsonl") == "2c8e7ecde41975f1c8931a745d23fa48f2e47a8e46e5fc522da908990af5ffa5"
    assert digest(f"eval/{synthetic.REGIONS_FILE}") == "9d929e78b16a9546d00e5f78b0d39c49e7818bd9983b1215a128086c3f17b1b9"


def test_a_decorrelated_corpus_records_its_setting_and_its_captions_follow_the_drawing(tmp_path):
    synthetic.generate_corpus(tmp_path, 60, seed=2, size=48, eval_per_class=2, workers=1,
                              au_drop_probability=0.5, progress=False)
    arguments = json.loads((tmp_path / "corpus.json").read_text())["arguments"]
    assert arguments["au_drop_probability"] == 0.5
    records = _read_jsonl(tmp_path / "manifest.jsonl")
    for record in records:
        drawn = {int(code[2:]) for code in record["aus"]}
        mentioned = {int(m) for m in AU_PATTERN.findall(" ".join(record["local"]))}
        assert mentioned == drawn, record["id"]
    # Some faces of a key-AU class miss a key AU, which the usual corpus never does.
    assert any(not PROTOTYPES[r["label"]].key <= {int(c[2:]) for c in r["aus"]} for r in records
               if PROTOTYPES[r["label"]].key)
    # The held-out regions recomputed from corpus.json are the ones the generator wrote.
    written = (tmp_path / "eval" / synthetic.REGIONS_FILE).read_bytes()
    (tmp_path / "eval" / synthetic.REGIONS_FILE).unlink()
    (tmp_path / "data").mkdir()
    assert synthetic.ensure_eval_regions(tmp_path, tmp_path / "data").read_bytes() == written
    with pytest.raises(ValueError, match="au_drop_probability must be in"):
        synthetic.generate_corpus(tmp_path / "bad", 4, au_drop_probability=-0.1)


def test_appearance_captions_add_a_true_sentence_and_change_nothing_else(tmp_path):
    """`appearance_captions` follows each global sentence with one on the face's looks, drawn
    from the face's own spec; images, local and summary sentences stay byte for byte."""
    from emocap_jax.data.synthetic import appearance

    plain, looks = tmp_path / "plain", tmp_path / "looks"
    for out, flag in ((plain, False), (looks, True)):
        synthetic.generate_corpus(out, 30, seed=4, size=48, eval_per_class=2, workers=1,
                                  appearance_captions=flag, progress=False)
    assert json.loads((looks / "corpus.json").read_text())["arguments"]["appearance_captions"]
    images = lambda root: {k: v for k, v in _tree_bytes(root).items() if k.endswith(".jpg")}
    assert images(plain) == images(looks) and images(plain)
    for name in ("manifest.jsonl", "eval/manifest.jsonl"):
        for before, after in zip(_read_jsonl(plain / name), _read_jsonl(looks / name)):
            assert {k: v for k, v in after.items() if k != "global"} == \
                {k: v for k, v in before.items() if k != "global"}
            assert after["global"].startswith(before["global"] + " ")
    assert (plain / "eval" / synthetic.REGIONS_FILE).read_bytes() == \
        (looks / "eval" / synthetic.REGIONS_FILE).read_bytes()
    # The sentence is made of phrases true of the face (two of them, in their fixed order).
    for i in range(40):
        label = list(PROTOTYPES)[i % len(PROTOTYPES)]
        spec = sample_face_spec(4, "train", i, label, i)
        base = synthetic.face_caption(spec, 4, "train", i).global_
        added = synthetic.face_caption(spec, 4, "train", i, appearance_captions=True).global_
        sentence = added[len(base) + 1:]
        phrases = appearance.appearance_phrases(spec)
        possible = {appearance.join_phrases(chosen) for chosen in
                    itertools.combinations(phrases, appearance.ATTRIBUTES_PER_CAPTION)}
        assert sentence in possible, sentence
    with pytest.raises(ValueError, match="appearance_captions must be True or False"):
        synthetic.generate_corpus(tmp_path / "bad", 4, appearance_captions="yes")


def test_appearance_phrases_say_what_is_drawn():
    """Tilt and light are named by the side the viewer sees; colours by their plain names."""
    from emocap_jax.data.synthetic import appearance

    spec = dataclasses.replace(sample_face_spec(0, "train", 3, "happy", 3), offset=(0.0, 0.0))
    centre = lambda boxes: sum((b[0] + b[2]) / 2 for b in boxes) / len(boxes)
    right = dataclasses.replace(spec, rotation_deg=8.0)
    regions = synthetic.face_regions(right, 96)
    assert centre(regions["brows"]) > centre(regions["jaw"])  # the top of the head went right
    assert appearance.tilt_phrase(right) == "head tilted right"
    assert appearance.tilt_phrase(dataclasses.replace(spec, rotation_deg=-8.0)) == "head tilted left"
    assert appearance.tilt_phrase(dataclasses.replace(spec, rotation_deg=1.0)) is None
    lit = dataclasses.replace(spec, light_angle=0.0, light_strength=0.3, noise_sigma=0.0)
    unlit = dataclasses.replace(lit, light_strength=0.0)
    gain = np.asarray(render_face(lit, 64), float) - np.asarray(render_face(unlit, 64), float)
    assert gain[:, 32:].mean() > gain[:, :32].mean() + 5  # brighter on the viewer's right
    assert appearance.light_phrase(lit) == "lit from the right"
    assert appearance.light_phrase(dataclasses.replace(lit, light_angle=np.pi)) == "lit from the left"
    assert appearance.light_phrase(dataclasses.replace(lit, light_angle=np.pi / 2)) == "lit from below"
    assert appearance.light_phrase(unlit) is None
    assert [appearance.colour_name(c) for c in ((250, 250, 250), (20, 20, 20), (128, 128, 128),
                                                 (200, 30, 30), (40, 60, 200), (30, 160, 40))] \
        == ["white", "black", "grey", "red", "blue", "green"]
    bald = dataclasses.replace(spec, identity=dataclasses.replace(spec.identity, hair_style=0))
    assert appearance.hair_phrase(bald) == "a shaved head"
    blond = dataclasses.replace(spec, identity=dataclasses.replace(
        spec.identity, hair_style=2, hair_color=(195, 160, 98)))
    assert appearance.hair_phrase(blond) == "long blond hair"


def test_captions_fit_the_clip_context():
    tokenizers = pytest.importorskip("emocap_jax.tokenizers")
    tokenizer = tokenizers.ClipBpeTokenizer()
    longest = 0
    for i in range(1500):
        label = list(PROTOTYPES)[i % len(PROTOTYPES)]
        spec = sample_face_spec(1, "train", i, label, i)
        caption = write_caption(label, spec.aus, spec.unilateral_aus, np.random.default_rng(i))
        for sentence in (caption.global_, caption.summary, *caption.local):
            longest = max(longest, len(tokenizer.encode(sentence)) + 2)
    assert longest <= tokenizers.DEFAULT_CONTEXT_LENGTH


def test_captions_vary_in_wording(corpus):
    _, _, train, _ = corpus
    happy = [r for r in train if r["label"] == "happy"]
    assert len({r["global"] for r in happy}) >= 5
    assert len({r["summary"] for r in happy}) >= 5
    assert any("happiness" in r["global"] or "happy" in r["global"] for r in happy)
    compound = [r for r in train if r["label"] == "happily surprised"]
    assert compound and all("happily surprised" in r["global"] for r in compound)


def test_a_linear_classifier_learns_the_expressions(corpus):
    from sklearn.linear_model import LogisticRegression

    out, _, train, evaluation = corpus

    def features(root, records):
        rows = []
        for record in records:
            with Image.open(root / record["image"]) as image:
                pixels = np.asarray(image.convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float32)
            rows.append(((pixels - pixels.mean()) / (pixels.std() + 1e-6)).ravel())
        return np.stack(rows), np.array([BASIC_CLASSES.index(r["label"]) for r in records])

    basic_train = [r for r in train if r["label"] in BASIC_CLASSES]
    x_train, y_train = features(out, basic_train)
    x_eval, y_eval = features(out / "eval", evaluation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs stops before full convergence; accuracy is what counts
        model = LogisticRegression(max_iter=100, C=0.05).fit(x_train, y_train)
    accuracy = (model.predict(x_eval) == y_eval).mean()
    assert accuracy > 0.3, f"accuracy {accuracy:.2f} on held-out identities (chance {1 / len(BASIC_CLASSES):.2f})"


def test_cli_writes_the_corpus_and_preview(tmp_path):
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "data_prep.synthetic", "--output", str(out), "--num", "12", "--seed", "2", "--size", "48", "--eval-per-class", "2", "--workers", "1", "--format", "png", "--no-progress"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "12 training and 16 eval faces" in result.stdout
    with Image.open(out / "preview.png") as preview:
        assert preview.size == (8 * 96, 2 * (96 + 14))
    assert len(list((out / "images").glob("*.png"))) == 12
    assert len(_read_jsonl(out / "eval" / "manifest.jsonl")) == 16

    # Regenerating into a previous corpus replaces it; stale files do not survive.
    rerun = subprocess.run(command[:6] + ["6"] + command[7:], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert len(list((out / "images").glob("*.png"))) == 6


def test_cli_rejects_bad_input(tmp_path):
    base = [sys.executable, "-m", "data_prep.synthetic", "--no-progress"]
    bad = subprocess.run(base + ["--output", str(tmp_path / "x"), "--num", "-3"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "argument --num: must be a non-negative integer" in bad.stderr
    foreign = tmp_path / "user_data"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    refused = subprocess.run(base + ["--output", str(foreign), "--num", "4"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "not empty" in refused.stderr
    assert (foreign / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("args, message", [
    (("--size", "8"), "argument --size: must be an integer in [16, 1024], got '8'"),
    (("--size", "2000"), "argument --size: must be an integer in [16, 1024], got '2000'"),
    (("--seed", "-1"), "argument --seed: must be a non-negative integer, got '-1'"),
    (("--eval-per-class", "-1"), "argument --eval-per-class: must be a non-negative integer, got '-1'"),
    (("--workers", "-2"), "argument --workers: must be a non-negative integer, got '-2'"),
    (("--compound-fraction", "1.5"), "argument --compound-fraction: must be in [0, 1], got '1.5'"),
    (("--faces-per-identity", "0"), "argument --faces-per-identity: must be a positive integer, got '0'"),
    (("--jpeg-quality", "101"), "argument --jpeg-quality: must be an integer in [1, 100], got '101'"),
    (("--au-drop-probability", "1"), "argument --au-drop-probability: must be in [0, 1), got '1'"),
    (("--eval-per-class", "0", "--num", "0"), "nothing to generate: --num and --eval-per-class are both 0"),
])
def test_cli_names_the_option_of_a_bad_number(tmp_path, capsys, args, message):
    """The generator's checks name its arguments ("size must be ..."), which a command-line user
    never typed: the command names the option, in one line, with status 2, before writing."""
    with pytest.raises(SystemExit) as exit_:
        synthetic_cli.main(["--output", str(tmp_path / "out"), "--num", "4", "--no-progress", *args])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (("--size", "8"), "argument --size: must be an integer >= 16, got '8'"),
    (("--per-class", "0"), "argument --per-class: must be a positive integer, got '0'"),
    (("--compound-per-class", "0"), "argument --compound-per-class: must be a positive integer, got '0'"),
    (("--clips-per-class", "-1"), "argument --clips-per-class: must be a positive integer, got '-1'"),
    (("--frames", "0"), "argument --frames: must be a positive integer, got '0'"),
    (("--splits", "basic,foo"), "argument --splits: unknown splits ['foo'] in 'basic,foo'; "
                                "choose from ['basic', 'compound', 'video']"),
])
def test_benchmarks_cli_names_the_option_of_a_bad_value(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        synthetic_benchmarks_cli.main(["--output", str(tmp_path / "out"), "--no-progress", *args])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "out").exists()


def test_api_rejects_bad_arguments(tmp_path):
    """Library callers keep the messages that name the function's own arguments."""
    with pytest.raises(ValueError, match="image_format"):
        synthetic.generate_corpus(tmp_path / "a", 4, image_format="gif")
    with pytest.raises(ValueError, match=r"^size must be an integer in \[16, 1024\], got 8$"):
        synthetic.generate_corpus(tmp_path / "b", 4, size=8)
    with pytest.raises(ValueError, match=r"^frames must be an integer >= 1, got 0$"):
        generate_benchmarks(tmp_path / "c", frames=0)
    with pytest.raises(ValueError, match="unknown expression label 'smug'"):
        sample_aus("smug", np.random.default_rng(0))
