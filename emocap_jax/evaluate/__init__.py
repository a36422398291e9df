"""Evaluation: metrics, protocols, the benchmark registry and reports.

    registry.py        every benchmark: class order, prompts, folds, the paper's numbers
    prompts.py         prompt words, templates, class descriptions, action-unit prompts
    features.py        Encoder: sharded, padded image / text features, each record once
    zero_shot.py       zero-shot scores (templates in embedding space, averaged logits,
                       descriptions), on feature arrays
    linear_probe.py    logistic regression on frozen features, subject-independent folds
    few_shot.py        k-shot probes averaged over seeds
    au_detection.py    per-AU positive vs negative prompts, per-AU F1
    retrieval.py       image <-> caption recall@k
    multiple_choice.py questions.jsonl, closest option, accuracy
    metrics.py         UAR, WAR, macro-F1, confusion matrices, multi-label F1, recall@k
    runner.py          one benchmark x protocol with a model -> result dict
    report.py          result files, confusion PNGs, the per-checkpoint Markdown / CSV report
    suite.py           config.eval.benchmarks for `--mode=eval`
    synthetic_benchmarks.py  synthetic basic / compound / video splits with questions
    cli.py             `python -m emocap_jax.evaluate`
"""
