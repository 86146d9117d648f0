"""The cutout suite on every storage backend, against real servers on 127.0.0.1 started by the
fixtures: moto's S3 server, a MiniDFSCluster (NameNode + 2 DataNodes) and a Range-honouring
HTTP server. Also: I/O accounting on S3 (checked against the requests a proxy saw), faults
(500/503, resets, truncated bodies, slow answers), a DataNode stopped mid-run, and a storage
outage during `astroflight index`."""
import concurrent.futures
import pathlib
import random
import shutil
import subprocess
import threading
import time
import uuid

import pyarrow as pa
import pytest
from pyarrow import flight

from conftest import write_config
from helpers import check_every_stamp, get, parquet_alerts, ticket
from conftest import BACKENDS
from storage_servers import S3_SECRET, FaultProxy, HdfsCluster, RangeHttp, env_without_aws
from helpers import gen_small as gen

@pytest.mark.parametrize("backend", BACKENDS)
def test_generated_lakes_and_missing_files_on_every_backend(backend, binary, place, start_server, tmp_path, request):
    """Generated ZTF and Rubin lakes (with and without a page index), and a file deleted from
    storage after indexing: its cutouts fail with DATA_LOSS, the others still answer."""
    gen(binary, tmp_path / "ztf", "ztf", 40)
    gen(binary, tmp_path / "lsst10", "lsst", 20, "--lsst-schema", "v10_0", "--no-page-index")
    zroot, zopts = place(backend, tmp_path / "ztf", f"gen-ztf-{backend}")
    lroot, lopts = place(backend, tmp_path / "lsst10", f"gen-lsst-{backend}")
    s = start_server([("ztf", "ztf", zroot, zopts), ("lsst", "lsst", lroot, lopts)])
    c = s.client()
    ztf = parquet_alerts(tmp_path / "ztf")
    check_every_stamp(c, "ztf", ztf, "candid", "candids")
    check_every_stamp(c, "lsst", parquet_alerts(tmp_path / "lsst10", ztf=False), "diaSourceId", "diaSourceIds")

    files = sorted({a["file"] for a in ztf})
    gone = pathlib.Path(files[0])
    rel = gone.relative_to(tmp_path / "ztf").as_posix()
    if backend == "s3":
        request.getfixturevalue("s3_server").s3.delete_object(Bucket="lake", Key=f"gen-ztf-{backend}/{rel}")
    elif backend == "hdfs":
        # No delete command in the launcher: HDFS is covered by overwriting the file with a
        # different one (same path, other rows), which the index must notice as a change.
        other = pathlib.Path(files[1])
        request.getfixturevalue("hdfs_cluster").put(other, f"/lakes/gen-ztf-{backend}/{rel}")
    else:
        gone.unlink()
    victim = next(a for a in ztf if a["file"] == str(gone))
    with pytest.raises((flight.FlightInternalError, pa.ArrowKeyError)) as e:
        get(c, dataset="ztf", candid=victim["candid"])
    assert "data loss" in str(e.value).lower() or "changed" in str(e.value), str(e.value)
    survivor = next(a for a in ztf if a["file"] == files[2])
    t = get(c, dataset="ztf", candid=survivor["candid"], format="gzip")
    assert t.to_pylist()[0]["stamp"] == survivor["stamps"]["Science"]


def test_http_without_manifest_says_what_to_do(place, start_server, binary, tmp_path):
    gen(binary, tmp_path / "ztf", "ztf", 10)
    root, _ = place("http", tmp_path / "ztf", "nomanifest", manifest=False)
    s = start_server([("ztf", "ztf", root)])  # no `files`, and no _manifest published
    r = s.action("reindex")
    err = r["datasets"][0]["error"]
    assert "_manifest" in err and "files" in err, err


def test_http_redirects_stay_on_the_roots_host(start_server, binary, tmp_path):
    """A lake server may redirect within itself (followed), but never send astroflight to
    another host: that redirect is refused and the other host never sees a request."""
    lake = tmp_path / "ztf"
    gen(binary, lake, "ztf", 10)
    files = sorted(str(p.relative_to(lake)) for p in lake.rglob("*.parquet"))
    elsewhere = RangeHttp(tmp_path, lake, name="elsewhere", host="127.0.0.2")
    front_root = tmp_path / "front"
    front_root.mkdir()
    (front_root / "_manifest").write_text("".join(f"moved/{f}\n" for f in files))
    shutil.copytree(lake, front_root / "real")
    same = RangeHttp(tmp_path, front_root, name="same", redirects=[("/moved/", "/real/")])
    other = RangeHttp(tmp_path, front_root, name="other", redirects=[("/moved/", elsewhere.url + "/")])
    try:
        s = start_server([("same", "ztf", same.url), ("other", "ztf", other.url)])
        r = {d["dataset"]: d for d in s.action("reindex")["datasets"]}
        assert r["same"]["unchanged"] == len(files) and not r["same"]["failed"], r["same"]
        a = parquet_alerts(lake)[0]
        t = get(s.client(), dataset="same", candid=a["candid"], kind="Science", format="gzip")
        assert t.to_pylist()[0]["stamp"] == a["stamps"]["Science"]
        # The listing's HEADs meet the redirect: the dataset is not indexed, and says why.
        assert "302" in str(r["other"]) and not r["other"].get("indexed"), r["other"]
        with pytest.raises((flight.FlightError, pa.ArrowKeyError)):
            get(s.client(), dataset="other", candid=a["candid"])
        assert elsewhere.stats()["requests"] == 0, "the other host was never contacted"
    finally:
        for srv in (elsewhere, same, other):
            srv.stop()


