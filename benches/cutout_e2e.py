"""End-to-end single-cutout benchmark: astroflight vs pyarrow vs DuckDB on the same files.

Generates (once, cached in --data) a Spark-like ZTF lake with `astroflight gen` (default 2 files
of 2,500 alerts, ~100 MB each, one row group, ~1 MB pages, offset index), starts the release
server on 127.0.0.1, and measures in one run:

* astroflight: one DoGet per cutout by objectId (latest alert), read to the end with pyarrow.flight;
  and, to show the server without Python's client overhead, by candid from a Rust Flight client
  (`server/examples/latency.rs`);
* pyarrow: pq.read_table(file, columns, filters=[("objectId", "=", id)]) + gunzip, as Fink's
  cutout API does (given the right file, which favours the peer);
* DuckDB: a point query on read_parquet(file) + gunzip (also given the right file);
* bytes read from storage per cutout (the server's `stats` action), next to the column chunks a
  whole-chunk reader must read;
* batch throughput: 1,000 random ids in one ticket.

Prints a ratio table (peer time / astroflight time) and writes JSON next to the lake.
"""
import argparse
import gzip
import json
import pathlib
import random
import statistics
import subprocess
import sys
import threading
import time

import duckdb
import pyarrow.parquet as pq
from pyarrow import flight

KINDS = ["Science", "Template", "Difference"]


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def ms(xs):
    return {"p50": pct(xs, 50) * 1e3, "p99": pct(xs, 99) * 1e3, "mean": statistics.fmean(xs) * 1e3, "n": len(xs)}


def ensure_lake(args):
    lake = args.data / "ztf"
    params = {"files": args.files, "alerts_per_file": args.alerts_per_file, "seed": 7}
    marker = args.data / "lake-params.json"
    if lake.exists() and marker.exists() and json.loads(marker.read_text()) == params:
        return lake
    subprocess.run(["rm", "-rf", str(args.data)], check=True)
    args.data.mkdir(parents=True)
    print(f"generating {args.files} files x {args.alerts_per_file} alerts in {lake} ...", flush=True)
    subprocess.run([args.bin, "gen", "--survey", "ztf", "--out", str(lake), "--nights", str(args.files),
                    "--files-per-night", "1", "--alerts-per-file", str(args.alerts_per_file), "--seed", "7"], check=True)
    marker.write_text(json.dumps(params))
    return lake


