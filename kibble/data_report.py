"""`info --report`: a data report before training, report.md and PNGs, from a shard folder.

Most of it comes from manifest.json alone (images per class and split,
duplicates, near-duplicate groups, label conflicts, skipped and excluded
files). The shards are opened for two small things only: each image's
size as found (the `orig_sizes` dataset, 8 bytes an image, with `names`
when thumbnails are drawn) and the stored pixels of the few near-duplicate
members drawn as thumbnails. A URL --data is streamed (ranged reads), never
downloaded whole: a report needs a few KB of each shard.

Figures are drawn on bare matplotlib Figures with an Agg canvas, as
evaluate's report does: no pyplot, no display.
"""
import glob
import os
from dataclasses import dataclass

import numpy as np

from evaluate.report import new_figure
from shards import storage
from shards.errors import ShardError, UserError
from shards.fsio import inside, write_text_atomic
from shards.image import BadImage, load_image
from shards.manifest import SPLITS
from shards.progress import Progress

REPORT_NAME = "report.md"
FIGURES_DIR = "figures"
DEFAULT_OUT = "data-report"
GROUP_FIGURE = "near-{:02d}.png"
COLOURS = {"train": "tab:green", "val": "tab:blue", "test": "tab:orange", "unlabeled": "tab:grey"}
# Above this many classes the per-class bars lose their labels and show sorted totals instead.
MAX_LABELLED_BARS = 40


@dataclass(frozen=True)
class ReportSettings:
    # Near-duplicate groups drawn as thumbnails (the first ones by name); the others are listed only.
    groups: int = 12
    # Members drawn per group; a larger group shows its first ones and says how many it has.
    members: int = 6
    # Names listed per item of a list (duplicates, each skip reason, ...).
    names: int = 5


def write_data_report(data, out, settings=ReportSettings(), progress=False):
    """Write OUT/report.md and OUT/figures/*.png about the shards at `data` (a folder or a URL).

    Returns {"out", "report", "figures" ({name: path relative to out}),
    "thumbnails" (panels drawn from pixels), "placeholders" (members shown
    by name only), "groups_drawn", "images_sized"}.

    Raises:
        UserError: no shards at `data`, or `out` cannot be a report folder.
    """
    out = _check_out(out, data)
    figures_dir = os.path.join(out, FIGURES_DIR)
    _make_folder(figures_dir)  # before any shard is read: a bad OUT fails at once
    manifest = storage.open_shards(data, storage.Access(stream=True))
    doc = manifest.data
    groups = doc.get("near_duplicates")
    drawn = (groups or [])[:settings.groups]
    # names are read only from shards of the splits holding a member to draw
    name_splits = {m["split"] for g in drawn for m in g["members"][:settings.members] if m["split"]}
    sizes, where = _read_sizes_and_rows(manifest, name_splits, progress=progress)

    for stale in glob.glob(os.path.join(figures_dir, GROUP_FIGURE.replace("{:02d}", "[0-9]*"))):
        os.remove(stale)  # a previous report's extra groups; only our own file names
    figures = {}

    def save(name, fig):
        relative = f"{FIGURES_DIR}/{name}"
        fig.savefig(os.path.join(out, relative), dpi=100)
        figures[name] = relative

    save("classes.png", _class_figure(manifest.classes, doc["splits"]))
    if len(sizes):
        save("sizes.png", _size_figure(sizes))
    thumbs = _thumbnails(manifest, drawn, where, settings)
    counts = {"thumbnails": 0, "placeholders": 0}
    for i, (group, panels) in enumerate(zip(drawn, thumbs), 1):
        fig, pictures, named = _group_figure(group, panels)
        save(GROUP_FIGURE.format(i), fig)
        counts["thumbnails"] += pictures
        counts["placeholders"] += named
    text = _markdown(manifest, sizes, figures, settings)
    report = os.path.join(out, REPORT_NAME)
    write_text_atomic(report, text)
    return {"out": out, "report": report, "figures": figures, "groups_drawn": len(drawn),
            "images_sized": int(len(sizes)), **counts}


