"""End-to-end alert batch benchmark: astroflight (release server, Flight on 127.0.0.1) next to
DuckDB and pyarrow.dataset running the same query on the same files, in one run.

Two generated lakes (cached in --data; `astroflight gen`, Spark-like files, one row group each):

* `lc`: --alerts alerts (default 1,000,000: 10 nights x 4 files x 25,000) with stamps shrunk to
  8 x 8 pixels (`gen --stamp-side 8`) so that the lake stays ~5 GB on disk; every other column
  (103 `candidate` fields, `prv_candidates`) is full size. Stamps are not read by `lightcurve`.
* `stamps`: full-size 63 x 63 stamps (default 4 files x 2,500 alerts, ~430 MB).

Measured:

* lightcurve + a magnitude condition (`candidate.magpsf > 18`, about half the alerts): Flight
  (GetFlightInfo, then every endpoint pulled by --parallel pyarrow.flight readers), DuckDB
  (`read_parquet` of the files, the same columns built with struct_pack / list_transform, to an
  Arrow table) and pyarrow.dataset (`to_table` with the filter; the candidate fields as flat
  columns, `prv_candidates` whole: pyarrow cannot project inside a list of structs); best of
  --repeat runs each (warm page cache for everyone); alerts/s (rows returned), MB/s (Arrow bytes
  returned) and ratios;
* time to the first batch of a one-shot DoGet of that query, and GetFlightInfo latency;
* peak server RSS (sampled VmRSS) while --slow-readers clients read the lightcurve endpoints
  slowly (a pause after every batch) for --slow-seconds;
* `full` content on the `stamps` lake: GB/s of Arrow data received, and the CPU seconds per GB
  spent by the server and by the client; `cutouts` with `stamps: "array"`: stamps/s (three per
  alert);
* the Flight ceiling of this machine: the same `full` result (stamps as stored), held in memory by
  a pyarrow (C++) Flight server in another process, pulled by the same client code. It has nothing
  to read, decompress or decode, and its gRPC stack sends Arrow buffers without copying them: it
  bounds what any Flight server can reach here when client and server share the cores.

    bash benches/run_alerts_e2e.sh [--alerts 1000000] [--parallel 4] [--repeat 3] [--parts lightcurve,full]
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyarrow import flight

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from cutout_e2e import serve  # noqa: E402
from memory_e2e import status_kb  # noqa: E402

LC_FIELDS = ["jd", "fid", "magpsf", "sigmapsf", "diffmaglim"]
WHERE = "candidate.magpsf > 18"


def ensure(bin_path, root, params, gen_args):
    marker = root.parent / f"{root.name}-params.json"
    if root.exists() and marker.exists() and json.loads(marker.read_text()) == params:
        return
    subprocess.run(["rm", "-rf", str(root)], check=True)
    print(f"generating {root} {params} ...", flush=True)
    t0 = time.monotonic()
    subprocess.run([bin_path, "gen", "--survey", "ztf", "--out", str(root), *gen_args], check=True,
                   stdout=subprocess.DEVNULL)
    print(f"  {time.monotonic() - t0:.0f} s", flush=True)
    marker.write_text(json.dumps(params))


def ticket(q):
    return json.dumps({"alerts": q}).encode()


def pull(url, q, parallel, keep=None):
    """Plan with GetFlightInfo, pull every endpoint with `parallel` readers. Returns rows, Arrow
    bytes, seconds (plan included), endpoints. With `keep` (a list), the batches of each endpoint
    are appended to it, in plan order."""
    t0 = time.perf_counter()
    c = flight.connect(url)
    info = c.get_flight_info(flight.FlightDescriptor.for_command(q if isinstance(q, bytes) else ticket(q)))

    def one(e):
        cc = flight.connect(url)
        try:
            rows = nbytes = 0
            batches = []
            for chunk in cc.do_get(e.ticket):
                rows += chunk.data.num_rows
                nbytes += chunk.data.nbytes
                if keep is not None:
                    batches.append(chunk.data)
            return rows, nbytes, batches
        finally:
            cc.close()

    with ThreadPoolExecutor(parallel) as pool:
        parts = list(pool.map(one, info.endpoints))
    dt = time.perf_counter() - t0
    c.close()
    if keep is not None:
        keep.extend(p[2] for p in parts)
    return sum(p[0] for p in parts), sum(p[1] for p in parts), dt, len(info.endpoints)


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far."""
    f = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def pull_with_cpu(server_pid, url, q, parallel):
    """`pull`, plus the CPU seconds per GB (of Arrow data) of the server and of this client."""
    s0, c0 = cpu_seconds(server_pid), os.times()
    rows, nbytes, dt, n_ep = pull(url, q, parallel)
    s1, c1 = cpu_seconds(server_pid), os.times()
    gb = nbytes / 1e9
    client = (c1.user + c1.system) - (c0.user + c0.system)
    return rows, nbytes, dt, n_ep, (s1 - s0) / gb, client / gb


