"""What a training run did, as the lines the command line prints after it."""


def format_summary(result):
    """The text for `train`'s result dict (see train.run.train)."""
    if result["already_done"]:
        if result.get("stopped_at_budget"):
            return (f"{result['run_dir']} already stopped at its time budget ({result['minutes']:g} min) after "
                    f"{_epochs(result)}; nothing to do (`train --resume --minutes M` extends it).")
        return f"{result['run_dir']} already finished its {result['epochs']} epochs; nothing to do."
    size = f"{result['model_bytes'] / 1e6:,.1f} MB" if result["model_bytes"] else "n/a"
    acc = result["best_val_accuracy"]
    notes = "".join(f"note: {note}\n" for note in result.get("notes", []))
    precision = f" ({result['precision']})" if result.get("precision") else ""
    done = f"{result['epochs']} epochs"
    if result.get("stopped_at_budget"):
        done = (f"stopped at the time budget after {_epochs(result)} "
                f"({result['minutes_used']:.1f} of {result['minutes']:g} min)")
    if result.get("small_epochs"):
        done += f" ({result['small_epochs']} on smaller images)"
    return (f"{notes}{result['model']}{precision}: {done}, {result['seconds_per_epoch']:.1f} s/epoch; "
            f"best epoch {result['best_epoch']}: val_loss {result['best_val_loss']:.4f}, "
            f"val_accuracy {acc:.4f}; best model {size}\nrun directory: {result['run_dir']}")


def _epochs(result):
    """"3 epochs + 57 batches": the whole epochs, and the batches of the one the budget cut short."""
    whole, batches = result.get("whole_epochs", result["epochs"]), result.get("partial_batches") or 0
    parts = [f"{whole} epoch{'s' if whole != 1 else ''}"] if whole or not batches else []
    parts += [f"{batches} batch{'es' if batches != 1 else ''}"] if batches else []
    return " + ".join(parts)
