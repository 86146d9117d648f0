"""Replicas over one lake: a builder publishes its index to S3 (moto), followers load it and serve
the same answers, never reading the lake to build; new data reaches them with no restart; they
outlive the builder."""
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa
from pyarrow import flight

import astroflight
from helpers import alert_batch, duck, gen, gen_small, get, parquet_alerts, wait_until
from storage_servers import FaultProxy

BATCH = {"dataset": "ztf", "content": "lightcurve", "where": "candidate.magpsf > 15"}
SQL = "SELECT objectId, candid, candidate.magpsf AS magpsf FROM ztf WHERE candidate.magpsf > 16"


def sorted_rows(t, keys):
    return sorted(zip(*(t.column(k).to_pylist() for k in keys)))


def parallel_pull(url, q):
    """pyarrow alone: GetFlightInfo of an alert batch, then every endpoint's DoGet at once on its
    own connection. Returns (table, number of endpoints)."""
    cmd = json.dumps({"alerts": q}).encode()
    with flight.connect(url) as c:
        info = c.get_flight_info(flight.FlightDescriptor.for_command(cmd))

    def read(e):
        with flight.connect(url) as c:
            return c.do_get(e.ticket).read_all()
    with ThreadPoolExecutor(max_workers=4) as pool:
        tables = list(pool.map(read, info.endpoints))
    return pa.concat_tables(tables), len(info.endpoints)


def spark_job(spark, url):
    """A PySpark job through the `astroflight` data source: the SQL query and the alert batch
    command, each one Spark partition per endpoint."""
    sql = spark.read.format("astroflight").option("location", url).option("sql", SQL).load()
    q = {k: v for k, v in BATCH.items() if k != "dataset"}
    batch = (spark.read.format("astroflight").option("location", url).option("dataset", "ztf")
             .option("command", json.dumps(q)).load())
    assert sql.rdd.getNumPartitions() > 1 and batch.rdd.getNumPartitions() > 1
    return sql.toArrow(), batch.toArrow()


def sql_partitions(url):
    """ADBC with partitions: every endpoint read on its own connection."""
    with flight_sql.connect(url) as conn, conn.cursor() as cur:
        partitions, _ = cur.adbc_execute_partitions(SQL)
    parts = []
    for p in partitions:
        with flight_sql.connect(url) as c, c.cursor() as cur:
            cur.adbc_read_partition(p)
            parts.append(cur.fetch_arrow_table())
    return pa.concat_tables(parts)


