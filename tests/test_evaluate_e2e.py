"""The evaluation suite end to end with a tiny random-init model on 8 simulated devices: every
protocol on the synthetic benchmark splits, the command line, `--mode=eval`, padded sharded
feature extraction, and a subject-independent linear probe on CK+48 (when ../shared/data is there).

No training: a random model gives chance-level numbers, which is all the plumbing needs. One tiny
model, one encoder and one set of synthetic splits serve the whole module, since JAX compiles are
what costs time here.
"""
import json
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

import emocap_jax
from emocap_jax import params_io, sharding
from emocap_jax.evaluate import registry, report, runner
from emocap_jax.data import example_codec, shard_writer
from emocap_jax.data.source import ShardedTFRecordSource
from emocap_jax.evaluate.features import Encoder, read_records
from tests.conftest import REPO_ROOT

BATCH = 12  # rounded up to 16 on 8 devices: the synthetic splits never fill the last batch


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from configs import tiny
    from emocap_jax.config_utils import clip_config
    from emocap_jax.models.clip import init_params
    from emocap_jax.tokenizers import get_tokenizer

    config = clip_config(tiny.get_config())
    params = init_params(config, jax.random.PRNGKey(0))
    tokenizer = get_tokenizer("clip", config.text.context_length)
    path = tmp_path_factory.mktemp("tiny") / "export"
    params_io.save_params(path, params, config, tokenizer.to_config(), {"layout": "test"})
    return path


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from emocap_jax.evaluate.synthetic_benchmarks import generate_benchmarks

    root = tmp_path_factory.mktemp("synthetic_bench")
    generate_benchmarks(root, seed=0, per_class=5, compound_per_class=4, clips_per_class=3,
                        frames=4, size=40, num_shards=3, progress=False)
    return root


@pytest.fixture(scope="module")
def mesh():
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))
    assert mesh.devices.size == 8
    return mesh


@pytest.fixture(scope="module")
def encoder(tiny_export, mesh):
    return Encoder.load(tiny_export, mesh=mesh, batch_size=BATCH)


@pytest.fixture(scope="module")
def single_device_encoder(tiny_export):
    return Encoder.load(tiny_export, batch_size=5)  # the default mesh: one device


FAST = runner.Options(batch_size=BATCH, shots=(1, 2), seeds=(0, 1))


