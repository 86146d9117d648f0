"""End-to-end Flight SQL benchmark: astroflight through ADBC (`adbc-driver-flightsql`) next to
DuckDB and pyarrow.dataset on the same files, in one run.

The lake is the `lc` lake of the alert batch benchmark (benches/alerts_e2e.py; generated and
indexed on first use, then reused: --alerts alerts in --nights x --files-per-night files, Hive
`year=/month=/day=` folders, one row group per file, stamps 8 x 8). Measured:

(a) a point query by a list of objectIds (spread over the lake's files):
    astroflight (the sled index -> parquet access plans) vs DuckDB and pyarrow.dataset, which
    must scan (min/max statistics cannot prune random ids); target >= 20x faster;
(b) a full-scan aggregate, count(*) and avg(candidate.magpsf) by night, astroflight vs DuckDB
    (both with the machine's cores); target within 1.5x of DuckDB;
(c) a filtered scan (candidate.magpsf > 18, five columns) split into endpoints
    (`adbc_execute_partitions`), pulled by 1, 2 and 4 readers, each with its own connection:
    rows/s and MB/s of Arrow.

Every result is checked against DuckDB's. Best of --repeat runs; prints a table and writes JSON
next to the lake.

    bash benches/run_sql_e2e.sh [--alerts 1000000] [--repeat 3] [--ids 10]
"""
import argparse
import json
import pathlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import adbc_driver_flightsql.dbapi as flight_sql
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from alerts_e2e import ensure  # noqa: E402
from cutout_e2e import serve  # noqa: E402

AGGREGATE = ("SELECT year, month, day, count(*) AS n, avg(candidate.magpsf) AS m FROM lc "
             "GROUP BY year, month, day ORDER BY year, month, day")
SCAN = ("SELECT objectId, candid, candidate.jd AS jd, candidate.magpsf AS magpsf, candidate.sigmapsf AS sigmapsf "
        "FROM lc WHERE candidate.magpsf > 18")


def timed(fn, repeat):
    """Best of `repeat` runs of fn() -> table: (seconds, table)."""
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        t = fn()
        dt = time.perf_counter() - t0
        if best is None or dt < best[0]:
            best = (dt, t)
    return best


