"""End-to-end cutout benchmark with a storage axis: the same generated lake on the local disk,
on S3 (moto's server on 127.0.0.1), on HDFS (MiniDFSCluster: NameNode + 2 DataNodes) and behind
a Range-honouring HTTP server, served by one release astroflight, with pyarrow's S3 filesystem
reading the same S3 objects in the same run (the filter read Fink's cutout API does).

For each backend: p50/p99 latency of single cutouts (latest alert of a random objectId, Science
and All, read to the end with pyarrow.flight), storage requests and bytes per warm cutout and per
cold one (first cutout of a file: footer read included), from the server's own per-request
records. The storage servers run on this machine, so network time is loopback time: the
figures show what each protocol and server costs, not a data centre's latency.

    bash benches/run_storage_e2e.sh [--alerts-per-file 2500] [--n 150] [--peer-n 15]
"""
import argparse
import gzip
import json
import pathlib
import random
import statistics
import sys
import time
import uuid

import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyarrow import flight

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))
from cutout_e2e import ensure_lake, pct, serve  # noqa: E402  (the same lake generation and percentiles)
from storage_servers import (  # noqa: E402
    S3_KEY, S3_REGION, S3_SECRET, HdfsCluster, RangeHttp, S3Server, env_without_aws, toml_value,
)

KINDS = ["Science", "Template", "Difference"]
BACKENDS = ["file", "s3", "hdfs", "http"]