def _check_out(out, data):
    """`out` as an absolute local folder that is not the shard folder or inside it."""
    out = storage.local_path(str(out))
    if storage.is_url(out):
        raise UserError(f"--report must be a local folder (the report is written with local file calls; copy it "
                        f"to storage afterwards). Received: --report={storage.public(out)}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--report must be a folder, but {out} is a file; choose another folder. "
                        f"Received: --report={out}")
    data = storage.local_path(str(data))
    if not storage.is_url(data):
        real_out, real_data = os.path.realpath(out), os.path.realpath(data)
        if real_out == real_data or real_out.startswith(real_data.rstrip(os.sep) + os.sep):
            raise UserError(f"--report must not be inside the shard folder {data}: that folder holds what ingest "
                            f"wrote and nothing else (verify lists any other file). Choose e.g. --report "
                            f"{DEFAULT_OUT}. Received: --report={out}")
    return os.path.abspath(out)


def _make_folder(path):
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot create the report folder {path}: a file is in the way; "
                        "choose another --report folder") from None


# -- reading the shards --------------------------------------------------------------------------


def _read_sizes_and_rows(manifest, name_splits, progress):
    """(sizes, where): (width, height) of each image as found, and {name: (shard entry, row)}.

    `sizes` holds only known sizes (an older shard records none, a size the
    scan could not read is 0 0); `where` covers the shards of `name_splits`.
    """
    entries = manifest.shards()
    bar = Progress(len(entries), "report", unit="shards", enabled=progress and bool(entries))
    sizes, where = [], {}
    for entry in entries:
        with ShardOpen(manifest, entry) as shard:
            recorded = shard.orig_sizes
            if recorded is not None and len(recorded):
                known = recorded[(recorded[:, 0] > 0) & (recorded[:, 1] > 0)]
                sizes.append(known[:, ::-1].astype(np.int64))  # stored (height, width)
            if entry["split"] in name_splits:
                where.update((name, (entry, row)) for row, name in enumerate(shard.names))
        bar.update()
    bar.close()
    return (np.concatenate(sizes) if sizes else np.zeros((0, 2), np.int64)), where


class ShardOpen:
    """ShardReader on one manifest entry; a shard that cannot be opened is one UserError naming it."""

    def __init__(self, manifest, entry):
        self.path = manifest.shard_path(entry)

    def __enter__(self):
        from shards.format import ShardReader

        try:
            self.reader = ShardReader(self.path)
        except ShardError as exc:
            raise UserError(f"{exc}; run `verify --data {storage.public(os.path.dirname(self.path))}`") from None
        return self.reader

    def __exit__(self, *exc):
        self.reader.close()


def _thumbnails(manifest, groups, where, settings):
    """For each group, [(image or None, caption)] of its first members; one read per member, one open per shard."""
    height, width, _ = manifest.image_shape
    wanted = {}  # shard file -> {row: name}
    for group in groups:
        for member in group["members"][:settings.members]:
            if member["split"] and member["name"] in where:
                entry, row = where[member["name"]]
                wanted.setdefault(entry["file"], {})[row] = member["name"]
    pixels = {}
    entries = {e["file"]: e for e in manifest.shards()}
    for file, rows in wanted.items():
        with ShardOpen(manifest, entries[file]) as shard:
            for row, name in sorted(rows.items()):
                pixels[name] = shard.read(row, row + 1)[0]
    source = _local_source(manifest.data.get("source") or {})
    panels = []
    for group in groups:
        row = []
        for member in group["members"][:settings.members]:
            label = member["label"] or "unlabelled"
            if member["name"] in pixels:
                row.append((pixels[member["name"]], f"{label}, {member['split']}"))
            else:
                original = _original(source, member["name"], (height, width), manifest.settings["fit"])
                why = "left out" if not member["split"] else "not in the shards"
                row.append((original, f"{label}, {why}" + (" (original)" if original is not None else "")))
        panels.append(row)
    return panels


def _local_source(source):
    """The input folder when it is still on this machine (a zip's members are not opened)."""
    path = source.get("path")
    if source.get("kind") == "folder" and isinstance(path, str) and not storage.is_url(path) and os.path.isdir(path):
        return path
    return None


