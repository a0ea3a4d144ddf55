"""What an ingest did, as the few lines the command line prints after it."""
import os

from shards.manifest import MANIFEST_NAME


def format_summary(result, out):
    """The text for `ingest`'s result dict (see ingest.run.ingest) written to the folder `out`."""
    totals = result["totals"]
    if result["unchanged"]:
        return f"{out} already holds this ingest ({totals['images']} images); nothing to do (--force rebuilds it)."
    manifest = os.path.join(out, MANIFEST_NAME)
    lines = [f"{'split':<10} {'images':>7} {'cats':>7} {'dogs':>7} {'shards':>7}"]
    for split, info in result["splits"].items():
        lines.append(f"{split:<10} {info['count']:>7} {info['cats']:>7} {info['dogs']:>7} {len(info['shards']):>7}")
    rate = totals["images"] / result["seconds"] if result["seconds"] else 0
    lines.append(
        f"{totals['images']} images in {totals['shards']} shards ({totals['bytes'] / 1e6:,.1f} MB) in {out}; "
        f"{totals['duplicates']} duplicates, {totals.get('label_conflicts', 0)} label conflicts, "
        f"{totals['skipped']} skipped, {totals['excluded']} excluded; "
        f"{result['seconds']:.1f} s ({rate:,.0f} img/s)"
        + (f"; {result['reused_shards']} shards kept from an earlier run" if result["reused_shards"] else ""))
    if totals["skipped"]:
        lines.append(f"skipped files and reasons: {manifest} ('skipped')")
    if totals.get("label_conflicts"):
        lines.append(f"identical files under different labels: {manifest} "
                     "('label_conflicts'; --label-conflicts first keeps the first copy)")
    return "\n".join(lines)