def test_s3_from_aws_environment_variables(s3_server, start_server, binary, tmp_path):
    gen(binary, tmp_path / "ztf", "ztf", 10)
    s3_server.upload_dir(tmp_path / "ztf", "lake", "envlake")
    env = {**env_without_aws(), "AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "astroflight-test-key", "AWS_SECRET_ACCESS_KEY": S3_SECRET,
           "AWS_ALLOW_HTTP": "true"}
    s = start_server([("ztf", "ztf", "s3://lake/envlake")], env=env)
    a = parquet_alerts(tmp_path / "ztf")[3]
    t = get(s.client(), dataset="ztf", candid=a["candid"], kind="Science", format="gzip")
    assert t["stamp"][0].as_py() == a["stamps"]["Science"]


# --- I/O accounting on S3 -------------------------------------------------------------------

def timed_get(c, request_id, **cutout):
    opts = flight.FlightCallOptions(headers=[(b"x-request-id", request_id.encode())])
    t0 = time.monotonic()
    table = c.do_get(ticket(**cutout), opts).read_all()
    return table, time.monotonic() - t0


def test_s3_io_accounting(s3_server, binary, start_server, tmp_path):
    """Cold cutout: one suffix read (footer + offset index), then one round of data reads;
    warm: one round, at most one request per column read; never a whole file. The server's
    counts are checked against the requests the proxy in front of S3 actually forwarded, and
    "one round" is checked by the proxy, which counts the requests that arrive with nothing else
    in flight."""
    lake = tmp_path / "ztf"
    # 6 files of 300 alerts (~13 MB each, ~1 MB pages as Spark writes them).
    subprocess.run([binary, "gen", "--survey", "ztf", "--out", str(lake), "--nights", "3", "--files-per-night", "2",
                    "--alerts-per-file", "300"], check=True, capture_output=True)
    s3_server.upload_dir(lake, "lake", "io")
    alerts = parquet_alerts(lake)
    sizes = {a["file"]: pathlib.Path(a["file"]).stat().st_size for a in alerts}
    proxy = FaultProxy(tmp_path, s3_server.endpoint)
    try:
        opts = s3_server.dataset_options(endpoint=proxy.endpoint)
        s = start_server([("ztf", "ztf", "s3://lake/io", opts)])
        c = s.client()
        rng = random.Random(3)
        files = sorted(sizes)
        for kind, columns in [("Science", 2), ("All", 4)]:  # stamp columns + candid (verification)
            for f in files[:2] if kind == "Science" else files[2:4]:
                a = rng.choice([x for x in alerts if x["file"] == f])
                for phase in ("cold", "warm"):
                    before = proxy.state()["counts"]["forwarded"]
                    rid = f"{kind}-{phase}-{uuid.uuid4().hex[:8]}"
                    t, _ = timed_get(c, rid, dataset="ztf", candid=a["candid"], kind=kind, format="gzip")
                    assert t.num_rows == (3 if kind == "All" else 1)
                    rec = s.request_record(rid)
                    seen = proxy.state()["counts"]["forwarded"] - before
                    assert rec["requests"] == seen, (rec, seen)  # every storage request is counted
                    limit = columns + (1 if phase == "cold" else 0)
                    assert 1 <= rec["requests"] <= limit, (kind, phase, rec)
                    assert rec["bytes"] < sizes[f] / 2, (kind, phase, rec, sizes[f])
        totals = s.action("stats")["io"]
        assert totals["requests"] >= sum(r["requests"] for r in s.action("stats")["requests"])

        # Rounds, counted by the proxy (no timing window): with every request held 1 s, the
        # requests of one round are all in flight together, and a request that arrives with
        # nothing in flight starts a new round. A warm All cutout (4 requests) is one round; a
        # cold one two (the footer, then the data) - never one per request.
        proxy.set(slow=1.0, slow_secs=1.0)
        f = files[5]
        a = next(x for x in alerts if x["file"] == f)
        for phase, want_rounds in (("cold", 2), ("warm", 1)):
            before = proxy.state()["counts"]
            rid = f"round-{phase}-{uuid.uuid4().hex[:6]}"
            timed_get(c, rid, dataset="ztf", candid=a["candid"], kind="All")
            after = proxy.state()["counts"]
            rounds = after["rounds"] - before["rounds"]
            requests = after["requests"] - before["requests"]
            assert rounds == want_rounds, (phase, rounds, requests, s.request_record(rid))
            assert requests == s.request_record(rid)["requests"]
            # At least one request per stamp column, and the footer when cold.
            assert requests >= (3 if phase == "warm" else 4), (phase, requests)
    finally:
        proxy.stop()


