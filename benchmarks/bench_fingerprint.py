"""Near-duplicate fingerprints: how robust, how selective, how fast to group.

    python benchmarks/bench_fingerprint.py robustness [--per-set 400]
    python benchmarks/bench_fingerprint.py grouping
    python benchmarks/bench_fingerprint.py datasets

robustness: real photos (the Kaggle sample and clothing-small, ../shared/
datasets), each turned into variants (JPEG re-encode at q 50/75/95, resize
to 50% and 200%, centre crop of 5% and 10% a side, brightness +-20%, and a
horizontal flip, which is not meant to match); the Hamming distance of each
variant's fingerprint to its original's, and the distances between every
pair of different originals (about 16.7 million pairs). Prints, per
threshold, the share of variants found and the false pairs per million.

grouping: near-duplicate grouping (ingest.fingerprint.near_pairs + groups)
of 25,000 and 250,000 fingerprints: random ones plus 2% planted near-copies
(1 to 6 bits flipped), and the real 4,000+ fingerprints repeated with noise.

datasets: the groups found in each data set at the default threshold, and
how many of them cross the splits the data set gives (clothing-small) or
today's seeded split (Kaggle sample). Not a test.
"""
import argparse
import io
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ingest.fingerprint import DEFAULT_DISTANCE, MAX_COLOUR_DIFFERENCE, fingerprint, groups, near_pairs  # noqa: E402

DATASETS = os.path.normpath(os.path.join(REPO, "..", "..", "shared", "datasets"))
if not os.path.isdir(DATASETS):
    DATASETS = os.path.normpath(os.path.join(REPO, "..", "shared", "datasets"))
SETS = ("kaggle-sample", "clothing-small")
MAX_PIXELS = 89_478_485
THRESHOLDS = (4, 6, 8, 10, 12, 14)


def photos(name):
    root = os.path.join(DATASETS, name)
    found = []
    for folder, _, files in os.walk(root):
        found += [os.path.join(folder, f) for f in files if f.lower().endswith((".jpg", ".jpeg", ".png"))]
    return sorted(found)


def _jpeg(image, quality=90):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _crop(image, share):
    w, h = image.size
    dx, dy = round(w * share / 2), round(h * share / 2)
    return image.crop((dx, dy, w - dx, h - dy))


VARIANTS = {
    "jpeg q50": lambda im: _jpeg(im, 50),
    "jpeg q75": lambda im: _jpeg(im, 75),
    "jpeg q95": lambda im: _jpeg(im, 95),
    "resize 50%": lambda im: _jpeg(im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR)),
    "resize 200%": lambda im: _jpeg(im.resize((im.width * 2, im.height * 2), Image.Resampling.BICUBIC)),
    "crop 5%": lambda im: _jpeg(_crop(im, 0.05)),
    "crop 10%": lambda im: _jpeg(_crop(im, 0.10)),
    "brightness +20%": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(1.2)),
    "brightness -20%": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(0.8)),
    "flip (not meant to match)": lambda im: _jpeg(ImageOps.mirror(im)),
}


def _fp_bytes(data):
    return fingerprint(io.BytesIO(data), MAX_PIXELS)


def _colour_difference(a, b):
    return float(np.abs(np.subtract(a, b, dtype=np.float64)).mean())


def _variant_distances(path):
    """[(bits, colour difference)] of each variant against the original."""
    with open(path, "rb") as f:
        data = f.read()
    original = _fp_bytes(data)
    image = Image.open(io.BytesIO(data)).convert("RGB")
    found = []
    for make in VARIANTS.values():
        variant = _fp_bytes(make(image))
        bits = 64 if None in (original.value, variant.value) else bin(original.value ^ variant.value).count("1")
        found.append((bits, _colour_difference(original.colour, variant.colour)))
    return found


def _fp_path(path):
    with open(path, "rb") as f:
        found = fingerprint(f, MAX_PIXELS)
    return found.value or 0, found.colour


