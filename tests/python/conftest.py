"""Fixtures: the real astroflight binary, started on 127.0.0.1 with a port the OS picks.

The server prints `astroflight listening on HOST:PORT` once it accepts connections; the
fixture waits for that line (never a sleep) and fails loudly with the server's stderr if it
does not come.
"""
import os
import pathlib
import subprocess
import sys
import threading

import pytest
from pyarrow import flight

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
        pytest.skip(f"SKIPPED: ../shared/data is absent ({d}); set ASTROFLIGHT_SHARED_DATA to run the real-sample tests")
    return d


class Server:
    def __init__(self, binary, workdir, datasets, extra_args=()):
        self.workdir = pathlib.Path(workdir)
        lines = [f'index_dir = "{self.workdir / "index"}"', 'listen = "127.0.0.1:0"']
        for name, kind, root in datasets:
            lines += ["[[dataset]]", f'name = "{name}"', f'kind = "{kind}"', f'root = "{root}"']
        self.config = self.workdir / "astroflight.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.stderr_path = self.workdir / "server.stderr"
        self.proc = subprocess.Popen(
            [binary, "serve", "--config", str(self.config), *extra_args],
            stdout=subprocess.PIPE,
            stderr=open(self.stderr_path, "wb"),
            text=True,
        )
        self.addr = None
        got = threading.Event()

        def read():
            for line in self.proc.stdout:
                if line.startswith("astroflight listening on "):
                    self.addr = line.split()[-1]
                    got.set()
                    break

        threading.Thread(target=read, daemon=True).start()
        if not got.wait(timeout=120) or self.addr is None:
            self.stop()
            raise RuntimeError(f"astroflight did not start:\n{self.stderr_path.read_text()[-4000:]}")
        self.url = f"grpc://{self.addr}"

    def client(self):
        return flight.connect(self.url)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def start_server(binary, tmp_path):
    servers = []

    def start(datasets, extra_args=()):
        s = Server(binary, tmp_path, datasets, extra_args)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()
