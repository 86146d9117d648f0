"""The reliability suite, bounded in time (long variants: ASTROFLIGHT_SOAK_SECS, ASTROFLIGHT_KILLS):

- `astroflight index` killed with SIGKILL at random points, then run again: the index equals a
  clean build's (`astroflight index --dump`), and a server on it answers every id rightly;
- a soak: 32 concurrent clients mixing cutouts, alert batches and Flight SQL, with slow readers
  and clients that go away mid-stream: zero wrong answers, server RSS growth under 10%, p99
  stable; the figures are printed;
- storage faults (the fault proxy in front of moto) during a bulk transfer: every endpoint
  completes with exactly its rows or fails with UNAVAILABLE, and a re-run completes.
(The decoders are fuzzed by `cargo test`: proto/tests/fuzz.rs and server/fits/tests/fuzz.rs.)"""
import concurrent.futures
import json
import os
import random
import resource
import re
import signal
import subprocess
import threading
import time

import adbc_driver_flightsql.dbapi as flight_sql
import pytest
from pyarrow import flight

from conftest import write_config
from helpers import as_fits, parquet_alerts, proc_cpu_seconds, ticket
from storage_servers import FaultProxy, env_without_aws
from helpers import gen

SOAK_SECS = float(os.environ.get("ASTROFLIGHT_SOAK_SECS", "40"))
KILLS = int(os.environ.get("ASTROFLIGHT_KILLS", "6"))


def dump(binary, config):
    r = subprocess.run([binary, "index", "--dump", "--config", str(config)], capture_output=True, text=True,
                       timeout=300, env=env_without_aws())
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def clean_build(binary, tmp_path, datasets):
    """A one-go `astroflight index` of the datasets into a fresh index: its dump, how long it
    took, and the CPU seconds it used."""
    config = tmp_path / "clean.toml"
    write_config(config, tmp_path / "clean", datasets)
    started, cpu = time.time(), children_cpu()
    subprocess.run([binary, "index", "--config", str(config)], check=True, capture_output=True, env=env_without_aws())
    return dump(binary, config), time.time() - started, children_cpu() - cpu


def kill_at_cpu(p, cpu_secs):
    """SIGKILL `p` once it has used `cpu_secs` of CPU (polled), or leave it if it ends first.
    Kill points are set in CPU used, not wall time, so that they land at the same points of the
    work on a loaded machine as on an idle one. True when it was killed mid-run."""
    while p.poll() is None:
        try:
            used = proc_cpu_seconds(p.pid)
        except (FileNotFoundError, ProcessLookupError, IndexError):
            break
        if used >= cpu_secs:
            p.send_signal(signal.SIGKILL)
            p.wait()
            return True
        time.sleep(0.002)
    p.wait()
    return False


def rerun_equals_clean(binary, config, want):
    """One more `astroflight index` run, left to finish: its index's dump must equal the clean build's."""
    r = subprocess.run([binary, "index", "--config", str(config)], capture_output=True, text=True,
                       env=env_without_aws())
    assert r.returncode == 0, r.stderr
    got = dump(binary, config)
    assert got == want, f"{len(set(got) ^ set(want))} lines differ from a clean build"


