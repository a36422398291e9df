"""Evaluation reports: per-run result files, confusion matrices (JSON and PNG), and one report per
checkpoint (Markdown and CSV) laid out like the paper's table, with its numbers beside ours.

An output folder collects the runs of one checkpoint:

    OUT/results/<benchmark>__<protocol>.json      everything a run computed (no predictions)
    OUT/predictions/<benchmark>__<protocol>.csv   id, label, prediction (, fold) per test face
    OUT/confusion/<benchmark>__<protocol>.json    classes, counts, row-normalised rates
    OUT/confusion/<benchmark>__<protocol>.png
    OUT/report.md, OUT/report.csv                 rebuilt from every results/*.json after each run

so running the command once per benchmark into the same folder builds up the whole table.
OUT may be local or a bucket URL (emocap_jax.storage); the paths returned are pathlib.Paths for a
local OUT and URL strings for a bucket.
"""
from __future__ import annotations

import csv
import datetime
import io
import json
import os
import pathlib
from typing import Optional, Sequence

import numpy as np

import emocap_jax.storage as storage
from emocap_jax.evaluate import leakage, registry

RESULTS, PREDICTIONS, CONFUSION = "results", "predictions", "confusion"
DASH = "—"
# Questions named one by one in report.md; the rest are listed in the run's results/*.json.
_MAX_NAMED = 10


def variant(result: dict) -> str:
    """What sets a run apart from its protocol's standard form: the zero-shot prompt mode when it
    is not the default "embedding" (a "logits" or "description" run); "" otherwise. A variant
    has files of its own, so it does not replace the standard run in the output folder, and a
    row among the other evaluations, not the paper table's cell."""
    mode = (result.get("prompts") or {}).get("mode")
    return mode if mode and mode != "embedding" else ""


def slug(benchmark: str, protocol: str, variant_: str = "") -> str:
    return f"{benchmark}__{protocol}" + (f"__{variant_}" if variant_ else "")


def protocol_label(result: dict) -> str:
    """The protocol as the report names it: with its variant, e.g. "zero_shot (description
    prompts)"."""
    return result["protocol"] + (f" ({variant(result)} prompts)" if variant(result) else "")


METRIC_NAMES = {"uar": "UAR", "war": "WAR", "mean_f1": "mean F1", "accuracy": "accuracy",
                "mean_recall": "mean R@1/5/10", "pointing_accuracy": "pointing-game accuracy"}


def metric_name(metric: str) -> str:
    """Display name: "uar" -> "UAR", "uar@16-shot" -> "UAR@16-shot"."""
    head, sep, tail = metric.partition("@")
    return METRIC_NAMES.get(head, head) + sep + tail


def partial_folds(result: dict) -> str:
    """"fold 3 of 5" when a benchmark with official folds was run on only some of them (--fold),
    else "": its value is then that fold's, not the fold mean the paper reports, and must not
    pass for it beside the paper's number."""
    official = registry.get(result["benchmark"]).official_folds
    run = sorted({s.get("fold") for s in result.get("splits") or []} - {None})
    if not official or not run or set(run) >= set(official):
        return ""
    return f"fold{'s' if len(run) > 1 else ''} {', '.join(map(str, run))} of {len(official)}"


def summary_line(result: dict) -> str:
    """One line per result, as the evaluation CLI and `--mode=eval` print it."""
    value = result["value"]
    text = (f"{result['title']} {protocol_label(result)}: {metric_name(result['metric'])} "
            f"{'n/a' if value is None else f'{100 * value:.1f}%'}")
    report = result.get("report") or {}
    folds = len(result.get("folds") or [])
    if "war" in report:
        # With folds the headline UAR is the fold mean: give WAR the same way.
        war = report["fold_summary"]["war"]["mean"] if folds > 1 else report["war"]
        text += f", WAR {100 * war:.1f}%, {report['num_examples']} examples"
    if folds > 1:
        text += f", mean of {folds} folds"
    if partial_folds(result):
        text += f", {partial_folds(result)} only"
    if result.get("train_test_copies") is not None:
        text += f", {result['train_test_copies']} test faces copied from training"
    if result.get("paper"):
        text += (f" (paper: EmoCapCLIP {result['paper']['emocapclip']}, "
                 f"FLIP {result['paper']['flip']})")
    return text


def _pct(value) -> str:
    return DASH if value is None else f"{100 * value:.1f}"


