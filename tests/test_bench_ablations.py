"""bench/ablations.py: what it runs for each variant and where its tables go."""
import json
import pathlib

import pytest

from tests.conftest import load_bench_script

bench = load_bench_script("ablations")
markdown_tables = load_bench_script("markdown_tables")


def _flags(cmd):
    return dict(a[2:].split("=", 1) for a in cmd if a.startswith("--") and "=" in a)


def test_a_fine_tuning_corpus_of_its_own_trains_there_and_evaluates_on_the_pretrains_split(tmp_path):
    args = bench.parse_args(["--finetune-au-drop", "0.5", "--config.train.log_every=5"])
    pre, workdir = tmp_path / "pretrain", tmp_path / "local_s1"
    corpus = tmp_path / "finetune_corpus" / "data" / "train"
    flags = _flags(bench.finetune_command(args, pre, workdir, "local", 1, train_dir=corpus))
    assert flags["config.data.train_dir"] == str(corpus)
    assert flags["config.eval.zero_shot_dir"] == str(workdir / "data" / "eval")
    assert flags["config.init_from"] == str(pre / "export")
    assert flags["config.train.seed"] == flags["config.data.shuffle_seed"] == "1"
    assert flags["config.train.log_every"] == "5"
    usual = _flags(bench.finetune_command(bench.parse_args([]), pre, workdir, "local", 1))
    assert "config.data.train_dir" not in usual and "config.eval.zero_shot_dir" not in usual
    with pytest.raises(SystemExit):
        bench.parse_args(["--finetune-au-drop", "1"])


def test_a_finished_run_of_another_corpus_is_not_reused(tmp_path):
    workdir = tmp_path / "summary_s0"
    workdir.mkdir()
    (workdir / "ablation_result.json").write_text(json.dumps(
        {"variant": "summary", "seed": 0, "train_seconds": 1.0, "zero_shot": 0.5}))
    usual = bench.parse_args([])
    assert bench.run_one(usual, tmp_path, tmp_path / "pretrain", "summary", 0)["zero_shot"] == 0.5
    other = bench.parse_args(["--finetune-au-drop", "0.5"])
    with pytest.raises(SystemExit, match="--finetune-au-drop 0.0, not 0.5: use another --work"):
        bench.run_one(other, tmp_path, tmp_path / "pretrain", "summary", 0)
    looks = bench.parse_args(["--finetune-appearance-captions"])
    with pytest.raises(SystemExit, match="--finetune-appearance-captions False, not True"):
        bench.run_one(looks, tmp_path, tmp_path / "pretrain", "summary", 0)


def test_the_fine_tuning_corpus_gets_each_requested_setting():
    assert bench.finetune_corpus_settings(bench.parse_args([])) == []
    both = bench.parse_args(["--finetune-au-drop", "0.5", "--finetune-appearance-captions"])
    assert bench.finetune_corpus_settings(both) == [
        "--config.data.synthetic.au_drop_probability=0.5",
        "--config.data.synthetic.appearance_captions=True"]
    text = bench.render([], bench.parse_args(["--finetune-appearance-captions"]), "cmd")
    assert "also name what each face looks like" in text


def test_each_tables_marker_replaces_only_its_own_table(tmp_path):
    path = pathlib.Path(tmp_path / "ABLATIONS.md")
    first = markdown_tables.begin_marker("bench/ablations.py")
    second = markdown_tables.begin_marker("bench/ablations.py --finetune-au-drop 0.5")
    path.write_text(f"# Title\n\nprose before\n\n{first}\nold table\n{markdown_tables.END}\n\n"
                    "prose after\n")
    markdown_tables.write_table(path, "second table\n", second)
    text = path.read_text()
    assert "old table" in text and "prose after" in text and text.index(second) > text.index("prose after")
    markdown_tables.write_table(path, "new first table\n", first)
    markdown_tables.write_table(path, "new second table\n", second)
    text = path.read_text()
    assert "old table" not in text and "second table\n" not in text.replace("new second table\n", "")
    assert text.count(markdown_tables.END) == 2
    assert text.startswith("# Title\n\nprose before\n\n" + first + "\nnew first table\n")
    assert "prose after" in text and text.rstrip().endswith("new second table\n" + markdown_tables.END)