# --- faults -----------------------------------------------------------------------------------

def outcome(c, a, kind="Science"):
    """'ok' (and the bytes are right) or the error class; asserts the call is bounded."""
    t0 = time.monotonic()
    try:
        t = get(c, dataset="ztf", candid=a["candid"], kind=kind, format="gzip")
    except flight.FlightUnavailableError:
        return "unavailable", time.monotonic() - t0
    got = {r["kind"]: r["stamp"] for r in t.to_pylist()}
    want = a["stamps"] if kind == "All" else {kind: a["stamps"][kind]}
    assert got == want, f"wrong bytes for candid {a['candid']}"
    return "ok", time.monotonic() - t0


def test_s3_faults_give_right_bytes_or_unavailable(s3_server, binary, start_server, tmp_path):
    lake = tmp_path / "ztf"
    gen(binary, lake, "ztf", 30)
    s3_server.upload_dir(lake, "lake", "faults")
    alerts = parquet_alerts(lake)
    proxy = FaultProxy(tmp_path, s3_server.endpoint, seed=11, error=0.15, reset=0.08, truncate=0.08,
                       slow=0.08, slow_secs=2.5)
    try:
        # Storage budget: 2 s per request (a slow answer times out), 3 retries within 8 s.
        opts = s3_server.dataset_options(endpoint=proxy.endpoint, retries=3, request_timeout_secs=2,
                                         retry_timeout_secs=8, connect_timeout_secs=2)
        s = start_server([("ztf", "ztf", "s3://lake/faults", opts)], top={"deadline_secs": 40})
        c = s.client()
        rng = random.Random(5)
        picks = [rng.choice(alerts) for _ in range(30)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda ak: outcome(c, *ak), [(a, rng.choice(["Science", "All"])) for a in picks]))
        counts = proxy.state()["counts"]
        injected = sum(counts[k] for k in ("error", "reset", "truncate", "slow"))
        assert injected >= 10, counts
        oks = sum(1 for r, _ in results if r == "ok")
        assert oks >= len(results) * 0.7, (results, counts)  # retries absorb most faults
        assert max(t for _, t in results) < 40, results  # nothing waits for the deadline

        # A full outage: every request fails; each cutout is UNAVAILABLE within the retry budget.
        proxy.set(error=1.0, reset=0, truncate=0, slow=0)
        for a in picks[:4]:
            r, took = outcome(c, a, "All")
            assert r == "unavailable" and took < 20, (r, took)
        proxy.set(error=0)
        assert outcome(c, picks[0], "All")[0] == "ok"  # and it recovers
    finally:
        proxy.stop()


def test_storage_outage_during_index_keeps_previous_index(s3_server, binary, start_server, tmp_path):
    lake = tmp_path / "ztf"
    gen(binary, lake, "ztf", 20)
    s3_server.upload_dir(lake, "lake", "outage")
    alerts = parquet_alerts(lake)
    proxy = FaultProxy(tmp_path, s3_server.endpoint)
    try:
        opts = s3_server.dataset_options(endpoint=proxy.endpoint, retries=1, retry_timeout_secs=2,
                                         request_timeout_secs=2)
        s = start_server([("ztf", "ztf", "s3://lake/outage", opts)])
        assert get(s.client(), dataset="ztf", candid=alerts[0]["candid"]).num_rows == 3
        s.stop()
        # New data arrives, then storage goes down while `astroflight index` runs.
        gen(binary, tmp_path / "more", "ztf", 20, "--seed", "9")
        s3_server.upload_dir(tmp_path / "more", "lake", "outage/more")
        proxy.set(error=1.0)
        r = subprocess.run([binary, "index", "--config", str(s.config)], capture_output=True, text=True,
                           timeout=120, env=env_without_aws())
        assert r.returncode != 0 and "previous index is kept" in r.stderr, (r.returncode, r.stdout, r.stderr)
        # The server starts on the previous index even while storage is still down...
        s2 = start_server([("ztf", "ztf", "s3://lake/outage", opts)])
        info = next(iter(s2.client().list_flights()))
        assert info.total_records == len(alerts)
        # ...and serves from it once storage is back.
        proxy.set(error=0)
        for a in alerts[:5]:
            t = get(s2.client(), dataset="ztf", candid=a["candid"], format="gzip")
            assert {r["kind"]: r["stamp"] for r in t.to_pylist()} == a["stamps"]
    finally:
        proxy.stop()


