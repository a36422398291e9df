"""bench/real_faces.py: the converted FER2013 split a table is measured on."""
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import load_bench_script

bench = load_bench_script("real_faces")


def _faces(tmp_path):
    rng = np.random.default_rng(0)
    fer, ck = tmp_path / "fer", tmp_path / "ck"
    for cls in ("angry", "happy"):
        (fer / cls).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(
                fer / cls / f"Training_{cls}{i}.png")
    for s, cls in enumerate(("anger", "happy", "surprise")):
        (ck / cls).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(
            ck / cls / f"S{100 + s:03d}_001_00000010.png")
    return fer, ck


def _args(fer, ck, work, val_fraction):
    return bench.parse_args(["--fer", str(fer), "--ckplus", str(ck), "--work", str(work),
                             "--val-fraction", str(val_fraction)])


def test_reused_split_must_be_the_one_asked_for(tmp_path):
    fer, ck = _faces(tmp_path)
    work = tmp_path / "work"
    data = bench.convert(_args(fer, ck, work, 0.25), work)
    assert bench.convert(_args(fer, ck, work, 0.25), work) == data  # same split: reused
    # The table's data line names the fraction the split was made with, not a fixed 0.1.
    assert "--val-fraction 0.25" in bench._dataset_line(data)
    # A work folder converted with another fraction is not reused silently: its runs were
    # trained and scored on another split.
    with pytest.raises(SystemExit, match=r"val_fraction 0\.25.*--val-fraction 0\.1"):
        bench.convert(_args(fer, ck, work, 0.1), work)


@pytest.mark.parametrize("made_without", [
    ("identical_content_sets", "near_copy_threshold", "near_copy_joins"),  # before 660ca87
    ("near_copy_threshold", "near_copy_joins")])  # byte-identical faces joined, not near-copies
def test_split_made_before_copies_were_joined_is_refused(tmp_path, made_without):
    fer, ck = _faces(tmp_path)
    work = tmp_path / "work"
    data = bench.convert(_args(fer, ck, work, 0.25), work)
    assert "--join-near-copies 0.93" in bench._dataset_line(data)
    for split in ("train", "val"):
        meta = work / "data" / "fer" / split / "metadata.json"
        text = json.loads(meta.read_text())
        for key in made_without:
            del text["layout_info"]["holdout"][key]
        meta.write_text(json.dumps(text))
    with pytest.raises(SystemExit, match="near-copy"):
        bench.convert(_args(fer, ck, work, 0.25), work)


@pytest.mark.parametrize("args, message", [
    # 0 held nothing out (no validation split to score on); 1 and more, nothing to train on.
    (["--val-fraction", "0"], "argument --val-fraction: must be in (0, 1), got '0'"),
    (["--val-fraction", "1"], "argument --val-fraction: must be in (0, 1), got '1'"),
    (["--val-fraction", "nan"], "argument --val-fraction: must be in (0, 1), got 'nan'"),
    # The training pipeline refuses the seed, after the FER2013 conversion.
    (["--seeds", "0", "-1"], "argument --seeds: must be an integer in [0, 4294967295], got '-1'"),
    (["--seeds", "4294967296"], "argument --seeds: must be an integer in [0, 4294967295]"),
    # A repeated seed reused its finished run and counted it twice in the mean and std.
    (["--seeds", "0", "1", "0"], "--seeds repeats 0: each run is counted once"),
    (["--variants", "plain", "plain"], "--variants repeats plain: each run is counted once"),
])
def test_numbers_out_of_range_are_refused_naming_the_option(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--fer", "f", "--ckplus", "c", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, named", [
    (["--seeds", "0", "--seeds", "1"], "--seeds"),  # meant 0 1; argparse kept only 1
    (["--variants", "plain", "--variant", "labels"], "--variants"),  # abbreviated the second time
    (["--output=a.md", "--output", "b.md"], "--output"),
    (["--config.train.num_steps=4", "--config.train.num_steps=6000"],
     "--config.train.num_steps"),
])
def test_an_option_given_twice_is_refused_by_name(tmp_path, capsys, argv, named):
    with pytest.raises(SystemExit):
        bench.parse_args(["--fer", "f", "--ckplus", "c", *argv])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert named in error and "once" in error


@pytest.mark.parametrize("flag", ["--fer", "--ckplus"])
def test_a_missing_dataset_is_named_by_its_option(tmp_path, flag):
    fer, ck = _faces(tmp_path)
    paths = {"--fer": fer, "--ckplus": ck, flag: tmp_path / "nowhere"}
    args = bench.parse_args([a for k, v in paths.items() for a in (k, str(v))])
    with pytest.raises(SystemExit, match=rf"^{flag} {tmp_path / 'nowhere'}: .*not a directory"):
        bench.convert(args, tmp_path / "work")


def test_render_only_on_a_work_folder_without_runs_converts_nothing_and_writes_nothing(tmp_path):
    fer, ck = _faces(tmp_path)
    out = tmp_path / "RESULTS.md"
    out.write_text("prose\n<!-- table: bench/real_faces.py -->\nold table\n<!-- end of table -->\n")
    wrong = tmp_path / "typo"
    with pytest.raises(SystemExit, match=rf"--work {wrong}: no converted data"):
        bench.main(["--fer", str(fer), "--ckplus", str(ck), "--work", str(wrong), "--seeds", "0",
                    "--variants", "plain", "--output", str(out), "--render-only"])
    assert not (wrong / "data").exists()  # nothing converted
    assert "old table" in out.read_text()
    # Converted, but no run of those asked for finished: the table is not replaced by an empty one.
    bench.convert(bench.parse_args(["--fer", str(fer), "--ckplus", str(ck), "--val-fraction",
                                    "0.25"]), wrong)
    with pytest.raises(SystemExit, match=r"no finished run.*plain_s0/bench_result\.json"):
        bench.main(["--fer", str(fer), "--ckplus", str(ck), "--work", str(wrong), "--seeds", "0",
                    "--variants", "plain", "--output", str(out), "--render-only",
                    "--val-fraction", "0.25"])
    assert "old table" in out.read_text()
    assert not (wrong / "pixels.json").exists()  # the raw-pixel probe is not fitted either