def test_index_killed_at_random_points_then_rerun_equals_a_clean_build(binary, tmp_path, capsys):
    # Many small alerts (tiny stamps): the build takes long enough to be killed at many points.
    gen(binary, tmp_path / "ztf", "ztf", 3, 4, 2500, "--stamp-side", "4")
    gen(binary, tmp_path / "lsst", "lsst", 2, 3, 1500, "--stamp-side", "4")
    datasets = [("ztf", "ztf", tmp_path / "ztf"), ("lsst", "lsst", tmp_path / "lsst")]
    want, build_secs, build_cpu = clean_build(binary, tmp_path, datasets)
    assert len(want) > 3000

    crashed = tmp_path / "crashed"
    config = crashed.with_suffix(".toml")
    write_config(config, crashed, datasets)
    rng = random.Random(int(os.environ.get("ASTROFLIGHT_SEED", "20261202")))
    killed_mid_build = 0
    for _ in range(KILLS):
        p = subprocess.Popen([binary, "index", "--config", str(config)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env_without_aws())
        # Each run resumes where the last one died, so kills come early in the run.
        killed_mid_build += kill_at_cpu(p, rng.uniform(0.01, build_cpu * 0.5))
    assert killed_mid_build >= KILLS // 2, (killed_mid_build, build_secs)
    rerun_equals_clean(binary, config, want)
    with capsys.disabled():
        print(f"\n[reliability] {killed_mid_build} of {KILLS} SIGKILLs landed mid-build (a build takes {build_secs:.1f} s); "
              f"the rerun's index equals a clean build ({len(want)} entries)")

    # A server on it (no build of its own at start) answers every id rightly.
    from conftest import Server
    s = Server(binary, crashed, datasets, top={"index_on_start": False}, name="on-crashed-index")
    try:
        answers_every_id(s.client(), tmp_path)
    finally:
        s.stop()


def test_index_killed_during_nightly_builds_and_merges_then_rerun_equals_a_clean_build(binary, tmp_path, capsys):
    # The lake grows a file at a time (a night landing), one `astroflight index` after each:
    # every build commits one segment and every fourth fills a level, so that builds merge
    # segments. Each run is killed at a random point of its run time (the build's read, its
    # commit, or the merge after it); the index must stay servable after every kill and equal a
    # clean one-go build at the end.
    gen(binary, tmp_path / "full", "ztf", 6, 2, 1500, "--stamp-side", "4")
    files = sorted(p.relative_to(tmp_path / "full") for p in (tmp_path / "full").rglob("*.parquet"))
    assert len(files) == 12
    view = tmp_path / "ztf"
    datasets = [("ztf", "ztf", view)]
    want, run_secs, run_cpu = clean_build(binary, tmp_path, [("ztf", "ztf", tmp_path / "full")])

    config = tmp_path / "crashed.toml"
    write_config(config, tmp_path / "crashed", datasets)
    rng = random.Random(int(os.environ.get("ASTROFLIGHT_SEED", "20261207")))
    killed = merges = 0
    last = run_cpu  # the CPU seconds of the last run that was not killed

    def index_run(kill):
        nonlocal killed, merges, last
        cpu = children_cpu()
        p = subprocess.Popen([binary, "index", "--config", str(config)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=env_without_aws(), text=True)
        out = ""
        if kill:
            # The output is small (a few lines): the pipe cannot fill while it runs.
            if not kill_at_cpu(p, rng.uniform(0.0, last)):
                out = p.stdout.read()
            else:
                killed += 1
        else:
            out, _ = p.communicate()
            assert p.returncode == 0
            last = children_cpu() - cpu
        merges += sum(int(m) for m in re.findall(r"(\d+) segments merged", out or ""))

    for f in files:
        (view / f).parent.mkdir(parents=True, exist_ok=True)
        os.link(tmp_path / "full" / f, view / f)
        index_run(kill=True)
        if rng.random() < 0.5:
            index_run(kill=False)
    rerun_equals_clean(binary, config, want)
    with capsys.disabled():
        print(f"\n[reliability] nightly builds: {killed} of {len(files)} runs killed (a run takes ~{run_secs:.1f} s), "
              f"{merges} segments merged by the runs that finished; the rerun's index equals a clean build "
              f"({len(want)} entries)")
    assert killed >= len(files) // 3, killed


def answers_every_id(c, tmp_path):
    ztf = parquet_alerts(tmp_path / "ztf")
    for chunk in range(0, len(ztf), 2000):
        part = ztf[chunk:chunk + 2000]
        t = c.do_get(ticket(dataset="ztf", candids=[a["candid"] for a in part], kind="Science",
                            format="gzip")).read_all()
        got = {r["candid"]: r["stamp"] for r in t.to_pylist()}
        assert got == {a["candid"]: a["stamps"]["Science"] for a in part}
    lsst = parquet_alerts(tmp_path / "lsst", ztf=False)
    for chunk in range(0, len(lsst), 2000):
        part = lsst[chunk:chunk + 2000]
        t = c.do_get(ticket(dataset="lsst", diaSourceIds=[a["diaSourceId"] for a in part],
                            kind="Difference")).read_all()
        got = {r["diaSourceId"]: r["stamp"] for r in t.to_pylist()}
        assert got == {a["diaSourceId"]: as_fits(a["stamps"]["Difference"]) for a in part}


def night_of(path):
    y, m, d = re.search(r"year=(\d+)/month=(\d+)/day=(\d+)", path).groups()
    return f"{y}-{m}-{d}"


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))] if xs else float("nan")