# --- HDFS: a DataNode stops in the middle of a run ---------------------------------------------

@pytest.fixture
def own_hdfs_cluster(tmp_path):
    """A cluster of its own (a DataNode gets stopped): NameNode + 2 DataNodes, replication 2."""
    c = HdfsCluster(tmp_path, datanodes=2, replication=2)
    yield c
    c.stop()


def test_hdfs_datanode_stops_mid_run(own_hdfs_cluster, binary, start_server, tmp_path):
    hdfs_cluster = own_hdfs_cluster
    lake = tmp_path / "ztf"
    gen(binary, lake, "ztf", 40)
    hdfs_cluster.put(lake, "/lakes/dn-stop")
    alerts = parquet_alerts(lake)
    s = start_server([("ztf", "ztf", f"{hdfs_cluster.url}/lakes/dn-stop")])
    c = s.client()
    rng = random.Random(8)
    done, errors = [], []
    stop_at, stopped = threading.Event(), threading.Event()

    def loop():
        for i in range(60):
            if i == 15:
                # Hand over, and go on only once the DataNode is really down: the 45 cutouts
                # below all run against a cluster with one DataNode.
                stop_at.set()
                assert stopped.wait(120), "the DataNode was not stopped"
            a = rng.choice(alerts)
            try:
                t = get(c, dataset="ztf", candid=a["candid"], kind="All", format="gzip")
                assert {r["kind"]: r["stamp"] for r in t.to_pylist()} == a["stamps"]
                done.append(i)
            except Exception as e:  # noqa: BLE001 (collected and reported below)
                errors.append(repr(e))

    th = threading.Thread(target=loop)
    th.start()
    assert stop_at.wait(120)
    hdfs_cluster.stop_datanode(0)  # replication 2: every block has a copy on the other one
    assert "ok 1" in hdfs_cluster.command("datanodes"), "one DataNode left"
    stopped.set()
    th.join(300)
    assert not th.is_alive()
    log = s.stderr_path.read_text()[-3000:]
    assert not errors, (errors[:3], log)
    assert len(done) == 60, log
    assert len([i for i in done if i >= 15]) == 45, "cutouts ran after the DataNode stopped"
    assert "ok 1" in hdfs_cluster.command("datanodes")


def test_hdfs_ha_nameservice_survives_namenode_failover(binary, start_server, tmp_path):
    """An HA nameservice (two NameNodes, configured in the dataset's [dataset.hdfs] table): the
    active NameNode is stopped and the standby made active in the middle of the run."""
    cluster = HdfsCluster(tmp_path, datanodes=2, replication=2, ha=True)
    try:
        lake = tmp_path / "ztf"
        gen(binary, lake, "ztf", 20)
        cluster.put(lake, "/lakes/ha")
        alerts = parquet_alerts(lake)
        s = start_server([("ztf", "ztf", f"{cluster.url}/lakes/ha", {"hdfs": cluster.hdfs_options})])
        c = s.client()
        files = sorted({a["file"] for a in alerts})
        check = lambda a: {r["kind"]: r["stamp"] for r in get(c, dataset="ztf", candid=a["candid"], format="gzip").to_pylist()}
        for a in [x for x in alerts if x["file"] in files[:2]][:10]:
            assert check(a) == a["stamps"]
        cluster.failover()
        # Warm files and files never read before (their footers come through the new NameNode).
        for a in [x for x in alerts if x["file"] in files[1:]][:20]:
            assert check(a) == a["stamps"]
    finally:
        cluster.stop()


def test_config_file_written_by_tests_parses(binary, tmp_path):
    """The configs these tests write (nested hdfs table, options) are accepted by the binary."""
    cfg = tmp_path / "c.toml"
    write_config(cfg, tmp_path, [("ztf", "ztf", "hdfs://ns/lake", {"hdfs": {"dfs.ha.namenodes.ns": "nn1,nn2",
                 "dfs.namenode.rpc-address.ns.nn1": "127.0.0.1:1", "dfs.namenode.rpc-address.ns.nn2": "127.0.0.1:2"}})])
    r = subprocess.run([binary, "index", "--config", str(cfg)], capture_output=True, text=True, timeout=120)
    # The nameservice resolves to two dead NameNodes: the build fails for that dataset, clearly.
    assert r.returncode != 0 and "ztf: index not updated" in r.stderr and "listing of the dataset root" in r.stderr, r.stderr