def test_followers_on_s3_serve_the_builders_answers_and_catch_up(binary, s3_server, spark, start_server, tmp_path):
    lake = tmp_path / "lake"
    gen_small(binary, lake, "ztf", 80)
    s3_server.upload_dir(lake, "lake", "rep")
    index_root = "s3://lake/rep-index"
    direct = s3_server.dataset_options(index_root=index_root)
    # The followers reach S3 through a counting proxy: it sees every object they read.
    proxy = FaultProxy(tmp_path, s3_server.endpoint)
    try:
        via_proxy = s3_server.dataset_options(endpoint=proxy.endpoint, index_root=index_root)
        # Small endpoints, so that every pull below is split over several.
        split = {"endpoint_bytes": 15_000, "sql": {"endpoint_bytes": 20_000}}
        builder = start_server([("ztf", "ztf", "s3://lake/rep", direct)], top=split)
        follow = {**split, "index_role": "follow", "reindex_interval_secs": 1}
        followers = []
        for _ in range(2):
            t0 = time.monotonic()
            followers.append(start_server([("ztf", "ztf", "s3://lake/rep", via_proxy)], top=follow))
            ready_secs = time.monotonic() - t0
            assert ready_secs < 10, ready_secs
        paths = proxy.paths()
        lake_reads = [p for p in paths if p.startswith("/lake/rep/")]
        assert lake_reads == [], f"a follower read lake files before any request: {lake_reads}"
        assert any(p.startswith("/lake/rep-index/segments/") for p in paths), paths

        stats = [s.action("stats")["datasets"][0]["index"] for s in [builder, *followers]]
        assert len({(x["generation"], x["lineage"], x["alerts"]) for x in stats}) == 1, stats
        assert [x["role"] for x in stats] == ["build", "follow", "follow"]

        # Answers are identical. The single-server answers are the builder's own: a cutout, the
        # alert batch as one ticket, Flight SQL as one query. Then each of the three processes
        # answers a pyarrow parallel pull, ADBC with partitions and a PySpark job (local[4],
        # the astroflight data source), all compared row for row.
        alerts = parquet_alerts(lake)
        a = alerts[17]
        want_cutout = get(builder.client(), dataset="ztf", objectId=a["objectId"], all=True, format="gzip")
        want_batch = alert_batch(builder.client(), BATCH).sort_by("candid")
        with astroflight.connect(builder.url) as af:
            want_sql = af.sql(SQL)
        sql_keys = ["objectId", "candid", "magpsf"]
        want_sql_rows = sorted_rows(want_sql, sql_keys)
        assert want_batch.num_rows > 10 and want_sql.num_rows > 10
        assert want_batch.column("candid").to_pylist() == sorted(duck(lake, "candidate.magpsf > 15"))
        for s in [builder, *followers]:
            if s is not builder:
                assert get(s.client(), dataset="ztf", objectId=a["objectId"], all=True, format="gzip").equals(want_cutout)
            got, n = parallel_pull(s.url, BATCH)
            assert n > 1, "the batch was not split over endpoints"
            assert got.sort_by("candid").equals(want_batch)
            got = sql_partitions(s.url)
            assert sorted_rows(got, sql_keys) == want_sql_rows
            sql, batch = spark_job(spark, s.url)
            assert sorted_rows(sql, sql_keys) == want_sql_rows
            assert batch.cast(want_batch.schema).sort_by("candid").equals(want_batch)

        # New data: a night lands in the lake, the builder indexes and publishes it, and every
        # follower serves it within two of its refresh intervals (1 s each; the bound adds 1 s
        # for the download on a loaded machine).
        more = tmp_path / "more"
        gen(binary, more, "ztf", 1, 1, 20, "--seed", "9")
        s3_server.upload_dir(more, "lake", "rep/later")
        new = parquet_alerts(more)[5]
        r = builder.action("reindex")["datasets"][0]
        assert r["indexed"] >= 1 and r["published"]["generation"] is not None, r
        t0 = time.monotonic()
        for f in followers:
            def served(f=f):
                try:
                    return get(f.client(), dataset="ztf", candid=new["candid"], kind="Science").num_rows == 1
                except flight.FlightError:
                    return False
            wait_until(served, 30, "a follower serving the new alert")
        assert time.monotonic() - t0 < 3.0, "the followers took longer than two refresh intervals"

        # The builder is killed: the followers keep serving the last generation, healthy.
        builder.proc.kill()
        builder.proc.wait()
        time.sleep(2.5)  # two refreshes against an index_root nobody updates
        for f in followers:
            h = f.action("health")
            assert h["ready"] is True, h
            assert get(f.client(), dataset="ztf", candid=new["candid"], kind="Science").num_rows == 1
            st = f.action("stats")["datasets"][0]
            assert st["indexing"] is False
    finally:
        proxy.stop()


