"""What a preempted or broken machine leaves in a workdir, and what the same command does with it
next: a synthetic corpus cut short, a checkpoint step damaged after it was written, a disk that
fills up during a save, an export whose checkpoints are gone. (Exact resume after SIGKILL and the
SIGTERM checkpoint are in tests/test_train.py.)"""
import json
import os
import pathlib
import subprocess

import grain
import numpy as np
import pytest

from emocap_jax.cli_errors import UsageError


class _Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs, no except clause catches it."""


class _PipelineBuilt(Exception):
    pass


def _tiny_synthetic_config():
    from configs import tiny

    config = tiny.get_config()
    config.data.synthetic.num = 16
    config.data.synthetic.size = 32
    config.data.synthetic.eval_per_class = 1
    return config


def test_a_corpus_generation_cut_short_is_generated_again_by_the_next_run(tmp_path, monkeypatch):
    """A run killed while it generated its synthetic corpus left WORKDIR/synthetic with images and
    no corpus.json; the same command then stopped with the generator's "output directory ... is not
    empty and holds no corpus.json" traceback, and the workdir could not be resumed."""
    from emocap_jax import train
    from emocap_jax.data.synthetic import corpus as corpus_module

    real = corpus_module.generate_corpus

    def killed_midway(output_dir, **kwargs):
        out = pathlib.Path(output_dir)
        (out / "images").mkdir(parents=True)
        (out / "images" / "syn_00000.jpg").write_bytes(b"\xff\xd8 half a face")
        raise _Killed

    config = _tiny_synthetic_config()
    monkeypatch.setattr(train, "generate_corpus", killed_midway)
    with pytest.raises(_Killed):
        train.prepare_data(config, str(tmp_path))
    monkeypatch.setattr(train, "generate_corpus", real)
    train_dir, eval_dir = train.prepare_data(config, str(tmp_path))
    assert json.loads((tmp_path / "synthetic" / "corpus.json").read_text())["arguments"]["num"] == 16
    assert (pathlib.Path(train_dir) / "metadata.json").is_file()
    assert (pathlib.Path(eval_dir) / "metadata.json").is_file()


def test_a_corpus_folder_without_corpus_json_is_one_line_naming_it(tmp_path):
    """A WORKDIR/synthetic the generator did not finish (left by an older version, which wrote
    there directly) is named, with what to do, instead of the generator's traceback."""
    from emocap_jax import train

    (tmp_path / "synthetic" / "images").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"synthetic holds no corpus\.json: .*interrupted.*delete "
                                         r"it"):
        train.prepare_data(_tiny_synthetic_config(), str(tmp_path))


def _iterator():
    it = iter(grain.MapDataset.range(100).to_iter_dataset())
    next(it)
    return it


def _checkpoints(tmp_path, steps=(2, 4)):
    """A checkpoints folder with `steps`, each a small state, a Grain iterator and a config."""
    from configs import tiny
    from emocap_jax.checkpoint import TrainCheckpointer

    config_json = tiny.get_config().to_json_best_effort()
    checkpointer = TrainCheckpointer(tmp_path / "checkpoints", async_save=False)
    for step in steps:
        checkpointer.save(step, {"w": np.full(64, float(step))}, _iterator(), config_json,
                          force=True)
    checkpointer.close()
    return tmp_path / "checkpoints"


@pytest.mark.parametrize("damage, what", [
    (lambda d: [p.unlink() if p.is_file() else __import__("shutil").rmtree(p)
                for p in list(d.iterdir())], r"lacks its state"),
    (lambda d: __import__("shutil").rmtree(d / "state"), r"lacks its state"),
    (lambda d: (d / "config" / "metadata").write_text(""), r"Expecting value"),
])
def test_a_damaged_last_step_is_one_line_naming_it_before_the_pipeline_starts(
        tmp_path, monkeypatch, damage, what):
    """A step folder emptied or with an item missing (a copy or sync cut short) used to end in
    Orbax's `KeyError: 'Item "state" was not found in the checkpoint'` (after a warning that the
    checkpoint predated local_group_size); a truncated config in a JSONDecodeError traceback."""
    from configs import tiny
    from emocap_jax import train

    damage(_checkpoints(tmp_path) / "4")
    config = tiny.get_config()
    config.data.train_dir = ""
    monkeypatch.setattr(train, "prepare_data", lambda c, w: ("train", ""))
    monkeypatch.setattr(train, "check_loss_settings", lambda *a: None)
    monkeypatch.setattr(train, "make_train_iterator",
                        lambda *a, **k: (_ for _ in ()).throw(_PipelineBuilt()))
    with pytest.raises(UsageError, match=rf"checkpoint step 4 \({tmp_path}/checkpoints/4\).*"
                                         rf"{what}.*move {tmp_path}/checkpoints/4 out of "
                                         rf"{tmp_path}/checkpoints to resume from step 2"):
        train.train_and_evaluate(config, str(tmp_path))