def _ours(value, result: Optional[dict]) -> str:
    """A table cell: the value, with the folds it covers when it is not all of them."""
    note = partial_folds(result) if result else ""
    return _pct(value) + (f" ({note})" if note else "")


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


def _at(output, *parts: str) -> pathlib.Path | str:
    """OUT/part/...: a pathlib.Path locally, a URL string on a bucket."""
    path = storage.join(output, *parts)
    return path if storage.is_url(path) else pathlib.Path(path)


def _write(path, data: bytes) -> None:
    storage.makedirs(storage.dirname(storage.fspath(path)))
    storage.write_bytes(path, data)


def plot_confusion(cm, classes: Sequence[str], path, title: str = "") -> pathlib.Path | str:
    """Row-normalised confusion matrix (colour = recall share), with the counts written in."""
    import matplotlib  # optional heavy dependency: only the confusion-matrix PNGs need it
    matplotlib.use("Agg")  # files only: no display on TPU VMs and CI
    import matplotlib.pyplot as plt  # after use("Agg"), so no display backend is tried

    cm = np.asarray(cm, np.float64)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    size = max(4.0, 0.6 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    path = _at(path)
    _write(path, png.getvalue())
    return path


def write_result(output, result: dict) -> dict:
    """Writes one run's files; returns {kind: path}."""
    output = storage.fspath(output)
    name = slug(result["benchmark"], result["protocol"], variant(result))
    written = {}
    result = dict(result)
    predictions = result.pop("predictions", None)
    if predictions:
        path = _at(output, PREDICTIONS, f"{name}.csv")
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=list(predictions[0]))
        writer.writeheader()
        writer.writerows(predictions)
        _write(path, text.getvalue().encode("utf-8"))
        written["predictions"] = path
    report = result.get("report") or {}
    if "confusion_matrix" in report:
        cm = np.asarray(report["confusion_matrix"])
        path = _at(output, CONFUSION, f"{name}.json")
        rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        _write(path, json.dumps({"classes": report["classes"], "counts": cm.tolist(),
                                 "row_normalised": rates.round(4).tolist(),
                                 "rows": "true class", "columns": "predicted class"},
                                indent=1).encode("utf-8"))
        written["confusion_json"] = path
        written["confusion_png"] = plot_confusion(
            cm, report["classes"], _at(output, CONFUSION, f"{name}.png"),
            f"{result['title']} {result['protocol']}: UAR {_pct(report['uar'])}%")
    result["files"] = {k: storage.fspath(v)[len(output):].lstrip("/" + os.sep)
                       for k, v in written.items()}
    path = _at(output, RESULTS, f"{name}.json")
    _write(path, json.dumps(result, indent=1, default=_json_default).encode("utf-8"))
    written["result"] = path
    return written


def load_results(output, checkpoint: Optional[str] = None) -> tuple[list[dict], list[str]]:
    """The results in OUT/results (of `checkpoint` only, when given) and the files left out."""
    results, other = [], []
    folder = storage.join(output, RESULTS)
    names = storage.listdir(folder) if storage.isdir(folder) else []
    for path in [_at(folder, n) for n in names if n.endswith(".json")]:
        result = json.loads(storage.read_text(path))
        if checkpoint is not None and result.get("checkpoint") != checkpoint:
            other.append(str(path))
            continue
        results.append(result)
    return results, other


def _paper_rows(results: list[dict]) -> list[dict]:
    by_key = {(r["benchmark"], r["protocol"]): r for r in results if not variant(r)}
    rows = []
    for spec in registry.paper_table():
        result = by_key.get((spec.name, spec.paper_protocol))
        rows.append({"group": spec.group, "benchmark": spec.name, "title": spec.title,
                     "protocol": spec.paper_protocol, "metric": spec.paper.metric,
                     "ours": None if result is None else result["value"],
                     "emocapclip_b32": spec.paper.emocapclip / 100, "flip_b32": spec.paper.flip / 100,
                     "result": result})
    return rows