def serve(bin_path, cfg, log, env, timeout):
    """Start `astroflight serve --config cfg` and wait for it to be ready: it prints its address
    once it listens, and `astroflight ready` once the first index build has ended."""
    proc = subprocess.Popen([bin_path, "serve", "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=open(log, "wb"), text=True, env=env)
    addr = []
    ready = threading.Event()

    def read():
        for line in proc.stdout:
            if line.startswith("astroflight listening on "):
                addr.append(line.split()[-1])
            elif line.strip() == "astroflight ready":
                ready.set()
                return

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout):
        proc.kill()
        sys.exit(f"server did not start: {pathlib.Path(log).read_text()[-2000:]}")
    return proc, f"grpc://{addr[0]}"


def start_server(args, lake):
    cfg = args.data / "astroflight.toml"
    cfg.write_text(f'listen = "127.0.0.1:0"\nindex_dir = "{args.data / "index"}"\n'
                   f'[[dataset]]\nname = "ztf"\nkind = "ztf"\nroot = "{lake}"\n')
    return serve(args.bin, cfg, args.data / "server.log", {"RUST_LOG": "warn"}, 600)


def io_stats(client):
    body = list(client.do_action("stats"))[0].body.to_pybytes()
    return json.loads(body)["io"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--data", type=pathlib.Path, default=pathlib.Path("bench-data"))
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument("--alerts-per-file", type=int, default=2500)
    ap.add_argument("--n", type=int, default=300, help="astroflight samples per measurement")
    ap.add_argument("--peer-n", type=int, default=40, help="peer samples per measurement")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--latency-bin", help="the Rust latency client (server/examples/latency.rs)")
    args = ap.parse_args()
    args.data = args.data.resolve()

    lake = ensure_lake(args)
    files = sorted(lake.rglob("*.parquet"))
    sizes = [f.stat().st_size for f in files]
    alerts = []  # (objectId, candid, file)
    for f in files:
        t = pq.read_table(f, columns=["objectId", "candid"])
        alerts += [(o, c, f) for o, c in zip(t["objectId"].to_pylist(), t["candid"].to_pylist())]
    file_of_object = {}
    for o, _, f in alerts:
        file_of_object.setdefault(o, set()).add(f)
    # Objects whose alerts all sit in one file, so each peer reads exactly one file.
    single = sorted(o for o, fs in file_of_object.items() if len(fs) == 1)
    rng = random.Random(1)

    proc, url = start_server(args, lake)
    try:
        c = flight.connect(url)
        results = {"lake": {"files": len(files), "alerts": len(alerts), "mb_per_file": [round(s / 1e6, 1) for s in sizes]}}

        def af(oid, kind):
            t = flight.Ticket(json.dumps({"cutout": {"dataset": "ztf", "objectId": oid, "kind": kind, "format": "fits"}}))
            return c.do_get(t).read_all()

        floor = []
        for _ in range(200):
            t0 = time.perf_counter()
            list(c.list_actions())
            floor.append(time.perf_counter() - t0)
        results["flight_round_trip_floor"] = ms(floor)

        for kind in ["Science", "All"]:
            ids = [rng.choice(single) for _ in range(args.n + 30)]
            for oid in ids[:30]:  # warm the footer cache and the page cache
                af(oid, kind)
            before = io_stats(c)
            lat = []
            for oid in ids[30:]:
                t0 = time.perf_counter()
                tab = af(oid, kind)
                lat.append(time.perf_counter() - t0)
                assert tab.num_rows == (3 if kind == "All" else 1)
            after = io_stats(c)
            results[f"astroflight_{kind}"] = ms(lat)
            results[f"astroflight_{kind}"]["bytes_per_cutout"] = (after["bytes"] - before["bytes"]) / args.n
            results[f"astroflight_{kind}"]["reads_per_cutout"] = (after["requests"] - before["requests"]) / args.n

            cols = [f"cutout{k}" for k in (KINDS if kind == "All" else [kind])]
            peer_ids = [rng.choice(single) for _ in range(args.peer_n)]
            lat = []
            chunk_bytes = []
            for oid in peer_ids:
                f = next(iter(file_of_object[oid]))
                t0 = time.perf_counter()
                t = pq.read_table(f, columns=["objectId", "candid", "candidate", *cols], filters=[("objectId", "=", oid)])
                row = max(t.to_pylist(), key=lambda r: r["candidate"]["jd"])
                stamps = [gzip.decompress(row[col]["stampData"]) for col in cols]
                lat.append(time.perf_counter() - t0)
                assert stamps
                md = pq.ParquetFile(f).metadata
                names = {"objectId", "candid"} | {f"{col}.stampData" for col in cols}
                chunk_bytes.append(sum(md.row_group(r).column(i).total_compressed_size
                                       for r in range(md.num_row_groups) for i in range(md.num_columns)
                                       if md.row_group(r).column(i).path_in_schema in names or
                                       md.row_group(r).column(i).path_in_schema.startswith("candidate.")))
            results[f"pyarrow_{kind}"] = ms(lat)
            results[f"pyarrow_{kind}"]["column_chunk_bytes"] = statistics.fmean(chunk_bytes)

            con = duckdb.connect()
            sel = ", ".join(f"{col}.stampData" for col in cols)
            lat = []
            for oid in peer_ids:
                f = next(iter(file_of_object[oid]))
                t0 = time.perf_counter()
                row = con.execute(f"SELECT candid, {sel} FROM read_parquet(?) WHERE objectId = ? "
                                  "ORDER BY candidate.jd DESC LIMIT 1", [str(f), oid]).fetchone()
                stamps = [gzip.decompress(b) for b in row[1:]]
                lat.append(time.perf_counter() - t0)
                assert stamps
            results[f"duckdb_{kind}"] = ms(lat)

        if args.latency_bin:
            for kind in ["Science", "All"]:
                cand = [str(x[1]) for x in rng.sample(alerts, args.n)]
                out = subprocess.run([args.latency_bin, url, "ztf", kind, *cand], check=True,
                                     capture_output=True, text=True).stdout
                # "N requests: p50 X ms, p99 Y ms"
                p50 = float(out.split("p50 ")[1].split(" ms")[0])
                p99 = float(out.split("p99 ")[1].split(" ms")[0])
                results[f"rust_client_{kind}"] = {"p50": p50, "p99": p99, "n": args.n}

        # Batch: many random alerts in one ticket.
        runs = []
        for _ in range(5):
            cand = [x[1] for x in rng.sample(alerts, min(args.batch, len(alerts)))]
            t = flight.Ticket(json.dumps({"cutout": {"dataset": "ztf", "candids": cand, "kind": "Science", "format": "fits"}}))
            t0 = time.perf_counter()
            tab = c.do_get(t).read_all()
            runs.append(time.perf_counter() - t0)
            assert tab.num_rows == len(cand)
        results["batch"] = {"ids": len(cand), "seconds_p50": pct(runs, 50), "stamps_per_s": len(cand) / pct(runs, 50)}
    finally:
        proc.terminate()
        proc.wait()

    out = args.data / "results.json"
    out.write_text(json.dumps(results, indent=2))
    print()
    print(f"lake: {results['lake']['files']} files, {results['lake']['alerts']} alerts, "
          f"{results['lake']['mb_per_file']} MB per file; Flight round-trip floor (ListActions) "
          f"p50 {results['flight_round_trip_floor']['p50']:.2f} ms")
    print()
    print("| single cutout (latest alert of an objectId) | astroflight | pyarrow filter read | DuckDB | pyarrow / astroflight | DuckDB / astroflight |")
    print("|---|---|---|---|---|---|")
    for kind in ["Science", "All"]:
        a, p, d = results[f"astroflight_{kind}"], results[f"pyarrow_{kind}"], results[f"duckdb_{kind}"]
        for q in ["p50", "p99"]:
            print(f"| {kind}, {q} | {a[q]:.2f} ms | {p[q]:.1f} ms | {d[q]:.1f} ms | {p[q] / a[q]:.0f}x | {d[q] / a[q]:.0f}x |")
    if "rust_client_Science" in results:
        print()
        print("| single cutout by candid, Rust Flight client | p50 | p99 |")
        print("|---|---|---|")
        for kind in ["Science", "All"]:
            r = results[f"rust_client_{kind}"]
            print(f"| {kind} | {r['p50']:.2f} ms | {r['p99']:.2f} ms |")
    print()
    print("| bytes read from storage per cutout | astroflight | whole column chunks (what pyarrow/DuckDB read) |")
    print("|---|---|---|")
    for kind in ["Science", "All"]:
        a, p = results[f"astroflight_{kind}"], results[f"pyarrow_{kind}"]
        print(f"| {kind} | {a['bytes_per_cutout'] / 1e6:.2f} MB in {a['reads_per_cutout']:.1f} reads | {p['column_chunk_bytes'] / 1e6:.1f} MB |")
    b = results["batch"]
    print()
    print(f"batch: {b['ids']} random alerts in one ticket (Science, fits): {b['seconds_p50'] * 1e3:.0f} ms p50, "
          f"{b['stamps_per_s']:.0f} stamps/s")
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
