"""bench/train_step.py: pooling of alternating rounds into one table row, the pipeline-fed timing
and the model FLOPs that MFU is computed from."""
import math

import jax
import jax.numpy as jnp
import pytest

from emocap_jax import losses
from emocap_jax.models.clip import CLIP, init_params, l2_normalize
from emocap_jax.models.config import CLIPConfig, TextConfig, VisionConfig, variant
from tests.conftest import load_bench_script

bench = load_bench_script("train_step")


def _round(times, peak, faults):
    return {"impl": "x", **bench._summary(times), "peak_bytes": peak, "loss": 1.0,
            "minor_faults_per_step": faults, "sys_s_per_step": 1.0, "user_s_per_step": 2.0}


def test_rounds_pool_every_timed_step_and_keep_the_highest_peak():
    merged = bench.merge_rounds([_round([5.0, 1.0, 2.0], 10, 100), _round([4.0, 3.0, 6.0], 7, 300)])
    assert merged["median_s"] == 3.5          # median of 1..6, not the median of the two medians
    assert (merged["min_s"], merged["max_s"], merged["steps"], merged["rounds"]) == (1.0, 6.0, 6, 2)
    assert merged["peak_bytes"] == 10
    assert merged["minor_faults_per_step"] == 200


def test_a_failed_round_is_left_out_and_all_failed_reports_the_error():
    ok = _round([2.0, 4.0], 5, 0)
    assert bench.merge_rounds([{"impl": "x", "error": "boom"}, ok])["median_s"] == 3.0
    assert "error" in bench.merge_rounds([{"impl": "x", "error": "boom"}])


def _args(tmp_path, **extra):
    import argparse
    return argparse.Namespace(model="tiny", batch=8, precision="fp32", steps=2, warmup=1,
                              lr=1e-3, data=None, data_workers=0, **extra)


def test_the_benchmarked_step_is_the_projects_global_loss_step_and_it_learns(tmp_path):
    """emocap_step builds its loss settings from configs/default.py (a hand-made stand-in broke
    when the loss config grew fields): the step runs and lowers the loss on its fixed batch."""
    import jax

    cfg, step_fn, state, batch = bench.emocap_step(_args(tmp_path), "full", "auto")
    losses = []
    for _ in range(5):
        state, metrics = step_fn(state, batch)
        losses.append(float(jax.device_get(metrics["loss"])))
    assert cfg.vision.image_size == batch["image"].shape[1]
    assert losses[-1] < losses[0], losses


def test_the_pipeline_fed_mode_reports_wall_time_and_data_wait(tmp_path):
    """--data: the same compiled step runs on batches of the Grain training pipeline; the row
    reports a wall time per step and the share of it spent waiting for data."""
    from emocap_jax.data.manifest import convert_manifest
    from emocap_jax.data.synthetic.corpus import generate_corpus

    generate_corpus(tmp_path / "corpus", 24, seed=0, size=40, eval_per_class=0)
    data_dir = tmp_path / "tfrecords"
    convert_manifest(tmp_path / "corpus" / "manifest.jsonl", tmp_path / "corpus", data_dir,
                     num_shards=2)
    args = _args(tmp_path)
    args.data, args.steps = str(data_dir), 4
    result = bench.run_emocap(args, "full", "auto")
    fed = result["fed"]
    # The row's time is the mean over the timed steps, each step timed from the readiness of the
    # previous result to its own: the mean lies between the fastest and the slowest step.
    assert 0 < fed["min_s"] <= fed["median_s"] <= fed["max_s"], fed
    assert 0.0 <= fed["data_wait_fraction"] <= 1.0
    assert fed["workers"] == 0
    merged = bench.merge_rounds([result, result])
    assert merged["fed"]["median_s"] == fed["median_s"]


def test_each_fed_step_is_timed_from_the_previous_result_to_its_own(tmp_path, monkeypatch):
    """With one step in flight a loop turn is not a step: the first turn finds its previous step
    long done and the last step ends after the loop. A stand-in device that runs each step for
    exactly 0.2 s, one after the other, must show every step at about 0.2 s (the bounds leave room
    for a late wake-up on a busy machine; the old timing gave a first step of a few ms)."""
    import time
    import types

    import numpy as np

    from emocap_jax.data import pipeline

    step_s, steps = 0.2, 4

    class Pending:  # a step's result: ready once the stand-in device has run it
        def __init__(self, ready_at):
            self.ready_at = ready_at

        def block_until_ready(self):
            time.sleep(max(0.0, self.ready_at - time.perf_counter()))
            return self

    device_free_at = [0.0]

    def compiled(state, batch):  # returns at once, like a dispatched XLA computation
        start = max(time.perf_counter(), device_free_at[0])
        device_free_at[0] = start + step_s
        return state, {"loss": Pending(device_free_at[0])}

    def batches(*unused_args, **unused_kwargs):
        while True:
            yield {"image": np.zeros((2, 4, 4, 3), np.uint8),
                   "global_tokens": np.zeros((2, 8), np.int32)}

    monkeypatch.setattr(pipeline, "make_train_iterator", batches)
    args = _args(tmp_path)
    args.data, args.steps = str(tmp_path), steps
    cfg = types.SimpleNamespace(vision=types.SimpleNamespace(image_size=4),
                                text=types.SimpleNamespace(context_length=8))
    fed = bench.run_emocap_fed(args, cfg, compiled, state=None)
    assert 0.5 * step_s <= fed["min_s"] <= fed["max_s"] <= 3 * step_s, fed
    assert step_s <= fed["median_s"] <= 2 * step_s, fed  # a sleep never ends early


# ------------------------------------------------------------------------------- model FLOPs

