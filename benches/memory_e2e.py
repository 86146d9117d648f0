"""Server memory under slow readers: peak RSS of the release server while N concurrent clients
(default 32) each read a 1,000-alert cutout ticket slowly (a pause after every batch), on the
same Spark-like lake as the cutout benchmark (2 files x 2,500 alerts, ~110 MB each).

The server streams with backpressure: the Flight encoder pulls a batch only when gRPC flow
control lets it send, the read side stays one batch ahead, so what a slow client pins is its
HTTP/2 stream window plus a few batches. This measures it: RSS before, peak during (sampled
from /proc every 20 ms, and the kernel's own high-water mark VmHWM), and per client.

    bash benches/run_memory_e2e.sh [--clients 32] [--alerts 1000] [--pause 0.05]
"""
import argparse
import json
import pathlib
import random
import sys
import threading
import time

import pyarrow.parquet as pq
from pyarrow import flight

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from cutout_e2e import ensure_lake, start_server  # noqa: E402


def status_kb(pid, key):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--data", type=pathlib.Path, default=pathlib.Path("bench-data"))
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument("--alerts-per-file", type=int, default=2500)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--alerts", type=int, default=1000, help="alerts per ticket")
    ap.add_argument("--pause", type=float, default=0.05, help="seconds a client waits after each batch")
    ap.add_argument("--kind", default="All")
    args = ap.parse_args()
    args.data = args.data.resolve()

    lake = ensure_lake(args)
    candids = []
    for f in sorted(lake.rglob("*.parquet")):
        candids += pq.read_table(f, columns=["candid"])["candid"].to_pylist()
    proc, url = start_server(args, lake)
    try:
        base_kb = status_kb(proc.pid, "VmRSS")
        peak = [base_kb]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], status_kb(proc.pid, "VmRSS"))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        results, errors = [], []
        started = threading.Barrier(args.clients)

        def client(i):
            rng = random.Random(i)
            ids = rng.sample(candids, args.alerts)
            c = flight.connect(url)
            try:
                started.wait()
                t0 = time.monotonic()
                r = c.do_get(flight.Ticket(json.dumps(
                    {"cutout": {"dataset": "ztf", "candids": ids, "kind": args.kind, "format": "fits"}})))
                rows = 0
                for chunk in r:
                    rows += chunk.data.num_rows
                    time.sleep(args.pause)
                results.append((rows, time.monotonic() - t0))
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(repr(e))
            finally:
                c.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - t0
        stop.set()
        sampler.join()
        hwm_kb = status_kb(proc.pid, "VmHWM")
        after_kb = status_kb(proc.pid, "VmRSS")
    finally:
        proc.terminate()
        proc.wait(30)
    if errors:
        sys.exit(f"{len(errors)} clients failed: {errors[:3]}")
    kinds = 3 if args.kind == "All" else 1
    assert all(r == args.alerts * kinds for r, _ in results), results
    peak_mb = max(peak[0], hwm_kb) / 1024
    print(f"{args.clients} concurrent clients x {args.alerts} alerts ({args.kind}, fits), "
          f"{args.pause * 1e3:.0f} ms pause per batch; {took:.1f} s in all")
    print("| server RSS | MB |")
    print("|---|---|")
    print(f"| before (index built, footers cold) | {base_kb / 1024:.0f} |")
    print(f"| peak during the run (VmHWM) | {peak_mb:.0f} |")
    print(f"| after | {after_kb / 1024:.0f} |")
    print(f"| peak above the idle server, per client | {(peak_mb - base_kb / 1024) / args.clients:.1f} |")
    out = {"clients": args.clients, "alerts": args.alerts, "kind": args.kind, "pause": args.pause,
           "rss_before_mb": base_kb / 1024, "rss_peak_mb": peak_mb, "rss_after_mb": after_kb / 1024,
           "seconds": took}
    (args.data / "memory_e2e.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
