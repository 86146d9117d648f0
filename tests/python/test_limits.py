"""Limits, with pyarrow clients: concurrent streams per identity and in total (queue, then
RESOURCE_EXHAUSTED), ids per ticket, bytes per response, gRPC message size; a client that stops
reading holds the server to a few batches of memory, and one that goes away stops the server's
storage reads within a second (counted by the proxy in front of moto)."""
import json
import threading
import time

import pyarrow as pa
import pytest
from pyarrow import flight

from helpers import parquet_alerts, sql_command, steady, ticket, wait_until
from storage_servers import FaultProxy
from helpers import gen

TOKENS = {"a": "token-of-caller-a-0123456789", "b": "token-of-caller-b-0123456789",
          "c": "token-of-caller-c-0123456789"}


@pytest.fixture(scope="module")
def lake(binary, tmp_path_factory):
    d = tmp_path_factory.mktemp("limits-lake")
    gen(binary, d / "ztf", "ztf", 2, 2, 300)
    return {"dir": d, "ztf": parquet_alerts(d / "ztf"), "datasets": [("ztf", "ztf", d / "ztf")]}


def as_(who):
    return flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {TOKENS[who]}".encode())])


BULK = flight.Ticket(json.dumps({"alerts": {"dataset": "ztf", "content": "full"}}))


def test_streams_per_identity_and_in_total_queue_then_are_refused(start_server, lake, tmp_path):
    tokens = tmp_path / "tokens.toml"
    tokens.write_text("".join(f'[[token]]\ntoken = "{t}"\nidentity = "{w}"\n' for w, t in TOKENS.items()))
    s = start_server(lake["datasets"], extra=(
        f'[auth]\ntokens_file = "{tokens}"\n[[grant]]\nidentity = "*"\ndatasets = ["*"]\n'
        '[limits]\nmax_streams = 2\nmax_streams_per_identity = 1\nqueue_secs = 1\n'))
    c = s.client()
    held = c.do_get(BULK, as_("a"))
    held.read_chunk()  # open, and not read further: the stream holds its slot
    started = time.time()
    with pytest.raises(pa.ArrowException, match="max_streams_per_identity") as e:
        c.do_get(BULK, as_("a")).read_all()
    assert "resource exhausted" in str(e.value)
    # It waited in line for queue_secs (1 s) first; how much longer a loaded machine took is
    # not this test's business (a hang is pytest's timeout).
    assert time.time() - started >= 0.95, "it was refused without waiting in line"
    other = c.do_get(BULK, as_("b"))  # another identity has its own slot
    other.read_chunk()
    with pytest.raises(pa.ArrowException, match=r"limits.max_streams\)"):
        c.do_get(ticket(dataset="ztf", candid=lake["ztf"][0]["candid"]), as_("c")).read_all()
    # A caller in line gets the slot that frees up while it waits.
    result = {}

    def waiter():
        result["rows"] = c.do_get(ticket(dataset="ztf", candid=lake["ztf"][0]["candid"]), as_("a")).read_all().num_rows

    def stats():
        return json.loads(next(iter(c.do_action(flight.Action("stats", b""), as_("b")))).body.to_pybytes())

    t = threading.Thread(target=waiter)
    t.start()
    # The held slot is freed only once the waiter is seen in line: the case cannot pass by a
    # waiter that arrived after the slot was already free.
    wait_until(lambda: stats()["queued_streams"] == 1, 5, "the waiter never got in line")
    held.cancel()
    t.join(timeout=30)
    assert result.get("rows") == 3
    # Exactly `other` is open now: `held` gave its slot to the waiter, whose stream ended.
    wait_until(lambda: stats()["open_streams"] == 1, 5, "a finished or cancelled stream kept its slot")
    assert stats()["queued_streams"] == 0
    other.cancel()
    wait_until(lambda: stats()["open_streams"] == 0, 5, "the cancelled stream kept its slot")


