"""Real storage servers on 127.0.0.1 for the tests and the benchmarks, each started as its own
process and stopped with `stop()` (the pytest fixtures and the benchmark script do both):

- `S3Server`: moto's standalone S3 server (PyPI `moto[server]`), loaded with boto3.
- `HdfsCluster`: Hadoop's MiniDFSCluster (NameNode + N DataNodes) through tests/hdfs.
- `RangeHttp`: tests/python/range_http.py, a static server that honours Range.
- `FaultProxy`: tests/python/fault_proxy.py, in front of any of them.

A server that does not come up raises with its output: a test never passes without its peer.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]

S3_KEY = "astroflight-test-key"
S3_SECRET = "astroflight-test-secret-DO-NOT-LOG"
S3_REGION = "us-east-1"


def stop_process(proc, timeout=20):
    """Terminate a child process, killing it if it does not exit within `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Process:
    """A child process whose stdout announces readiness with a line starting with `ready_prefix`."""

    def __init__(self, name, cmd, ready_prefix, timeout, log_path, stdin=False, env=None):
        self.name = name
        self.log_path = pathlib.Path(log_path)
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=open(self.log_path, "wb"), text=True,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, env=env,
        )
        self.lines = []
        self._cond = threading.Condition()
        self.ready_line = None
        threading.Thread(target=self._read, daemon=True).start()
        self.ready_line = self.wait_line(lambda l: l.startswith(ready_prefix), timeout, what="start")

    def _read(self):
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, pred, timeout, what, start=0):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(start, len(self.lines)):
                    if pred(self.lines[i]):
                        return self.lines[i]
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    break
                self._cond.wait(min(left, 0.5))
        self.stop()
        raise RuntimeError(f"{self.name} did not {what} (exit {self.proc.poll()}):\n"
                           f"{chr(10).join(self.lines[-20:])}\n{self.log_tail()}")

    def log_tail(self, n=4000):
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self):
        stop_process(self.proc)


def _wait_http(url, timeout, proc):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except Exception as e:  # noqa: BLE001 (any failure means "not yet")
            last = e
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer: {last}")


class S3Server:
    """moto's S3 server. Data is loaded with boto3 (the server itself is what the test talks to)."""

    def __init__(self, workdir):
        self.port = free_port()
        self.log_path = pathlib.Path(workdir) / "moto.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
        )
        self.endpoint = f"http://127.0.0.1:{self.port}"
        try:
            _wait_http(f"{self.endpoint}/moto-api/data.json", 60, self.proc)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"moto S3 server did not start: {e}\n{self.log_path.read_text()[-3000:]}") from None
        import boto3  # noqa: PLC0415 (only the storage tests need it)
        self.s3 = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=S3_REGION,
            aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET,
        )

    def upload_dir(self, local, bucket, prefix):
        """Every file under `local` to s3://bucket/prefix/<relative path>; returns the count."""
        local = pathlib.Path(local)
        try:
            self.s3.create_bucket(Bucket=bucket)
        except self.s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        n = 0
        for f in sorted(local.rglob("*")):
            if f.is_file():
                key = f"{prefix.strip('/')}/{f.relative_to(local).as_posix()}".lstrip("/")
                self.s3.upload_file(str(f), bucket, key)
                n += 1
        return n

    def dataset_options(self, endpoint=None, **extra):
        """TOML lines of an s3:// dataset pointing at this server (or at `endpoint`, a proxy)."""
        opts = {
            "endpoint": endpoint or self.endpoint, "region": S3_REGION, "access_key_id": S3_KEY,
            "secret_access_key": S3_SECRET, "allow_http": True, **extra,
        }
        return opts

    def stop(self):
        stop_process(self.proc)


class HdfsCluster(_Process):
    """MiniDFSCluster: one NameNode and `datanodes` DataNodes, replication `replication`."""

    def __init__(self, workdir, datanodes=2, replication=2, ha=False):
        base = pathlib.Path(workdir) / "minihdfs"
        super().__init__(
            "MiniDFSCluster",
            ["bash", str(REPO / "tests" / "hdfs" / "minihdfs.sh"), str(base), str(datanodes), str(replication),
             *(["ha"] if ha else [])],
            "ready ", 600, pathlib.Path(workdir) / "minihdfs.log", stdin=True,
        )
        words = self.ready_line.split()
        if ha:
            # "ready ha <nameservice> nn0=host:port nn1=host:port"
            self.nameservice = words[2]
            self.namenodes = dict(w.split("=", 1) for w in words[3:])
            self.url = f"hdfs://{self.nameservice}"
            self.hdfs_options = {
                f"dfs.ha.namenodes.{self.nameservice}": ",".join(self.namenodes),
                **{f"dfs.namenode.rpc-address.{self.nameservice}.{nn}": addr for nn, addr in self.namenodes.items()},
            }
        else:
            self.url = words[1]
            self.hdfs_options = {}
        self._lock = threading.Lock()

    def command(self, line, timeout=300):
        with self._lock:
            start = len(self.lines)
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            reply = self.wait_line(lambda l: l.startswith(("ok", "error")), timeout, what=f"answer {line!r}", start=start)
        if reply.startswith("error"):
            raise RuntimeError(f"MiniDFSCluster: {line}: {reply}")
        return reply

    def put(self, local, remote):
        return self.command(f"put {local} {remote}")

    def stop_datanode(self, i):
        return self.command(f"stop-datanode {i}")

    def failover(self):
        """HA: stop the active NameNode (nn0) and make nn1 active."""
        return self.command("failover")

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("exit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass
        super().stop()


class RangeHttp(_Process):
    def __init__(self, workdir, root, name="range_http", host="127.0.0.1", redirects=()):
        args = [sys.executable, str(HERE / "range_http.py"), "--root", str(root), "--host", host]
        for prefix, target in redirects:
            args += ["--redirect", f"{prefix}={target}"]
        super().__init__("range HTTP server", args, "listening ", 30, pathlib.Path(workdir) / f"{name}.log")
        self.url = "http://" + self.ready_line.split()[1]

    def stats(self):
        return json.loads(urllib.request.urlopen(f"{self.url}/__stats__", timeout=5).read())


class FaultProxy(_Process):
    def __init__(self, workdir, upstream_endpoint, seed=7, **rates):
        args = [sys.executable, str(HERE / "fault_proxy.py"), "--upstream",
                upstream_endpoint.removeprefix("http://"), "--seed", str(seed)]
        for k, v in rates.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        super().__init__("fault proxy", args, "listening ", 30, pathlib.Path(workdir) / "fault_proxy.log")
        self.endpoint = "http://" + self.ready_line.split()[1]

    def state(self):
        return json.loads(urllib.request.urlopen(f"{self.endpoint}/__faults__", timeout=5).read())

    def paths(self):
        """{object path: [requests, body bytes]} of every request the proxy saw."""
        return json.loads(urllib.request.urlopen(f"{self.endpoint}/__faults__/paths", timeout=5).read())["paths"]

    def set(self, **rates):
        q = "&".join(f"{k}={v}" for k, v in rates.items())
        return json.loads(urllib.request.urlopen(f"{self.endpoint}/__faults__/set?{q}", timeout=5).read())


def is_parquet(path):
    return path.suffix == ".parquet"


def data_files(root, is_data=is_parquet):
    """The data files under `root` (those `is_data` accepts), relative, sorted."""
    root = pathlib.Path(root)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and is_data(p))


def write_manifest(root, is_data=is_parquet):
    """The `_manifest` an HTTP dataset reads: every data file under `root`, relative."""
    return "\n".join(["# data files of this lake, one per line", *data_files(root, is_data)]) + "\n"


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))


def env_without_aws():
    """The environment minus AWS_* (a developer's own credentials must not leak into tests)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