def _other_rows(results: list[dict]) -> list[dict]:
    paper_keys = {(s.name, s.paper_protocol) for s in registry.paper_table()}
    rows = []
    for r in results:
        if (r["benchmark"], r["protocol"]) in paper_keys and not variant(r):
            continue
        rows.append({"group": r["group"], "benchmark": r["benchmark"], "title": r["title"],
                     "protocol": protocol_label(r), "metric": r["metric"], "ours": r["value"],
                     "emocapclip_b32": None, "flip_b32": None, "result": r})
    order = {name: i for i, name in enumerate(registry.names())}
    return sorted(rows, key=lambda x: (order.get(x["benchmark"], 1e9), x["protocol"]))


def _num_examples(result: Optional[dict]):
    if not result:
        return None
    report = result.get("report") or {}
    if "num_examples" in report:
        return report["num_examples"]
    if "num_questions" in report:
        return report["num_questions"]
    folds = result.get("folds") or []
    counts = [f.get("num_examples", f.get("num_test", f.get("num_questions"))) for f in folds]
    return int(sum(c for c in counts if c is not None)) if counts else None


def render_csv(results: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["group", "benchmark", "title", "protocol", "metric", "ours",
                     "emocapclip_b32", "flip_b32", "num_examples", "num_folds", "checkpoint"])
    for row in _paper_rows(results) + _other_rows(results):
        r = row["result"]

        def pct(v):
            return "" if v is None else f"{100 * v:.2f}"

        writer.writerow([row["group"], row["benchmark"], row["title"], row["protocol"],
                         row["metric"], pct(row["ours"]), pct(row["emocapclip_b32"]),
                         pct(row["flip_b32"]), _num_examples(r) or "",
                         len(r.get("folds") or []) if r else "", r["checkpoint"] if r else ""])
    return buffer.getvalue()


def _multiple_choice_details(fold: dict) -> list[str]:
    """Accuracy with chance beside it, overall and per task, and the questions skipped (not
    guessed) because a two-tower model cannot score them."""
    skipped = fold.get("num_skipped", 0)
    lines = ["", f"accuracy {_pct(fold['accuracy'])}% on {fold['num_questions']} scored "
             f"questions (chance {_pct(fold['chance'])}%)" +
             (f"; {skipped} skipped" if skipped else "")]
    chance = fold.get("task_chance", {})
    skipped_by_task = fold.get("skipped_by_task", {})
    tasks = sorted(set(fold["tasks"]) | set(skipped_by_task))
    if tasks:
        lines += ["", "| task | accuracy | chance | scored | skipped |", "|---|---|---|---|---|"]
        for task in tasks:
            t = fold["tasks"].get(task)
            lines.append(f"| {task} | {_pct(t['accuracy']) if t else DASH} | "
                         f"{_pct(chance.get(task))} | {t['num_questions'] if t else 0} | "
                         f"{skipped_by_task.get(task, 0)} |")
    if fold.get("skipped_by_reason"):
        lines += ["", "skipped, by reason: " + ", ".join(
            f"{code} {count}" for code, count in fold["skipped_by_reason"].items())]
    duplicates = fold.get("duplicate_options") or []
    if duplicates:  # a converter's error to fix, so each question is named (first few here)
        shown = duplicates[:_MAX_NAMED]
        lines += ["", "options that encode the same text (not scored): " + "; ".join(
            f"{d['qid']} ({d['reason'].split(':', 1)[-1].strip()})" for d in shown) +
            (f"; and {len(duplicates) - len(shown)} more in the results/ json"
             if len(duplicates) > len(shown) else "")]
    return lines


def grounding_table(report: dict) -> str:
    """The grounding protocol's per-region table (Markdown), overall row last. Here rather than
    in evaluate/grounding.py, which imports JAX: `python -m emocap_jax.evaluate` imports this
    module before it parses its arguments, and answers --help and --list without JAX."""
    def pct(v):
        return "—" if v is None else f"{100 * v:.1f}"

    lines = ["| region | accuracy | chance (area) | chance (patch) | fixed-patch prior | "
             "hits / pairs |", "|---|---|---|---|---|---|"]
    for name, r in list(report["per_region"].items()) + [("all", report)]:
        label = f"**{name}**" if name == "all" else name
        lines.append(f"| {label} | {pct(r['accuracy'])} | {pct(r['chance'])} | "
                     f"{pct(r['patch_chance'])} | {pct(r.get('prior'))} | "
                     f"{r['hits']} / {r['pairs']} |")
    return "\n".join(lines)


