"""Several real JAX processes as one run, on one machine: each test starts `python -m
emocap_jax.main` (or a small script) as 2 processes x 2 simulated CPU devices joined through
`--coordinator_address --num_processes --process_id` (gloo collectives), and compares with 1 process
x 4 devices where a result must not depend on the layout.

Selected with `-m multiprocess`; the whole file runs in CI with the rest of the suite. The runs
share one persistent compilation cache, and use the same step count so that most of them reuse the
compiled train step.
"""
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

# Every training run has these (the learning-rate schedule depends on the step count), so
# that all of them after the first of each device layout find the train step compiled.
NUM_STEPS, CHECKPOINT = 4, 2
STEPS = [f"--config.train.num_steps={NUM_STEPS}", f"--config.train.checkpoint_every={CHECKPOINT}"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A small synthetic corpus: (train dir, eval dir, eval dir of 13 records: a size that divides
    neither the 4 devices nor the 2 processes)."""
    from emocap_jax.data.manifest import convert_manifest
    from emocap_jax.data.synthetic.corpus import generate_corpus

    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root / "synthetic", num=64, seed=0, size=32, eval_per_class=2, workers=1)
    classes = json.loads((root / "synthetic" / "corpus.json").read_text())["classes"]
    convert_manifest(root / "synthetic" / "manifest.jsonl", root / "synthetic", root / "train",
                     num_shards=4, workers=1, progress=False)
    eval_src = root / "synthetic" / "eval"
    convert_manifest(eval_src / "manifest.jsonl", eval_src, root / "eval", num_shards=2,
                     workers=1, progress=False, classes=classes)
    lines = (eval_src / "manifest.jsonl").read_text().splitlines()[:13]
    (eval_src / "manifest13.jsonl").write_text("\n".join(lines) + "\n")
    convert_manifest(eval_src / "manifest13.jsonl", eval_src, root / "eval13", num_shards=3,
                     workers=1, progress=False, classes=classes)
    return str(root / "train"), str(root / "eval"), str(root / "eval13")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax_cache"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _train_command(workdir, datasets, cache_dir, *overrides, eval_dir=None):
    train_dir, default_eval_dir, _ = datasets
    eval_dir = eval_dir or default_eval_dir
    return [sys.executable, "-m", "emocap_jax.main", "--config=configs/tiny.py",
            f"--workdir={workdir}", f"--config.data.train_dir={train_dir}",
            f"--config.eval.zero_shot_dir={eval_dir}", "--config.model.vision.image_size=32",
            f"--config.train.compilation_cache_dir={cache_dir}", "--config.train.log_every=1",
            "--config.data.worker_count=1", *overrides]


class Run:
    """The processes of one run; stdout and stderr go to files beside the workdir."""

    def __init__(self, cmd, num_processes: int, logs, devices: int = 2, env_of=None,
                 heartbeat: int = 0):
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        self.procs = []
        for i in range(num_processes):
            flags = [] if num_processes == 1 else [
                f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
                f"--process_id={i}"] + ([f"--heartbeat_timeout_seconds={heartbeat}"]
                                        if heartbeat else [])
            extra = env_of(i) if env_of else {}
            self.procs.append(subprocess.Popen(
                cmd + flags, cwd=REPO_ROOT, env=_env(devices, **extra),
                stdout=(logs / f"out{i}").open("w"), stderr=(logs / f"err{i}").open("w")))

    def out(self, i):
        return (self.logs / f"out{i}").read_text()

    def err(self, i):
        return (self.logs / f"err{i}").read_text()

    def wait(self, timeout=600):
        deadline = time.time() + timeout
        try:
            for p in self.procs:
                p.wait(timeout=max(1, deadline - time.time()))
        finally:
            self.kill()
        return [p.returncode for p in self.procs]

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def check(self, timeout=600):
        codes = self.wait(timeout)
        assert codes == [0] * len(codes), "\n".join(self.err(i)[-3000:] for i in
                                                   range(len(codes)))


def _train_losses(workdir):
    losses = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "train":
            losses.setdefault(rec["step"], []).append(rec["loss"])
    return losses


def _export_params(workdir):
    from emocap_jax import params_io

    params, _, description = params_io.load_params(workdir / "export")
    return params, description


def _assert_same_params(a, b, atol):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


def _one_run_wrote_everything(workdir, run: Run, steps: int):
    """One log, one checkpoint folder, one export: process 0 wrote them, and no line twice."""
    losses = _train_losses(workdir)
    assert sorted(losses) == list(range(1, steps + 1))
    assert all(len(v) == 1 for v in losses.values()), losses
    assert (workdir / "export" / "model_config.json").is_file()
    assert "zero-shot on" in run.out(0)
    assert "zero-shot on" not in run.out(1) and "step 1/" not in run.err(1)
    assert "process 0/2 " in run.err(0)  # log lines name the process that speaks
    for i in range(2):
        assert "leaked shared_memory" not in run.err(i), run.err(i)[-2000:]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, datasets, cache_dir):
    """The uninterrupted 2-process reference run (data mesh of 4 devices)."""
    workdir = tmp_path_factory.mktemp("mp") / "two"
    run = Run(_train_command(workdir, datasets, cache_dir, *STEPS), 2, workdir.parent / "logs2")
    run.check()
    return workdir, run


@pytest.mark.parametrize("mesh", ["data", "fsdp"])
def test_two_processes_train_as_one_process_of_four_devices(tmp_path, datasets, cache_dir,
                                                           two_process_run, mesh):
    """3a: 2 processes x 2 devices and 1 process x 4 devices, same global batch and seed: the same
    losses and final parameters (the sharded loss over all 4 devices), with the batch split over
    the data axis, or over data x fsdp with the parameters split over fsdp."""
    overrides = [*STEPS] + (["--config.mesh.data=2", "--config.mesh.fsdp=2"]
                            if mesh == "fsdp" else [])
    if mesh == "data":
        two, run = two_process_run
    else:
        two = tmp_path / "two"
        run = Run(_train_command(two, datasets, cache_dir, *overrides), 2, tmp_path / "logs2")
        run.check()
    _one_run_wrote_everything(two, run, NUM_STEPS)
    one = tmp_path / "one"
    single = Run(_train_command(one, datasets, cache_dir, *overrides), 1, tmp_path / "logs1",
                 devices=4)
    single.check()
    assert "leaked shared_memory" not in single.err(0), single.err(0)[-2000:]
    a, b = _train_losses(two), _train_losses(one)
    steps = range(1, NUM_STEPS + 1)
    np.testing.assert_allclose([a[s][0] for s in steps], [b[s][0] for s in steps], rtol=0,
                               atol=1e-5)
    (pa, da), (pb, db) = _export_params(two), _export_params(one)
    assert da["source"]["step"] == db["source"]["step"] == NUM_STEPS
    _assert_same_params(pa, pb, atol=1e-5)


READ_IDS = r"""
import json, sys
import numpy as np
from configs import tiny
from emocap_jax import distributed, train
from emocap_jax.data import example_codec, pipeline
from emocap_jax.tokenizers import get_tokenizer

port, process_id, train_dir, out = sys.argv[1:]
distributed.initialize(f"127.0.0.1:{port}", 2, int(process_id))
import jax
ids = []
original = pipeline._TrainExample.random_map

def with_record_number(self, data, rng):  # the record's number travels in the batch
    element = original(self, data, rng)
    element["record"] = np.int32(example_codec.decode_record(data).id.split("_")[-1])
    return element

pipeline._TrainExample.random_map = with_record_number
config = tiny.get_config()
config.data.worker_count = 0  # the patched map runs in this process
tokenizer = get_tokenizer(config.tokenizer, config.model.text.context_length)
it = train.make_train_iterator(config, tokenizer, train_dir)
num_records = 64
batches = [next(it) for _ in range(2 * num_records // config.train.global_batch_size)]
it.close()
json.dump({"process": jax.process_index(), "count": jax.process_count(),
           "epochs": [[int(r) for b in batches[:len(batches) // 2] for r in b["record"]],
                      [int(r) for b in batches[len(batches) // 2:] for r in b["record"]]]},
          open(out, "w"))
"""


def test_each_process_reads_a_disjoint_share_and_together_every_record_once(tmp_path, datasets):
    """3b: two processes, their training streams over two epochs, counted by record id."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", READ_IDS, str(port), str(i), datasets[0],
                               str(tmp_path / f"ids{i}.json")], cwd=REPO_ROOT,
                              env=_env(2, PYTHONPATH=str(REPO_ROOT)), stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    shares = [json.loads((tmp_path / f"ids{i}.json").read_text()) for i in range(2)]
    assert [(s["process"], s["count"]) for s in shares] == [(0, 2), (1, 2)]
    for epoch in range(2):
        a, b = (shares[i]["epochs"][epoch] for i in range(2))
        assert len(a) == len(b) == 32
        assert not set(a) & set(b)
        assert sorted(a + b) == list(range(64)), epoch  # every record exactly once


STEP_WITH_A_COLLECTIVE = r"""
import json, sys
import numpy as np
from configs import tiny
from emocap_jax import distributed
from emocap_jax.data import pipeline
from emocap_jax.tokenizers import get_tokenizer

port, process_id, train_dir, out = sys.argv[1:]
distributed.initialize(f"127.0.0.1:{port}", 2, int(process_id))
import jax
from jax.experimental import multihost_utils

config = tiny.get_config()
tokenizer = get_tokenizer(config.tokenizer, config.model.text.context_length)
data = pipeline.TrainPipelineConfig(
    data_dir=train_dir, image_size=32, context_length=config.model.text.context_length,
    num_epochs=1, on_corrupt="skip", read_threads=1)
valid = []
for batch in pipeline.make_train_iterator(data, tokenizer, 2):  # one row per process
    # A collective per step, as the train step has: a process that ran out would leave the
    # other one waiting here.
    valid.append(multihost_utils.process_allgather(batch["valid"]).ravel().tolist())
json.dump({"process": jax.process_index(), "valid": valid}, open(out, "w"))
"""


def test_a_step_whose_rows_are_all_skipped_keeps_both_processes_in_step(tmp_path, datasets):
    """on_corrupt="skip", num_epochs=1, one row per process: the process whose row of a step is
    the corrupt record still takes that step (its row masked out) instead of ending one step
    early while the other waits in the step's collective (before the fix: the other process
    still waited there when the 60 s below ran out)."""
    from emocap_jax.data import tfrecord
    from emocap_jax.data.shard_writer import shard_paths

    corrupt = tmp_path / "train"
    shutil.copytree(datasets[0], corrupt)
    path = shard_paths(str(corrupt))[1]
    offset = int(tfrecord.read_index(path)[3]) + tfrecord.HEADER_SIZE + 5
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x40]))
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", STEP_WITH_A_COLLECTIVE, str(port), str(i),
                               str(corrupt), str(tmp_path / f"valid{i}.json")], cwd=REPO_ROOT,
                              env=_env(1, PYTHONPATH=str(REPO_ROOT)), stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    try:
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err[-3000:]
    finally:
        for p in procs:
            p.kill()
    shares = [json.loads((tmp_path / f"valid{i}.json").read_text()) for i in range(2)]
    assert shares[0]["valid"] == shares[1]["valid"]  # the same steps, in step
    flags = np.array(shares[0]["valid"])
    assert flags.shape == (32, 2) and (~flags).sum() == 1


def _wait_until_stopped(procs, timeout=600):
    """Until every process is stopped (SIGSTOP: state T in /proc/PID/stat) or one has ended."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = []
        for p in procs:
            if p.poll() is not None:
                return False
            states.append(open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()[0])
        if all(s == "T" for s in states):
            return True
        time.sleep(0.1)
    return False


def test_both_processes_killed_after_a_checkpoint_resume_exactly(tmp_path, datasets, cache_dir,
                                                                 two_process_run):
    """3c: both processes SIGKILLed right after checkpoint 2 (both stop themselves once it is
    complete everywhere, then the test kills them); a new 2-process run resumes from it and ends
    with the losses and parameters of the uninterrupted run."""
    reference, _ = two_process_run
    workdir = tmp_path / "killed"
    cmd = _train_command(workdir, datasets, cache_dir, *STEPS)
    run = Run(cmd, 2, tmp_path / "logs_a",
              env_of=lambda i: {"EMOCAP_FAULT_SIGSTOP_AFTER_CHECKPOINT": str(CHECKPOINT)})
    try:
        assert _wait_until_stopped(run.procs), run.err(0)[-3000:] + run.err(1)[-3000:]
        for p in run.procs:
            p.send_signal(signal.SIGKILL)
        assert run.wait(60) == [-signal.SIGKILL] * 2
    finally:
        run.kill()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [str(CHECKPOINT)]
    assert not (workdir / "export").exists()
    resumed = Run(cmd, 2, tmp_path / "logs_b")
    resumed.check()
    assert "resumed from" in resumed.err(0) and f"at step {CHECKPOINT}" in resumed.err(0)
    a, b = _train_losses(reference), _train_losses(workdir)
    assert sorted(b) == list(range(1, NUM_STEPS + 1))
    after = range(CHECKPOINT + 1, NUM_STEPS + 1)
    np.testing.assert_allclose([b[s][-1] for s in after], [a[s][0] for s in after], rtol=0,
                               atol=1e-6)
    _assert_same_params(_export_params(reference)[0], _export_params(workdir)[0], atol=1e-6)


def test_a_dead_peer_ends_the_other_process_with_an_error(tmp_path, datasets, cache_dir):
    """3d: process 1 dies (SIGKILL after checkpoint 2); process 0 does not hang in its next
    collective: it exits with status 1 and one line saying another process is gone, well within
    120 s. The heartbeat timeout is 300 s here, beyond that bound: ending within it shows the
    failed collective ended process 0, not the heartbeat (which would also exit with status 134),
    and no live process is declared dead while it compiles on a loaded machine (30 s did that at
    load 15-20 on 2 cores; 60 s, used here before, left only twice that)."""
    workdir = tmp_path / "peer"
    run = Run(_train_command(workdir, datasets, cache_dir, *STEPS), 2, tmp_path / "logs",
              heartbeat=300, env_of=lambda i: {"EMOCAP_FAULT_SIGKILL_AFTER_CHECKPOINT":
                                               str(CHECKPOINT)} if i == 1 else {})
    try:
        try:
            run.procs[1].wait(timeout=600)
        except subprocess.TimeoutExpired:
            pytest.fail("process 1 did not reach checkpoint 2 within 600 s:\n"
                        + run.err(0)[-3000:] + run.err(1)[-3000:])
        died = time.time()
        assert run.procs[1].returncode == -signal.SIGKILL, run.err(1)[-3000:]
        try:
            run.procs[0].wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("process 0 still runs 120 s after process 1 died:\n" + run.err(0)[-3000:])
        took = time.time() - died
    finally:
        run.kill()
    assert run.procs[0].returncode == 1, run.err(0)[-3000:]
    lines = [line for line in run.err(0).splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "another process of this run is gone" in lines[0], \
        run.err(0)[-3000:]
    assert "Traceback" not in run.err(0)
    assert took < 120
    print(f"process 0 ended {took:.1f} s after process 1 died")


def test_sigterm_to_both_saves_the_same_step_and_exits_cleanly(tmp_path, datasets, cache_dir):
    """3e: SIGTERM (TPU maintenance) to both processes, 0.3 s apart, while the first step
    compiles: both stop after the same step, save it together and exit 0."""
    workdir = tmp_path / "preempted"
    run = Run(_train_command(workdir, datasets, cache_dir, *STEPS), 2, tmp_path / "logs")
    try:
        deadline = time.time() + 600
        while time.time() < deadline and "training steps" not in run.err(0):
            assert all(p.poll() is None for p in run.procs), run.err(0)[-3000:]
            time.sleep(0.1)
        assert "training steps" in run.err(0), "the run never reached its training loop"
        run.procs[0].send_signal(signal.SIGTERM)
        time.sleep(0.3)
        run.procs[1].send_signal(signal.SIGTERM)
        run.check(timeout=300)
    finally:
        run.kill()
    stops = []
    for i in range(2):
        said = [line for line in run.err(i).splitlines() if "stops after step" in line]
        assert len(said) == 1, run.err(i)[-3000:]
        stops.append(int(said[0].split("stops after step ")[1].split()[0]))
    assert stops[0] == stops[1] < NUM_STEPS
    assert max(_train_losses(workdir)) == stops[0]
    step_dirs = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
    assert step_dirs[-1] == stops[0]
    data = workdir / "checkpoints" / str(stops[0]) / "data"
    assert sorted(p.name for p in data.glob("process_*")) == ["process_0-of-2.json",
                                                             "process_1-of-2.json"]
    assert not (workdir / "export").exists()


def test_eval_mode_on_two_processes_counts_every_example_once(tmp_path, datasets, cache_dir,
                                                              two_process_run):
    """3f: `--mode=eval` of the same export on 2 processes and on 1, over 13 records (divides
    neither the 4 devices nor the 2 processes): each record once, the same predictions."""
    reference, _ = two_process_run
    eval13 = datasets[2]
    results = {}
    for n in (2, 1):
        workdir = tmp_path / f"eval{n}"
        shutil.copytree(reference / "export", workdir / "export")
        cmd = _train_command(workdir, datasets, cache_dir, "--mode=eval",
                             "--config.eval.batch_size=8", eval_dir=eval13)
        run = Run(cmd, n, tmp_path / f"logs{n}", devices=4 // n)
        run.check()
        report = json.loads((workdir / "zero_shot.json").read_text())
        assert report["num_examples"] == 13
        (predictions,) = (workdir / "eval" / "predictions").glob("*.csv")
        with predictions.open() as f:
            rows = list(csv.DictReader(f))
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)) == 13
        results[n] = (report, rows)
        if n == 2:
            assert "zero-shot on" in run.out(0) and "zero-shot on" not in run.out(1)
    assert results[1][1] == results[2][1]
    assert results[1][0]["uar"] == results[2][0]["uar"]


TRAINER_CHILDREN = r"""
import os, sys
pid = int(sys.argv[1])
children = []
for entry in os.listdir("/proc"):
    if entry.isdigit():
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry))
print(" ".join(map(str, children)))
"""


def _children(pid):
    out = subprocess.run([sys.executable, "-c", TRAINER_CHILDREN, str(pid)], capture_output=True,
                         text=True, check=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cmdline(pid):
    try:
        return open(f"/proc/{pid}/cmdline").read()
    except OSError:
        return ""


def test_grain_workers_exit_when_their_trainer_is_killed(tmp_path, datasets, cache_dir):
    """4: the trainer is SIGKILLed while its Grain worker process feeds it (the first batch is
    read before the train step compiles); the worker, and every other child of the trainer, is
    gone within a few seconds instead of living on with parent 1."""
    workdir = tmp_path / "orphans"
    run = Run(_train_command(workdir, datasets, cache_dir, *STEPS), 1, tmp_path / "logs",
              devices=4)
    try:
        deadline = time.time() + 300
        workers = []
        while time.time() < deadline and not workers:
            assert run.procs[0].poll() is None, run.err(0)[-3000:]
            workers = [c for c in _children(run.procs[0].pid) if "spawn_main" in _cmdline(c)]
            time.sleep(0.2)
        assert workers, "no Grain worker process started"
        time.sleep(2)  # the worker is up and reading
        children = _children(run.procs[0].pid)
        run.procs[0].send_signal(signal.SIGKILL)
        run.procs[0].wait()
        deadline = time.time() + 5
        while time.time() < deadline and any(_alive(c) for c in children):
            time.sleep(0.1)
        survivors = {c: _cmdline(c).replace("\0", " ")[:200] for c in children if _alive(c)}
        assert not survivors, f"orphaned processes outlived the trainer: {survivors}"
    finally:
        run.kill()


def test_only_a_failed_collective_with_a_dead_peer_counts_as_a_peer_gone():
    """The errors that end a process with "another process of this run is gone" (3d) are those of
    a gloo collective whose other end closed; any other runtime error keeps its traceback."""
    from emocap_jax import distributed

    gone = ("UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/tcp/pair.cc:547] "
            "Connection closed by peer [127.0.0.1]:915")
    assert distributed.is_peer_gone_error(jax.errors.JaxRuntimeError(gone))
    assert distributed.is_peer_gone_error(jax.errors.JaxRuntimeError(
        "UNKNOWN: Gloo AllReduce failed: Connection reset by peer"))
    assert not distributed.is_peer_gone_error(jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Out of memory allocating 1234 bytes"))
    assert not distributed.is_peer_gone_error(ValueError(gone))
    # One process: nothing is turned into an exit, the error propagates.
    with pytest.raises(jax.errors.JaxRuntimeError):
        with distributed.exit_when_a_peer_is_gone():
            raise jax.errors.JaxRuntimeError(gone)