def _original(source, name, size, fit):
    """A left-out member decoded from the input at the shards' size, or None when it is not there."""
    if source is None:
        return None
    try:
        return load_image(inside(source, name, "near-duplicate member"), size=size, fit=fit)
    except (UserError, BadImage, OSError, ValueError):
        return None


# -- figures -------------------------------------------------------------------------------------


def _class_figure(classes, splits):
    present = [s for s in SPLITS if s in splits]
    counts = {s: np.array(splits[s]["class_counts"]) for s in present}
    if len(classes) > MAX_LABELLED_BARS:  # too many names to print: the shape of the imbalance
        fig, (ax,) = new_figure(8, 4)
        totals = np.sort(sum(counts.values()))[::-1]
        ax.bar(np.arange(len(totals)), totals, width=1.0, color="tab:blue")
        ax.set(xlabel=f"{len(classes)} classes, largest first", ylabel="images", title="Images per class")
        return fig
    fig, (ax,) = new_figure(max(5.0, 0.5 * len(classes) + 2), 4)
    x, bottom = np.arange(len(classes)), np.zeros(len(classes))
    for split in present:
        ax.bar(x, counts[split], bottom=bottom, color=COLOURS[split], label=split)
        bottom += counts[split]
    ax.set_xticks(x, classes, rotation=45 if len(classes) > 8 else 0, ha="right" if len(classes) > 8 else "center")
    ax.set(ylabel="images", title="Images per class and split")
    ax.legend()
    return fig


def _size_figure(sizes):
    widths, heights = sizes[:, 0], sizes[:, 1]
    fig, axes = new_figure(10, 7.5, ncols=2, nrows=2)
    axes[0].hist(widths, bins=40, color="tab:blue")
    axes[0].set(xlabel="width (pixels)", ylabel="images", title="Width as found")
    axes[1].hist(heights, bins=40, color="tab:orange")
    axes[1].set(xlabel="height (pixels)", ylabel="images", title="Height as found")
    if len(sizes) > 500:
        shown = axes[2].hexbin(widths, heights, gridsize=40, mincnt=1, bins="log", cmap="viridis")
        fig.colorbar(shown, ax=axes[2], label="images")
    else:
        axes[2].scatter(widths, heights, s=10, alpha=0.5)
    axes[2].set(xlabel="width", ylabel="height", title="Width x height")
    aspects = widths / heights
    axes[3].hist(aspects, bins=np.linspace(max(0.0, aspects.min() - 0.05), aspects.max() + 0.05, 41),
                 color="tab:green")
    axes[3].set(xlabel="aspect ratio (width / height)", ylabel="images", title="Aspect ratio")
    return fig


def _group_figure(group, panels):
    """(figure, images drawn, members shown by name only): the members side by side."""
    fig, axes = new_figure(2.2 * len(panels), 2.2, ncols=len(panels))
    drawn = named = 0
    for ax, member, (image, caption) in zip(axes, group["members"], panels):
        if image is not None:
            ax.imshow(image)
            drawn += 1
        else:
            ax.set_facecolor("0.85")
            ax.text(0.5, 0.5, "not shown", ha="center", va="center", transform=ax.transAxes, color="0.3")
            named += 1
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{_short_name(member['name'])}\n{caption}", fontsize=7)
    return fig, drawn, named


def _short_name(name, limit=28):
    return name if len(name) <= limit else "..." + name[-(limit - 3):]


# -- report.md -----------------------------------------------------------------------------------


def _markdown(manifest, sizes, figures, settings):
    doc = manifest.data
    totals, shape = doc["totals"], manifest.image_shape
    lines = [f"# Data report: {storage.absolute(manifest.folder)}", "",
             f"{totals['images']} images of {shape[0]}x{shape[1]} ({manifest.settings['fit']}) in "
             f"{totals['shards']} shards, {len(manifest.classes)} classes; source "
             f"{(doc.get('source') or {}).get('path', '-')} ({(doc.get('source') or {}).get('layout', '-')}).", ""]
    sections = (_class_lines(manifest, figures), _size_lines(doc, sizes, figures),
                _duplicate_lines(doc, manifest.classes, settings), _near_lines(doc, figures, settings),
                _dropped_lines("Skipped files", doc["skipped"], "could not be used", settings),
                _dropped_lines("Excluded files", doc["excluded"], "left out on purpose", settings))
    for section in sections:
        lines += section + [""]
    return "\n".join(lines).rstrip() + "\n"