def _grounding_details(fold: dict) -> list[str]:
    grid = "x".join(str(g) for g in fold["grid"])
    lines = ["", f"pointing game over {fold['num_pairs']} (face, local sentence) pairs of "
             f"{fold['num_faces']} faces, {grid} patches, tolerance {fold['tolerance']:g} px: "
             f"accuracy {100 * fold['accuracy']:.1f}% against {100 * fold['chance']:.1f}% chance "
             f"(area), {100 * fold['patch_chance']:.1f}% (patch) and a "
             f"{100 * fold['prior']:.1f}% fixed-patch prior"
             + (f"; {fold['skipped_sentences']} sentences without a region skipped"
                if fold.get("skipped_sentences") else ""), ""]
    return lines + grounding_table(fold).splitlines()


def _details(result: dict) -> list[str]:
    lines = [f"### {result['title']} — {protocol_label(result)}", ""]
    lines.append(f"- data: `{result['data']}`; {result.get('devices', '?')} devices; "
                 f"{result.get('seconds', 0):.1f} s")
    report = result.get("report") or {}
    if "uar" in report:
        lines.append(f"- UAR {_pct(report['uar'])}%, WAR {_pct(report['war'])}%, macro-F1 "
                     f"{_pct(report['macro_f1'])}% over {report['num_examples']} examples")
        summary = report.get("fold_summary", {})
        if len(result.get("folds") or []) > 1 and summary:
            lines.append("- fold mean ± std: " + ", ".join(
                f"{m.upper() if m != 'macro_f1' else 'macro-F1'} {_pct(s['mean'])} ± "
                f"{_pct(s['std'])}" for m, s in summary.items()) +
                f" ({summary['uar']['num_folds']} folds)")
        folds = result.get("folds") or []
        if folds and "balanced" in folds[0]:
            cs = sorted({f["C"] for f in folds})
            lines.append(f"- probe: logistic regression, "
                         f"{'class-balanced' if folds[0]['balanced'] else 'unweighted'} fit, "
                         f"C chosen by validation UAR ({', '.join(f'{c:g}' for c in cs)})")
        prompts = result.get("prompts")
        if prompts and "descriptions" in prompts:  # mode "description": no words or templates
            lines.append(f"- prompts ({prompts.get('mode', 'description')}): one description per "
                         f"class ({len(prompts['descriptions'])}, texts in the results json); no "
                         "prompt words or templates")
        elif prompts:
            lines.append(f"- prompts ({prompts.get('mode', 'embedding')}): words "
                         f"{', '.join(prompts.get('words', []))}; {len(prompts.get('templates', []))} "
                         "templates")
        if result.get("single_frame"):
            s = result["single_frame"]
            lines.append(f"- middle frame only: UAR {_pct(s['uar'])}%, WAR {_pct(s['war'])}%")
        partial = [f.get("partial_match") for f in result.get("folds", [])]
        if any(p is not None for p in partial):
            lines.append("- prediction shares a component emotion with the truth: "
                         f"{_pct(np.mean([p for p in partial if p is not None]))}%")
        lines += ["", "| class | recall |", "|---|---|"]
        lines += [f"| {c} | {_pct(v)} |" for c, v in report["per_class_recall"].items()]
        if result.get("files", {}).get("confusion_png"):
            lines += ["", f"![confusion matrix]({result['files']['confusion_png']})"]
    if "shots" in result:
        # The spread is over every draw (each fold's seeds), not over the fold means.
        runs = {k: sum(len(f["shots"][k]["runs"]) for f in result.get("folds") or []
                       if k in f.get("shots", {})) for k in result["shots"]}
        folds = len(result.get("folds") or [])
        lines += ["", f"mean ± std over the runs of each row ({folds} fold"
                      f"{'s' if folds != 1 else ''} × the seeds: "
                      + ", ".join(f"{n} at {k}-shot" for k, n in runs.items()) + ")",
                  "", "| shots | UAR | WAR | macro-F1 |", "|---|---|---|---|"]
        for k, s in result["shots"].items():
            lines.append(f"| {k} | " + " | ".join(
                f"{_pct(s[m]['mean'])} ± {_pct(s[m]['std'])}" for m in ("uar", "war", "macro_f1"))
                + " |")
    for fold in result.get("folds") or []:
        if "per_label" in fold:
            lines += ["", f"mean F1 {_pct(fold['mean_f1'])}%, mean balanced accuracy "
                      f"{_pct(fold['mean_balanced_accuracy'])}% over {fold['num_examples']} faces",
                      "", "| AU | F1 | precision | recall | positives |", "|---|---|---|---|---|"]
            lines += [f"| {au} | {_pct(v['f1'])} | {_pct(v['precision'])} | {_pct(v['recall'])} "
                      f"| {v['positives']} |" for au, v in fold["per_label"].items()]
        if "image_to_text" in fold:
            ks = list(fold["image_to_text"])
            lines += ["", f"{fold['num_examples']} image-caption pairs "
                      f"(caption: {fold['caption_field']})", "",
                      "| direction | " + " | ".join(ks) + " |", "|---" * (len(ks) + 1) + "|"]
            for name, key in (("image → text", "image_to_text"), ("text → image", "text_to_image")):
                lines.append(f"| {name} | " + " | ".join(_pct(fold[key][k]) for k in ks) + " |")
        if "num_questions" in fold:
            lines += _multiple_choice_details(fold)
        if "per_region" in fold:
            lines += _grounding_details(fold)
    return lines + [""]