def full_record(r):
    rows, nbytes, dt, n_ep, server_cpu, client_cpu = r
    return {"rows": rows, "gb": nbytes / 1e9, "s": dt, "gb_per_s": nbytes / 1e9 / dt, "endpoints": n_ep,
            "server_cpu_s_per_gb": server_cpu, "client_cpu_s_per_gb": client_cpu}


def serve_ipc(path):
    """The ceiling server: every endpoint's batches (one IPC file per endpoint) read into memory,
    served by pyarrow's Flight server; prints its port."""
    parts = []
    for f in sorted(pathlib.Path(path).glob("part-*.arrow")):
        with pa.OSFile(str(f)) as src:
            # Read (not memory-mapped): the batches live in the process's memory, as astroflight's
            # client received them.
            parts.append(pa.ipc.open_file(src).read_all().to_batches())
    schema = parts[0][0].schema

    class Ceiling(flight.FlightServerBase):
        def get_flight_info(self, context, descriptor):
            eps = [flight.FlightEndpoint(str(i).encode(), []) for i in range(len(parts))]
            return flight.FlightInfo(schema, descriptor, eps, -1, -1)

        def do_get(self, context, t):
            return flight.RecordBatchStream(pa.Table.from_batches(parts[int(t.ticket)], schema))

    server = Ceiling("grpc://127.0.0.1:0")
    print(server.port, flush=True)
    server.serve()


