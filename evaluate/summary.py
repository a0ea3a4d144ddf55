"""What an evaluation found, as the small table the command line prints after it."""
import os


def format_summary(result):
    """The text for `evaluate_run`'s result (the metrics.json document plus "out")."""
    def cell(value, width, digits):
        return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    threshold = result["threshold"]
    lines = [f"{result['model']} ({result['checkpoint']}) of {result['run']}",
             f"{'split':<6} {'images':>7} {'MSE':>7} {'Pearson':>8} {'AUC':>6} {'best10':>7} "
             f"{'acc@' + format(threshold['value'], '.2f'):>8} {'F1':>6}"]
    for split, m in result["splits"].items():
        lines.append(f"{split:<6} {m['count']:>7} {cell(m['mse'], 7, 4)} {cell(m['pearson_r'], 8, 3)} "
                     f"{cell(m['roc_auc'], 6, 3)} {cell(m['best_accuracy'], 7, 3)} "
                     f"{cell(m['accuracy'], 8, 3)} {cell(m['f1'], 6, 3)}")
    lines.append(f"threshold {threshold['value']:.2f} chosen on {threshold['chosen_on']}; "
                 f"report: {os.path.join(result['out'], 'report.md')}")
    return "\n".join(lines)