def test_soak_32_clients_mixed_work(binary, start_server, tmp_path, capsys):
    gen(binary, tmp_path / "ztf", "ztf", 3, 2, 200)
    alerts = parquet_alerts(tmp_path / "ztf")
    s = start_server([("ztf", "ztf", tmp_path / "ztf")], extra="[limits]\nmax_streams_per_identity = 64\n")
    bulk = flight.Ticket(json.dumps({"alerts": {"dataset": "ztf", "content": "cutouts"}}))
    nights = sorted({night_of(a["file"]) for a in alerts})
    stop_at = time.time() + SOAK_SECS
    warm_until = time.time() + SOAK_SECS * 0.25
    lock = threading.Lock()
    latencies, wrong, counts = [], [], {"cutout": 0, "batch": 0, "sql": 0, "slow": 0, "gone": 0}
    rss = {}

    def record(kind, ok, what=""):
        with lock:
            counts[kind] += 1
            if not ok:
                wrong.append((kind, what))

    def worker(n):
        rng = random.Random(n)
        c = flight.connect(s.url)
        sql = flight_sql.connect(s.url) if n % 4 == 0 else None
        while time.time() < stop_at:
            x = rng.random()
            if x < 0.6:
                a = rng.choice(alerts)
                t0 = time.perf_counter()
                t = c.do_get(ticket(dataset="ztf", candid=a["candid"], format="gzip")).read_all()
                ms = (time.perf_counter() - t0) * 1e3
                with lock:
                    latencies.append((time.time(), ms))
                record("cutout", {r["kind"]: r["stamp"] for r in t.to_pylist()} == a["stamps"], a["candid"])
            elif x < 0.75:
                night = rng.choice(nights)
                q = {"alerts": {"dataset": "ztf", "nights": [night], "content": "columns", "columns": ["candid"]}}
                t = c.do_get(flight.Ticket(json.dumps(q))).read_all()
                want = sorted(a["candid"] for a in alerts if night_of(a["file"]) == night)
                record("batch", sorted(t.column("candid").to_pylist()) == want, night)
            elif x < 0.9 and sql is not None:
                k = rng.choice(alerts)["candid"]
                cur = sql.cursor()
                cur.execute(f"SELECT count(*) FROM ztf WHERE candid <= {k}")
                record("sql", cur.fetchone()[0] == sum(1 for a in alerts if a["candid"] <= k), k)
                cur.close()
            elif x < 0.95:
                # A slow reader: a whole batch, read with pauses; it must still be whole.
                reader = c.do_get(bulk)
                rows = 0
                while True:
                    try:
                        rows += reader.read_chunk().data.num_rows
                    except StopIteration:
                        break
                    time.sleep(0.05)
                record("slow", rows == len(alerts), rows)
            else:
                # A client that goes away mid-stream.
                gone = flight.connect(s.url)
                reader = gone.do_get(bulk)
                first = reader.read_chunk().data.num_rows
                reader.cancel()
                gone.close()
                # It really left mid-stream: it had rows, and not all of them.
                record("gone", 0 < first < len(alerts), first)
            if "warm" not in rss and time.time() > warm_until:
                with lock:
                    rss.setdefault("warm", rss_bytes(s.proc.pid))
        if sql is not None:
            sql.close()
        c.close()

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        for f in [pool.submit(worker, n) for n in range(32)]:
            f.result()
    end_rss = rss_bytes(s.proc.pid)
    mid = warm_until + (stop_at - warm_until) / 2
    first = [ms for t, ms in latencies if warm_until <= t < mid]
    second = [ms for t, ms in latencies if t >= mid]
    growth = (end_rss - rss["warm"]) / rss["warm"]
    with capsys.disabled():
        print(f"\n[reliability] soak {SOAK_SECS:.0f} s, 32 clients: {counts}; wrong answers {len(wrong)}; "
              f"server RSS {rss['warm'] / 1e6:.0f} MB after warm-up -> {end_rss / 1e6:.0f} MB "
              f"({growth * 100:+.1f}%); cutout p99 {p99(first):.1f} ms then {p99(second):.1f} ms")
    assert not wrong, wrong[:5]
    assert all(counts[k] > 0 for k in ("cutout", "batch", "sql", "slow", "gone")), counts
    assert growth < 0.10, growth
    assert p99(second) < 2 * p99(first) + 50, (p99(first), p99(second))
    stats = s.action("stats")
    assert stats["open_streams"] == 0  # every stream, finished or abandoned, gave its slot back


