"""A fault-injecting HTTP/1.1 proxy for the storage tests: it sits on 127.0.0.1 in front of an
S3-compatible server and, on a seeded-random fraction of requests, answers 500 or 503, resets
the connection before answering, cuts a response off in the middle of its body, or answers
slowly. The rest are forwarded unchanged (Host header included, so S3 signatures still hold).

    python fault_proxy.py --upstream 127.0.0.1:PORT [--seed 7] [--error 0.1] [--reset 0.05]
                          [--truncate 0.05] [--slow 0.05] [--slow-secs 3]

prints `listening 127.0.0.1:PORT`. Control (not forwarded):
  GET /__faults__            -> JSON: the rates and what was injected so far; `rounds` counts
                                the requests that arrived with no other request in flight;
                                `request_payer` those that carried x-amz-request-payer: requester,
                                `signed` those with an Authorization header
  GET /__faults__/set?error=1 -> change rates (error, reset, truncate, slow, slow_secs)
  GET /__faults__/paths       -> the same, with `paths`: {object path: [requests, body bytes]}
"""
import argparse
import asyncio
import json
import random
import sys
from urllib.parse import parse_qsl, urlsplit

FAULTS = ("error", "reset", "truncate", "slow")


class Proxy:
    def __init__(self, upstream, seed, rates, slow_secs):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.rng = random.Random(seed)
        self.rates = dict(rates)
        self.slow_secs = slow_secs
        # request_payer: requests that carried `x-amz-request-payer: requester`.
        self.counts = {"requests": 0, "forwarded": 0, "rounds": 0, "bytes": 0, "request_payer": 0,
                       "signed": 0, **{f: 0 for f in FAULTS}}
        # Per object path: [requests, body bytes] (benchmarks count reads per file).
        self.paths = {}
        self.inflight = 0

    def pick(self):
        x = self.rng.random()
        acc = 0.0
        for f in FAULTS:
            acc += self.rates[f]
            if x < acc:
                return f
        return None

    async def handle(self, reader, writer):
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = [tuple(x.split(":", 1)) for x in lines[1:] if x]
                length = next((int(v) for k, v in headers if k.strip().lower() == "content-length"), 0)
                body = await reader.readexactly(length) if length else b""
                if urlsplit(target).path.startswith("/__faults__"):
                    await self.control(target, writer)
                    continue
                self.counts["requests"] += 1
                if any(k.strip().lower() == "x-amz-request-payer" and v.strip() == "requester" for k, v in headers):
                    self.counts["request_payer"] += 1
                if any(k.strip().lower() == "authorization" for k, _ in headers):
                    self.counts["signed"] += 1
                per = self.paths.setdefault(urlsplit(target).path, [0, 0])
                per[0] += 1
                if self.inflight == 0:
                    self.counts["rounds"] += 1
                self.inflight += 1
                try:
                    if not await self.answer(method, target, headers, body, writer):
                        return
                finally:
                    self.inflight -= 1
        except ConnectionError:
            return
        finally:
            if not writer.transport.is_closing():
                writer.close()

    async def answer(self, method, target, headers, body, writer):
        """Answer one request, faulty or not; False when the connection was dropped."""
        fault = self.pick()
        if fault:
            self.counts[fault] += 1
        if fault == "error":
            code = self.rng.choice([500, 503])
            msg = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
            reason = "Internal Server Error" if code == 500 else "Service Unavailable"
            writer.write(f"HTTP/1.1 {code} {reason}\r\nContent-Length: {len(msg)}\r\n"
                         f"Content-Type: application/xml\r\n\r\n".encode() + msg)
            await writer.drain()
            return True
        if fault == "reset":
            writer.transport.abort()
            return False
        if fault == "slow":
            await asyncio.sleep(self.slow_secs)
        status, rheaders, rbody = await self.forward(method, target, headers, body)
        self.counts["forwarded"] += 1
        out = [f"HTTP/1.1 {status}"]
        for k, v in rheaders:
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                out.append(f"{k}:{v}")
        if method == "HEAD":
            # A HEAD answer has no body, but its Content-Length is the object's size: keep it.
            size = next((v.strip() for k, v in rheaders if k.strip().lower() == "content-length"), "0")
            out.append(f"Content-Length: {size}")
            rbody = b""
        else:
            out.append(f"Content-Length: {len(rbody)}")
        head_bytes = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
        if fault == "truncate" and len(rbody) > 1:
            writer.write(head_bytes + rbody[: len(rbody) // 2])
            await writer.drain()
            writer.transport.abort()
            return False
        self.counts["bytes"] += len(rbody)
        per = self.paths.get(urlsplit(target).path)
        if per is not None:
            per[1] += len(rbody)
        writer.write(head_bytes + rbody)
        await writer.drain()
        return True

    async def forward(self, method, target, headers, body):
        r, w = await asyncio.open_connection(*self.upstream)
        try:
            lines = [f"{method} {target} HTTP/1.1"]
            lines += [f"{k}:{v}" for k, v in headers if k.strip().lower() != "connection"]
            lines.append("Connection: close")
            w.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await w.drain()
            raw = await r.read()
        finally:
            w.close()
        head, _, rest = raw.partition(b"\r\n\r\n")
        hl = head.decode("latin-1").split("\r\n")
        status = hl[0].split(" ", 1)[1]
        rheaders = [tuple(x.split(":", 1)) for x in hl[1:] if x]
        if any(k.strip().lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in rheaders):
            rest = dechunk(rest)
        elif method != "HEAD":
            n = next((int(v) for k, v in rheaders if k.strip().lower() == "content-length"), None)
            if n is not None:
                rest = rest[:n]
        return status, rheaders, rest

    async def control(self, target, writer):
        u = urlsplit(target)
        if u.path == "/__faults__/set":
            for k, v in parse_qsl(u.query):
                if k == "slow_secs":
                    self.slow_secs = float(v)
                elif k in self.rates:
                    self.rates[k] = float(v)
        state = {"rates": self.rates, "slow_secs": self.slow_secs, "counts": self.counts}
        if u.path == "/__faults__/paths":
            state["paths"] = self.paths
        body = json.dumps(state).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()


def dechunk(b):
    out = bytearray()
    while b:
        size_line, _, b = b.partition(b"\r\n")
        n = int(size_line.split(b";")[0], 16)
        if n == 0:
            break
        out += b[:n]
        b = b[n + 2:]
    return bytes(out)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--seed", type=int, default=7)
    for f in FAULTS:
        ap.add_argument(f"--{f}", type=float, default=0.0)
    ap.add_argument("--slow-secs", type=float, default=3.0)
    args = ap.parse_args()
    p = Proxy(args.upstream, args.seed, {f: getattr(args, f) for f in FAULTS}, args.slow_secs)
    srv = await asyncio.start_server(p.handle, "127.0.0.1", args.port)
    print(f"listening 127.0.0.1:{srv.sockets[0].getsockname()[1]}", flush=True)
    async with srv:
        await srv.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