def test_a_truncated_array_file_is_one_line_naming_the_step(tmp_path):
    """A step whose array data was cut short (its folder intact) failed in the restore with
    TensorStore's OUT_OF_RANGE traceback."""
    from emocap_jax.checkpoint import TrainCheckpointer, abstract_like

    directory = _checkpoints(tmp_path)
    for f in (directory / "4" / "state" / "d").iterdir():
        os.truncate(f, 10)
    checkpointer = TrainCheckpointer(directory, async_save=False)
    try:
        with pytest.raises(UsageError, match=rf"checkpoint step 4 \({directory}/4\) cannot be "
                                             rf"read: .*move {directory}/4 out of {directory} "
                                             rf"to resume from step 2"):
            checkpointer.restore(4, abstract_like({"w": np.zeros(64)}), _iterator(), 1)
        assert float(checkpointer.restore(2, abstract_like({"w": np.zeros(64)}), _iterator(),
                                          1)["w"][0]) == 2.0
    finally:
        checkpointer.close()


def test_an_export_without_checkpoints_is_not_trained_over(tmp_path, monkeypatch):
    """A finished run whose checkpoints were deleted (to save space) was trained again from step 0
    by the same command, with any config, replacing its export and cutting its metrics.jsonl."""
    from configs import tiny
    from emocap_jax import train

    (tmp_path / "export" / "params").mkdir(parents=True)
    (tmp_path / "export" / "model_config.json").write_text("{}")
    config = tiny.get_config()
    monkeypatch.setattr(train, "prepare_data", lambda c, w: ("train", ""))
    monkeypatch.setattr(train, "check_loss_settings", lambda *a: None)
    monkeypatch.setattr(train, "make_train_iterator",
                        lambda *a, **k: (_ for _ in ()).throw(_PipelineBuilt()))
    with pytest.raises(UsageError, match=rf"{tmp_path} holds an export \({tmp_path}/export\) "
                                         rf"and no checkpoint to resume from.*--mode=eval"):
        train.train_and_evaluate(config, str(tmp_path))
    # With the export moved away the run starts (and builds its pipeline).
    (tmp_path / "export").rename(tmp_path / "old_export")
    with pytest.raises(_PipelineBuilt):
        train.train_and_evaluate(config, str(tmp_path))


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (needs the right to mount; skipped without it)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                            capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_during_a_save_is_one_line_naming_the_last_complete_step(small_disk):
    """An asynchronous save that ran out of space raised Orbax's RESOURCE_EXHAUSTED traceback at
    the next save, and again from close() in the loop's `finally`."""
    from configs import tiny
    from emocap_jax.checkpoint import TrainCheckpointer

    config_json = tiny.get_config().to_json_best_effort()
    checkpointer = TrainCheckpointer(small_disk / "checkpoints", async_save=True)
    checkpointer.save(1, {"w": np.zeros(16)}, _iterator(), config_json, force=True)
    checkpointer.save(2, {"w": np.random.default_rng(0).random(1 << 16)}, _iterator(),
                      config_json, force=True)
    with pytest.raises(UsageError, match=r"checkpoint step 2 could not be written to .*"
                                         r"(RESOURCE_EXHAUSTED|No space left).*step 1 is the "
                                         r"newest complete checkpoint"):
        checkpointer.save(3, {"w": np.zeros(16)}, _iterator(), config_json, force=True)
    checkpointer.close()  # the failure was reported once: closing does not raise it again
    assert TrainCheckpointer(small_disk / "checkpoints", async_save=False).latest_step() == 1