def start_server(args, datasets, workdir):
    lines = ['listen = "127.0.0.1:0"', f'index_dir = "{workdir / "index"}"']
    for name, root, opts in datasets:
        lines += ["[[dataset]]", f'name = "{name}"', 'kind = "ztf"', f'root = "{root}"']
        lines += [f"{k} = {toml_value(v)}" for k, v in opts.items()]
    cfg = workdir / "astroflight.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return serve(args.bin, cfg, workdir / "server.log", {**env_without_aws(), "RUST_LOG": "warn"}, 900)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--data", type=pathlib.Path, default=pathlib.Path("bench-data-storage"))
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument("--alerts-per-file", type=int, default=2500)
    ap.add_argument("--n", type=int, default=150, help="astroflight samples per backend and kind")
    ap.add_argument("--peer-n", type=int, default=15, help="pyarrow-on-S3 samples per kind")
    args = ap.parse_args()
    args.data = args.data.resolve()
    lake = ensure_lake(args)
    files = sorted(lake.rglob("*.parquet"))
    rel = [f.relative_to(lake).as_posix() for f in files]
    alerts = []
    for f in files:
        t = pq.read_table(f, columns=["objectId", "candid"])
        alerts += [(o, c, f) for o, c in zip(t["objectId"].to_pylist(), t["candid"].to_pylist())]
    file_of = {}
    for o, _, f in alerts:
        file_of.setdefault(o, set()).add(f)
    single = sorted(o for o, fs in file_of.items() if len(fs) == 1)

    run = args.data / f"run-{uuid.uuid4().hex[:6]}"
    run.mkdir()
    servers = []
    proc = None
    try:
        print("starting moto S3, MiniDFSCluster and the range HTTP server on 127.0.0.1 ...", flush=True)
        s3 = S3Server(run)
        servers.append(s3)
        t0 = time.time()
        s3.upload_dir(lake, "bench", "ztf")
        hdfs = HdfsCluster(run, datanodes=2, replication=2)
        servers.append(hdfs)
        hdfs.put(lake, "/bench/ztf")
        http = RangeHttp(run, lake)
        servers.append(http)
        print(f"  loaded in {time.time() - t0:.0f} s", flush=True)
        datasets = [
            ("file", lake, {}),
            ("s3", "s3://bench/ztf", s3.dataset_options()),
            ("hdfs", f"{hdfs.url}/bench/ztf", {}),
            ("http", f"{http.url}/", {"files": rel}),
        ]
        proc, url = start_server(args, datasets, run)
        c = flight.connect(url)

        def records():
            body = list(c.do_action("stats"))[0].body.to_pybytes()
            return {r["id"]: r for r in json.loads(body)["requests"]}

        def cutout(ds, oid, kind):
            rid = f"{ds}-{uuid.uuid4().hex[:10]}"
            opts = flight.FlightCallOptions(headers=[(b"x-request-id", rid.encode())])
            t = flight.Ticket(json.dumps({"cutout": {"dataset": ds, "objectId": oid, "kind": kind, "format": "fits"}}))
            t0 = time.perf_counter()
            tab = c.do_get(t, opts).read_all()
            dt = time.perf_counter() - t0
            assert tab.num_rows == (3 if kind == "All" else 1)
            return rid, dt

        results = {"lake": {"files": len(files), "alerts": len(alerts),
                            "mb_per_file": [round(f.stat().st_size / 1e6, 1) for f in files]}}
        rng = random.Random(1)
        for ds in BACKENDS:
            # Cold: the first cutout of each file (footer and offset index read, then data).
            cold = []
            for f in files:
                oid = next(o for o, _, g in alerts if g == f and o in single)
                cold.append(cutout(ds, oid, "Science")[0])
            recs = records()
            res = {"cold_requests": statistics.fmean(recs[r]["requests"] for r in cold),
                   "cold_bytes": statistics.fmean(recs[r]["bytes"] for r in cold)}
            for kind in ["Science", "All"]:
                ids = [rng.choice(single) for _ in range(args.n + 10)]
                for oid in ids[:10]:
                    cutout(ds, oid, kind)
                got = [cutout(ds, oid, kind) for oid in ids[10:]]
                recs = records()
                lat = [dt for _, dt in got]
                res[kind] = {"p50": pct(lat, 50) * 1e3, "p99": pct(lat, 99) * 1e3, "n": len(lat),
                             "requests": statistics.fmean(recs[r]["requests"] for r, _ in got if r in recs),
                             "bytes": statistics.fmean(recs[r]["bytes"] for r, _ in got if r in recs)}
            results[ds] = res
            print(f"  {ds}: Science p50 {res['Science']['p50']:.1f} ms, All p50 {res['All']['p50']:.1f} ms", flush=True)

        # The peer on S3: pyarrow's S3 filesystem, the filter read Fink's cutout API does
        # (given the right file, which favours the peer).
        fs = pafs.S3FileSystem(access_key=S3_KEY, secret_key=S3_SECRET, region=S3_REGION,
                               endpoint_override=s3.endpoint.removeprefix("http://"), scheme="http")
        peer = {}
        for kind in ["Science", "All"]:
            cols = [f"cutout{k}" for k in (KINDS if kind == "All" else [kind])]
            lat = []
            for oid in [rng.choice(single) for _ in range(args.peer_n)]:
                f = next(iter(file_of[oid]))
                path = f"bench/ztf/{f.relative_to(lake).as_posix()}"
                t0 = time.perf_counter()
                t = pq.read_table(path, filesystem=fs, columns=["objectId", "candid", "candidate", *cols],
                                  filters=[("objectId", "=", oid)])
                row = max(t.to_pylist(), key=lambda r: r["candidate"]["jd"])
                stamps = [gzip.decompress(row[col]["stampData"]) for col in cols]
                lat.append(time.perf_counter() - t0)
                assert stamps
            peer[kind] = {"p50": pct(lat, 50) * 1e3, "p99": pct(lat, 99) * 1e3, "n": len(lat)}
        results["pyarrow_s3"] = peer
        # The S3 server's own cost: one 1 MiB ranged GET with boto3 from the same objects,
        # which is what an astroflight S3 cutout is made of (2 or 4 of them, concurrently).
        floor = []
        for _ in range(20):
            f = rng.choice(files)
            off = rng.randrange(0, f.stat().st_size - (1 << 20))
            t0 = time.perf_counter()
            s3.s3.get_object(Bucket="bench", Key=f"ztf/{f.relative_to(lake).as_posix()}",
                             Range=f"bytes={off}-{off + (1 << 20) - 1}")["Body"].read()
            floor.append(time.perf_counter() - t0)
        results["s3_ranged_get_1mib"] = {"p50": pct(floor, 50) * 1e3, "p99": pct(floor, 99) * 1e3}
    finally:
        if proc:
            proc.terminate()
            proc.wait()
        for s in reversed(servers):
            s.stop()

    out = args.data / "results.json"
    out.write_text(json.dumps(results, indent=2))
    lk = results["lake"]
    print(f"\nlake: {lk['files']} files, {lk['alerts']} alerts, {lk['mb_per_file']} MB per file; "
          f"storage servers on 127.0.0.1\n")
    print("| backend | Science p50 / p99 | All p50 / p99 | warm Science: requests, bytes | warm All: requests, bytes | cold Science: requests, bytes |")
    print("|---|---|---|---|---|---|")
    for ds in BACKENDS:
        r = results[ds]
        print(f"| {ds} | {r['Science']['p50']:.1f} / {r['Science']['p99']:.1f} ms | {r['All']['p50']:.1f} / {r['All']['p99']:.1f} ms "
              f"| {r['Science']['requests']:.1f}, {r['Science']['bytes'] / 1e6:.2f} MB | {r['All']['requests']:.1f}, {r['All']['bytes'] / 1e6:.2f} MB "
              f"| {r['cold_requests']:.1f}, {r['cold_bytes'] / 1e6:.2f} MB |")
    print()
    print("| on S3 (moto, loopback) | astroflight p50 / p99 | pyarrow S3 filter read p50 / p99 | pyarrow / astroflight at p50 |")
    print("|---|---|---|---|")
    for kind in ["Science", "All"]:
        a, p = results["s3"][kind], results["pyarrow_s3"][kind]
        print(f"| {kind} | {a['p50']:.1f} / {a['p99']:.1f} ms | {p['p50']:.0f} / {p['p99']:.0f} ms | {p['p50'] / a['p50']:.0f}x |")
    g = results["s3_ranged_get_1mib"]
    print(f"\nthe S3 server itself (moto): one 1 MiB ranged GET with boto3 from the same objects, "
          f"p50 {g['p50']:.1f} ms, p99 {g['p99']:.1f} ms")
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
