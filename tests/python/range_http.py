"""A static HTTP server that honours Range (RFC 9110 single ranges: `bytes=a-b`, `bytes=a-`,
`bytes=-n`), answers HEAD, and sends ETag / Last-Modified / Content-Length, like nginx or an
archive's CDN. Python's http.server ignores Range, so the tests and benchmarks use this one.

    python range_http.py --root DIR [--port 0] [--host 127.0.0.1] [--redirect /PREFIX/=URL/ ...]

prints `listening HOST:PORT` once it accepts connections. Loopback only (any 127.x.y.z). Every
request is counted; `GET /__stats__` returns {"requests": n, "bytes": n} as JSON (not a file
path). `If-Match` is honoured (412 when the ETag differs). `--redirect` answers 302 for paths
under PREFIX, with `Location: URL` + the rest of the path (a CDN or a mirror moving files).
"""
import argparse
import email.utils
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle holds the body
    # until the client's delayed ACK of the headers (~40 ms per request), as any real server avoids.
    disable_nagle_algorithm = True
    root = "."
    redirects = []
    lock = threading.Lock()
    stats = {"requests": 0, "bytes": 0}

    def log_message(self, *args):  # quiet: the test output is for failures
        pass

    def _count(self, n):
        with self.lock:
            self.stats["requests"] += 1
            self.stats["bytes"] += n

    def _send(self, code, body=b"", headers=(), head=False):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _file(self):
        path = unquote(urlsplit(self.path).path)
        full = os.path.realpath(os.path.join(self.root, path.lstrip("/")))
        if not (full == self.root or full.startswith(self.root + os.sep)) or not os.path.isfile(full):
            return None
        return full

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head=False):
        if urlsplit(self.path).path == "/__stats__":
            with self.lock:
                body = json.dumps(self.stats).encode()
            return self._send(200, body, [("Content-Type", "application/json")])
        path = urlsplit(self.path).path
        for prefix, target in self.redirects:
            if path.startswith(prefix):
                self._count(0)
                return self._send(302, headers=[("Location", target + path[len(prefix):])], head=head)
        full = self._file()
        if full is None:
            self._count(0)
            return self._send(404, b"not found\n", head=head)
        st = os.stat(full)
        size = st.st_size
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        if_match = self.headers.get("If-Match")
        if if_match and if_match.strip() != "*" and etag not in [t.strip() for t in if_match.split(",")]:
            self._count(0)
            return self._send(412, b"precondition failed\n", head=head)
        validators = [
            ("ETag", etag),
            ("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True)),
            ("Accept-Ranges", "bytes"),
        ]
        rng = self.headers.get("Range")
        start, end, code = 0, size, 200
        if rng:
            m = RANGE.match(rng.strip())
            if not m or (m.group(1) == "" and m.group(2) == ""):
                self._count(0)
                return self._send(416, headers=[("Content-Range", f"bytes */{size}")], head=head)
            a, b = m.group(1), m.group(2)
            if a == "":
                start, end = max(0, size - int(b)), size
            else:
                start = int(a)
                end = size if b == "" else min(size, int(b) + 1)
            if start >= size or start >= end:
                self._count(0)
                return self._send(416, headers=[("Content-Range", f"bytes */{size}")], head=head)
            code = 206
            validators.append(("Content-Range", f"bytes {start}-{end - 1}/{size}"))
        n = end - start
        self._count(0 if head else n)
        self.send_response(code)
        for k, v in validators:
            self.send_header(k, v)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        if head:
            return
        with open(full, "rb") as f:
            f.seek(start)
            left = n
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--redirect", action="append", default=[])
    args = ap.parse_args()
    if not args.host.startswith("127."):
        sys.exit("range_http serves on loopback only")
    Handler.root = os.path.realpath(args.root)
    Handler.redirects = [tuple(r.split("=", 1)) for r in args.redirect]
    srv = ThreadingHTTPServer((args.host, args.port), Handler)
    srv.daemon_threads = True
    print(f"listening {args.host}:{srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
