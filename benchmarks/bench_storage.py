"""Feed rate of shards in object storage against local shards.

    python benchmarks/bench_storage.py SHARDS [--images 5000]

SHARDS is a local shard folder (e.g. /work/data/shards). The first train
shards holding IMAGES images are uploaded to an S3-protocol server started
here (moto's, in its own process, over HTTP on loopback), and one epoch of
the training feed (`train.pipeline.epoch_windows`: shuffled blocks, windows
mixed; no TensorFlow, whose cost is the same for every source) is read:

    local     the shards in SHARDS, read in place;
    cached    --data s3://... : the first epoch downloads into the cache (each
              shard's sha256 checked), the second reads the cached copies;
    streamed  --data s3://... --stream: ranged reads with read-ahead, twice.

Each line runs in a fresh process; peak RSS is that process's. Not a test.
"""
import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BUCKET = "bench"


def probe(mode, data, cache, limit):
    """One feed measurement in this process; prints a JSON line."""
    from shards import storage
    from train.pipeline import epoch_windows, plan_blocks

    started = time.monotonic()
    access = storage.Access(cache=cache, stream=(mode == "streamed"))
    manifest = storage.open_shards(data, access, splits=("train",), verify=True)
    prepare = time.monotonic() - started
    blocks = plan_blocks(manifest, "train", limit)
    rates = []
    for epoch in range(2):
        began, count = time.monotonic(), 0
        for images, labels, order in epoch_windows(blocks, 32, seed=0, epoch=epoch):
            count += len(order)
        rates.append(count / (time.monotonic() - began))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"prepare_s": prepare, "epoch1": rates[0], "epoch2": rates[1], "peak_mb": peak / 2**20,
                      "images": count}))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--probe", nargs=3, metavar=("MODE", "DATA", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        mode, data, cache = args.probe
        return probe(mode, data, cache, args.images)

    from shards.manifest import load_manifest

    manifest = load_manifest(args.shards)
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scratch = tempfile.mkdtemp(prefix="bench-storage-")
    try:
        os.environ.update(env)
        import fsspec

        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        fs = fsspec.filesystem("s3")
        fs.mkdir(BUCKET)
        url = f"s3://{BUCKET}/shards"
        # A manifest listing only the shards uploaded would change its checksum; the
        # whole manifest goes up with the train shards covering --images (the readers
        # fetch nothing else).
        needed, held = [], 0
        for entry in manifest.shards("train"):
            if held >= args.images:
                break
            needed.append(entry)
            held += entry["count"]
        began = time.monotonic()
        for entry in needed:
            fs.put_file(manifest.shard_path(entry), f"{BUCKET}/shards/{entry['file']}")
        fs.put_file(manifest.path, f"{BUCKET}/shards/manifest.json")
        upload = time.monotonic() - began
        megabytes = sum(e["bytes"] for e in needed) / 1e6
        print(f"uploaded {len(needed)} shards, {megabytes:,.0f} MB, in {upload:.1f} s "
              f"({megabytes / upload:,.0f} MB/s)", file=sys.stderr)
        rows = []
        for mode, data in (("local", args.shards), ("cached", url), ("streamed", url), ("local", args.shards)):
            out = subprocess.run([sys.executable, __file__, args.shards, "--images", str(args.images),
                                  "--probe", mode, data, os.path.join(scratch, "cache")],
                                 env=env, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((mode, result))
            print(mode, result, file=sys.stderr)
        load = os.getloadavg()[0]
        print(f"| source | prepare | epoch 1 | epoch 2 | peak RSS |\n|---|---:|---:|---:|---:|")
        for mode, r in rows:
            print(f"| {mode} | {r['prepare_s']:.1f} s | {r['epoch1']:,.0f} img/s | {r['epoch2']:,.0f} img/s | "
                  f"{r['peak_mb']:,.0f} MB |")
        print(f"\n{held:,} images ({megabytes:,.0f} MB) of {args.shards}; load average {load:.1f} at the end")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
