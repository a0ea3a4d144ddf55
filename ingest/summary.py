"""What an ingest did, as the few lines the command line prints after it."""
import os

from shards.manifest import MANIFEST_NAME


def class_table(classes, splits, indent=""):
    """Lines of a table: one row per class, one column per split, then images and shards.

    `splits` is {split: {"count", "class_counts", "shards" (a list or a number)}}.
    Classes go down the rows so that ten or a hundred of them still fit.
    """
    names = list(splits)
    width = max([5, *(len(name) for name in classes)])
    columns = [max(7, len(name)) for name in names]

    def row(label, cells):
        return indent + f"{label:<{width}}" + "".join(f" {cell:>{w}}" for cell, w in zip(cells, columns))

    lines = [row("class", names)]
    for i, name in enumerate(classes):
        lines.append(row(name, [splits[s]["class_counts"][i] for s in names]))
    lines.append(row("images", [splits[s]["count"] for s in names]))
    lines.append(row("shards", [s if isinstance(s, int) else len(s)
                                for s in (splits[n]["shards"] for n in names)]))
    return lines


def format_summary(result, out):
    """The text for `ingest`'s result dict (see ingest.run.ingest) written to the folder `out`."""
    totals = result["totals"]
    if result["unchanged"]:
        return f"{out} already holds this ingest ({totals['images']} images); nothing to do (--force rebuilds it)."
    manifest = os.path.join(out, MANIFEST_NAME)
    lines = class_table(result["classes"], result["splits"])
    rate = totals["images"] / result["seconds"] if result["seconds"] else 0
    lines.append(
        f"{totals['images']} images of {len(result['classes'])} classes in {totals['shards']} shards "
        f"({totals['bytes'] / 1e6:,.1f} MB) in {out}; "
        f"{totals['duplicates']} duplicates, {totals['label_conflicts']} label conflicts, "
        + (f"{totals['near_duplicate_groups']} near-duplicate groups "
           f"({totals['near_duplicate_conflicts']} under different labels), "
           if result["settings"].get("near_distance") is not None else "near-duplicates not looked for, ")
        + f"{totals['skipped']} skipped, {totals['excluded']} excluded; "
        f"{result['seconds']:.1f} s ({rate:,.0f} img/s)"
        + (f"; {result['reused_shards']} shards kept from an earlier run" if result["reused_shards"] else ""))
    if totals["skipped"]:
        lines.append(f"skipped files and reasons: {manifest} ('skipped')")
    if totals["excluded"]:
        lines.append(f"excluded files and reasons: {manifest} ('excluded')")
    if totals["label_conflicts"]:
        lines.append(f"identical files under different labels: {manifest} "
                     "('label_conflicts'; --label-conflicts first keeps the first copy)")
    if totals["near_duplicate_groups"]:
        lines.append(f"near-duplicate groups (each kept in one split): {manifest} ('near_duplicates')")
    if totals["near_duplicate_conflicts"]:
        lines.append(f"near-duplicates under different labels, likely label errors: {manifest} "
                     "('near_duplicate_conflicts'; left out unless --label-conflicts first)")
    return "\n".join(lines)


def format_warnings(result):
    """The manifest's warnings (classes too small for their share), one `Warning:` line each."""
    return [f"Warning: {warning}" for warning in result.get("warnings", [])]
