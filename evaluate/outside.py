"""The release check on photos from another source: metrics at the run's own threshold, and their files.

A run is scored on a labelled folder of photos that are not from its data
(another source, other cameras and framing) by `check-outside`
(kibble/outside.py finds the photos and scores them with `predict`'s
decoding and evaluate.inference). Nothing is chosen on these photos: two
classes use the threshold `evaluate` chose on validation for this way of
scoring and this very model file (`recorded_threshold`); more classes take
the most probable class, as everywhere. This module turns the scores into
the figures (accuracy, recall per class, expected calibration error and its
reliability diagram, the metrics of evaluate/metrics.py) and writes them:

    <out>/outside.json                      every number, the files skipped and why
    <out>/outside.md                        the same for a person, with the picture
    <out>/figures/outside_reliability.png   the reliability diagram

None of these names is one `evaluate` writes, so the check never replaces
the val/test metrics (or their thresholds) of the run.
"""
import datetime
import heapq
import os

import numpy as np

from evaluate.inference import scoring
from evaluate.metrics import BINARY_BIN_KEYS, MULTICLASS_BIN_KEYS, Accumulator, MulticlassAccumulator
from evaluate.report import FIGURES_DIR, _reliability_figure
from evaluate.run import recorded_thresholds
from shards.errors import UserError
from shards.fsio import atomic_path, write_json_atomic, write_text_atomic

OUTSIDE_NAME, OUTSIDE_REPORT = "outside.json", "outside.md"
OUTSIDE_FIGURE = f"{FIGURES_DIR}/outside_reliability.png"
OUTSIDE_SCHEMA = 1
# Misclassified photos listed, the most confident first: the ones worth a look.
MISTAKES_KEPT = 16
# Skipped files named in the printed summary (outside.json lists them all).
SKIPPED_SHOWN = 5


def recorded_threshold(metrics, checkpoint_sha256, tta, metrics_path):
    """The {"value", "chosen_on", ...} entry `evaluate` recorded for this way of scoring and model file.

    Never the other way's threshold, never 0.5 by default, never one chosen
    for another model file (training resumed since, `--checkpoint last`):
    the check must measure the decision the run ships with, so each of these
    is a UserError saying which `evaluate` to run.
    """
    command = "evaluate --tta" if tta else "evaluate"
    entry = recorded_thresholds(metrics).get(scoring(tta))
    if entry is None:
        return _no_threshold(metrics_path, command)
    if entry.get("checkpoint_sha256") != checkpoint_sha256:
        raise UserError(f"the {scoring(tta)} threshold in {metrics_path} was chosen for another model file than "
                        f"best.keras as it is now (sha256 differs: trained on since, or --checkpoint last); "
                        f"run `{command}` on this run first")
    return entry


def _no_threshold(metrics_path, command):
    found = "no usable metrics.json" if not os.path.exists(metrics_path) else "no threshold for these scores"
    raise UserError(f"{found} at {metrics_path}: the check uses the threshold chosen on validation, never one "
                    f"chosen on the outside photos; run `{command}` on this run first")


class OutsideScores:
    """The scores of the photos, one batch at a time: the metrics accumulator and the worst mistakes.

    `threshold` is the recorded two-class threshold (None with more classes).
    """

    def __init__(self, classes, threshold=None):
        self.classes, self.threshold = list(classes), threshold
        self.two = len(self.classes) == 2
        self.accumulator = Accumulator() if self.two else MulticlassAccumulator(self.classes)
        self.mistakes = []  # (key: the lower the more confident a mistake, position, entry)
        self.count = 0

    def update(self, scores, labels, files):
        """Add a batch: scores (n,) of class 1 or probabilities (n, N), class indices (n,), file paths (n,)."""
        if not len(files):
            return
        scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
        try:
            self.accumulator.update(scores, labels)
        except ValueError as exc:  # NaN scores, a label out of range: the model's or the caller's fault
            raise UserError(f"scores of the photos from {files[0]} on: {exc}; the model is broken "
                            "(did training diverge?)") from None
        if self.two:
            predicted = (scores > self.threshold).astype(int)
            confidence = np.where(predicted == 1, scores, 1 - scores)
        else:
            predicted = np.argmax(scores, axis=1)
            confidence = scores[np.arange(len(labels)), predicted]
        for i in np.flatnonzero(predicted != labels):
            entry = {"file": files[i], "label": self.classes[int(labels[i])],
                     "predicted": self.classes[int(predicted[i])], "confidence": float(confidence[i])}
            self.mistakes.append((-float(confidence[i]), self.count + int(i), entry))
        self.mistakes = heapq.nsmallest(MISTAKES_KEPT, self.mistakes, key=lambda m: m[:2])
        self.count += len(labels)

    def metrics(self):
        """The figures of every photo scored: accuracy, per-class recall, calibration and the rest."""
        if self.count == 0:
            raise ValueError("no photo scored")
        if self.two:
            summary = self.accumulator.summary(self.threshold)
            c = summary["confusion"]
            found = [(c["tn"], c["tn"] + c["fp"]), (c["tp"], c["tp"] + c["fn"])]
            extra = {"roc_auc": summary["roc_auc"], "confusion": c}
            keys = BINARY_BIN_KEYS
        else:
            summary = self.accumulator.summary()
            counts = summary["confusion"]["counts"]
            found = [(counts[k][k], sum(counts[k])) for k in range(len(self.classes))]
            extra = {"macro_roc_auc": summary["macro_roc_auc"], "confusion": summary["confusion"]}
            keys = MULTICLASS_BIN_KEYS
        per_class = [{"class": name, "count": total, "correct": right, "recall": right / total if total else None}
                     for name, (right, total) in zip(self.classes, found)]
        return {"count": self.count, "accuracy": summary["accuracy"], "per_class": per_class,
                "ece": summary["ece"], "calibration_keys": list(keys), "calibration_bins": summary["calibration_bins"],
                "log_loss": summary["log_loss"], **extra,
                "mistakes": [entry for _, _, entry in self.mistakes]}