def test_ids_response_bytes_and_message_size(start_server, lake):
    s = start_server(lake["datasets"], top={}, extra=(
        "[limits]\nmax_ticket_ids = 5\nmax_response_bytes = 2000000\nmax_message_bytes = 262144\n"))
    c = s.client()
    candids = [a["candid"] for a in lake["ztf"][:6]]
    with pytest.raises(pa.ArrowException, match="limits.max_ticket_ids"):
        c.do_get(ticket(dataset="ztf", candids=candids)).read_all()
    assert c.do_get(ticket(dataset="ztf", candids=candids[:5])).read_all().num_rows == 15
    # Past the byte limit the stream ends with an error: never a short answer presented whole.
    with pytest.raises(pa.ArrowException, match="limits.max_response_bytes"):
        c.do_get(BULK).read_all()
    big = ticket(dataset="ztf", objectIds=[f"ZTF20aaaaaa{i:05d}" for i in range(15000)])
    assert len(big.ticket) > 262144
    with pytest.raises(pa.ArrowException, match="(?i)message length too large|larger than max"):
        c.do_get(big).read_all()
    # The same limit holds for what the server sends: answers are split into smaller messages,
    # and a row that alone is larger is RESOURCE_EXHAUSTED naming it (never UNKNOWN).
    assert c.do_get(BULK, flight.FlightCallOptions()).read_chunk() is not None
    many = ", ".join(f"{k} AS {k}{i}" for i in range(12) for k in ("cutoutScience", "cutoutTemplate", "cutoutDifference"))
    info = c.get_flight_info(sql_command(f"SELECT {many} FROM ztf LIMIT 1"))
    with pytest.raises(pa.ArrowInvalid, match=r"resource exhausted.*per message \(limits.max_message_bytes\)"):
        c.do_get(info.endpoints[0].ticket).read_all()


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_client_that_stops_reading_holds_a_few_batches(start_server, lake, capsys):
    s = start_server(lake["datasets"])
    c = s.client()
    total = c.do_get(BULK).read_all().nbytes
    assert total > 50e6, "the answer must be much larger than the buffers for this test to mean anything"
    before = rss_bytes(s.proc.pid)
    stalled = s.client().do_get(BULK)
    rows = stalled.read_chunk().data.num_rows
    # Measured once the server has stopped reading (its buffers full): the bytes it read from
    # storage stay still for a second, within a deadline.
    steady(lambda: s.action("stats")["io"]["bytes"], 1.0, 30, "the server never stopped reading for the stalled client")
    grown = rss_bytes(s.proc.pid) - before
    with capsys.disabled():
        print(f"\n[limits] answer {total / 1e6:.0f} MB; server RSS grew {grown / 1e6:.1f} MB while the client did not read")
    assert grown < 48e6, grown
    while True:
        try:
            rows += stalled.read_chunk().data.num_rows
        except StopIteration:
            break
    assert rows == len(lake["ztf"])  # and the stalled stream, read again, ends whole


def test_a_client_that_goes_away_stops_the_reads_within_a_second(start_server, lake, s3_server, tmp_path):
    s3_server.upload_dir(lake["dir"] / "ztf", "lake", "gone")
    proxy = FaultProxy(tmp_path, s3_server.endpoint, slow=1.0, slow_secs=0.2)
    try:
        s = start_server([("ztf", "ztf", "s3://lake/gone", s3_server.dataset_options(endpoint=proxy.endpoint))])
        c = s.client()
        reader = c.do_get(BULK, flight.FlightCallOptions(headers=[(b"x-request-id", b"goes-away")]))
        reader.read_chunk()
        reader.cancel()
        c.close()
        left = time.time()
        # The event: the server ended the request (its record says the client went).
        wait_until(lambda: any(r["id"] == "goes-away" for r in s.action("stats")["requests"]), 10,
                   "the server never saw the client go")
        assert s.request_record("goes-away")["outcome"] == "cancelled"
        # From then on no storage request is made (watched for 2 s: each read is slowed 0.2 s
        # by the proxy, so a scan still running would show several).
        at_end = proxy.state()["counts"]["requests"]
        steady(lambda: proxy.state()["counts"]["requests"], 2.0, 2.5, "storage reads went on after the client left")
        assert proxy.state()["counts"]["requests"] == at_end, "storage reads went on after the client left"
        assert time.time() - left < 10
    finally:
        proxy.stop()


def test_keepalive_closes_a_connection_whose_peer_went_silent(start_server, lake):
    """A raw HTTP/2 client that opens a connection and then answers nothing: the server pings it
    every keepalive_secs and closes the connection when a ping goes unanswered."""
    import socket
    s = start_server(lake["datasets"], extra="[limits]\nkeepalive_secs = 1\nkeepalive_timeout_secs = 1\n")
    host, port = s.addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))  # preface, SETTINGS
    started = time.time()
    frames = []
    buf = b""
    while True:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            n = int.from_bytes(buf[:3], "big")
            frames.append(buf[3])
            buf = buf[9 + n:]
    took = time.time() - started
    sock.close()
    assert 6 in frames, frames  # PING
    assert 7 in frames, frames  # GOAWAY: the server closed it, after keepalive_secs + keepalive_timeout_secs
    assert 1.5 < took < 10, took
