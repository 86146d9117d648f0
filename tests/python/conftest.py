"""Fixtures: the real astroflight binary, started on 127.0.0.1 with a port the OS picks.

The server prints `astroflight listening on HOST:PORT` once it accepts connections, and
`astroflight ready` once the first index build of every dataset has ended; the fixture waits
for both lines (never a sleep) and fails loudly with the server's stderr if they do not come.
"""
import json
import os
import pathlib
import subprocess
import threading

import pytest
from pyarrow import flight

from helpers import ALICE_PASSWORD, READER_TOKEN, SVC_TOKEN, gen, hash_password, parquet_alerts
from storage_servers import (HdfsCluster, RangeHttp, S3Server, data_files, env_without_aws, is_parquet, stop_process,
                             toml_value, write_manifest)

REPO = pathlib.Path(__file__).resolve().parents[2]


def _binary():
    b = os.environ.get("ASTROFLIGHT_BIN", str(REPO / "target" / "debug" / "astroflight"))
    if not os.access(b, os.X_OK):
        raise RuntimeError(f"astroflight binary not found at {b}: run `bash tests/run.sh` (it builds it)")
    return b


@pytest.fixture(scope="session")
def binary():
    return _binary()


@pytest.fixture(scope="session")
def shared_data():
    d = pathlib.Path(os.environ.get("ASTROFLIGHT_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (d / "README.md").exists():
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"../shared/data is absent ({d}) and CI=true: the real-sample tests must run in CI")
        pytest.skip(f"SKIPPED: ../shared/data is absent ({d}); set ASTROFLIGHT_SHARED_DATA to run the real-sample tests")
    return d


def write_config(path, workdir, datasets, top=None, extra="", index="index"):
    """An astroflight.toml: datasets are (name, kind, root) or (name, kind, root, options);
    an `hdfs` option is a table of Hadoop settings. `extra`: TOML tables appended as written
    ([tls], [auth], [[grant]], ...). `index`: the index directory's name under `workdir` (an
    index belongs to one process: servers running side by side need their own)."""
    top = dict(top or {})
    lines = [f'index_dir = "{pathlib.Path(workdir) / index}"', f'listen = "{top.pop("listen", "127.0.0.1:0")}"']
    lines += [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for name, kind, root, *opts in datasets:
        lines += ["[[dataset]]", f'name = "{name}"', f'kind = "{kind}"', f'root = "{root}"']
        opts = dict(opts[0]) if opts else {}
        hdfs = opts.pop("hdfs", None)
        lines += [f"{k} = {toml_value(v)}" for k, v in opts.items()]
        if hdfs:
            lines.append("[dataset.hdfs]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in hdfs.items()]
    pathlib.Path(path).write_text("\n".join(lines) + "\n" + extra)


class Server:
    def __init__(self, binary, workdir, datasets, extra_args=(), top=None, env=None, name="server", wait_ready=True,
                 extra="", scheme="grpc", index="index"):
        self.workdir = pathlib.Path(workdir)
        self.config = self.workdir / f"{name}.toml"
        write_config(self.config, self.workdir, datasets, top, extra, index=index)
        self.stderr_path = self.workdir / f"{name}.stderr"
        self.proc = subprocess.Popen(
            [binary, "serve", "--config", str(self.config), *extra_args],
            stdout=subprocess.PIPE,
            stderr=open(self.stderr_path, "wb"),
            text=True,
            env=env if env is not None else env_without_aws(),
        )
        self.addr = None
        self.metrics_url = None
        listening = threading.Event()
        self.is_ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                if line.startswith("astroflight metrics on "):
                    self.metrics_url = line.split()[-1]
                elif line.startswith("astroflight listening on "):
                    self.addr = line.split()[-1]
                    listening.set()
                elif line.strip() == "astroflight ready":
                    self.is_ready.set()
                    break

        threading.Thread(target=read, daemon=True).start()
        if not listening.wait(timeout=120) or self.addr is None:
            self.stop()
            raise RuntimeError(f"astroflight did not start:\n{self.stderr_path.read_text()[-4000:]}")
        self.url = f"{scheme}://{self.addr}"
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout=300):
        """Wait for the `astroflight ready` line: the first index build has ended."""
        if not self.is_ready.wait(timeout=timeout):
            self.stop()
            raise RuntimeError(f"astroflight did not become ready:\n{self.stderr_path.read_text()[-4000:]}")

    def client(self):
        return flight.connect(self.url)

    def action(self, name):
        c = self.client()
        try:
            return json.loads(next(iter(c.do_action(flight.Action(name, b"")))).body.to_pybytes())
        finally:
            c.close()

    def request_record(self, request_id):
        """The server's record of one DoGet (sent with header x-request-id), I/O included."""
        for r in self.action("stats")["requests"]:
            if r["id"] == request_id:
                return r
        raise AssertionError(f"no record of request {request_id}")

    def stop(self):
        stop_process(self.proc, timeout=30)


@pytest.fixture
def start_server(binary, tmp_path):
    servers = []

    def start(datasets, extra_args=(), top=None, env=None, wait_ready=True, extra="", scheme="grpc"):
        # An index belongs to one process: a server started while another of the test still
        # runs gets its own; one started after the others stopped reuses theirs (a restart).
        running = any(s.proc.poll() is None for s in servers)
        name = f"server{len(servers)}"
        s = Server(binary, tmp_path, datasets, extra_args, top=top, env=env, name=name,
                   wait_ready=wait_ready, extra=extra, scheme=scheme,
                   index=f"index-{name}" if running else "index")
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def spark():
    """One local Spark (`local[4]`: four task slots, so partitions of one job run at once) for
    every Spark test of the session, with the `astroflight` data source registered; the JVM
    starts once."""
    import sys

    from pyspark.sql import SparkSession

    from astroflight.spark import AstroflightDataSource

    # Workers run this interpreter (the venv with pyarrow and the astroflight package).
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    s = (SparkSession.builder.master("local[4]").appName("astroflight-test")
         .config("spark.ui.enabled", "false")
         .config("spark.driver.bindAddress", "127.0.0.1")
         .config("spark.driver.host", "127.0.0.1")
         .config("spark.sql.shuffle.partitions", "2")
         .getOrCreate())
    s.dataSource.register(AstroflightDataSource)
    yield s
    s.stop()


# Storage servers, started once per session on first use and stopped at the end.

@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    s = S3Server(tmp_path_factory.mktemp("s3"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def hdfs_cluster(tmp_path_factory):
    c = HdfsCluster(tmp_path_factory.mktemp("hdfs"), datanodes=2, replication=2)
    yield c
    c.stop()


# Shared by several test files (fixtures live here, never in a test file another imports).

# The remote backends every capability is tested on (beside local files).
BACKENDS = ["s3", "hdfs", "http"]


@pytest.fixture
def place(request, tmp_path):
    """place(backend, local_dir, name, manifest=True, is_data=is_parquet) -> (root, options): the
    lake at `local_dir` on `backend`: in place for "file", uploaded to S3 / HDFS, or served in
    place over HTTP. HTTP cannot list, so its data files (those `is_data` accepts) are named in
    the root's `_manifest`, or, with manifest=False, in the dataset's `files` option."""
    http_servers = []

    def _place(backend, local, name, manifest=True, is_data=is_parquet):
        local = pathlib.Path(local)
        if backend == "file":
            return str(local), {}
        if backend == "s3":
            s3 = request.getfixturevalue("s3_server")
            s3.upload_dir(local, "lake", name)
            return f"s3://lake/{name}", s3.dataset_options()
        if backend == "hdfs":
            hdfs = request.getfixturevalue("hdfs_cluster")
            hdfs.put(local, f"/lakes/{name}")
            return f"{hdfs.url}/lakes/{name}", {}
        if backend == "http":
            srv = RangeHttp(tmp_path, local, name=f"http-{name}")
            http_servers.append(srv)
            if manifest:
                (local / "_manifest").write_text(write_manifest(local, is_data))
                return f"{srv.url}/", {}
            return f"{srv.url}/", {"files": data_files(local, is_data)}
        raise ValueError(backend)

    yield _place
    for s in http_servers:
        s.stop()


@pytest.fixture(scope="module")
def sql_server(binary, tmp_path_factory):
    d = tmp_path_factory.mktemp("sql")
    gen(binary, d / "ztf", "ztf", 3, 2, 60)
    gen(binary, d / "lsst", "lsst", 2, 1, 30)
    s = Server(binary, d, [("ztf", "ztf", d / "ztf"), ("lsst", "lsst", d / "lsst")])
    yield s, d
    s.stop()


# Authentication, shared by the security tests and the clients' tests (JDBC, Spark) with [auth].

@pytest.fixture(scope="module")
def auth_lake(binary, tmp_path_factory):
    """Two small datasets (ztf, lsst) for tests of who may read which."""
    d = tmp_path_factory.mktemp("auth-lake")
    gen(binary, d / "ztf", "ztf", 2, 1, 30)
    gen(binary, d / "lsst", "lsst", 2, 1, 20)
    ztf = parquet_alerts(d / "ztf")
    lsst = parquet_alerts(d / "lsst", ztf=False)
    return {"dir": d, "ztf": ztf, "lsst": lsst,
            "datasets": [("ztf", "ztf", d / "ztf"), ("lsst", "lsst", d / "lsst")]}


@pytest.fixture
def auth_files(binary, tmp_path):
    """([auth] configuration text, tokens file): SVC_TOKEN reads everything, READER_TOKEN lsst,
    user alice (ALICE_PASSWORD) ztf; the files are re-read every 0.2 s."""
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[[token]]\ntoken = "{SVC_TOKEN}"\nidentity = "svc"\n'
                      f'[[token]]\ntoken = "{READER_TOKEN}"\nidentity = "reader"\n')
    users = tmp_path / "users.toml"
    users.write_text(f'[[user]]\nname = "alice"\npassword_hash = "{hash_password(binary, ALICE_PASSWORD)}"\n')
    grants = ('[[grant]]\nidentity = "svc"\ndatasets = ["*"]\n'
              '[[grant]]\nidentity = "reader"\ndatasets = ["lsst"]\n'
              '[[grant]]\nidentity = "alice"\ndatasets = ["ztf"]\n')
    return f'[auth]\ntokens_file = "{tokens}"\nusers_file = "{users}"\nreload_secs = 0.2\n{grants}', tokens


@pytest.fixture
def plain_auth_server(start_server, auth_lake, auth_files):
    """The auth lake behind [auth] over plain TCP (JDBC's TLS needs a Java trust store; TLS is
    covered by pyarrow and ADBC in test_security.py)."""
    return start_server(auth_lake["datasets"], extra=auth_files[0])
