"""A user mistake on any command is answered with one line on stderr (`error: ...` naming the thing)
and exit status 2, never a traceback; an internal error keeps its traceback.

Each case runs the command as a user does (a subprocess) and fails before anything compiles: the
mistakes are caught where they are detected (emocap_jax.cli_errors.UsageError) or by argparse /
absl flag parsing.
"""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from emocap_jax import cli_errors
from emocap_jax.data import example_codec
from tests.conftest import REPO_ROOT

TRAIN = ("emocap_jax.main", "--config=configs/tiny.py")


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """An empty dataset (finished, no records), an empty folder, a face image, a run folder
    without export/ and a missing path."""
    root = tmp_path_factory.mktemp("places")
    empty_dataset = root / "empty_dataset"
    empty_dataset.mkdir()
    (empty_dataset / "metadata.json").write_text(json.dumps(
        {"schema_version": example_codec.SCHEMA_VERSION, "num_records": 0, "shards": []}))
    (root / "empty_folder").mkdir()
    Image.new("RGB", (40, 40), (120, 90, 60)).save(root / "face.png")
    (root / "run_without_export").mkdir()
    return {"empty_dataset": str(empty_dataset), "empty_folder": str(root / "empty_folder"),
            "face": str(root / "face.png"), "run": str(root / "run_without_export"),
            "missing": str(root / "no_such_thing"), "out": str(root / "out"), "root": root}


def _run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "EMOCAP_NO_HUGE_PAGES": "1"})