def test_model_flops_of_vit_b16_counted_by_hand():
    """ViT-B/16 + the 77-token text tower at batch 4, each product written out (2 FLOPs per
    multiply-add): per layer q/k/v, output projection, the two MLP matmuls, q.k^T and probs.v."""
    b, d = 4, 512
    t, w, m = 197, 768, 3072                        # image tower: 196 patches + class token
    vision = 12 * (2 * t * w * 3 * w + 2 * t * w * w + 2 * t * w * m + 2 * t * m * w
                   + 2 * t * t * w + 2 * t * t * w)
    vision += 2 * 196 * (16 * 16 * 3) * w          # patch embedding
    vision += 2 * w * d                              # projection of the class token
    t, w, m = 77, 512, 2048                          # text tower
    text = 12 * (2 * t * w * 3 * w + 2 * t * w * w + 2 * t * w * m + 2 * t * m * w
                 + 2 * t * t * w + 2 * t * t * w)
    text += 2 * w * d                                # projection of the end-of-text token
    logits = 2 * b * b * d                           # the [B, B] logits, once
    assert bench.forward_flops(variant("ViT-B-16"), b) == b * (vision + text) + logits
    # 3x forward at batch 256, as PERFORMANCE.md's H200 table quotes it.
    assert round(3 * bench.forward_flops(variant("ViT-B-16"), 256) / 1e12, 2) == 31.55


def _matmul_flops(jaxpr) -> int:
    """2 x multiply-adds of every dot_general in a jaxpr, a scan's body counted once per layer."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
            lhs, rhs = (v.aval.shape for v in eqn.invars)
            rhs_free = [n for i, n in enumerate(rhs) if i not in rhs_contract + rhs_batch]
            total += 2 * math.prod(lhs) * math.prod(rhs_free)
        assert eqn.primitive.name != "conv_general_dilated", "a convolution is not counted"
        times = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += times * _matmul_flops(inner)
    return total


def _global_loss_fn(cfg):
    model = CLIP(cfg)

    def loss(params, images, tokens):  # the bench's objective: both towers, global InfoNCE
        image = model.apply({"params": params}, images, method=CLIP.encode_image)
        text = model.apply({"params": params}, tokens, method=CLIP.encode_text)
        return losses.global_contrastive_loss(l2_normalize(image), l2_normalize(text), 1.0)
    return loss


def _inputs(cfg, b):
    v, t = cfg.vision, cfg.text
    return (jnp.zeros((b, v.image_size, v.image_size, 3), jnp.uint8),
            jnp.ones((b, t.context_length), jnp.int32))


def test_model_flops_equal_the_matmuls_the_model_traces():
    """Against the model itself: every matmul of the traced forward pass (towers of 2 and 3
    scanned layers, the loss's logits), less the projection of the patch tokens, which the global
    objective discards (the formula, like open_clip's step, projects the pooled token only)."""
    cfg = CLIPConfig(embed_dim=24, vision=VisionConfig(32, 8, 64, 2, 2, 256),
                     text=TextConfig(16, 1000, 32, 3, 2, 128))
    b = 4
    params = init_params(cfg, jax.random.PRNGKey(0))
    traced = _matmul_flops(jax.make_jaxpr(_global_loss_fn(cfg))(params, *_inputs(cfg, b)).jaxpr)
    patch_tokens_projection = 2 * b * cfg.vision.num_patches * cfg.vision.width * cfg.embed_dim
    assert bench.forward_flops(cfg, b) == traced - patch_tokens_projection


def test_three_times_the_forward_is_xlas_count_of_a_training_step():
    """The MFU convention (forward + backward = 3x the forward matmuls) against XLA's own count of
    the compiled gradient, which also counts element-wise work (hence the slack). One layer per
    tower: XLA's cost analysis counts a scanned layer's body once."""
    cfg = CLIPConfig(embed_dim=128, vision=VisionConfig(64, 8, 256, 1, 4, 1024),
                     text=TextConfig(77, 1000, 256, 1, 4, 1024))
    b = 16
    params = init_params(cfg, jax.random.PRNGKey(0))
    cost = jax.jit(jax.grad(_global_loss_fn(cfg))).lower(params, *_inputs(cfg, b)).compile() \
        .cost_analysis()
    xla_flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
    assert 0.95 < 3 * bench.forward_flops(cfg, b) / xla_flops <= 1.0, xla_flops


def test_the_peak_is_the_dense_one_of_the_exact_part():
    assert bench._gpu_peak("NVIDIA H200", "bf16") == 989e12       # not the sparse 1979
    assert bench._gpu_peak("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert bench._gpu_peak("NVIDIA H100 PCIe", "bf16") == 756e12
    assert bench._gpu_peak("NVIDIA H100 PCIe", "fp32") == 378e12
    assert bench._gpu_peak("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert bench._gpu_peak("Tesla T4", "bf16") is None              # MFU printed as "-"


@pytest.mark.parametrize("lr", ["0", "-0.5", "nan", "inf"])
def test_a_learning_rate_that_is_not_finite_and_positive_is_refused(lr, monkeypatch, capsys):
    """torch refused a negative rate in every open_clip row ("failed: ValueError"); optax took
    any, and NaN or inf made the emocap_jax step's parameters NaN."""
    monkeypatch.setattr("sys.argv", ["train_step.py", "--lr", lr])

    def no_worker(*args, **kwargs):
        raise AssertionError(f"--lr {lr} was taken: a benchmark worker started")

    monkeypatch.setattr(bench.subprocess, "run", no_worker)
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 2
    assert f"argument --lr: must be in (0, inf), got '{lr}'" in capsys.readouterr().err