def test_a_finished_run_of_another_length_is_not_reused(tmp_path):
    workdir = tmp_path / "summary_s0"
    workdir.mkdir()
    (workdir / "ablation_result.json").write_text(json.dumps(
        {"variant": "summary", "seed": 0, "train_seconds": 1.0, "zero_shot": 0.5}))
    # A record without the field: the run's metrics say how many steps it trained.
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in (
        {"step": 300, "kind": "train", "loss": 1.0}, {"step": 300, "kind": "zero_shot"})))
    assert bench.run_one(bench.parse_args([]), tmp_path, tmp_path / "pretrain", "summary", 0)
    longer = bench.parse_args(["--finetune-steps", "1500"])
    with pytest.raises(SystemExit, match="fine-tuned for 300 steps, not --finetune-steps 1500"):
        bench.run_one(longer, tmp_path, tmp_path / "pretrain", "summary", 0)
    (workdir / "ablation_result.json").write_text(json.dumps(
        {"variant": "summary", "seed": 0, "train_seconds": 1.0, "finetune_steps": 1500}))
    assert bench.run_one(longer, tmp_path, tmp_path / "pretrain", "summary", 0)


def test_a_longer_fine_tune_gets_a_table_of_its_own():
    markers = {bench.table_marker(bench.parse_args(a)) for a in (
        [], ["--finetune-steps", "1500"], ["--finetune-appearance-captions"],
        ["--finetune-steps", "1500", "--finetune-appearance-captions"])}
    assert len(markers) == 4
    assert bench.table_marker(bench.parse_args([])) == "bench/ablations.py"
    assert bench.table_marker(bench.parse_args(["--finetune-appearance-captions"])) == (
        "bench/ablations.py --finetune-appearance-captions")


def test_a_finished_run_with_other_config_overrides_is_not_reused(tmp_path):
    workdir = tmp_path / "mining_s0"
    workdir.mkdir()
    threshold = ["--config.loss.mining.threshold=0.99"]
    (workdir / "ablation_result.json").write_text(json.dumps(
        {"variant": "mining", "seed": 0, "train_seconds": 1.0, "finetune_steps": 300,
         "config_overrides": threshold}))
    assert bench.run_one(bench.parse_args(threshold), tmp_path, tmp_path / "pretrain", "mining", 0)
    with pytest.raises(SystemExit, match="had --config.loss.mining.threshold=0.99"):
        bench.run_one(bench.parse_args([]), tmp_path, tmp_path / "pretrain", "mining", 0)
    # A record older than the field: the run's config.json says what it trained with.
    (workdir / "ablation_result.json").write_text(json.dumps(
        {"variant": "mining", "seed": 0, "train_seconds": 1.0, "finetune_steps": 300}))
    (workdir / "config.json").write_text(json.dumps(
        {"loss": {"mining": {"threshold": 0.9, "terms": ["global", "summary"]}}}))
    assert bench.run_one(bench.parse_args(["--config.loss.mining.threshold=0.9"]), tmp_path,
                         tmp_path / "pretrain", "mining", 0)
    assert bench.run_one(bench.parse_args(["--config.loss.mining.terms=('global', 'summary')"]),
                         tmp_path, tmp_path / "pretrain", "mining", 0)
    with pytest.raises(SystemExit, match="loss.mining.threshold was 0.9, not 0.99"):
        bench.run_one(bench.parse_args(threshold), tmp_path, tmp_path / "pretrain", "mining", 0)