def ceiling(url, q, parallel, repeat, folder):
    """Pull `q` from astroflight once, keep it, serve it from memory with pyarrow, pull that."""
    keep = []
    pull(url, q, parallel, keep)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part-*.arrow"):
        old.unlink()
    for i, batches in enumerate(keep):
        # The same batches as astroflight's stream: pyarrow sends each one as one message.
        with pa.OSFile(str(folder / f"part-{i:05}.arrow"), "wb") as sink, \
                pa.ipc.new_file(sink, batches[0].schema) as w:
            for b in batches:
                w.write_batch(b)
    del keep
    proc = subprocess.Popen([sys.executable, __file__, "--serve-ipc", str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        r = best(lambda: pull_with_cpu(proc.pid, f"grpc://127.0.0.1:{port}", b"ceiling", parallel), repeat)[0]
        return full_record(r)
    finally:
        proc.kill()
        proc.wait()


def best(fn, repeat):
    runs = [fn() for _ in range(repeat)]
    return min(runs, key=lambda r: r[2]), runs


def duckdb_query(files, threads):
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    cand = ", ".join(f"{f} := candidate.{f}" for f in LC_FIELDS)
    prv = ", ".join(f"{f} := x.{f}" for f in LC_FIELDS)
    sql = (f"SELECT objectId, candid, struct_pack({cand}) AS candidate, "
           f"list_transform(prv_candidates, x -> struct_pack({prv})) AS prv_candidates "
           f"FROM read_parquet({[str(f) for f in files]!r}, hive_partitioning=false) WHERE {WHERE}")

    def run():
        t0 = time.perf_counter()
        t = con.execute(sql).to_arrow_table()
        return t.num_rows, t.nbytes, time.perf_counter() - t0
    return run


def pyarrow_query(root):
    dataset = ds.dataset(str(root), format="parquet", partitioning="hive")
    cols = {"objectId": pc.field("objectId"), "candid": pc.field("candid")}
    cols.update({f"candidate.{f}": pc.field("candidate", f) for f in LC_FIELDS})
    cols["prv_candidates"] = pc.field("prv_candidates")

    def run():
        t0 = time.perf_counter()
        t = dataset.to_table(columns=cols, filter=pc.field("candidate", "magpsf") > 18)
        return t.num_rows, t.nbytes, time.perf_counter() - t0
    return run


def first_batch(url, q, n=7):
    c = flight.connect(url)
    firsts, plans = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        c.get_flight_info(flight.FlightDescriptor.for_command(ticket(q)))
        plans.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        r = c.do_get(flight.Ticket(ticket(q)))
        r.read_chunk()
        firsts.append(time.perf_counter() - t0)
        r.cancel()
    c.close()
    return statistics.median(firsts), statistics.median(plans)


def slow_readers(proc, url, q, readers, seconds, pause):
    """`readers` clients read lightcurve endpoints, pausing after each batch, for `seconds`."""
    c = flight.connect(url)
    info = c.get_flight_info(flight.FlightDescriptor.for_command(ticket(q)))
    base = status_kb(proc.pid, "VmRSS")
    peak = [base]
    stop = threading.Event()
    rows = [0] * readers

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], status_kb(proc.pid, "VmRSS"))
            time.sleep(0.02)

    def reader(i):
        cc = flight.connect(url)
        try:
            r = cc.do_get(info.endpoints[i % len(info.endpoints)].ticket)
            while not stop.is_set():
                try:
                    chunk = r.read_chunk()
                except StopIteration:
                    break
                rows[i] += chunk.data.num_rows
                time.sleep(pause)
            r.cancel()
        finally:
            cc.close()

    s = threading.Thread(target=sample, daemon=True)
    s.start()
    threads = [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    c.close()
    return {"readers": readers, "seconds": seconds, "pause_s": pause, "rss_before_mb": base / 1024,
            "rss_peak_mb": peak[0] / 1024, "per_reader_mb": (peak[0] - base) / 1024 / readers,
            "rows_read": sum(rows)}


def main():
    if sys.argv[1:2] == ["--serve-ipc"]:
        return serve_ipc(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--data", type=pathlib.Path, default=pathlib.Path("bench-data"))
    ap.add_argument("--alerts", type=int, default=1_000_000)
    ap.add_argument("--nights", type=int, default=10)
    ap.add_argument("--files-per-night", type=int, default=4)
    ap.add_argument("--stamp-files", type=int, default=4)
    ap.add_argument("--parallel", type=int, default=4, help="endpoints pulled at once")
    ap.add_argument("--endpoint-bytes", type=int, default=32 << 20,
                    help="the server's endpoint_bytes (default 32 MiB: the 142 MB lightcurve result in 5 endpoints; "
                         "the config default, 256 MiB, makes 2, which leaves part of the second core idle)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="DuckDB threads (the machine's cores)")
    ap.add_argument("--slow-readers", type=int, default=8)
    ap.add_argument("--slow-seconds", type=float, default=8.0)
    ap.add_argument("--slow-pause", type=float, default=0.05)
    ap.add_argument("--parts", default="lightcurve,full",
                    help="what to measure: lightcurve (the 1M-alert lake: Flight vs DuckDB vs pyarrow, first batch, "
                         "slow readers), full (the stamps lake: full content, stamps as arrays, the Flight ceiling)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if not parts or parts - {"lightcurve", "full"}:
        sys.exit(f"--parts takes lightcurve and/or full, not {args.parts!r}")
    data = args.data.resolve() / "alerts"
    data.mkdir(parents=True, exist_ok=True)

    per_file = args.alerts // (args.nights * args.files_per_night)
    lc = data / "lc"
    datasets = []
    if "lightcurve" in parts:
        ensure(args.bin, lc, {"alerts": args.alerts, "nights": args.nights, "files": args.files_per_night, "side": 8},
               ["--nights", str(args.nights), "--files-per-night", str(args.files_per_night),
                "--alerts-per-file", str(per_file), "--stamp-side", "8", "--seed", "11"])
        datasets.append(("lc", lc))
    stamps = data / "stamps"
    if "full" in parts:
        ensure(args.bin, stamps, {"files": args.stamp_files, "alerts_per_file": 2500},
               ["--nights", str(args.stamp_files), "--files-per-night", "1", "--alerts-per-file", "2500",
                "--seed", "12"])
        datasets.append(("stamps", stamps))

    cfg = data / "astroflight.toml"
    cfg.write_text(f'listen = "127.0.0.1:0"\nindex_dir = "{data / "index"}"\nendpoint_bytes = {args.endpoint_bytes}\n'
                   + "".join(f'[[dataset]]\nname = "{name}"\nkind = "ztf"\nroot = "{root}"\n' for name, root in datasets))
    t0 = time.monotonic()
    proc, url = serve(args.bin, cfg, data / "server.log", {"RUST_LOG": "warn"}, 3600)
    print(f"server ready in {time.monotonic() - t0:.0f} s (index build when the lake is new)", flush=True)
    res = {"parallel": args.parallel, "repeat": args.repeat, "endpoint_bytes": args.endpoint_bytes}
    try:
        if "lightcurve" in parts:
            lightcurve(args, res, proc, url, lc, per_file)
        if "full" in parts:
            full(args, res, proc, url, data)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    print()
    print(f"endpoint_bytes {args.endpoint_bytes >> 20} MiB, {args.parallel} endpoints pulled at once")
    if "lightcurve" in parts:
        f, d, p = res["flight"], res["duckdb"], res["pyarrow_dataset"]
        print(f"lake: {res['lake']['alerts']:,} alerts in {res['lake']['files']} files, {res['lake']['mb']:,} MB "
              f"(stamps 8x8); query: lightcurve WHERE {WHERE} -> {f['rows']:,} alerts, {f['mb']:.0f} MB of Arrow")
        print(f"{'':22}{'seconds':>9}{'alerts/s':>14}{'MB/s':>9}{'vs astroflight':>16}")
        for name, r in [("astroflight (Flight)", f), ("DuckDB", d), ("pyarrow.dataset", p)]:
            print(f"{name:22}{r['s']:9.2f}{r['alerts_per_s']:14,.0f}{r['mb_per_s']:9.0f}{r['s'] / f['s']:15.2f}x")
        print(f"astroflight scanned {f['scanned_alerts_per_s']:,.0f} alerts/s in {f['endpoints']} endpoints; "
              f"server RSS idle {f['rss_idle_mb']:.0f} MB, peak {f['rss_peak_mb']:.0f} MB during the pull")
        print(f"first batch of a one-shot DoGet: {res['first_batch_ms']:.1f} ms; "
              f"GetFlightInfo: {res['get_flight_info_ms']:.1f} ms")
        s = res["slow_readers"]
        print(f"{s['readers']} slow readers ({s['pause_s'] * 1e3:.0f} ms per batch, {s['seconds']:.0f} s): RSS "
              f"{s['rss_before_mb']:.0f} MB -> peak {s['rss_peak_mb']:.0f} MB ({s['per_reader_mb']:.1f} MB per reader)")
    if "full" in parts:
        print(f"full content, 63x63 stamps ({res['full']['rows']:,} alerts):")
        print(f"{'':44}{'GB':>6}{'seconds':>9}{'GB/s':>7}{'server cpu-s/GB':>17}{'client cpu-s/GB':>17}")
        for name, r in [("astroflight, stamps: fits (the default)", res["full"]),
                        ("astroflight, stamps: gzip (as stored)", res["full_gzip"]),
                        ("ceiling: pyarrow Flight server, in memory", res["ceiling"])]:
            print(f"{name:44}{r['gb']:6.2f}{r['s']:9.2f}{r['gb_per_s']:7.2f}{r['server_cpu_s_per_gb']:17.2f}"
                  f"{r['client_cpu_s_per_gb']:17.2f}")
        print(f"stamps as arrays: {res['stamps_array']['stamps']:,} stamps in {res['stamps_array']['s']:.2f} s = "
              f"{res['stamps_array']['stamps_per_s']:,.0f} stamps/s")
    out = data / "alerts_e2e.json"
    out.write_text(json.dumps(res, indent=2))
    print(f"(JSON in {out})")


def lightcurve(args, res, proc, url, lc, per_file):
    lc_files = sorted(lc.rglob("*.parquet"))
    res["lake"] = {"alerts": per_file * len(lc_files), "files": len(lc_files),
                   "mb": round(sum(f.stat().st_size for f in lc_files) / 1e6)}
    q = {"dataset": "lc", "where": WHERE, "content": "lightcurve"}
    scanned = per_file * len(lc_files)
    rss_idle = status_kb(proc.pid, "VmRSS") / 1024

    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], status_kb(proc.pid, "VmRSS"))
            time.sleep(0.02)
    threading.Thread(target=sample, daemon=True).start()
    (rows, nbytes, dt, n_ep), runs = best(lambda: pull(url, q, args.parallel), args.repeat)
    stop.set()
    res["flight"] = {"rows": rows, "mb": nbytes / 1e6, "s": dt, "endpoints": n_ep,
                     "alerts_per_s": rows / dt, "scanned_alerts_per_s": scanned / dt, "mb_per_s": nbytes / 1e6 / dt,
                     "runs_s": [r[2] for r in runs], "rss_idle_mb": rss_idle, "rss_peak_mb": peak[0] / 1024}
    (drows, dbytes, ddt), druns = best(duckdb_query(lc_files, args.threads), args.repeat)
    res["duckdb"] = {"rows": drows, "mb": dbytes / 1e6, "s": ddt, "alerts_per_s": drows / ddt,
                     "mb_per_s": dbytes / 1e6 / ddt, "runs_s": [r[2] for r in druns]}
    (prows, pbytes, pdt), pruns = best(pyarrow_query(lc), args.repeat)
    res["pyarrow_dataset"] = {"rows": prows, "mb": pbytes / 1e6, "s": pdt, "alerts_per_s": prows / pdt,
                              "mb_per_s": pbytes / 1e6 / pdt, "runs_s": [r[2] for r in pruns]}
    if not rows == drows == prows:
        sys.exit(f"row counts differ: flight {rows}, duckdb {drows}, pyarrow {prows}")
    fb, plan = first_batch(url, q)
    res["first_batch_ms"] = fb * 1e3
    res["get_flight_info_ms"] = plan * 1e3
    res["slow_readers"] = slow_readers(proc, url, q, args.slow_readers, args.slow_seconds, args.slow_pause)


def full(args, res, proc, url, data):
    fits = {"dataset": "stamps", "content": "full"}
    gzip = {"dataset": "stamps", "content": "full", "stamps": "gzip"}
    res["full"] = full_record(best(lambda: pull_with_cpu(proc.pid, url, fits, args.parallel), args.repeat)[0])
    res["full_gzip"] = full_record(best(lambda: pull_with_cpu(proc.pid, url, gzip, args.parallel), args.repeat)[0])
    res["ceiling"] = ceiling(url, gzip, args.parallel, args.repeat, data / "ceiling")
    (arows, abytes, adt, aep), _ = best(
        lambda: pull(url, {"dataset": "stamps", "content": "cutouts", "stamps": "array"}, args.parallel), args.repeat)
    res["stamps_array"] = {"rows": arows, "stamps": 3 * arows, "s": adt, "stamps_per_s": 3 * arows / adt,
                           "mb_per_s": abytes / 1e6 / adt}


if __name__ == "__main__":
    main()
