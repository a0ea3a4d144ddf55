"""What an evaluation found, as the small table the command line prints after it."""
import os


def format_summary(result):
    """The text for `evaluate_run`'s result (the metrics.json document plus "out")."""
    def cell(value, width, digits):
        return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    if "classes" in result:
        return _multiclass_summary(result, cell)
    threshold = result["threshold"]
    lines = [f"{result['model']} ({result['checkpoint']}) of {result['run']}",
             f"{'split':<6} {'images':>7} {'MSE':>7} {'Pearson':>8} {'AUC':>6} {'best10':>7} "
             f"{'acc@' + format(threshold['value'], '.2f'):>8} {'F1':>6} {'ECE':>6}"]
    for split, m in result["splits"].items():
        lines.append(f"{split:<6} {m['count']:>7} {cell(m['mse'], 7, 4)} {cell(m['pearson_r'], 8, 3)} "
                     f"{cell(m['roc_auc'], 6, 3)} {cell(m['best_accuracy'], 7, 3)} "
                     f"{cell(m['accuracy'], 8, 3)} {cell(m['f1'], 6, 3)} {cell(m['ece'], 6, 3)}")
    tta = " with --tta (each score the mean over the image and its mirror)" if result.get("tta") else ""
    lines.append(f"threshold {threshold['value']:.2f} chosen on {threshold['chosen_on']}{tta}; "
                 f"report: {os.path.join(result['out'], 'report.md')}")
    return "\n".join(lines)


def _multiclass_summary(result, cell):
    """More than two classes: accuracy, top-k, macro-F1, log loss and ECE per split."""
    first = next(iter(result["splits"].values()))
    top = [k for k in (3, 5) if f"top_{k}_accuracy" in first]
    classes = result["classes"]
    lines = [f"{result['model']} ({result['checkpoint']}) of {result['run']}",
             f"{len(classes)} classes: {', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}",
             f"{'split':<6} {'images':>7} {'acc':>6} " + "".join(f"{'top' + str(k):>6} " for k in top)
             + f"{'macroF1':>8} {'logloss':>8} {'ECE':>6}"]
    for split, m in result["splits"].items():
        lines.append(f"{split:<6} {m['count']:>7} {cell(m['accuracy'], 6, 3)} "
                     + "".join(f"{cell(m[f'top_{k}_accuracy'], 6, 3)} " for k in top)
                     + f"{cell(m['macro']['f1'], 8, 3)} {cell(m['log_loss'], 8, 4)} {cell(m['ece'], 6, 3)}")
    lines.append(f"no threshold: the most probable class is the prediction; "
                 f"report: {os.path.join(result['out'], 'report.md')}")
    return "\n".join(lines)