def render_markdown(results: list[dict], checkpoint: str = "") -> str:
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [f"# Evaluation report: `{checkpoint or 'checkpoint'}`", "",
             f"Written {now}. Percentages; paper columns are the zero-shot ViT-B/32 numbers of "
             "EmoCapCLIP and FLIP-80M read off the paper's radar chart (±0.1). UAR = mean "
             "per-class recall.", "",
             "## Paper table", "",
             "| group | benchmark | protocol | metric | ours | EmoCapCLIP B/32 | FLIP-80M B/32 |",
             "|---|---|---|---|---|---|---|"]
    paper_rows = _paper_rows(results)
    for row in paper_rows:
        lines.append(f"| {row['group']} | {row['title']} | {row['protocol']} | "
                     f"{metric_name(row['metric'])} | "
                     f"{_ours(row['ours'], row['result'])} | {_pct(row['emocapclip_b32'])} | "
                     f"{_pct(row['flip_b32'])} |")
    done = [r for r in paper_rows if r["ours"] is not None]
    if done:
        lines += ["", f"Mean over the {len(done)} benchmarks run: ours "
                  f"{_pct(np.mean([r['ours'] for r in done]))}, EmoCapCLIP "
                  f"{_pct(np.mean([r['emocapclip_b32'] for r in done]))}, FLIP "
                  f"{_pct(np.mean([r['flip_b32'] for r in done]))}."]
    others = {s.title: s.other for s in registry.paper_table() if s.other}
    if others:
        lines += ["", "Other published zero-shot UAR: " + "; ".join(
            f"{title}: " + ", ".join(f"{m} {v}" for m, v in o.items())
            for title, o in others.items()) + "."]
    other_rows = _other_rows(results)
    if other_rows:
        lines += ["", "## Other evaluations", "",
                  "| group | benchmark | protocol | metric | ours | examples |",
                  "|---|---|---|---|---|---|"]
        for row in other_rows:
            lines.append(f"| {row['group']} | {row['title']} | {row['protocol']} | "
                         f"{metric_name(row['metric'])} | {_ours(row['ours'], row['result'])} | "
                         f"{_num_examples(row['result']) or DASH} |")
    notes = [f"- {registry.get(r['benchmark']).title}: {registry.get(r['benchmark']).note}"
             for r in results if registry.get(r["benchmark"]).note]
    notes += [f"- {leakage.note(r)}" for r in results if leakage.note(r)]
    if notes:
        lines += ["", "## Notes", ""] + sorted(set(notes))
    if results:
        lines += ["", "## Details", ""]
        for result in sorted(results, key=lambda r: (registry.names().index(r["benchmark"]),
                                                     r["protocol"], variant(r))):
            lines += _details(result)
    return "\n".join(lines) + "\n"


def write_report(output, checkpoint: Optional[str] = None) -> dict:
    """Rebuilds OUT/report.md and OUT/report.csv from OUT/results; returns their paths and the
    result files of other checkpoints that were left out."""
    results, other = load_results(output, checkpoint)
    md = _at(output, "report.md")
    _write(md, render_markdown(results, checkpoint or "").encode("utf-8"))
    table = _at(output, "report.csv")
    _write(table, render_csv(results).encode("utf-8"))
    return {"markdown": md, "csv": table, "left_out": other, "num_results": len(results)}
