"""Evaluation protocols on hand-made features, where the right answer is known, and the metrics
against scikit-learn. No model, no JAX compile: these run in a few seconds."""
import dataclasses
import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from emocap_jax.data import class_orders, label_captions, pipeline
from emocap_jax.data.synthetic.faces import COMPOUND_CLASSES
from emocap_jax.evaluate import (au_detection, features, few_shot, leakage, linear_probe,
                                 metrics, multiple_choice, prompts, registry, report, retrieval,
                                 runner, zero_shot)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _clusters(num_classes=4, per_class=30, dim=16, noise=0.05, seed=0):
    """Well separated class clusters: features, labels, class centres."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(num_classes, dim)))
    labels = np.repeat(np.arange(num_classes), per_class)
    feats = _unit(centres[labels] + noise * rng.normal(size=(len(labels), dim)))
    return feats.astype(np.float32), labels, centres


# ----- metrics


def test_multilabel_f1_matches_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.random((60, 5)) < 0.3
    predictions = np.where(rng.random((60, 5)) < 0.7, labels, ~labels)
    predictions[:, 4] = False  # a label never predicted: F1 0, as sklearn's zero_division=0
    out = metrics.multilabel_report(labels, predictions, [f"AU{i}" for i in range(5)])
    expected = f1_score(labels, predictions, average=None, zero_division=0)
    np.testing.assert_allclose([v["f1"] for v in out["per_label"].values()], expected)
    assert out["mean_f1"] == pytest.approx(f1_score(labels, predictions, average="macro",
                                                    zero_division=0))


def test_recall_at_k_hand_computed():
    scores = np.array([[0.9, 0.1, 0.5],    # positive 0 ranked 1st
                       [0.8, 0.2, 0.7],    # positive 1 ranked 3rd
                       [0.5, 0.5, 0.5]])   # all tied: positive 2 ranked 3rd (stable order)
    out = metrics.recall_at_k(scores, np.eye(3, dtype=bool), ks=(1, 2, 3))
    assert out == {"R@1": pytest.approx(1 / 3), "R@2": pytest.approx(1 / 3), "R@3": 1.0}
    with pytest.raises(ValueError, match="at least one positive"):
        metrics.recall_at_k(scores, np.zeros((3, 3), bool))


def test_summarize_folds():
    assert metrics.summarize_folds([0.5, 0.7]) == {"mean": pytest.approx(0.6),
                                                   "std": pytest.approx(0.1), "num_folds": 2}


# ----- zero-shot


def test_zero_shot_modes_on_known_prompts():
    # Two classes, two templates each; image 0 sits on class 0's templates, image 1 on class 1's.
    prompt = np.array([[[1, 0, 0], [0.8, 0.6, 0]], [[0, 0, 1], [0, 0.6, 0.8]]], np.float32)
    images = np.array([[0.9, 0.3, 0], [0, 0.3, 0.9]], np.float32)
    for mode in ("embedding", "logits"):
        scores = zero_shot.zero_shot_scores(images, prompt, mode)
        assert scores.shape == (2, 2) and list(scores.argmax(1)) == [0, 1]
    # "logits" is the mean of the per-template cosines.
    expected = np.einsum("nd,ctd->nct", _unit(images), prompt).mean(-1)
    np.testing.assert_allclose(zero_shot.zero_shot_scores(images, prompt, "logits"), expected,
                               rtol=1e-6)
    # "embedding" compares with the normalised mean template.
    np.testing.assert_allclose(zero_shot.zero_shot_scores(images, prompt, "embedding"),
                               _unit(images) @ _unit(prompt.mean(1)).T, rtol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        zero_shot.zero_shot_scores(images, prompt, "vote")


def test_prompt_texts_and_descriptions():
    texts = zero_shot.prompt_texts(["anger", "fear"], ["a {}.", "b {}."])
    assert texts == [["a anger.", "b anger."], ["a fear.", "b fear."]]
    assert zero_shot.prompt_texts(["x"], ["{}"], ["desc x"], "description") == [["desc x"]]
    with pytest.raises(ValueError, match="one description per class"):
        zero_shot.prompt_texts(["x", "y"], ["{}"], ["only one"], "description")


# ----- linear probe and few-shot


def test_linear_probe_separable_is_perfect():
    feats, labels, _ = _clusters()
    train = np.arange(len(labels)) % 3 != 0
    out = linear_probe.linear_probe(feats[train], labels[train], feats[~train], labels[~train],
                                    ["a", "b", "c", "d"], seed=0)
    assert out["uar"] == 1.0 and out["war"] == 1.0
    assert out["C"] in linear_probe.DEFAULT_C_GRID
    assert len(out["predictions"]) == int((~train).sum())


def test_probe_picks_c_on_validation_and_prefers_smaller_on_ties():
    feats, labels, _ = _clusters(num_classes=2)
    fit = linear_probe.fit_probe(feats[::2], labels[::2], feats[1::2], labels[1::2], 2,
                                 c_grid=(100.0, 10.0))
    # Both C separate the clusters perfectly: the stronger regularisation (smaller C) wins.
    assert fit.validation_uar == {10.0: 1.0, 100.0: 1.0} and fit.C == 10.0


def _rare_class_split():
    """Two frequent classes and a rare one (30 of 1,230) that overlaps the first: features,
    labels and a ~30% test mask."""
    rng = np.random.default_rng(0)
    counts = (600, 600, 30)
    centres = np.array([[2.0, 0.0], [-2.0, 0.0], [1.2, 0.8]])
    x = np.concatenate([c + rng.normal(size=(n, 2)) for c, n in zip(centres, counts)])
    y = np.repeat(np.arange(3), counts)
    return x, y, rng.random(len(y)) < 0.3


def test_balanced_probe_recalls_a_rare_class_the_unweighted_fit_ignores():
    """FER2013's situation in small: a rare class that overlaps a frequent one. The unweighted fit
    (what it did before) never predicts it; the class-balanced default does, and scores a higher
    UAR, while balanced=False still gives the unweighted fit."""
    x, y, test = _rare_class_split()
    names = ["frequent", "other", "rare"]
    unweighted = linear_probe.linear_probe(x[~test], y[~test], x[test], y[test], names,
                                           balanced=False)
    balanced = linear_probe.linear_probe(x[~test], y[~test], x[test], y[test], names)
    assert balanced["balanced"] and not unweighted["balanced"]
    assert unweighted["per_class_recall"]["rare"] == 0.0
    assert balanced["per_class_recall"]["rare"] > 0.3
    assert balanced["uar"] > unweighted["uar"] + 0.05


def test_subject_independent_folds_keep_subjects_apart():
    labels = np.tile(np.arange(3), 40)
    groups = np.repeat([f"S{i:03d}" for i in range(20)], 6)
    folds = linear_probe.cv_folds(labels, groups, 5, seed=0)
    assert len(folds) == 5
    tested = np.concatenate([te for _, te in folds])
    assert sorted(tested.tolist()) == list(range(len(labels)))  # every example tested once
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])
    with pytest.raises(ValueError, match="subjects cannot fill"):
        linear_probe.cv_folds(labels, groups, 25)


def test_folds_the_classes_cannot_fill_are_refused_naming_each_class_and_its_count():
    names = ["anger", "joy", "calm"]
    labels = np.array([0, 0, 0, 1, 1, 2])
    with pytest.raises(linear_probe.TooFewForFolds,
                       match=r"5 stratified folds need a class with at least 5 examples, but "
                             r"every class has fewer \(examples per class: anger 3, joy 2, "
                             r"calm 1\); use at most 3 folds") as error:
        linear_probe.cv_folds(labels, None, 5, class_names=names)
    assert error.value.most == 3 and isinstance(error.value, ValueError)
    folds = linear_probe.cv_folds(labels, None, 3, class_names=names)
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(len(labels)))
    # One class large enough is all scikit-learn needs: the small ones sit in some folds only.
    assert len(linear_probe.cv_folds(np.array([0] * 5 + [1, 2]), None, 5)) == 5
    with pytest.raises(linear_probe.TooFewForFolds, match=r"label 0 1, label 1 1\); too few"):
        linear_probe.cv_folds(np.array([0, 1]), None, 2)
    groups = np.repeat(["S1", "S2", "S3"], 2)
    with pytest.raises(linear_probe.TooFewForFolds,
                       match="3 subjects cannot fill 4 folds that keep them apart; use at most 3"):
        linear_probe.cv_folds(np.tile([0, 1], 3), groups, 4)


def test_the_probes_c_carve_out_keeps_subjects_apart():
    """The validation part that chooses C shares no subject with the part the probe is fitted
    on, and the report says the carve-out was by subject."""
    feats, labels, _ = _clusters(per_class=30)
    groups = np.asarray([f"S{i % 12:02d}" for i in range(len(labels))])
    fit, val = linear_probe.validation_split(labels, groups, 0.2, seed=0)
    assert len(val) and not set(groups[fit]) & set(groups[val])
    names = list("abcd")
    out = linear_probe.linear_probe(feats, labels, feats[:8], labels[:8], names, groups, seed=0)
    assert out["validation_by_subject"] is True
    out = linear_probe.linear_probe(feats, labels, feats[:8], labels[:8], names, seed=0)
    assert out["validation_by_subject"] is False
    blank = groups.copy()
    blank[5] = ""
    with pytest.raises(linear_probe.PartlyGrouped, match="1 of 120 records have no group"):
        linear_probe.linear_probe(feats, labels, feats[:8], labels[:8], names, blank)


def test_folds_refuse_a_benchmark_whose_subjects_are_partly_missing():
    # One blank subject used to drop every group, and frames of one subject then sat on both
    # sides of a fold without a word.
    labels = np.tile(np.arange(3), 40)
    groups = np.repeat([f"S{i:03d}" for i in range(20)], 6)
    groups[7] = ""
    with pytest.raises(ValueError, match="1 of 120 records have no group"):
        linear_probe.cv_folds(labels, groups, 5)
    with pytest.raises(ValueError, match="1 of 120 records have no group"):
        linear_probe.validation_split(labels, groups)
    # A benchmark without subjects (every group blank) folds by label alone.
    folds = linear_probe.cv_folds(labels, np.full(len(labels), ""), 5, seed=0)
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(len(labels)))


def test_train_test_copies_count_test_rows_whose_digest_is_in_training():
    d = np.arange(5 * 16, dtype=np.uint8).reshape(5, 16)
    # Test rows 0 and 2 are training rows 1 and 3; rows 1 and 3, one image twice, are not.
    assert leakage.train_test_copies(d[[1, 3, 4]], d[[1, 0, 3, 0]]) == 2
    assert leakage.train_test_copies(d[[1, 3, 4]], d[[0, 2]]) == 0
    assert leakage.train_test_copies(d[:0], d) == 0


def test_few_shot_sampling_and_separable_accuracy():
    feats, labels, _ = _clusters(per_class=40)
    shots = few_shot.sample_shots(labels, 4, seed=3)
    assert np.bincount(labels[shots]).tolist() == [4, 4, 4, 4]
    assert np.array_equal(shots, few_shot.sample_shots(labels, 4, seed=3))  # deterministic
    excluded = few_shot.sample_shots(labels, 4, seed=3, exclude=shots)
    assert not set(shots) & set(excluded)
    train = np.arange(len(labels)) % 2 == 0
    out = few_shot.few_shot(feats[train], labels[train], feats[~train], labels[~train],
                            list("abcd"), shots=(1, 4), seeds=(0, 1))
    for k in (1, 4):
        assert out["shots"][k]["uar"]["mean"] == 1.0
        assert [r["num_support"] for r in out["shots"][k]["runs"]] == [4 * k, 4 * k]


def test_few_shot_chooses_c_on_subjects_outside_the_support_set(monkeypatch):
    # Four photos per subject: a validation draw that takes other photos of the support set's
    # people chooses C on faces the probe has as good as seen.
    feats, labels, _ = _clusters(per_class=40)
    subjects = np.array([f"s{i // 4}" for i in range(len(labels))])  # labels come in class runs
    drawn = []
    real_fit = few_shot.fit_probe

    def spy(fit_x, fit_y, val_x, *args, **kwargs):
        rows = lambda x: [int(np.flatnonzero((feats == r).all(1))[0]) for r in x]  # noqa: E731
        drawn.append((rows(fit_x), rows(val_x)))
        return real_fit(fit_x, fit_y, val_x, *args, **kwargs)

    monkeypatch.setattr(few_shot, "fit_probe", spy)
    shared = {}
    for groups in (None, subjects):
        drawn.clear()
        out = few_shot.few_shot(feats, labels, feats, labels, list("abcd"), shots=(2, 4),
                                seeds=(0, 1, 2), train_groups=groups)
        shared[groups is None] = sum(len(set(subjects[s]) & set(subjects[v])) for s, v in drawn)
        assert all(r["validation_by_subject"] == (groups is not None)
                   for k in (2, 4) for r in out["shots"][k]["runs"])
        assert all(r["C_chosen_on_validation"] for k in (2, 4) for r in out["shots"][k]["runs"])
    assert shared[True] > 0 and shared[False] == 0
    # Blank subjects are no subjects: the draw is the plain one.
    blank = few_shot.few_shot(feats, labels, feats, labels, list("abcd"), shots=(2,), seeds=(0,),
                              train_groups=np.full(len(labels), ""))
    assert not blank["shots"][2]["runs"][0]["validation_by_subject"]


def test_few_shot_follows_the_balanced_setting_when_a_class_is_short():
    # The linear probe's rare-class case: at 128 shots the rare class has ~21 faces in the
    # support set against 128, so the unweighted fit never predicts it; `--unbalanced-probe`
    # used to reach only the linear probe.
    x, y, test = _rare_class_split()
    out = {b: few_shot.few_shot(x[~test], y[~test], x[test], y[test], ["f", "o", "r"],
                                shots=(128,), seeds=(0, 1), balanced=b)["shots"][128]
           for b in (True, False)}
    for b in (True, False):
        assert [r["balanced"] for r in out[b]["runs"]] == [b, b]
    rare_hits = {b: [np.asarray(r["confusion_matrix"])[2, 2] for r in out[b]["runs"]]
                 for b in (True, False)}
    assert rare_hits[False] == [0, 0] and min(rare_hits[True]) > 0
    assert out[True]["uar"]["mean"] > out[False]["uar"]["mean"] + 0.05


# ----- AU detection, retrieval, multiple choice, compound


def test_au_labels_scores_and_f1_against_sklearn():
    annotations = [{"AU1": 0.8, "AU12": 0.3}, {"AU01": 0.1}, {}, {"12": 0.9}]
    labels = au_detection.au_labels(annotations, [1, 12])
    assert labels.tolist() == [[True, True], [True, False], [False, False], [False, True]]
    assert au_detection.au_labels(annotations, [1, 12], threshold=0.2)[1].tolist() == [False,
                                                                                     False]
    assert au_detection.codes_in(annotations) == [1, 12]
    # Intensity 0 is an absent AU; a threshold below it would make it present.
    for threshold in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="AU threshold must be >= 0"):
            au_detection.au_labels([{"AU1": 0.0}], [1], threshold)
    # Positive prompt on axis 0/1, negative on axis 2/3: images pointing at the positive detect.
    positive, negative = np.eye(4)[:2], np.eye(4)[2:]
    images = np.array([[1, 1, 0, 0], [1, 0, 0, 1], [0, 0, 1, 1], [0, 1, 1, 0]], np.float32)
    scores = au_detection.au_scores(images, positive, negative)
    assert (scores > 0).tolist() == [[True, True], [True, False], [False, False], [False, True]]
    report = au_detection.au_detection_report(labels, scores, [1, 12])
    assert report["mean_f1"] == 1.0
    rng = np.random.default_rng(0)
    noisy = rng.normal(size=(4, 2))
    report = au_detection.au_detection_report(labels, noisy, [1, 12])
    assert report["mean_f1"] == pytest.approx(f1_score(labels, noisy > 0, average="macro",
                                                       zero_division=0))


def test_retrieval_identical_embeddings_are_perfect():
    feats, _, _ = _clusters(num_classes=12, per_class=1, dim=32, noise=0.0)
    out = retrieval.retrieval_metrics(feats, feats)
    assert out["image_to_text"] == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0}
    assert out["text_to_image"]["R@1"] == 1.0 and out["mean_recall"] == 1.0
    # Shifting the captions by one breaks every pair at rank 1.
    assert retrieval.retrieval_metrics(feats, np.roll(feats, 1, axis=0))["image_to_text"][
        "R@1"] == 0.0


def test_retrieval_counts_an_identical_caption_as_a_match():
    # Faces 0, 2 and 3 share one caption word for word; a model that embeds each face exactly as
    # its caption is perfect, but with only the own copy counted the twins after the first lose
    # the index tie at rank 1.
    captions = [["Sad."], ["Happy."], ["Sad."], ["Sad."], ["Angry."]]
    table = {"Sad.": [1.0, 0.0, 0.0], "Happy.": [0.0, 1.0, 0.0], "Angry.": [0.0, 0.0, 1.0]}
    text = retrieval.caption_embeddings(lambda t: np.array([table[s] for s in t]), captions)
    out = retrieval.retrieval_metrics(text, text, captions=captions)
    assert out["mean_recall"] == 1.0 and out["num_distinct_captions"] == 3
    strict = retrieval.retrieval_metrics(text, text)
    assert strict["image_to_text"]["R@1"] == pytest.approx(3 / 5)   # faces 2 and 3 miss
    # Against a brute-force count on noisy features: a query hits at k when an item with its
    # caption is among its k best (ties to the lower index, as recall_at_k documents).
    rng = np.random.default_rng(0)
    images = rng.normal(size=(5, 3))
    out = retrieval.retrieval_metrics(images, text, ks=(1, 2), captions=captions)
    scores = images @ text.T
    for k in (1, 2):
        hits = [any(captions[j] == captions[i]
                    for j in sorted(range(5), key=lambda j: (-scores[i, j], j))[:k])
                for i in range(5)]
        assert out["image_to_text"][f"R@{k}"] == pytest.approx(np.mean(hits))
        hits = [any(captions[j] == captions[i]
                    for j in sorted(range(5), key=lambda j: (-scores[j, i], j))[:k])
                for i in range(5)]
        assert out["text_to_image"][f"R@{k}"] == pytest.approx(np.mean(hits))
    with pytest.raises(ValueError, match="4 captions for 5"):
        retrieval.retrieval_metrics(images, text, captions=captions[:4])


def test_caption_sentences_and_mean_embedding():
    record = features.RecordInfo("a", "happy", 1, "g", {}, "Global.", ["L1.", " "], "Sum.", 1)
    assert retrieval.caption_sentences(record, "full") == ["Global.", "L1.", "Sum."]
    assert retrieval.caption_sentences(record, "summary") == ["Sum."]
    table = {"x": [1.0, 0.0], "y": [0.0, 1.0]}
    emb = retrieval.caption_embeddings(lambda texts: np.array([table[t] for t in texts]),
                                       [["x", "y"], ["y"]])
    np.testing.assert_allclose(emb, [[2 ** -0.5, 2 ** -0.5], [0, 1]], rtol=1e-6)


def test_multiple_choice_loading_choosing_and_accuracy(tmp_path):
    path = tmp_path / "q.jsonl"
    lines = [{"qid": "1", "id": "img0", "question": "Q?", "options": ["a", "b"], "answer": "B",
              "task": "t1"},
             {"qid": "2", "id": "img1", "options": ["a", "b", "c"], "answer": 0, "task": "t2"}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    questions = multiple_choice.load_questions(path)
    assert [q.answer for q in questions] == [1, 0]
    assert multiple_choice.option_texts(questions[0], "{question} {option}") == ["Q? a", "Q? b"]
    images = np.array([[0, 1], [1, 0]], np.float32)
    options = [np.array([[1, 0], [0, 1]]), np.array([[1, 0], [0, 1], [0.6, 0.8]])]
    choices = multiple_choice.choose(images, options)
    assert choices.tolist() == [1, 0]
    out = multiple_choice.accuracy_report(choices, questions)
    assert out["accuracy"] == 1.0 and out["chance"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert out["tasks"] == {"t1": {"accuracy": 1.0, "num_questions": 1},
                            "t2": {"accuracy": 1.0, "num_questions": 1}}
    path.write_text(json.dumps({"id": "x", "options": ["a", "b"], "answer": 5}) + "\n")
    with pytest.raises(ValueError, match=r"q.jsonl:1: answer 5"):
        multiple_choice.load_questions(path)
    # Two "answer" keys: json keeps the last, so which option is right would be a guess.
    path.write_text('{"id": "x", "options": ["a", "b"], "answer": 0, "answer": 1}\n')
    with pytest.raises(ValueError, match=r"q.jsonl:1: key 'answer' appears more than once"):
        multiple_choice.load_questions(path)


def _clip_dataset(path, metadata):
    """A one-clip dataset of 4 frames whose metadata.json holds `metadata` (besides the writer's)."""
    from emocap_jax.data import example_codec, shard_writer  # only the frame-count tests write data

    with shard_writer.ShardedRecordWriter(path, 1, metadata=metadata, classes=["a"]) as writer:
        writer.add(example_codec.FaceRecord(id="clip", images=[b"x"] * 4, label="a", label_id=0))
    return str(path)


def test_video_frames_without_frames_per_record_warn_and_keep_the_request(tmp_path):
    """A video dataset written outside data_prep has no metadata `frames_per_record`. Before, its
    clips were evaluated on one frame each without a word; now the default 16 frames are sampled
    with a warning naming the folder, and an explicit --frames is taken as it is."""
    dfew = registry.get("dfew")
    plain = _clip_dataset(tmp_path / "plain", None)
    with pytest.warns(UserWarning, match=f"{plain}: metadata.json has no 'frames_per_record'"):
        assert runner._num_frames(dfew, plain, None) == runner.DEFAULT_VIDEO_FRAMES
    assert runner._num_frames(dfew, plain, 8) == 8
    # data_prep's record of the stored count caps the request; still images need no count.
    stored = _clip_dataset(tmp_path / "stored", {"frames_per_record": 4})
    assert runner._num_frames(dfew, stored, None) == 4
    assert runner._num_frames(dfew, stored, 2) == 2
    assert runner._num_frames(registry.get("rafdb"), plain, None) is None
    bad = _clip_dataset(tmp_path / "bad", {"frames_per_record": "16"})
    with pytest.raises(ValueError, match="bad/metadata.json: 'frames_per_record' must be"):
        runner._num_frames(dfew, bad, None)


class _CaseBlindEncoder:
    """Text embeddings that depend on the lower-cased text only, as with CLIP's tokenizer: "A face
    showing anger" and "a face showing anger" tokenize, and so embed, alike. Image i is the
    embedding of IMAGE_TEXTS[i]."""

    def __init__(self, image_texts):
        self.image_texts = dict(image_texts)

    def tokenize(self, texts):
        return np.asarray([[sum(map(ord, w)) for w in t.lower().split()][:6] +
                           [0] * max(0, 6 - len(t.split())) for t in texts], np.int32)

    def texts(self, texts):
        rows = [np.random.default_rng(list(map(int, row))).normal(size=8)
                for row in self.tokenize(texts)]
        return _unit(np.asarray(rows, np.float32))

    def images(self, data_dir, num_frames=None):
        ids = list(self.image_texts)
        return features.ImageFeatures(self.texts(list(self.image_texts.values())),
                                      np.full(len(ids), -1, np.int32), ids, data_dir)


def test_multiple_choice_skips_and_names_questions_whose_options_encode_alike(tmp_path):
    """Two options with the same tokens tie exactly, and argmax would count the question right
    when the answer is the first copy and wrong when it is the second: such a question is skipped
    with a reason and named, whichever copy is the answer."""
    encoder = _CaseBlindEncoder({"img": "a face showing anger"})
    spec = registry.get("synthetic")
    split = runner.Split(None, str(tmp_path), None)
    tokens = encoder.tokenize(["a face showing anger", "A face showing anger", "joy"])
    assert multiple_choice.same_token_options(tokens) == [[0, 1]]
    results = []
    for answer in (0, 1):
        path = tmp_path / f"q{answer}.jsonl"
        path.write_text("\n".join(json.dumps(q) for q in [
            {"qid": "tied", "id": "img", "options": ["a face showing anger",
                                                       "A face showing anger",
                                                       "a face showing joy"], "answer": answer},
            {"qid": "fine", "id": "img", "options": ["a face showing joy",
                                                       "a face showing anger"], "answer": 1},
        ]) + "\n")
        result = runner.run_multiple_choice(encoder, spec, [split],
                                            runner.Options(questions=str(path)))
        results.append(result["report"])
    for fold in results:
        assert fold["accuracy"] == 1.0 and fold["num_questions"] == 1
        assert fold["num_skipped"] == 1
        assert fold["skipped_by_reason"] == {multiple_choice.DUPLICATE_OPTIONS: 1}
        assert [d["qid"] for d in fold["duplicate_options"]] == ["tied"]
        assert "options 0, 1 ('a face showing anger')" in fold["duplicate_options"][0]["reason"]
    markdown = "\n".join(report._multiple_choice_details(results[0]))
    assert "options that encode the same text (not scored): tied (options 0, 1" in markdown
    only_tied = tmp_path / "tied.jsonl"
    only_tied.write_text(json.dumps({"qid": "t", "id": "img", "options": ["x", "X"],
                                     "answer": 0}) + "\n")
    with pytest.raises(ValueError, match="encode the same text; there is nothing to score"):
        runner.run_multiple_choice(encoder, spec, [split],
                                   runner.Options(questions=str(only_tied)))


def test_compound_partial_match_and_prompt_words():
    classes = ["happily surprised", "sadly angry", "fearfully surprised"]
    # truth 0 predicted 2 share "surprise"; truth 1 predicted 0 share nothing.
    assert runner.compound_partial_match([0, 1, 2], [2, 0, 2], classes) == pytest.approx(2 / 3)
    assert prompts.prompt_word("anger_disgust") == "angry and disgusted"
    assert prompts.compound_prompt_word("happily surprised") == "happily surprised"
    assert prompts.prompt_word("Angry") == "anger" and prompts.prompt_word("happy") == "happiness"
    assert "wrinkled nose" in prompts.description("disgust")
    assert "blend of happiness and surprise" in prompts.description("happily surprised")
    assert prompts.au_prompts(12, prompts.AU_POSITIVE_TEMPLATES, True)[0].startswith(
        "The lip corners are pulled up")
    with pytest.raises(ValueError, match="AU99"):
        prompts.au_prompts(99, prompts.AU_POSITIVE_TEMPLATES, True)


# ----- registry


def test_registry_class_orders_are_the_converters():
    from data_prep.benchmark_formats import READERS as CONVERTERS
    from data_prep.benchmark_formats import acted_video, ckplus, fer, folders, rafdb
    from data_prep.benchmark_formats import video_lists

    expected = {
        "rafdb": rafdb.BASIC_CLASSES, "rafdb-compound": rafdb.COMPOUND_CLASSES,
        "ferplus": fer.FERPLUS_CLASSES, "fer2013": fer.FER2013_CLASSES,
        "ckplus": ckplus.CK_EMOTIONS, "ckplus48": folders.CKPLUS48_CLASSES,
        "jaffe": ckplus.JAFFE_CLASSES, "sfew": folders.SFEW_CLASSES, "afew": folders.AFEW_CLASSES,
        "dfew": video_lists.DFEW_CLASSES, "ferv39k": video_lists.FERV39K_CLASSES,
        "mafw": video_lists.MAFW_CLASSES, "crema-d": acted_video.CREMA_CLASSES,
        "ravdess": acted_video.RAVDESS_CLASSES, "enterface05": acted_video.ENTERFACE_CLASSES,
        "affectnet-7": ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"),
        "affectnet-8": ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger",
                        "contempt"),
    }
    for name, classes in expected.items():
        spec = registry.get(name)
        assert spec.classes == tuple(classes), name
        assert spec.converter in CONVERTERS, name
        assert len(spec.prompt_words) == len(spec.descriptions) == len(classes)
    for name in ("dfew", "mafw", "mafw-compound"):
        assert registry.get(name).official_folds == (1, 2, 3, 4, 5)
    assert registry.get("ckplus").cv_folds == 10
    # Every benchmark of the paper, with its paper numbers, in the paper's table.
    table = {b.name: (b.paper.emocapclip, b.paper.flip) for b in registry.paper_table()}
    assert len(table) == 21  # 20 benchmarks + CK+48 with CK+'s numbers
    assert table["rafdb"] == (62.8, 45.1) and table["dfew"] == (42.2, 27.5)
    assert table["faba-au"] == (57.0, 51.8) and table["facexbench"] == (69.9, 58.5)
    with pytest.raises(KeyError, match="unknown benchmark"):
        registry.get("nope")