def test_config_overrides_get_a_table_of_their_own(tmp_path):
    args = bench.parse_args(["--finetune-steps", "1500", "--config.loss.mining.threshold=0.99"])
    assert bench.table_marker(args) == (
        "bench/ablations.py --finetune-steps 1500 --config.loss.mining.threshold=0.99")
    two = ["--config.loss.mining.threshold=0.99", "--config.loss.mining.top_k=4"]
    assert bench.table_marker(bench.parse_args(two)) == bench.table_marker(
        bench.parse_args(two[::-1]))
    result = {"variant": "summary", "seed": 0, "train_seconds": 60.0, "zero_shot": 0.5}
    assert "Every run took `--config.loss.mining.threshold=0.99`." in bench.render(
        [result], args, "python bench/ablations.py")


def test_a_pretrain_of_another_length_is_not_reused_and_other_overrides_are_named(
        tmp_path, capsys):
    pre = tmp_path / "pretrain"
    (pre / "export").mkdir(parents=True)
    (pre / "config.json").write_text(json.dumps(
        {"train": {"num_steps": 700}, "optim": {"learning_rate": 5e-4}}))
    assert bench.pretrain(bench.parse_args([]), tmp_path) == pre
    assert bench.pretrain(bench.parse_args(["--config.optim.learning_rate=5e-4"]), tmp_path) == pre
    with pytest.raises(SystemExit, match="train.num_steps was 700, not 1000"):
        bench.pretrain(bench.parse_args(["--pretrain-steps", "1000"]), tmp_path)
    assert "was 0.0005" not in capsys.readouterr().out
    # A fine-tune-only override beside a reused pretrain is allowed, and said.
    assert bench.pretrain(bench.parse_args(["--config.optim.learning_rate=1e-3"]), tmp_path) == pre
    assert "made without this override: optim.learning_rate was 0.0005, not 1e-3" in (
        capsys.readouterr().out)
    # Rendering trains nothing, so the finished fine-tunes' own checks are what count there.
    assert bench.pretrain(bench.parse_args(["--pretrain-steps", "1000", "--render-only"]),
                          tmp_path) == pre
    (pre / "config.json").unlink()
    assert bench.pretrain(bench.parse_args(["--pretrain-steps", "1000"]), tmp_path) == pre
    assert "cannot be checked" in capsys.readouterr().out


@pytest.mark.parametrize("seeds", [["0", "-1"], ["4294967296"], ["1.5"]])
def test_seeds_out_of_range_are_refused_naming_the_option(seeds, capsys):
    """The training pipeline refused such a seed in the first fine-tune, after the pretrain."""
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--seeds", *seeds])
    assert exit_info.value.code == 2
    assert "argument --seeds: must be an integer" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    # A repeated seed reused its finished fine-tune and counted it twice in the mean and std.
    (["--seeds", "2", "2"], "--seeds repeats 2: each run is counted once"),
    (["--variants", "full", "full"], "--variants repeats full: each run is counted once"),
])
def test_repeated_seeds_and_variants_are_refused(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, named", [
    (["--seeds", "0", "--seeds", "1"], "--seeds"),
    (["--finetune-steps", "600", "--finetune-steps=900"], "--finetune-steps"),
    (["--config.loss.mining.threshold=0.9", "--config.loss.mining.threshold=0.99"],
     "--config.loss.mining.threshold"),
])
def test_an_option_given_twice_is_refused_by_name(capsys, argv, named):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert named in error and "once" in error


def test_render_only_without_finished_runs_keeps_the_table(tmp_path):
    (tmp_path / "pretrain" / "export").mkdir(parents=True)
    out = tmp_path / "ABLATIONS.md"
    out.write_text("<!-- table: bench/ablations.py -->\nold table\n<!-- end of table -->\n")
    with pytest.raises(SystemExit, match=r"no finished run.*summary_s0"):
        bench.main(["--work", str(tmp_path), "--variants", "summary", "--seeds", "0",
                    "--output", str(out), "--render-only"])
    assert "old table" in out.read_text()