@pytest.mark.parametrize("name,protocol", [
    ("synthetic", "zero_shot"), ("synthetic", "linear_probe"), ("synthetic", "few_shot"),
    ("synthetic", "au_detection"), ("synthetic", "retrieval"), ("synthetic", "multiple_choice"),
    ("synthetic", "grounding"), ("synthetic-compound", "compound"), ("synthetic-video", "video"),
    ("synthetic-video", "linear_probe"),
])
def test_every_protocol_runs_on_the_synthetic_splits(encoder, bench, tmp_path, name, protocol):
    # (not "benchmark": pytest-benchmark, when installed, owns that fixture name)
    result = runner.run(encoder, name, protocol, bench, FAST)
    assert result["benchmark"] == name and result["protocol"] == protocol
    assert 0.0 <= result["value"] <= 1.0
    spec = registry.get(name)
    num = {"synthetic": 40, "synthetic-compound": 24, "synthetic-video": 24}[name]
    if protocol in ("zero_shot", "compound", "video", "linear_probe"):
        pooled = result["report"]
        assert pooled["num_examples"] == num  # every face tested exactly once (over all folds)
        assert pooled["classes"] == list(spec.classes)
        assert sorted(p["id"] for p in result["predictions"]) == sorted(
            r.id for r in read_records(result["splits"][0]["test"]))
    if protocol == "linear_probe":
        folds = result["folds"]
        assert len(folds) == spec.cv_folds
        groups = {r.id: r.group for r in read_records(result["splits"][0]["test"])}
        for fold in folds:  # subject-independent: a test subject is never a training subject
            train_ids = [p["id"] for p in result["predictions"] if p["fold"] != fold["fold"]]
            assert not set(fold["test_groups"]) & {groups[i] for i in train_ids}
    if protocol == "video":
        assert result["folds"][0]["num_frames"] == 4 and "single_frame" in result
    if protocol == "compound":
        assert result["folds"][0]["partial_match"] is not None
    if protocol == "grounding":  # every face: scored, or relaxed (one sentence, no region)
        assert result["report"]["num_faces"] + result["report"]["skipped_sentences"] == num
        assert {p["id"] for p in result["predictions"]} <= {r.id for r in read_records(
            result["splits"][0]["test"])}
    if protocol == "few_shot":
        assert set(result["shots"]) == {1, 2} and result["metric"] == "uar@2-shot"
        # The report says what its ± spans: every draw (folds x seeds), not the fold means.
        report.write_result(tmp_path, result)
        report.write_report(tmp_path, encoder.description)
        folds = len(result["folds"])
        assert (f"mean ± std over the runs of each row ({folds} folds × the seeds: "
                f"{2 * folds} at 1-shot, {2 * folds} at 2-shot)"
                in (tmp_path / "report.md").read_text())
    if protocol == "au_detection":
        assert result["folds"][0]["aus"] == [f"AU{c}" for c in spec.aus]
    if protocol == "retrieval":
        fold = result["folds"][0]
        assert fold["num_examples"] == num and set(fold["image_to_text"]) == {"R@1", "R@5",
                                                                             "R@10"}
    if protocol == "multiple_choice":
        fold = result["folds"][0]
        assert set(fold["tasks"]) == {"emotion", "action_unit"} and fold["num_questions"] > num
    written = report.write_result(tmp_path, result)
    assert written["result"].is_file()
    assert ("confusion_png" in written) == (protocol in ("zero_shot", "compound", "video",
                                                         "linear_probe"))


def test_zero_shot_modes_and_prompt_override(encoder, bench, tmp_path):
    spec = registry.get("synthetic")
    for mode in ("logits", "description"):
        options = runner.Options(batch_size=BATCH, zero_shot_mode=mode)
        result = runner.run(encoder, "synthetic", "zero_shot", bench, options)
        assert result["report"]["num_examples"] == 40
        report.write_result(tmp_path / mode, result)
        markdown = report.write_report(tmp_path / mode, result["checkpoint"])["markdown"].read_text()
        # The result and report say what scored the classes: descriptions replace the prompt
        # words and templates in mode "description", which therefore are not listed.
        if mode == "description":
            assert result["prompts"] == {"mode": "description",
                                         "descriptions": list(spec.descriptions)}
            assert (f"- prompts (description): one description per class "
                    f"({len(spec.classes)}, texts in the results json); no prompt words or "
                    "templates") in markdown
        else:
            assert result["prompts"] == {"mode": "logits", "words": list(spec.prompt_words),
                                         "templates": list(spec.templates)}
            assert (f"- prompts (logits): words {', '.join(spec.prompt_words)}; "
                    f"{len(spec.templates)} templates") in markdown
    with pytest.raises(ValueError, match="3 prompt words for 8 classes"):
        runner.run(encoder, "synthetic", "zero_shot", bench,
                   runner.Options(batch_size=BATCH, prompt_words=("a", "b", "c")))
    with pytest.raises(ValueError, match="supports"):
        runner.run(encoder, "synthetic", "video", bench, FAST)


def _subset_dataset(src, dst, count, num_shards):
    """The first `count` records of a dataset, rewritten into `num_shards` shards."""
    from emocap_jax.data import example_codec, shard_writer
    from emocap_jax.data.source import ShardedTFRecordSource

    source = ShardedTFRecordSource(shard_writer.shard_paths(src))
    classes = shard_writer.load_metadata(src)["classes"]
    with shard_writer.ShardedRecordWriter(dst, num_shards, classes=classes) as writer:
        for i in range(count):
            writer.add(example_codec.decode_record(source[i]))
    return dst