def floor_verdict(accuracy, min_accuracy):
    """{"min_accuracy", "passed"}; passed is None when no floor was given."""
    if min_accuracy is None:
        return {"min_accuracy": None, "passed": None}
    return {"min_accuracy": float(min_accuracy), "passed": bool(accuracy >= min_accuracy)}


def outside_document(facts, threshold, scores, skipped, min_accuracy):
    """outside.json without "figures" and "seconds".

    facts: {"run", "model", "checkpoint", "checkpoint_sha256", "photos", "layout", "tta"}; threshold:
    the recorded entry (None with more classes); skipped: [{"file", "reason"}].
    """
    metrics = scores.metrics()
    return {
        "schema_version": OUTSIDE_SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **facts,
        "classes": scores.classes,
        "threshold": None if threshold is None else {
            "value": float(threshold["value"]), "chosen_on": threshold.get("chosen_on"),
            "recorded": threshold.get("created"), "data": threshold.get("data"),
            "rule": "recorded by `evaluate` on validation for this model file and way of scoring; "
                    "never chosen on these photos"},
        **metrics,
        "floor": floor_verdict(metrics["accuracy"], min_accuracy),
        "skipped": list(skipped),
    }


def write_outside(out, document):
    """Write outside.json, outside.md and the reliability figure into `out`; return the document written."""
    os.makedirs(os.path.join(out, FIGURES_DIR), exist_ok=True)
    keys = document["calibration_keys"]
    xlabel = ("probability of " + document["classes"][1]) if len(document["classes"]) == 2 else "top probability"
    fig = _reliability_figure({"outside": document}, keys, f"{xlabel} (mean of its bin)",
                              "share of " + (document["classes"][1] if len(document["classes"]) == 2
                                             else "right predictions") + " in the bin")
    with atomic_path(os.path.join(out, OUTSIDE_FIGURE)) as temp:
        fig.savefig(temp, dpi=100, format="png")
    document = {**document, "figures": {"reliability": OUTSIDE_FIGURE}}
    write_json_atomic(os.path.join(out, OUTSIDE_NAME), document)
    write_text_atomic(os.path.join(out, OUTSIDE_REPORT), outside_markdown(document))
    return document


def _fmt(value, digits=4):
    return "n/a" if value is None else f"{value:.{digits}f}"


def outside_markdown(document):
    threshold = document["threshold"]
    floor = document["floor"]
    verdict = ("no floor given" if floor["passed"] is None else
               f"{'PASSED' if floor['passed'] else 'FAILED'} (floor {floor['min_accuracy']:.4f})")
    decision = (f"threshold {threshold['value']:.2f}, chosen on {threshold['chosen_on']} by `evaluate"
                f"{' --tta' if document['tta'] else ''}` ({threshold['recorded']})" if threshold
                else "the most probable class (no threshold)")
    lines = [f"# Outside photos: {os.path.basename(document['run'])}", "",
             f"- photos: `{document['photos']}` ({document['layout']}), {document['count']} scored, "
             f"{len(document['skipped'])} skipped",
             f"- model: `{document['model']}` ({document['checkpoint']}){', --tta' if document['tta'] else ''}",
             f"- decision: {decision}",
             f"- accuracy: **{document['accuracy']:.4f}**: {verdict}",
             f"- expected calibration error: {_fmt(document['ece'])}; log loss {_fmt(document['log_loss'])}", "",
             "| class | photos | right | recall |", "|---|---:|---:|---:|"]
    lines += [f"| {c['class']} | {c['count']} | {c['correct']} | {_fmt(c['recall'])} |" for c in document["per_class"]]
    lines += ["", f"![Reliability]({document['figures']['reliability']})", ""]
    if document["mistakes"]:
        lines += ["## Most confident mistakes", "", "| file | label | predicted | confidence |", "|---|---|---|---:|"]
        lines += [f"| {_shown(m['file'], document)} | {m['label']} | {m['predicted']} | {m['confidence']:.3f} |"
                  for m in document["mistakes"]]
        lines.append("")
    if document["skipped"]:
        lines += ["## Skipped files", ""]
        lines += [f"- {_shown(s['file'], document)}: {s['reason']}" for s in document["skipped"]]
    return "\n".join(lines).rstrip() + "\n"


def _shown(path, document):
    """A file as the report names it: relative to the photos folder."""
    return os.path.relpath(path, document["photos"])


def format_outside_summary(document, out):
    """The lines the command prints after the check."""
    threshold = document["threshold"]
    decision = (f"threshold {threshold['value']:.2f} chosen on {threshold['chosen_on']}"
                if threshold else "most probable class")
    recalls = ", ".join(f"{c['class']} {_fmt(c['recall'], 3)} ({c['count']})" for c in document["per_class"])
    lines = [f"{document['count']} photos scored, {len(document['skipped'])} skipped; "
             f"{decision}{' with --tta' if document['tta'] else ''}",
             f"accuracy {document['accuracy']:.4f}; recall {recalls}; ECE {_fmt(document['ece'])}"]
    for entry in document["skipped"][:SKIPPED_SHOWN]:
        lines.append(f"  skipped {entry['file']}: {entry['reason']}")
    if len(document["skipped"]) > SKIPPED_SHOWN:
        lines.append(f"  ... and {len(document['skipped']) - SKIPPED_SHOWN} more (all in {OUTSIDE_NAME})")
    lines.append(f"report: {os.path.join(out, OUTSIDE_REPORT)}")
    return "\n".join(lines)