def _class_lines(manifest, figures):
    doc, classes = manifest.data, manifest.classes
    present = [s for s in SPLITS if s in doc["splits"]]
    counts = np.array([doc["splits"][s]["class_counts"] for s in present]).reshape(len(present), len(classes))
    totals = counts.sum(axis=0)
    lines = ["## Images per class and split", "",
             "| class | " + " | ".join(present) + " | total | share |",
             "|---|" + "---:|" * (len(present) + 2)]
    whole = max(1, int(totals.sum()))
    for i, name in enumerate(classes):
        lines.append(f"| {_cell(name)} | " + " | ".join(str(int(c)) for c in counts[:, i]) +
                     f" | {int(totals[i])} | {100 * totals[i] / whole:.1f}% |")
    lines.append("| **all** | " + " | ".join(str(int(c)) for c in counts.sum(axis=1)) + f" | {int(totals.sum())} | |")
    lines += ["", _imbalance_line(classes, totals), ""]
    for warning in doc.get("warnings") or []:
        lines.append(f"- Warning: {_warning_text(warning)}")
    lines.append(f"![images per class]({figures['classes.png']})")
    return lines


def imbalance(totals):
    """Largest class over smallest class (inf when a class has no image, None without labelled images)."""
    totals = np.asarray(totals)
    if totals.size == 0 or totals.max() == 0:
        return None
    return float("inf") if totals.min() == 0 else float(totals.max() / totals.min())


def _imbalance_line(classes, totals):
    ratio = imbalance(totals)
    if ratio is None:
        return "Class imbalance: no labelled images."
    big, small = int(np.argmax(totals)), int(np.argmin(totals))
    shown = "infinite" if ratio == float("inf") else f"{ratio:.2f}"
    return (f"Class imbalance (largest / smallest class): **{shown}** ({classes[big]} {int(totals[big])}, "
            f"{classes[small]} {int(totals[small])}).")


def _warning_text(warning):
    if isinstance(warning, dict):
        return ", ".join(f"{k} {v}" for k, v in warning.items())
    return str(warning)


def _size_lines(doc, sizes, figures):
    lines = ["## Sizes before resizing", ""]
    if len(sizes):
        widths, heights = sizes[:, 0], sizes[:, 1]
        values, counts = np.unique(np.round(widths / heights, 1), return_counts=True)
        order = np.lexsort((values, -counts))[:5]
        common = ", ".join(f"{values[i]:.1f} ({counts[i]})" for i in order)
        lines += [f"Of {len(sizes)} images in the shards (size as found, upright):", "",
                  "| | min | median | max |", "|---|---:|---:|---:|",
                  f"| width | {widths.min()} | {np.median(widths):g} | {widths.max()} |",
                  f"| height | {heights.min()} | {np.median(heights):g} | {heights.max()} |", "",
                  f"Most common aspect ratios (width / height): {common}.", "",
                  f"![sizes]({figures['sizes.png']})"]
        return lines
    summary = doc.get("original_sizes") or {}
    if summary.get("count"):
        lines.append(f"The shards record no size per image; the manifest's summary of {summary['count']} files: "
                     f"width min/median/max {summary['width']}, height {summary['height']}.")
    else:
        lines.append("Not recorded: these shards were written before kibble recorded each image's size as found "
                     "(`ingest --force` records them).")
    return lines


def _label_name(classes, label):
    if isinstance(label, int) and 0 <= label < len(classes):
        return classes[label]
    return str(label)