def test_storage_faults_during_a_bulk_transfer(binary, start_server, s3_server, tmp_path, capsys):
    gen(binary, tmp_path / "ztf", "ztf", 3, 2, 150)
    alerts = parquet_alerts(tmp_path / "ztf")
    s3_server.upload_dir(tmp_path / "ztf", "lake", "bulkfaults")
    proxy = FaultProxy(tmp_path, s3_server.endpoint, seed=3)
    try:
        # No retries: a fault reaches the endpoint's stream (retries are tested with cutouts).
        opts = s3_server.dataset_options(endpoint=proxy.endpoint, retries=0, request_timeout_secs=3,
                                         connect_timeout_secs=2)
        s = start_server([("ztf", "ztf", "s3://lake/bulkfaults", opts)], top={"endpoint_bytes": 1_000_000})
        c = s.client()
        q = {"alerts": {"dataset": "ztf", "content": "cutouts", "exact": True}}
        info = c.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(q)))
        assert len(info.endpoints) >= 4 and info.total_records == len(alerts)
        proxy.set(error=0.3, reset=0.1, truncate=0.1)

        def pull(ep):
            try:
                t = c.do_get(ep.ticket).read_all()
                return "ok", t
            except flight.FlightUnavailableError:
                return "unavailable", None

        outcomes = [pull(ep) for ep in info.endpoints]
        counts = proxy.state()["counts"]
        assert sum(counts[k] for k in ("error", "reset", "truncate")) > 0, counts
        failed = [i for i, (o, _) in enumerate(outcomes) if o != "ok"]
        assert failed, "no endpoint met a fault: the test proved nothing"
        proxy.set(error=0, reset=0, truncate=0)
        tables = {i: t for i, (o, t) in enumerate(outcomes) if o == "ok"}
        for i in failed:
            o, t = pull(info.endpoints[i])
            assert o == "ok"
            tables[i] = t
        candids = sorted(cd for t in tables.values() for cd in t.column("candid").to_pylist())
        assert candids == sorted(a["candid"] for a in alerts)  # each endpoint exactly its rows, once
        with capsys.disabled():
            print(f"\n[reliability] {len(info.endpoints)} endpoints under faults ({counts}): "
                  f"{len(info.endpoints) - len(failed)} complete, {len(failed)} UNAVAILABLE and complete on re-run")
    finally:
        proxy.stop()


def test_a_corrupt_index_segment_is_named_never_served_and_rebuilt(binary, start_server, tmp_path):
    gen(binary, tmp_path / "ztf", "ztf", 2, 2, 400, "--stamp-side", "4")
    alerts = parquet_alerts(tmp_path / "ztf")
    s = start_server([("ztf", "ztf", tmp_path / "ztf")])
    c = s.client()
    candids = [a["candid"] for a in alerts]
    want = {a["candid"]: a["stamps"]["Science"] for a in alerts}

    def science():
        t = c.do_get(ticket(dataset="ztf", candids=candids, kind="Science", format="gzip")).read_all()
        return {r["candid"]: r["stamp"] for r in t.to_pylist()}

    assert science() == want
    (seg,) = (tmp_path / "index" / "segments" / "ztf").glob("*.seg")
    # Damage the blocks of the first half of the file (the `rows` and `group` tables), in place:
    # the server's memory map sees the new bytes.
    data = bytearray(seg.read_bytes())
    for at in range(16, len(data) // 2, 61):
        data[at] ^= 0x55
    with open(seg, "r+b") as f:
        f.write(data)
    with pytest.raises(flight.FlightUnavailableError) as e:  # transient: retry
        science()
    assert str(seg) in str(e.value) and "corrupt" in str(e.value), str(e.value)
    # The server rebuilds it from the lake within seconds, and answers rightly again.
    deadline = time.time() + 60
    while True:
        try:
            got = science()
            break
        except flight.FlightError as err:
            assert time.time() < deadline, f"not rebuilt within 60 s: {err}"
            time.sleep(0.5)
    assert got == want
    assert "dropping a corrupt index segment" in s.stderr_path.read_text()