@pytest.mark.parametrize("count,batch_size", [(13, 12), (40, 20), (3, 5)])
def test_sharded_padded_eval_counts_every_example_once(encoder, single_device_encoder, bench,
                                                       tmp_path, count, batch_size):
    data = _subset_dataset(bench / "basic", tmp_path / "subset", count, num_shards=3)
    on_mesh = Encoder(encoder.params, encoder.config, encoder.tokenizer, encoder.mesh,
                      batch_size=batch_size)
    assert count % on_mesh.global_batch  # the last batch is padded
    sharded = on_mesh.images(data)
    ids = [r.id for r in read_records(data)]
    assert sharded.ids == ids and len(set(ids)) == count == sharded.features.shape[0]
    np.testing.assert_allclose(np.linalg.norm(sharded.features, axis=-1), 1.0, atol=1e-5)
    single = single_device_encoder.images(data)  # one device, batches of 5: other padding
    assert single_device_encoder.mesh.devices.size == 1
    assert single.ids == ids
    np.testing.assert_array_equal(single.labels, sharded.labels)
    np.testing.assert_allclose(single.features, sharded.features, atol=1e-5)
    # Subjects and image digests come back in record order too, padding dropped.
    records = [example_codec.decode_record(r) for r in ShardedTFRecordSource(
        shard_writer.shard_paths(data))]
    assert sharded.groups == single.groups == [r.group for r in records]
    assert all(sharded.groups)  # the synthetic faces have identities: a real check
    want = [example_codec.image_digest(r.images) for r in records]
    assert [d.tobytes() for d in sharded.digests] == [d.tobytes() for d in single.digests] == want


def test_video_clips_average_their_frames(encoder, bench):
    clips = encoder.images(bench / "video", num_frames=4)
    middle = encoder.images(bench / "video", num_frames=1)
    assert clips.features.shape == (24, encoder.config.embed_dim)
    # num_frames=1 is the middle frame alone; the mean over 4 different frames differs from it.
    assert not np.allclose(clips.features, middle.features, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(clips.features, axis=-1), 1.0, atol=1e-5)