def _duplicate_lines(doc, classes, settings):
    dups, conflicts = doc["duplicates"], doc["label_conflicts"]
    lines = ["## Exact duplicates", "",
             f"{_files(len(dups))} had the same bytes as another and were not ingested again."]
    lines += [f"- `{d['name']}` = `{d['same_as']}`" for d in dups[:settings.names]]
    if len(dups) > settings.names:
        lines.append(f"- ... and {len(dups) - settings.names} more (manifest.json, \"duplicates\")")
    lines += ["", f"Label conflicts (identical files under different classes): {len(conflicts)}."]
    for c in conflicts[:settings.names]:
        labels = ", ".join(_label_name(classes, label) for label in c["labels"])
        lines.append(f"- {', '.join(f'`{n}`' for n in c['names'])} ({labels}); kept: {c['kept'] or 'none'}")
    return lines


def _near_lines(doc, figures, settings):
    lines = ["## Near-duplicate groups", ""]
    groups = doc.get("near_duplicates")
    if groups is None:
        return lines + ["Not looked for: this manifest was written before kibble found near-duplicates "
                        "(`ingest --force` looks for them)."]
    if "fingerprint" in doc and (doc["fingerprint"] or {}).get("near_distance") is None:
        return lines + ["Not looked for: ingested with `--near-distance off` (ingest again without it to "
                        "look for them)."]
    crossing = [g for g in groups if g["crosses_splits"]]
    conflicts = doc.get("near_duplicate_conflicts") or []
    distance = (doc.get("fingerprint") or {}).get("near_distance")
    lines += [f"{len(groups)} groups of {sum(len(g['members']) for g in groups)} images"
              + (f" (fingerprints within {distance} bits)" if distance is not None else "")
              + f"; {len(crossing)} crossing the given splits; {len(conflicts)} under different labels "
                "(likely label errors).", ""]
    for i, group in enumerate(groups[:settings.groups], 1):
        members = group["members"]
        more = f", the first {settings.members} shown" if len(members) > settings.members else ""
        lines += [f"### Group {i}: {len(members)} images{more}", "",
                  ", ".join(f"`{m['name']}` ({m['label'] or 'unlabelled'}, {m['split'] or 'left out'})"
                            for m in members), "",
                  f"![group {i}]({figures[GROUP_FIGURE.format(i)]})", ""]
    if len(groups) > settings.groups:
        lines += [f"{len(groups) - settings.groups} more groups are listed in manifest.json (\"near_duplicates\").", ""]
    lines += ["### Groups crossing the given splits", ""]
    if not crossing:
        lines.append("None.")
    for group in crossing[:settings.names]:
        lines.append("- " + ", ".join(f"`{m['name']}` ({m['split']})" for m in group["members"]))
    if len(crossing) > settings.names:
        lines.append(f"- ... and {len(crossing) - settings.names} more")
    lines += ["", "### Likely label errors (near-duplicates under different labels)", ""]
    if not conflicts:
        lines.append("None.")
    for c in conflicts[:settings.names]:
        kept = ", ".join(c["kept"]) if c["kept"] else "none"
        lines.append(f"- {', '.join(f'`{n}`' for n in c['names'])} ({', '.join(c['labels'])}); kept: {kept}")
    if len(conflicts) > settings.names:
        lines.append(f"- ... and {len(conflicts) - settings.names} more (manifest.json, \"near_duplicate_conflicts\")")
    return lines


def reason_kind(reason):
    """The kind of a skip or exclusion reason: its words before the first colon ("corrupt image: ..." -> "corrupt image")."""
    return str(reason).split(":", 1)[0].strip() or "unknown"


def _dropped_lines(title, entries, what, settings):
    lines = [f"## {title}", "", f"{_files(len(entries))} {what}."]
    if not entries:
        return lines
    by_kind = {}
    for entry in entries:
        by_kind.setdefault(reason_kind(entry.get("reason")), []).append(entry["name"])
    lines += ["", "| reason | files | first names |", "|---|---:|---|"]
    for kind, names in sorted(by_kind.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        shown = ", ".join(f"`{_cell(n)}`" for n in names[:settings.names]) + (", ..." if len(names) > settings.names else "")
        lines.append(f"| {_cell(kind)} | {len(names)} | {shown} |")
    return lines


def _files(count):
    return f"{count} file" if count == 1 else f"{count} files"


def _cell(text):
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")
