"""bench/train_step.py's pooling of alternating rounds into one table row."""
import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("bench_train_step",
                                              os.path.join(REPO, "bench", "train_step.py"))
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


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