def robustness(per_set, workers):
    every = [p for name in SETS for p in photos(name)]
    rng = np.random.default_rng(0)
    sample = [p for name in SETS for p in rng.permutation(photos(name))[:per_set].tolist()]
    with ProcessPoolExecutor(workers) as pool:
        started = time.perf_counter()
        prints = list(pool.map(_fp_path, every, chunksize=64))
        fp_seconds = time.perf_counter() - started
        measured = np.array(list(pool.map(_variant_distances, sample, chunksize=8)))
    fps = np.array([p[0] for p in prints], dtype=np.uint64)
    colours = np.array([p[1] for p in prints], dtype=np.float64)
    distances, colour_gaps = measured[:, :, 0], measured[:, :, 1]
    print(f"{len(every):,} originals fingerprinted in {fp_seconds:.1f} s with {workers} processes "
          f"({fp_seconds / len(every) * 1e3 * workers:.2f} ms an image a process); "
          f"{len(sample):,} of them x {len(VARIANTS)} variants\n")
    # Distances between different originals: every pair, minus the known copies (they are true pairs).
    diff = np.bitwise_count(fps[:, None] ^ fps[None, :])
    rows, cols = np.triu_indices(len(fps), 1)
    upper = diff[rows, cols]
    pairs = len(upper)
    close = upper <= max(THRESHOLDS)
    gaps = np.full(pairs, np.inf)
    gaps[close] = np.abs(colours[rows[close]] - colours[cols[close]]).mean(axis=1)
    same_colour = colour_gaps <= MAX_COLOUR_DIFFERENCE
    print(f"Recall of variants within the threshold, pHash alone / with the colour check "
          f"(<= {MAX_COLOUR_DIFFERENCE}); pairs of different photos ({pairs:,}) within it, per million:\n")
    print("| threshold (bits) | " + " | ".join(VARIANTS) + " | all but flip, pHash alone | all but flip, with colour | "
          "different-photo pairs per million, pHash alone | with colour |")
    print("|" + "---|" * (len(VARIANTS) + 5))
    for t in THRESHOLDS:
        recall = ((distances <= t) & same_colour).mean(axis=0) * 100
        alone = (distances[:, :-1] <= t).mean() * 100
        overall = ((distances[:, :-1] <= t) & same_colour[:, :-1]).mean() * 100
        false = (upper <= t).sum() / pairs * 1e6
        false_colour = ((upper <= t) & (gaps <= MAX_COLOUR_DIFFERENCE)).sum() / pairs * 1e6
        print(f"| {t} | " + " | ".join(f"{r:.1f}%" for r in recall)
              + f" | {alone:.1f}% | {overall:.1f}% | {false:.2f} | {false_colour:.2f} |")
    print("\nmedian / 95th percentile / max distance per variant:")
    for name, column in zip(VARIANTS, distances.T):
        print(f"  {name:28s} {np.median(column):5.1f} {np.percentile(column, 95):5.1f} {column.max():4.0f}")
    print(f"different photos: min {upper.min()}, 0.1th percentile {np.percentile(upper, 0.1):.0f}, "
          f"median {np.median(upper):.0f}")


def _planted(n, rng, base=None):
    """n fingerprints: random (or `base` repeated with noise), 2% of them near-copies of others."""
    if base is None:
        fps = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) * np.uint64(2) \
            + rng.integers(0, 2, size=n, dtype=np.int64).astype(np.uint64)
    else:
        fps = base[rng.integers(0, len(base), size=n)] ^ _noise(rng, n, 12, 24)
    copies = n // 50
    sources = rng.integers(0, n - copies, size=copies)
    fps[n - copies:] = fps[sources] ^ _noise(rng, copies, 1, 6)
    return fps


def _noise(rng, n, low, high):
    masks = np.zeros(n, dtype=np.uint64)
    flips = rng.integers(low, high + 1, size=n)
    for i in range(high):
        bit = rng.integers(0, 64, size=n).astype(np.uint64)
        masks ^= np.where(i < flips, np.uint64(1) << bit, np.uint64(0))
    return masks


def grouping(distance):
    rng = np.random.default_rng(1)
    for n in (25_000, 250_000):
        fps = _planted(n, rng)
        started = time.perf_counter()
        pairs = near_pairs(fps, distance)
        found = groups(n, pairs)
        seconds = time.perf_counter() - started
        print(f"| {n:,} random + {n // 50:,} planted | {distance} | {len(pairs):,} | {len(found):,} | {seconds:.2f} s |")


def _crossing(near_groups, splits):
    where = {item.name: split for split, members in splits.items() for item in members}
    return sum(len({where.get(item.name) for item in group} & {"train", "val", "test"}) > 1
               for group in near_groups)


def datasets(distance):
    """Groups found in each data set, and how many cross the split of today (no groups) and of this change."""
    from ingest.plan import (IngestSettings, content_keys, drop_duplicates, index_classes, near_duplicate_groups,
                             resolve_near_conflicts, split_items)
    from ingest.run import _scan
    from ingest.sources import discover

    print("| data set | images | exact duplicates | near-duplicate groups (images) | under different labels | "
          "groups crossing splits: today's plan | this plan (default) | this plan --resplit | "
          "images in another split than today's |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in SETS:
        settings = IngestSettings(near_distance=distance)
        source = discover(os.path.join(DATASETS, name))
        classes, items, _ = index_classes(source.items, source.class_names)
        table = _scan(source, items, settings, "processes", None, False)
        keys, _ = content_keys(table)
        items, duplicates, _ = drop_duplicates(items, keys)
        near = near_duplicate_groups(items, table, distance)
        today, _ = split_items(items, settings, classes)
        kept, conflicts = resolve_near_conflicts(items, near, classes)
        left_out = {item.name for item in items} - {item.name for item in kept}
        ours, _ = split_items(items, settings, classes, near, left_out)
        resplit, _ = split_items(items, IngestSettings(near_distance=distance, resplit=True), classes, near, left_out)
        where = {item.name: split for split, members in today.items() for item in members}
        moved = sum(where[item.name] != split for split, members in ours.items() for item in members)
        print(f"| {name} | {len(items):,} | {len(duplicates)} | {len(near)} ({sum(map(len, near))}) | "
              f"{len(conflicts)} ({len(left_out)} images left out) | {_crossing(near, today)} | "
              f"{_crossing(near, ours)} | {_crossing(near, resplit)} | {moved} |")
        for conflict in conflicts:
            print(f"    likely label error: {conflict['names']} {conflict['labels']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("robustness", "grouping", "datasets"))
    parser.add_argument("--per-set", type=int, default=400)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--distance", type=int, default=DEFAULT_DISTANCE)
    args = parser.parse_args()
    if args.what == "robustness":
        robustness(args.per_set, args.workers)
    elif args.what == "grouping":
        grouping(args.distance)
    else:
        datasets(args.distance)


if __name__ == "__main__":
    main()