def _assert_one_line(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    # Nothing else from us on stderr: no usage block, no second line of the message.
    assert not [line for line in result.stderr.splitlines()
                if line.startswith(("usage:", "  ", "FATAL"))], result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


# ---------------------------------------------------------------- training: emocap_jax.main

def test_train_without_a_dataset(places):
    result = _run(*TRAIN, f"--workdir={places['out']}", "--config.data.synthetic.num=0")
    _assert_one_line(result, "no training data", "--config.data.train_dir=DIR")


def test_mode_data_prepares_the_corpus_and_a_corpus_of_other_settings_is_refused(places):
    """--mode=data generates and converts the synthetic corpus and stops; a later run whose
    config.data.synthetic differs from what the workdir holds is refused, not silently trained on
    the other corpus."""
    workdir = places["root"] / "data_only"
    small = ("--config.data.synthetic.num=16", "--config.data.synthetic.size=32",
             "--config.data.synthetic.eval_per_class=1")
    made = _run(*TRAIN, f"--workdir={workdir}", "--mode=data", *small,
                "--config.data.synthetic.au_drop_probability=0.5")
    assert made.returncode == 0, made.stderr[-3000:]
    assert f"training data: {workdir / 'data' / 'train'}" in made.stdout
    assert (workdir / "data" / "train" / "metadata.json").is_file()
    assert not (workdir / "checkpoints").exists()  # nothing trained
    result = _run(*TRAIN, f"--workdir={workdir}", "--mode=data", *small,
                  "--config.data.synthetic.appearance_captions=True")
    _assert_one_line(result, f"{workdir / 'synthetic'} was generated with other settings",
                     "au_drop_probability=0.0 (the corpus has 0.5)",
                     "appearance_captions=True (the corpus has False)", "new --workdir")


def test_train_on_a_missing_dataset_path(places):
    result = _run(*TRAIN, f"--workdir={places['out']}",
                  f"--config.data.train_dir={places['missing']}")
    _assert_one_line(result, f"config.data.train_dir={places['missing']}", "metadata.json",
                     "data_prep")


def test_train_on_an_empty_dataset(places):
    result = _run(*TRAIN, f"--workdir={places['out']}",
                  f"--config.data.train_dir={places['empty_dataset']}")
    _assert_one_line(result, places["empty_dataset"], "holds no records")


def test_train_with_an_override_of_a_field_the_config_lacks(places):
    result = _run(*TRAIN, f"--workdir={places['out']}", "--config.train.num_stepz=3")
    _assert_one_line(result, "--config.train.num_stepz", "no field 'num_stepz'",
                     "configs/default.py")


def test_train_with_an_override_of_the_wrong_type(places):
    result = _run(*TRAIN, f"--workdir={places['out']}", "--config.train.num_steps=many")
    _assert_one_line(result, "--config.train.num_steps=many")


def test_train_with_a_tuple_override_whose_elements_are_unquoted(places):
    """ml_collections reads `(visual/proj,text/proj)` as the one string '(visual/proj,text/proj)':
    an init_exclude regex (or class name) that silently matches nothing."""
    for value, quoted in (("(visual/proj,text/proj)", "\"('visual/proj','text/proj')\""),
                          ("a,b", "\"('a','b')\"")):
        result = _run(*TRAIN, f"--workdir={places['out']}", f"--config.init_exclude={value}")
        _assert_one_line(result, f"--config.init_exclude={value}", "single string",
                         f"--config.init_exclude={quoted}")


def _parsed_config(*args):
    """The config main's flag parsing makes of `args` (in a subprocess: absl's flags are global)."""
    code = ("import json, sys\nfrom emocap_jax import main\nmain._parse_flags(sys.argv)\n"
            "print(json.dumps(main._CONFIG.value.to_dict()))")
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_an_optional_field_can_be_unset_from_the_command_line(places):
    """configs/real_faces.py sets loss.mining.relative_threshold (a placeholder: None is off);
    `=None` switched it off only in Python, the command line said "could not convert string to
    float: 'None'"."""
    config = _parsed_config("--config=configs/real_faces.py",
                            "--config.loss.mining.relative_threshold=None",
                            "--config.model.text.eot_token_id=None")
    assert config["loss"]["mining"]["relative_threshold"] is None
    assert config["model"]["text"]["eot_token_id"] is None
    # The last override of a field wins, as with any other value.
    config = _parsed_config("--config=configs/real_faces.py",
                            "--config.loss.mining.relative_threshold=None",
                            "--config.loss.mining.relative_threshold=0.5")
    assert config["loss"]["mining"]["relative_threshold"] == 0.5
    assert _parsed_config("--config=configs/real_faces.py")["loss"]["mining"][
        "relative_threshold"] == 1.5
    # A field that cannot be None still says so, in one line.
    result = _run(*TRAIN, f"--workdir={places['out']}", "--config.train.num_steps=None")
    _assert_one_line(result, "--config.train.num_steps=None", "cannot be unset")


def test_train_with_an_override_through_a_field_that_holds_a_value(places):
    """An override path that runs into an int, a tuple or an unset placeholder names the field
    (it was "no field 'Attribute'", or a TypeError / ValueError traceback)."""
    for override, field, value in (("train.num_steps.x", "config.train.num_steps", "(20)"),
                                   ("init_exclude.x", "config.init_exclude", "(())"),
                                   ("model.text.eot_token_id.x", "config.model.text.eot_token_id",
                                    "(None)")):
        result = _run(*TRAIN, f"--workdir={places['out']}", f"--config.{override}=1")
        _assert_one_line(result, f"--config.{override}: {field} is a single value {value}",
                         "no field 'x'")


def test_train_with_an_override_misspelled_in_a_nested_group(places):
    result = _run(*TRAIN, f"--workdir={places['out']}", "--config.loss.minning.mode=text")
    _assert_one_line(result, "--config.loss.minning.mode", "no field 'minning' in config.loss",
                     "did you mean 'mining'?")


@pytest.mark.parametrize("config, message", [
    ("configs/tiny.py:foo", "get_config() takes 0 positional arguments but 1 was given"),
    ("configs/ablations.py:nope", "unknown ablation 'nope'; choose one of ['full',"),
    ("configs/ablations.py:full,nope", "unknown base config 'nope' in 'full,nope'; choose one "
                                       "of ['default', 'demo',"),
])
def test_train_with_a_config_argument_its_get_config_refuses(places, config, message):
    """The config file's own message in one line, not ml_collections' traceback folded into it
    (or, for an unknown ablation base, an import traceback and status 1)."""
    result = _run("emocap_jax.main", f"--config={config}", f"--workdir={places['out']}")
    _assert_one_line(result, f"--config={config}: {message}")


@pytest.mark.parametrize("flag", ["--help", "-h", "--helpfull"])
def test_train_help_exits_0(flag):
    """Help asked for is no failure (absl ends it with status 1), and -h, which every other
    command takes, is --help (it was "Unknown command line flag 'h'", status 2)."""
    result = _run("emocap_jax.main", flag)
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    assert "--workdir" in result.stdout and "--mode" in result.stdout


def test_train_with_a_bad_input_pipeline_setting_stops_before_the_data_is_prepared(places):
    workdir = places["root"] / "bad_pipeline_setting"
    result = _run(*TRAIN, f"--workdir={workdir}", "--config.data.on_corrupt=skp",
                  "--config.data.synthetic.num=16", "--config.data.synthetic.size=32")
    _assert_one_line(result, "config.data: on_corrupt must be one of", "got 'skp'")
    assert not (workdir / "synthetic").exists() and not (workdir / "data").exists()


def test_train_with_a_negative_learning_rate_stops_before_the_data_is_prepared(places):
    """It trained, climbing the loss, and exited 0."""
    workdir = places["root"] / "negative_learning_rate"
    result = _run(*TRAIN, f"--workdir={workdir}", "--config.optim.learning_rate=-0.001",
                  "--config.data.synthetic.num=16", "--config.data.synthetic.size=32")
    _assert_one_line(result, "config.optim.learning_rate=-0.001: give a number > 0")
    assert not (workdir / "synthetic").exists() and not (workdir / "data").exists()


def test_an_unknown_eval_benchmark_is_a_usage_error():
    """--mode=eval's config.eval.benchmarks entries are checked with a UsageError (one line on
    the command line; it was a ValueError traceback), still a ValueError to library callers."""
    from emocap_jax.evaluate import suite

    for entry, message in (("nope:zero_shot", "unknown benchmark 'nope'"),
                           ("synthetic", "is not BENCHMARK:PROTOCOL"),
                           ("synthetic:zero_shots", "synthetic supports zero_shot")):
        with pytest.raises(cli_errors.UsageError, match=message):
            suite.parse_entry(entry)


@pytest.mark.parametrize("spelling", [("--config=configs/tiny.py",),
                                      ("--config", "configs/tiny.py")])
def test_a_config_of_the_package_is_found_from_another_directory(tmp_path, spelling):
    """configs/NAME.py names the shipped config when the current directory has none, in both of
    absl's spellings (`--config configs/tiny.py` was 'No such file or directory')."""
    result = subprocess.run([sys.executable, "-m", "emocap_jax.main", *spelling, "--mode=info"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "EMOCAP_NO_HUGE_PAGES": "1",
                                 "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model: tiny" in result.stdout


def test_train_with_a_missing_config_file(places):
    result = _run("emocap_jax.main", "--config=configs/no_such_config.py",
                  f"--workdir={places['out']}")
    _assert_one_line(result, "--config=configs/no_such_config.py: no such file "
                             "configs/no_such_config.py; the shipped configs",
                     "configs/tiny.py", "configs/vitb16.py")
    # ml_collections' own wording ("Failed loading config file config_config") is not shown.
    assert "config_config" not in result.stderr


def test_a_training_dataset_setting_naming_a_converters_output_folder(tmp_path):
    """`--config.data.train_dir=data/faces` where `data_prep.benchmarks --val-fraction` wrote
    data/faces/train and data/faces/val: the error names the datasets there and does not tell the
    user to convert data that is already converted."""
    from emocap_jax import train
    from emocap_jax.data import shard_writer
    for split in ("train", "val"):
        with shard_writer.ShardedRecordWriter(tmp_path / "faces" / split, 1) as writer:
            writer.add(example_codec.FaceRecord(id="r0", images=[b"x"], label="a", label_id=0))
    with pytest.raises(cli_errors.UsageError) as error:
        train.check_dataset(str(tmp_path / "faces"), "config.data.train_dir")
    message = str(error.value)
    assert f"config.data.train_dir={tmp_path / 'faces'}" in message
    assert "holds the datasets train, val" in message and "convert a dataset" not in message
    with pytest.raises(cli_errors.UsageError, match="is a file, not a dataset directory"):
        train.check_dataset(str(tmp_path / "faces" / "val" / "metadata.json"), "config.data.train_dir")
    with pytest.raises(cli_errors.UsageError, match="convert a dataset with"):
        train.check_dataset(str(tmp_path / "missing"), "config.data.train_dir")


def test_a_training_dataset_setting_naming_an_unconverted_caption_corpus(tmp_path):
    """`--config.data.train_dir=data/synthetic`, the folder `data_prep.synthetic` (or any caption
    corpus) wrote, images and manifest.jsonl not yet converted to shards: the error says so and
    gives the conversion command for that folder, instead of 'wrong path, or the conversion did
    not complete'."""
    from emocap_jax import train
    corpus = tmp_path / "synthetic"
    (corpus / "images").mkdir(parents=True)
    (corpus / "manifest.jsonl").write_text('{"id": "a", "image": "images/a.jpg"}\n')
    with pytest.raises(cli_errors.UsageError) as error:
        train.check_dataset(str(corpus), "config.data.train_dir")
    message = str(error.value)
    assert f"config.data.train_dir={corpus}: {corpus} holds a caption corpus" in message
    assert (f"python -m data_prep.captions --manifest {corpus / 'manifest.jsonl'} --root {corpus} "
            f"--output DIR") in message
    assert "did not complete" not in message


def test_evaluate_data_naming_a_converters_output_folder_or_a_file(tmp_path):
    """`--data data/faces` for the output of `--val-fraction` (train/ and val/, where the
    benchmark's test split 'all' is absent): the error names the datasets there and how to pass
    them, not a conversion; `--data` naming a file says it is a file."""
    from emocap_jax.data import shard_writer
    from emocap_jax.evaluate import registry, runner
    out = tmp_path / "faces"
    for split in ("train", "val"):
        with shard_writer.ShardedRecordWriter(out / split, 1) as writer:
            writer.add(example_codec.FaceRecord(id="r0", images=[b"x"], label="a", label_id=0))
    spec = registry.get("imagefolder")
    with pytest.raises(FileNotFoundError) as error:
        runner.find_splits(spec, str(out))
    message = str(error.value)
    assert "holds the datasets train, val" in message
    assert f"--data {out / 'val'} --train-data {out / 'train'}" in message
    assert "data_prep.benchmarks" not in message
    with pytest.raises(FileNotFoundError, match="is a file, not a dataset folder"):
        runner.find_splits(spec, str(out / "val" / "metadata.json"))
    with pytest.raises(FileNotFoundError, match="is a file, not a dataset folder"):
        runner.find_splits(spec, str(out / "val"), train_data=str(out / "train" / "metadata.json"))


def test_eval_mode_on_a_workdir_without_an_export(places):
    result = _run(*TRAIN, f"--workdir={places['run']}", "--mode=eval")
    _assert_one_line(result, places["run"], "no exported parameters", "--mode=train")


def test_train_with_part_of_the_multi_process_flags(places):
    result = _run(*TRAIN, f"--workdir={places['out']}", "--num_processes=2")
    _assert_one_line(result, "--coordinator_address", "--process_id", "missing")


def test_train_with_a_coordinator_that_is_no_host_and_port(places):
    result = _run(*TRAIN, f"--workdir={places['out']}", "--coordinator_address=localhost",
                  "--num_processes=2", "--process_id=0")
    _assert_one_line(result, "--coordinator_address=localhost", "HOST:PORT")


def test_train_with_a_process_id_out_of_range(places):
    result = _run(*TRAIN, f"--workdir={places['out']}", "--coordinator_address=127.0.0.1:1",
                  "--num_processes=2", "--process_id=2")
    _assert_one_line(result, "--process_id=2", "--num_processes=2")


# ---------------------------------------------------------------- evaluation

def _evaluate(places, **changes):
    args = {"--checkpoint": places["run"], "--benchmark": "synthetic",
            "--data": places["empty_folder"], "--protocol": "zero_shot", "--output": places["out"]}
    args.update(changes)
    return _run("emocap_jax.evaluate", *[x for kv in args.items() for x in kv])


def test_evaluate_with_part_of_the_multi_process_flags(places):
    result = _evaluate(places, **{"--num_processes": "2", "--process_id": "1"})
    _assert_one_line(result, "--coordinator_address missing")


def test_evaluate_unknown_benchmark(places):
    _assert_one_line(_evaluate(places, **{"--benchmark": "rafdbb"}), "--benchmark 'rafdbb'",
                     "rafdb")


def test_evaluate_unknown_protocol(places):
    _assert_one_line(_evaluate(places, **{"--protocol": "zero-shot"}), "--protocol",
                     "'zero-shot'", "zero_shot")


def test_evaluate_protocol_the_benchmark_lacks(places):
    _assert_one_line(_evaluate(places, **{"--benchmark": "rafdb", "--protocol": "video"}),
                     "--protocol video", "rafdb")


def test_evaluate_missing_dataset(places):
    _assert_one_line(_evaluate(places, **{"--data": places["missing"]}),
                     f"--data {places['missing']}", "no such directory")


@pytest.mark.parametrize("template, fragment", [
    ("{0}", "(it names '0')"), ("{question}", "use {option}"), ("{option", "expected '}'")])
def test_evaluate_multiple_choice_template_without_its_option(places, template, fragment):
    """{0} ended in an IndexError traceback; {question} alone gave every option the same text
    and the protocol a meaningless accuracy, with status 0."""
    result = _evaluate(places, **{"--protocol": "multiple_choice", "--mc-template": template})
    _assert_one_line(result, f"--mc-template {template!r}", fragment)


@pytest.mark.parametrize("protocol, flag, value, fragment", [
    # An annotated intensity of 0 is an absent AU: a negative threshold counted it as present.
    ("au_detection", "--au-threshold", "-1", "must be in [0, inf), got '-1'"),
    ("au_detection", "--au-threshold", "nan", "must be in [0, inf), got 'nan'"),
    # The rest ran the model over the data first, then failed naming no option (NumPy's or
    # scikit-learn's seed errors) or measured nothing (a NaN tolerance or C).
    ("few_shot", "--shots", "4,0", "shots must be >= 1, got [0]"),
    ("few_shot", "--seeds", "0,-1", "seeds must be >= 0, got [-1]"),
    ("linear_probe", "--seed", "-1", "must be a non-negative integer, got '-1'"),
    ("linear_probe", "--c-grid", "1,nan", "C values must be positive and finite"),
    ("grounding", "--grounding-tolerance", "nan", "must be in [0, inf), got 'nan'"),
])
def test_evaluate_numbers_out_of_range(places, protocol, flag, value, fragment):
    result = _evaluate(places, **{"--protocol": protocol, flag: value})
    _assert_one_line(result, f"argument {flag}", fragment)


def test_evaluate_empty_dataset(places):
    _assert_one_line(_evaluate(places, **{"--data": places["empty_dataset"]}),
                     places["empty_dataset"], "holds no records")


def test_evaluate_checkpoint_of_the_wrong_kind(places):
    # A dataset folder given as the checkpoint: nothing there loads as a model.
    result = _evaluate(places, **{"--checkpoint": places["empty_dataset"]})
    _assert_one_line(result, f"--checkpoint {places['empty_dataset']}", "no weights found")


# ---------------------------------------------------------------- prediction

def test_predict_unreadable_image_path(places):
    result = _run("emocap_jax.predict", "--checkpoint", places["run"], places["missing"])
    _assert_one_line(result, places["missing"], "no such file")


def test_predict_checkpoint_of_the_wrong_kind(places):
    result = _run("emocap_jax.predict", "--checkpoint", places["empty_folder"], places["face"])
    _assert_one_line(result, f"--checkpoint {places['empty_folder']}", "cannot load",
                     "export folder")


# ---------------------------------------------------------------- conversion and export

def test_convert_missing_input(places):
    result = _run("emocap_jax.convert", "--input", places["missing"], "--output", places["out"])
    _assert_one_line(result, places["missing"])


def test_convert_input_of_the_wrong_kind(places):
    result = _run("emocap_jax.convert", "--input", places["empty_folder"], "--output",
                  places["out"])
    _assert_one_line(result, places["empty_folder"], "no weights found")


def test_export_of_something_that_is_no_run(places):
    result = _run("emocap_jax.convert", "--to", "hf", "--input", places["run"], "--output",
                  places["out"])
    _assert_one_line(result, f"--input {places['run']}", "export folder", "training workdir")


def test_export_to_an_unknown_target(places):
    result = _run("emocap_jax.convert", "--to", "onnx", "--input", places["run"], "--output",
                  places["out"])
    _assert_one_line(result, "--to", "'onnx'", "open_clip", "hf")


# ---------------------------------------------------------------- tokenizers

@pytest.mark.parametrize("args, message", [
    ((), "required: command"),
    (("train-sentenc",), "invalid choice: 'train-sentenc'"),
    (("train-sentencepiece", "--input", "a.txt", "--model-prefix", "m", "--vocab-size", "64",
      "--option", "bogus"), "--option: expected KEY=VALUE, got 'bogus'"),
])
def test_tokenizers_bad_arguments(args, message):
    """argparse's own mistakes in one line (it printed its usage block and a second
    `python -m emocap_jax.tokenizers: error:` line, unlike every other command)."""
    _assert_one_line(_run("emocap_jax.tokenizers", *args), message)


# ---------------------------------------------------------------- data_prep

def test_prep_unknown_benchmark(places):
    result = _run("data_prep.benchmarks", "--name", "fer2031", "--root", places["empty_folder"],
                  "--output", places["out"])
    _assert_one_line(result, "--name", "'fer2031'")


def test_prep_missing_root(places):
    result = _run("data_prep.benchmarks", "--name", "imagefolder", "--root", places["missing"],
                  "--output", places["out"])
    _assert_one_line(result, places["missing"], "not a directory")


def test_prep_empty_root(places):
    result = _run("data_prep.benchmarks", "--name", "imagefolder", "--root",
                  places["empty_folder"], "--output", str(places["root"] / "prep_out"))
    _assert_one_line(result, places["empty_folder"], "found no subfolder")


def test_prep_root_with_nothing_readable(places):
    root = places["root"] / "unreadable_faces"
    (root / "happy").mkdir(parents=True)
    (root / "happy" / "notes.txt").write_text("not a face")
    result = _run("data_prep.benchmarks", "--name", "imagefolder", "--root", str(root),
                  "--output", str(places["root"] / "prep_out2"), "--workers", "1")
    _assert_one_line(result, "no record was written", str(root), "rejected.jsonl")


def test_prep_missing_manifest(places):
    result = _run("data_prep.captions", "--manifest", places["missing"], "--root",
                  places["empty_folder"], "--output", places["out"])
    _assert_one_line(result, f"--manifest {places['missing']}", "not a file")


def test_prep_bad_synthetic_size(places):
    result = _run("data_prep.synthetic", "--output", places["out"], "--num", "-3")
    _assert_one_line(result, "argument --num: must be a non-negative integer, got '-3'")


def test_prep_synthetic_benchmarks_with_no_splits(places):
    """`--splits ""` (or only commas) wrote nothing and exited 0, as if it had succeeded."""
    output = places["root"] / "no_splits"
    for splits in ("", " , "):
        result = _run("data_prep.synthetic_benchmarks", "--output", str(output),
                      "--splits", splits, "--no-progress")
        _assert_one_line(result, "no splits given", "'basic', 'compound', 'video'")
    assert not output.exists()


def test_prep_synthetic_benchmarks_with_a_negative_seed(places):
    """NumPy's "expected non-negative integer" named no option."""
    output = places["root"] / "negative_seed"
    result = _run("data_prep.synthetic_benchmarks", "--output", str(output), "--seed", "-1")
    _assert_one_line(result, "argument --seed", "must be a non-negative integer, got '-1'")
    assert not output.exists()


def test_prep_unknown_command_of_the_umbrella(places):
    result = _run("data_prep", "benchmark", "--list")
    _assert_one_line(result, "'benchmark'", "benchmarks", "emocap-prep --help")


# ---------------------------------------------------------------- bench scripts: counts and ranges

@pytest.mark.parametrize("script, args", [
    ("ablations", ["--pretrain-steps", "0"]), ("ablations", ["--finetune-steps", "-5"]),
    ("ablations", ["--jobs", "0"]),  # ThreadPoolExecutor(0) failed after the pretrain had run
    ("input_pipeline", ["--read-threads", "0"]), ("input_pipeline", ["--batch", "0"]),
    ("input_pipeline", ["--warmup", "-1"]), ("input_pipeline", ["--workers", "1", "-2"]),
    ("loss_memory", ["--devices", "0"]), ("loss_memory", ["--chunk", "0"]),  # ZeroDivisionError
    ("loss_memory", ["--sizes", "0"]), ("loss_memory", ["--per-device", "0"]),
    ("loss_memory", ["--dim", "0"]), ("loss_memory", ["--top-k", "-1"]),
    ("mining_guides", ["--checkpoint", "c", "--data", "d", "--records", "0"]),
    ("mining_guides", ["--checkpoint", "c", "--data", "d", "--batches", "0"]),
    ("mining_guides", ["--checkpoint", "c", "--data", "d", "--top-k", "-1"]),
])
def test_bench_counts_out_of_range_are_refused_naming_the_option(script, args, capsys):
    from tests.conftest import load_bench_script

    module = load_bench_script(script)
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(args)
    assert exit_info.value.code == 2
    option = [a for a in args if a.startswith("--")][-1]
    assert f"error: argument {option}: must be a " in capsys.readouterr().err


@pytest.mark.parametrize("script, args", [
    ("step_profile", ["--batch", "0"]),  # ZeroDivisionError after building the model
    ("step_profile", ["--top", "-1"]),  # listed all operations but the last
    ("train_step", ["--steps", "0"]),  # every row "failed: ZeroDivisionError"
    ("train_step", ["--rounds", "0"]), ("train_step", ["--warmup", "-1"]),
    ("export_parity", ["--tolerance", "-1"]),  # every comparison failed
])
def test_bench_scripts_refuse_bad_numbers_before_running(script, args):
    result = subprocess.run([sys.executable, f"bench/{script}.py", *args], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: argument {args[0]}: must be " in result.stderr, result.stderr[-2000:]


def test_range_types_accept_their_ends_and_refuse_what_lies_beyond():
    import argparse

    assert cli_errors.positive_int("1") == 1 and cli_errors.non_negative_int("0") == 0
    for parse, text in ((cli_errors.positive_int, "0"), (cli_errors.non_negative_int, "-1"),
                        (cli_errors.positive_int, "2.5")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
    unit = cli_errors.float_in(0, 1, high_open=True)
    assert unit("0") == 0.0 and unit("0.999") == 0.999
    for text in ("1", "-0.1", "nan", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"\[0, 1\)|a number"):
            unit(text)
    side = cli_errors.int_in(16, 1024)
    assert side("16") == 16 and side("1024") == 1024 and cli_errors.int_in(8)("100000") == 100000
    for parse, text in ((side, "15"), (side, "1025"), (side, "20.0"), (cli_errors.int_in(8), "7")):
        with pytest.raises(argparse.ArgumentTypeError, match=r"must be an integer"):
            parse(text)
    assert cli_errors.float_in(0, 1, low_open=True)("1") == 1.0
    with pytest.raises(argparse.ArgumentTypeError, match=r"\(0, 1\]"):
        cli_errors.float_in(0, 1, low_open=True)("0")


# ---------------------------------------------------------------- the mechanism itself

def test_usage_errors_exit_2_and_internal_errors_keep_their_traceback(capsys):
    @cli_errors.entry_point
    def main(argv=None):
        if argv == ["user"]:
            raise cli_errors.UsageError("--thing x: no such thing;\n  give another")
        raise RuntimeError("a bug")

    with pytest.raises(SystemExit) as exit_info:
        main(["user"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --thing x: no such thing; give another\n"
    with pytest.raises(RuntimeError, match="a bug"):
        main(["bug"])
    assert issubclass(cli_errors.UsageError, ValueError)  # callers catching ValueError still do


def _run_with_stdout_closed(*command):
    """Runs `command` with a stdout pipe whose reader is gone before it starts, as `| head` leaves
    it once head has its lines (closed up front, so the outcome does not depend on timing)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, *command], cwd=REPO_ROOT, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=300, env=_BUFFERED_ENV)
    finally:
        os.close(write_end)


# stdout block-buffered, as a user's shell leaves it: with PYTHONUNBUFFERED (set in some CI and
# container images) a short output is written, and fails, inside the command, and the buffered
# case (the write failing only at the flush at exit) goes untested.
_BUFFERED_ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
                 "EMOCAP_NO_HUGE_PAGES": "1"}


@pytest.mark.parametrize("command", [
    ("-m", "emocap_jax.evaluate", "--list"),
    ("-m", "data_prep.benchmarks", "--list"),
    ("-m", "data_prep", "--help"),  # the umbrella's own output
    ("-m", "data_prep", "benchmarks", "--list"),  # a command inside the umbrella
    # argparse's help ends in SystemExit, which skipped the flush inside the guard: the buffered
    # help failed at exit ("Exception ignored ... BrokenPipeError", status 120).
    ("-m", "emocap_jax.predict", "--help"),
    ("-m", "emocap_jax.convert", "--help"),
    ("-m", "emocap_jax.tokenizers", "train-sentencepiece", "--help"),
    ("-m", "data_prep", "benchmarks", "--help"),
    # absl's help is printed while the flags are parsed, before main and its entry_point.
    ("-m", "emocap_jax.main", "--helpfull"),
])
def test_a_reader_that_closes_stdout_early_ends_the_command_quietly(command):
    """No traceback and no "Exception ignored" line; status 1, as Python's signal documentation
    (Note on SIGPIPE) has it: the output was cut short, which `set -o pipefail` should see."""
    result = _run_with_stdout_closed(*command)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr == "", result.stderr[-3000:]


# Every bench script (not the modules they import, markdown_tables.py and bench_args.py, which
# have no __main__): they printed "Exception ignored ... BrokenPipeError", status 120.
_BENCH_SCRIPTS = sorted(p.name for p in (REPO_ROOT / "bench").glob("*.py")
                        if 'if __name__ == "__main__":' in p.read_text())


@pytest.mark.parametrize("script", _BENCH_SCRIPTS)
def test_a_bench_script_whose_reader_closes_stdout_early_ends_quietly(script):
    assert len(_BENCH_SCRIPTS) >= 10  # the glob found the folder
    result = _run_with_stdout_closed(f"bench/{script}", "--help")
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr == "", result.stderr[-3000:]


def test_a_reader_that_takes_the_first_line_and_closes_ends_the_command_quietly():
    """`command | head -1`: the reader goes while the command is still writing (far more than a
    pipe holds, so the write fails whatever the timing)."""
    code = ("from emocap_jax import cli_errors\n"
            "@cli_errors.entry_point\n"
            "def main(argv=None):\n"
            "    for i in range(200_000):\n"
            "        print(f'line {i}')\n"
            "    return 0\n"
            "main()\n")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, env=_BUFFERED_ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline() == b"line 0\n"
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) == 1, stderr[-3000:]
    assert stderr == "", stderr[-3000:]


def test_a_broken_pipe_that_is_not_stdout_keeps_its_traceback():
    """Only a closed stdout is the reader's choice; a pipe of the command's own that breaks (a
    worker process gone) is a failure, not a quiet success."""
    code = ("from emocap_jax import cli_errors\n"
            "@cli_errors.entry_point\n"
            "def main(argv=None):\n"
            "    print('partial output')\n"
            "    raise BrokenPipeError(32, 'a worker hung up')\n"
            "main()\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1 and result.stdout == "partial output\n"
    assert "Traceback" in result.stderr and "a worker hung up" in result.stderr, result.stderr


def test_a_misspelt_required_option_is_named_with_the_option_meant(capsys):
    """`--inptu x` for a required `--input`: argparse reports the missing `--input` before the
    unknown `--inptu`, so the line named only what was missing, not the typo that caused it."""
    parser = cli_errors.ArgumentParser(prog="emocap-convert")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--inptu", "w.safetensors", "--output=out"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert ("error: the following arguments are required: --input (unrecognised: --inptu, "
            "did you mean --input?)") in err
    # A prefix argparse accepts (`--out` for `--output`) and a negative value are no typos.
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "-1"])
    assert capsys.readouterr().err == "error: the following arguments are required: --input\n"
    # A required option simply left out reads as before.
    with pytest.raises(SystemExit):
        parser.parse_args(["--output", "out"])
    assert capsys.readouterr().err == "error: the following arguments are required: --input\n"