def test_one_table_for_converters_and_evaluation(capsys):
    from data_prep import benchmarks
    from data_prep.benchmark_formats import READERS

    # The converters CLI converts exactly the registry's layouts, in the registry's order.
    assert list(READERS) == list(registry.LAYOUTS)
    assert benchmarks.main(["--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(registry.LAYOUTS)
    # Every benchmark with a converter reads its splits, folds and video flag off its layout;
    # one release can feed several benchmarks.
    assert registry.get("faba-emotion").layout is registry.get("faba-au").layout \
        is registry.LAYOUTS["faba-bench"]
    assert registry.get("dfew").layout.folds == registry.get("dfew").official_folds
    assert registry.get("synthetic").layout is None
    spec = registry.get("sfew")
    with pytest.raises(ValueError, match="splits .* are not all among layout sfew's"):
        dataclasses.replace(spec, test_split="test")
    with pytest.raises(ValueError, match="differ from layout dfew's"):
        dataclasses.replace(registry.get("dfew"), official_folds=())
    with pytest.raises(ValueError, match="is none of the layouts"):
        dataclasses.replace(spec, converter="sfew-3")


def test_compound_prompt_words_ignore_the_labels_capitalisation():
    """A class folder "Happily Surprised" trains on and is scored with the text the synthetic
    corpus and the RAF-DB compound prompts use, "happily surprised"."""
    for label in sorted(set(COMPOUND_CLASSES) | set(class_orders.RAFDB_COMPOUND)):
        for spelling in (label.title(), label.upper(), " " + label.replace(" ", "  ") + " "):
            assert prompts.prompt_word(spelling) == label, spelling
            assert prompts.compound_prompt_word(spelling) == label, spelling
            assert prompts.description(spelling) == prompts.description(label)
            assert [label_captions.global_caption(spelling, t)
                    for t in range(len(label_captions.TEMPLATES))] == \
                [label_captions.global_caption(label, t)
                 for t in range(len(label_captions.TEMPLATES))]
    folder = registry.get("imagefolder").resolve(["Happily Surprised", "Happy", "Pain"])
    assert folder.prompt_words == ("happily surprised", "happiness", "Pain")


def test_registry_resolve_checks_the_dataset_class_order():
    spec = registry.get("rafdb")
    assert spec.resolve(list(spec.classes)).classes == spec.classes
    with pytest.raises(ValueError, match="is not benchmark rafdb's"):
        spec.resolve(sorted(spec.classes))
    generic = registry.get("mafw-compound").resolve(["anger", "anger_disgust"])
    assert generic.prompt_words == ("angry", "angry and disgusted")
    with pytest.raises(ValueError, match="records none"):
        registry.get("imagefolder").resolve(None)


# ----- sharded evaluation bookkeeping (multi-process layout, no devices needed)


@pytest.mark.parametrize("num_records,local_batch,processes", [(37, 5, 3), (8, 3, 2), (1, 4, 4)])
def test_record_indices_cover_every_record_once(num_records, local_batch, processes):
    blocks, num_batches = pipeline.eval_blocks(num_records, local_batch, processes)
    seen = np.zeros(num_records, int)
    for b in range(num_batches):
        index, valid = features.record_indices(blocks, b, local_batch)
        assert len(index) == local_batch * processes
        np.add.at(seen, index[valid], 1)
    assert seen.tolist() == [1] * num_records


# ----- report files


def test_report_writes_table_confusion_png_and_csv(tmp_path):
    cm = [[3, 1], [0, 4]]
    result = {"benchmark": "rafdb", "title": "RAF-DB", "group": "static FER",
              "protocol": "zero_shot", "metric": "uar", "value": 0.875, "checkpoint": "ck",
              "data": "d", "devices": 8, "seconds": 1.0, "folds": [{}],
              "report": {"num_examples": 8, "uar": 0.875, "war": 0.875, "macro_f1": 0.87,
                         "classes": ["a", "b"], "per_class_recall": {"a": 0.75, "b": 1.0},
                         "confusion_matrix": cm},
              "predictions": [{"id": "x", "label": "a", "prediction": "b"}]}
    written = report.write_result(tmp_path, result)
    assert written["confusion_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(written["confusion_json"].read_text())["counts"] == cm
    assert written["predictions"].read_text().splitlines() == ["id,label,prediction", "x,a,b"]
    other = dict(result, checkpoint="other", benchmark="jaffe", title="JAFFE")
    report.write_result(tmp_path, other)
    out = report.write_report(tmp_path, "ck")
    assert out["num_results"] == 1 and len(out["left_out"]) == 1
    md = out["markdown"].read_text()
    assert "| static FER | RAF-DB | zero_shot | UAR | 87.5 | 62.8 | 45.1 |" in md
    assert "| static FER | JAFFE | zero_shot | UAR | — | 54.4 | 40.6 |" in md
    rows = out["csv"].read_text().splitlines()
    assert rows[1].startswith("static FER,rafdb,RAF-DB,zero_shot,uar,87.50,62.80,45.10,8,1,ck")
