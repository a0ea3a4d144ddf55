"""What a training run did, as the lines the command line prints after it."""


def format_summary(result):
    """The text for `train`'s result dict (see train.run.train)."""
    if result["already_done"]:
        return f"{result['run_dir']} already finished its {result['epochs']} epochs; nothing to do."
    size = f"{result['model_bytes'] / 1e6:,.1f} MB" if result["model_bytes"] else "n/a"
    acc = result["best_val_accuracy"]
    notes = "".join(f"note: {note}\n" for note in result.get("notes", []))
    precision = f" ({result['precision']})" if result.get("precision") else ""
    return (f"{notes}{result['model']}{precision}: {result['epochs']} epochs, {result['seconds_per_epoch']:.1f} s/epoch; "
            f"best epoch {result['best_epoch']}: val_loss {result['best_val_loss']:.4f}, "
            f"val_accuracy {acc:.4f}; best model {size}\nrun directory: {result['run_dir']}")