def sample_ids(files, n):
    """n objectIds, one from each of n files spread over the lake."""
    out = []
    for i in range(n):
        f = files[i * len(files) // n]
        col = pq.ParquetFile(f).read_row_group(0, columns=["objectId"]).column(0)
        out.append(col[(i * 7919) % len(col)].as_py())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--data", type=pathlib.Path, default=pathlib.Path("bench-data"))
    ap.add_argument("--alerts", type=int, default=1_000_000)
    ap.add_argument("--nights", type=int, default=10)
    ap.add_argument("--files-per-night", type=int, default=4)
    ap.add_argument("--ids", type=int, default=10, help="objectIds in the point query")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="DuckDB threads (the machine's cores)")
    ap.add_argument("--endpoint-bytes", type=int, default=64 << 20, help="the server's sql.endpoint_bytes")
    args = ap.parse_args()

    data = args.data.resolve() / "alerts"
    data.mkdir(parents=True, exist_ok=True)
    lc = data / "lc"
    per_file = args.alerts // (args.nights * args.files_per_night)
    # The same parameters as benches/alerts_e2e.py: one lake for both benchmarks.
    ensure(args.bin, lc, {"alerts": args.alerts, "nights": args.nights, "files": args.files_per_night, "side": 8},
           ["--nights", str(args.nights), "--files-per-night", str(args.files_per_night),
            "--alerts-per-file", str(per_file), "--stamp-side", "8", "--seed", "11"])
    files = sorted(lc.rglob("*.parquet"))
    cfg = data / "sql.toml"
    cfg.write_text(f'listen = "127.0.0.1:0"\nindex_dir = "{data / "index"}"\n'
                   f'[sql]\nendpoint_bytes = {args.endpoint_bytes}\n'
                   f'[[dataset]]\nname = "lc"\nkind = "ztf"\nroot = "{lc}"\n')
    t0 = time.monotonic()
    proc, url = serve(args.bin, cfg, data / "sql-server.log", {"RUST_LOG": "warn"}, 3600)
    print(f"server ready in {time.monotonic() - t0:.0f} s (index build when the lake is new)", flush=True)

    duck = duckdb.connect()
    duck.execute(f"SET threads = {args.threads}")
    duck.execute(f"CREATE VIEW lc AS SELECT * FROM read_parquet({[str(f) for f in files]!r}, hive_partitioning=true, "
                 "hive_types={'year': INTEGER, 'month': INTEGER, 'day': INTEGER})")
    conn = flight_sql.connect(url)

    def adbc(sql):
        def run():
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetch_arrow_table()
        return run

    res = {"alerts": args.alerts, "files": len(files), "repeat": args.repeat, "threads": args.threads,
           "endpoint_bytes": args.endpoint_bytes}
    try:
        # The floor of one query through ADBC (a new cursor, GetFlightInfo, DoGet): SELECT 1.
        floor_s, _ = timed(adbc("SELECT 1"), max(args.repeat, 5))
        res["adbc_select_1_s"] = floor_s

        # (a) point queries by objectId list: one object, then --ids objects.
        dataset = ds.dataset(str(lc), format="parquet", partitioning="hive")
        res["point"] = []
        for ids in (sample_ids(files, 1), sample_ids(files, args.ids)):
            in_list = ", ".join(f"'{i}'" for i in ids)
            point = ("SELECT objectId, candid, candidate.jd AS jd, candidate.magpsf AS magpsf FROM lc "
                     f"WHERE objectId IN ({in_list})")

            def pyarrow_point():
                return dataset.to_table(columns={"objectId": pc.field("objectId"), "candid": pc.field("candid"),
                                                 "jd": pc.field("candidate", "jd"),
                                                 "magpsf": pc.field("candidate", "magpsf")},
                                        filter=pc.field("objectId").isin(ids))

            a_s, a_t = timed(adbc(point), args.repeat)
            d_s, d_t = timed(lambda: duck.execute(point).to_arrow_table(), args.repeat)
            p_s, p_t = timed(pyarrow_point, args.repeat)
            want = sorted(d_t.column("candid").to_pylist())
            assert sorted(a_t.column("candid").to_pylist()) == want == sorted(p_t.column("candid").to_pylist())
            files_hit = len({f for f in duck.execute(f"SELECT DISTINCT filename FROM read_parquet("
                                                     f"{[str(f) for f in files]!r}, filename=true) "
                                                     f"WHERE objectId IN ({in_list})").fetchall()})
            res["point"].append({"ids": len(ids), "rows": len(want), "files_hit": files_hit, "astroflight_s": a_s,
                                 "duckdb_s": d_s, "pyarrow_s": p_s})

        # (b) full-scan aggregate.
        g_s, g_t = timed(adbc(AGGREGATE), args.repeat)
        gd_s, gd_t = timed(lambda: duck.execute(AGGREGATE).to_arrow_table(), args.repeat)
        assert g_t.column("n").to_pylist() == gd_t.column("n").to_pylist()
        assert all(abs(x - y) < 1e-6 for x, y in zip(g_t.column("m").to_pylist(), gd_t.column("m").to_pylist()))
        res["aggregate"] = {"groups": g_t.num_rows, "astroflight_s": g_s, "duckdb_s": gd_s}

        # (c) parallel pull of a filtered scan.
        with conn.cursor() as cur:
            t0 = time.perf_counter()
            partitions, _ = cur.adbc_execute_partitions(SCAN)
            plan_s = time.perf_counter() - t0
        want_rows = duck.execute(f"SELECT count(*) FROM ({SCAN})").fetchone()[0]
        pulls = []
        for readers in (1, 2, 4):
            def read(ps):
                rows = nbytes = 0
                with flight_sql.connect(url) as c, c.cursor() as cur:
                    for p in ps:
                        cur.adbc_read_partition(p)
                        t = cur.fetch_arrow_table()
                        rows, nbytes = rows + t.num_rows, nbytes + t.nbytes
                return rows, nbytes

            def run():
                shares = [partitions[i::readers] for i in range(readers)]
                with ThreadPoolExecutor(readers) as pool:
                    got = list(pool.map(read, shares))
                return sum(r for r, _ in got), sum(b for _, b in got)

            s, (rows, nbytes) = timed(run, args.repeat)
            assert rows == want_rows, (rows, want_rows)
            pulls.append({"readers": readers, "rows": rows, "mb": nbytes / 1e6, "s": s,
                          "rows_per_s": rows / s, "mb_per_s": nbytes / 1e6 / s})
        sd_s, sd_t = timed(lambda: duck.execute(SCAN).to_arrow_table(), args.repeat)
        res["scan"] = {"endpoints": len(partitions), "get_flight_info_s": plan_s, "pulls": pulls,
                       "duckdb_s": sd_s, "duckdb_rows": sd_t.num_rows}
    finally:
        conn.close()
        proc.terminate()
        proc.wait(timeout=30)

    p, g, sc = res["point"], res["aggregate"], res["scan"]
    print()
    print(f"lake: {args.alerts:,} alerts in {len(files)} files (one row group each), {args.threads} DuckDB threads, "
          f"best of {args.repeat}")
    print(f"ADBC round trip of SELECT 1 (no table): {res['adbc_select_1_s'] * 1e3:.1f} ms")
    for q in p:
        print(f"(a) point query, {q['ids']} objectIds -> {q['rows']} alerts in {q['files_hit']} of {len(files)} files:")
        print(f"    astroflight (ADBC) {q['astroflight_s'] * 1e3:8.1f} ms")
        print(f"    DuckDB             {q['duckdb_s'] * 1e3:8.1f} ms  ({q['duckdb_s'] / q['astroflight_s']:.1f}x astroflight)")
        print(f"    pyarrow.dataset    {q['pyarrow_s'] * 1e3:8.1f} ms  ({q['pyarrow_s'] / q['astroflight_s']:.1f}x astroflight)")
    print(f"(b) count(*), avg(candidate.magpsf) by night ({g['groups']} nights):")
    print(f"    astroflight (ADBC) {g['astroflight_s'] * 1e3:8.1f} ms  ({g['astroflight_s'] / g['duckdb_s']:.2f}x DuckDB)")
    print(f"    DuckDB             {g['duckdb_s'] * 1e3:8.1f} ms")
    print(f"(c) {SCAN.split(' FROM')[0][7:]} WHERE candidate.magpsf > 18: {sc['endpoints']} endpoints "
          f"(GetFlightInfo {sc['get_flight_info_s'] * 1e3:.0f} ms); DuckDB alone {sc['duckdb_s']:.2f} s")
    print(f"    {'readers':>7}{'rows':>12}{'seconds':>9}{'rows/s':>13}{'MB/s':>8}")
    for r in sc["pulls"]:
        print(f"    {r['readers']:>7}{r['rows']:>12,}{r['s']:9.2f}{r['rows_per_s']:13,.0f}{r['mb_per_s']:8.0f}")
    out = data / "sql_e2e.json"
    out.write_text(json.dumps(res, indent=2))
    print(f"(JSON in {out})")


if __name__ == "__main__":
    main()