def test_a_follower_without_index_root_is_refused_by_check(binary, tmp_path):
    cfg = tmp_path / "f.toml"
    cfg.write_text('index_role = "follow"\n[[dataset]]\nname = "ztf"\nkind = "ztf"\nroot = "lake"\n')
    r = subprocess.run([binary, "check", "--config", str(cfg)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "index_root" in (r.stdout + r.stderr), r


def test_endpoints_spread_over_replicas_and_survive_a_killed_follower(binary, start_server, tmp_path):
    """A builder and two followers, each advertising all three: the Python client, `transfer`
    and the DataFusion provider pull endpoints from every replica; a follower killed in the
    middle of a parallel pull costs no row and duplicates none."""
    import astroflight
    from storage_servers import free_port

    lake = tmp_path / "lake"
    gen(binary, lake, "ztf", 3, 2, 80)
    want = sorted(a["candid"] for a in parquet_alerts(lake))
    ports = [free_port() for _ in range(3)]
    advertise = [f"grpc://127.0.0.1:{p}" for p in ports]
    opts = {"index_root": str(tmp_path / "published")}
    common = {"advertise": advertise, "endpoint_bytes": 20_000}
    builder = start_server([("ztf", "ztf", lake, opts)], top={**common, "listen": f"127.0.0.1:{ports[0]}"})
    followers = [start_server([("ztf", "ztf", lake, opts)],
                              top={**common, "listen": f"127.0.0.1:{p}", "index_role": "follow"})
                 for p in ports[1:]]
    servers = [builder, *followers]

    def served():
        return [len(s.action("stats")["requests"]) for s in servers]

    af = astroflight.connect(builder.url, parallel=3)
    info = af.plan("ztf", content="lightcurve")
    assert len(info.endpoints) >= 6, len(info.endpoints)
    assert all(sorted(loc.uri.decode() for loc in e.locations) == sorted(advertise) for e in info.endpoints)
    t = af.alerts("ztf", content="lightcurve")
    assert sorted(t.column("candid").to_pylist()) == want
    assert all(n > 0 for n in served()), f"every replica serves endpoints: {served()}"

    # A follower is killed while the pull streams (the consumer holds it after the first batch);
    # its endpoints are pulled again from the others, the rows already received skipped.
    got, killed = [], False
    for b in af.iter_batches("ztf", buffer=1, content="lightcurve"):
        got.extend(b.column("candid").to_pylist())
        if not killed:
            followers[0].proc.kill()
            followers[0].proc.wait()
            killed = True
    assert sorted(got) == want, "every row exactly once after a follower died mid-pull"
    af.close()

    # transfer: a plan made while all three served, pulled with one of them gone.
    out = tmp_path / "pulled"
    p = subprocess.run([binary, "transfer", "--quiet", "--server", followers[1].url, "--dataset", "ztf",
                        "--out", str(out), "--partition-by", "none", "--parallel", "3"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    import pyarrow.dataset as ds
    pulled = ds.dataset(out, format="parquet").to_table(columns=["candid"])
    assert sorted(pulled.column("candid").to_pylist()) == want
    assert "pulling it from the next location" in p.stderr, "some endpoints listed the dead follower first"


def test_a_session_token_of_one_replica_works_on_the_others(binary, start_server, auth_lake, auth_files, tmp_path):
    """alice signs in (Handshake) on the builder; her session token reads on a follower that
    shares the builder's session_key_file, and is refused by one with another key."""
    from helpers import ALICE_PASSWORD
    auth, _ = auth_files
    published = str(tmp_path / "published")
    key, other = tmp_path / "session.key", tmp_path / "other.key"
    key.write_bytes(bytes(range(64)))
    other.write_bytes(bytes(range(64, 128)))
    datasets = [(n, k, r, {"index_root": f"{published}/{n}"}) for n, k, r in auth_lake["datasets"]]
    with_key = auth.replace("[auth]\n", f'[auth]\nsession_key_file = "{key}"\n')
    builder = start_server(datasets, extra=with_key)
    follower = start_server(datasets, top={"index_role": "follow"}, extra=with_key)
    stranger = start_server(datasets, top={"index_role": "follow"},
                            extra=auth.replace("[auth]\n", f'[auth]\nsession_key_file = "{other}"\n'))
    c = builder.client()
    header = c.authenticate_basic_token("alice", ALICE_PASSWORD)
    opts = flight.FlightCallOptions(headers=[header])
    a = auth_lake["ztf"][2]
    tk = flight.Ticket(('{"cutout": {"dataset": "ztf", "candid": %d, "kind": "Science"}}' % a["candid"]).encode())
    want = c.do_get(tk, opts).read_all()
    assert follower.client().do_get(tk, opts).read_all().equals(want)
    try:
        stranger.client().do_get(tk, opts).read_all()
        raise AssertionError("a replica with another session key accepted the token")
    except flight.FlightUnauthenticatedError:
        pass