def test_cli_writes_result_confusion_and_report(tiny_export, bench, tmp_path, capsys):
    from emocap_jax.evaluate import cli

    out = tmp_path / "out"
    argv = ["--checkpoint", str(tiny_export), "--benchmark", "synthetic", "--data", str(bench),
            "--protocol", "zero_shot", "--output", str(out), "--batch-size", str(BATCH),
            "--quiet"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "synthetic faces zero_shot: UAR" in printed and "40 examples" in printed
    for name in ("results/synthetic__zero_shot.json", "confusion/synthetic__zero_shot.png",
                 "confusion/synthetic__zero_shot.json", "predictions/synthetic__zero_shot.csv",
                 "report.md", "report.csv"):
        assert (out / name).is_file(), name
    result = json.loads((out / "results/synthetic__zero_shot.json").read_text())
    assert result["checkpoint"] == str(tiny_export) and result["devices"] == 8
    md = (out / "report.md").read_text()
    assert "| synthetic | synthetic faces | zero_shot | UAR |" in md
    assert "| static FER | RAF-DB | zero_shot | UAR | — | 62.8 | 45.1 |" in md


def test_cli_files_agree_with_metrics_recomputed_from_its_predictions(tiny_export, bench,
                                                                     tmp_path):
    """What a user reads (results JSON, confusion JSON, report.csv, report.md) is what
    scikit-learn computes from the per-image predictions CSV, per fold and pooled."""
    import csv

    from sklearn.metrics import accuracy_score, f1_score, recall_score
    from sklearn.metrics import confusion_matrix as sk_confusion

    from emocap_jax.evaluate import cli

    out = tmp_path / "out"
    assert cli.main(["--checkpoint", str(tiny_export), "--benchmark", "synthetic", "--data",
                     str(bench), "--protocol", "linear_probe", "--output", str(out),
                     "--batch-size", str(BATCH), "--quiet"]) == 0
    result = json.loads((out / "results/synthetic__linear_probe.json").read_text())
    with open(out / "predictions/synthetic__linear_probe.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = result["report"]["classes"]
    records = read_records(result["splits"][0]["test"])
    assert sorted(r["id"] for r in rows) == sorted(r.id for r in records)  # each once

    def recomputed(rows):
        y, p = [r["label"] for r in rows], [r["prediction"] for r in rows]
        return {"uar": recall_score(y, p, labels=sorted(set(y)), average="macro"),
                "war": accuracy_score(y, p), "macro_f1": f1_score(y, p, average="macro"),
                "confusion_matrix": sk_confusion(y, p, labels=classes).tolist()}

    per_fold = []
    for fold in result["folds"]:
        mine = recomputed([r for r in rows if int(r["fold"]) == fold["fold"]])
        per_fold.append(mine)
        for metric in ("uar", "war", "macro_f1"):
            assert fold[metric] == pytest.approx(mine[metric]), (fold["fold"], metric)
        assert fold["confusion_matrix"] == mine["confusion_matrix"]
    pooled, mine = result["report"], recomputed(rows)
    for metric in ("uar", "war", "macro_f1"):
        assert pooled[metric] == pytest.approx(mine[metric]), metric
        values = [f[metric] for f in per_fold]
        assert pooled["fold_summary"][metric]["mean"] == pytest.approx(np.mean(values))
        assert pooled["fold_summary"][metric]["std"] == pytest.approx(np.std(values))
    assert pooled["confusion_matrix"] == mine["confusion_matrix"]
    confusion = json.loads((out / "confusion/synthetic__linear_probe.json").read_text())
    assert confusion["classes"] == classes and confusion["counts"] == mine["confusion_matrix"]
    headline = np.mean([f["uar"] for f in per_fold])  # with folds: the fold mean
    assert result["value"] == pytest.approx(headline)
    with open(out / "report.csv", newline="") as f:
        [row] = [r for r in csv.DictReader(f) if r["protocol"] == "linear_probe"]
    assert row["ours"] == f"{100 * headline:.2f}"
    assert row["num_examples"] == str(len(records)) and row["num_folds"] == str(len(per_fold))
    md = (out / "report.md").read_text()
    assert f"| synthetic faces | linear_probe | UAR | {100 * headline:.1f} |" in md
    assert (f"UAR {100 * mine['uar']:.1f}%, WAR {100 * mine['war']:.1f}%, macro-F1 "
            f"{100 * mine['macro_f1']:.1f}% over {len(records)} examples") in md


@pytest.mark.parametrize("change,message", [
    ({"--benchmark": "nope"}, "--benchmark 'nope' is unknown"),
    ({"--protocol": "video"}, "--protocol video: benchmark synthetic supports"),
    ({"--data": "/nonexistent/data"}, "--data /nonexistent/data: no such directory"),
    # A file (metadata.json itself, a shard) is named as one, not as a missing directory.
    ({"--data": __file__}, f"--data {__file__}: is a file, not a dataset folder"),
    ({"--train-data": __file__}, f"--train-data {__file__}: is a file, not a dataset folder"),
    ({"--checkpoint": "/nonexistent/ckpt"}, "--checkpoint /nonexistent/ckpt: no such file"),
    ({"--num-folds": "1"}, "argument --num-folds: must be an integer >= 2, got '1'"),
    # Numbers are checked as they are parsed: before the checkpoint, so one run names them all.
    ({"--checkpoint": "/nonexistent/ckpt", "--batch-size": "0"},
     "argument --batch-size: must be an integer >= 1, got '0'"),
    ({"--checkpoint": "/nonexistent/ckpt", "--val-fraction": "2"},
     "argument --val-fraction: must be in (0, 1), got '2'"),
    ({"--checkpoint": "/nonexistent/ckpt", "--frames": "0"},
     "argument --frames: must be an integer >= 1, got '0'"),
    # Mesh sizes too (they were checked only once JAX had started, after the other arguments).
    ({"--checkpoint": "/nonexistent/ckpt", "--mesh-data": "0"},
     "argument --mesh-data: must be a number of devices (at least 1) or -1 for the rest, "
     "got '0'"),
    ({"--checkpoint": "/nonexistent/ckpt", "--mesh-fsdp": "-2"},
     "argument --mesh-fsdp: must be a number of devices (at least 1) or -1 for the rest, "
     "got '-2'"),
    ({"--checkpoint": "/nonexistent/ckpt", "--mesh-data": "-1", "--mesh-fsdp": "-1"},
     "--mesh-data and --mesh-fsdp cannot both be -1"),
    # Sizes that do not fit the 8 devices are named by their flags, not by config keys.
    ({"--mesh-data": "3"}, "--mesh-data=3 x --mesh-fsdp=1 != 8 devices"),
    ({"--zero-shot-mode": "description", "--classes": "a,b"},
     "--classes: --zero-shot-mode description scores each class with its registry description"),
])
def test_cli_names_the_bad_argument(tiny_export, bench, tmp_path, capsys, change, message):
    from emocap_jax.evaluate import cli

    args = {"--checkpoint": str(tiny_export), "--benchmark": "synthetic", "--data": str(bench),
            "--protocol": "zero_shot", "--output": str(tmp_path / "o")}
    args.update(change)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([x for kv in args.items() for x in kv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_templates_file_is_checked_as_str_format_reads_it(tiny_export, bench, tmp_path,
                                                              capsys):
    """A --templates line is filled with str.format: "{name}" passed the old "has {}" check and
    ended the run in a KeyError after the checkpoint was loaded; it is named before, by line.
    A literal brace pair is a usable template."""
    from emocap_jax.evaluate import cli

    args = ["--checkpoint", str(tiny_export), "--benchmark", "synthetic", "--data", str(bench),
            "--protocol", "zero_shot", "--output", str(tmp_path / "o"), "--quiet"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of {}.\na {name} face showing {}.\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args + ["--templates", str(bad)])
    assert exit_info.value.code == 2
    assert (f"--templates {bad}: line 'a {{name}} face showing {{}}.': 2 fields"
            in capsys.readouterr().err)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(SystemExit):
        cli.main(args + ["--templates", str(empty)])
    assert "no template in the file" in capsys.readouterr().err
    braces = tmp_path / "braces.txt"
    braces.write_text("a {{posed}} face of {}.\n")
    assert cli.main(args + ["--templates", str(braces)]) == 0


def test_cli_missing_split_is_named(tiny_export, tmp_path, capsys):
    from emocap_jax.evaluate import cli

    (tmp_path / "empty").mkdir()
    code = cli.main(["--checkpoint", str(tiny_export), "--benchmark", "rafdb", "--data",
                     str(tmp_path / "empty"), "--output", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "test/metadata.json" in err and "data_prep.benchmarks --name rafdb" in err


def test_cli_help_documents_every_protocol():
    result = subprocess.run([sys.executable, "-m", "emocap_jax.evaluate", "--help"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for protocol in registry.PROTOCOLS:
        assert protocol in result.stdout
    assert "--checkpoint" in result.stdout and "report.md" in result.stdout


def test_mode_eval_runs_the_configs_evals(tiny_export, bench, tmp_path, capsys, monkeypatch):
    import shutil

    from configs import tiny
    from emocap_jax import train

    workdir = tmp_path / "run"
    shutil.copytree(tiny_export, workdir / "export")
    config = tiny.get_config()
    config.data.train_dir = str(bench / "basic")  # present so no corpus is generated
    config.data.synthetic.size = 40
    config.eval.zero_shot_dir = str(bench / "basic")
    config.eval.batch_size = BATCH
    config.eval.benchmarks = ("synthetic:zero_shot", "synthetic:retrieval",
                              "synthetic-compound:compound",
                              f"synthetic-video:video:{bench / 'video'}")
    from emocap_jax.evaluate import suite
    logged = []
    monkeypatch.setattr(suite.log, "info", lambda message, *args: logged.append(message % args))
    out = train.evaluate_workdir(config, workdir)
    printed = capsys.readouterr().out
    assert "zero-shot on" in printed and "UAR" in printed  # the demo's line, as before
    # Where the report is: said once, in the log (it was printed a second time).
    assert "evaluation report" not in printed
    assert logged.count(f"evaluation report: {workdir / 'eval' / 'report.md'}") == 1
    assert out["zero_shot"]["num_examples"] == 40
    assert json.loads((workdir / "zero_shot.json").read_text())["num_examples"] == 40
    assert [r["benchmark"] for r in out["results"]] == ["synthetic", "synthetic",
                                                        "synthetic-compound", "synthetic-video"]
    # synthetic-compound had no data folder: generated into the workdir (6 classes x 20 faces).
    assert out["results"][2]["report"]["num_examples"] == 120
    md = (workdir / "eval" / "report.md").read_text()
    for row in ("| synthetic faces | retrieval |", "| synthetic compound | compound |",
                "| synthetic video | video |"):
        assert row in md
    with pytest.raises(ValueError, match="needs its data folder"):
        config.eval.benchmarks = ("rafdb:zero_shot",)
        train.evaluate_workdir(config, workdir)


@pytest.mark.shared_data
def test_ckplus48_subject_independent_linear_probe(shared_data_dir, encoder, tmp_path):
    from data_prep.benchmarks import convert_benchmark

    root = shared_data_dir / "ckplus48"
    if not root.is_dir():
        pytest.skip("../shared/data/ckplus48 is absent")
    summary = convert_benchmark("ckplus48", root, tmp_path / "ckplus48", workers=1,
                                progress=False)
    assert summary["datasets"][0]["num_written"] == 981
    result = runner.run(encoder, "ckplus48", "linear_probe", tmp_path / "ckplus48",
                        runner.Options(batch_size=64))
    pooled = result["report"]
    assert pooled["num_examples"] == 981 and len(result["folds"]) == 10
    assert 0 <= pooled["uar"] <= 1 and 0 <= pooled["war"] <= 1
    subjects = {r.id: r.group for r in read_records(tmp_path / "ckplus48" / "all")}
    tested = [p["id"] for p in result["predictions"]]
    assert sorted(tested) == sorted(subjects)  # every image tested exactly once
    by_fold = {}
    for p in result["predictions"]:
        by_fold.setdefault(p["fold"], set()).add(subjects[p["id"]])
    folds = list(by_fold.values())
    assert all(not a & b for i, a in enumerate(folds) for b in folds[i + 1:])  # by subject
    # Even random features separate CK+'s posed expressions above chance (1/7) once a probe is
    # fitted: the pipeline hands the probe real, correctly labelled pixels.
    assert pooled["uar"] > 1 / 7
    print(f"CK+48 linear probe (tiny random model): UAR {pooled['uar']:.3f} "
          f"WAR {pooled['war']:.3f}, fold UAR {result['report']['fold_summary']['uar']}")


def test_encoder_texts_refuses_rows_without_the_pooling_token(fixtures_dir):
    """The evaluation Encoder makes the same check as encode_text: a tokenizer that does not end
    rows in the tower's pooling id (hf_clip_tiny pools at 999) would give every class prompt one
    and the same embedding. The error names the row and its text."""
    model = emocap_jax.load(fixtures_dir / "hf_clip_tiny")
    assert model.config.text.eot_token_id == 999
    rows = {"a happy face": [998, 5, 6, 999, 0, 0], "a sad face": [998, 7, 8, 9, 10, 0]}
    encoder = Encoder(model.params, model.config, lambda texts, context_length: np.array(
        [rows[t] for t in texts]), batch_size=2)
    assert encoder.texts(["a happy face"]).shape == (1, model.config.embed_dim)
    with pytest.raises(ValueError, match=r"rows \[1\] \(text 'a sad face'\) hold no "
                                         r"end-of-text token 999"):
        encoder.texts(["a happy face", "a sad face"])
