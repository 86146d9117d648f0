"""Operations: OpenTelemetry traces and metrics received by a real OTLP/gRPC receiver
(otlp_receiver.py), the Prometheus endpoint, the standard gRPC health service (grpcio's health
client), readiness, graceful shutdown, JSON logs, `astroflight check`, and S3 requester-pays
and anonymous access (seen by the proxy in front of moto)."""
import json
import os
import re
import signal
import subprocess
import time
import urllib.request

import grpc
import pyarrow as pa
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pyarrow import flight

from helpers import parquet_alerts, ticket
from otlp_receiver import OtlpReceiver
from storage_servers import FaultProxy
from helpers import gen, wait_until


@pytest.fixture(scope="module")
def lake(binary, tmp_path_factory):
    d = tmp_path_factory.mktemp("ops-lake")
    gen(binary, d / "ztf", "ztf", 2, 2, 200)
    return {"dir": d, "ztf": parquet_alerts(d / "ztf"), "datasets": [("ztf", "ztf", d / "ztf")]}


@pytest.fixture
def receiver():
    r = OtlpReceiver().start()
    yield r
    r.stop()


def test_traces_carry_the_clients_trace_id_and_metrics_arrive(start_server, lake, receiver):
    s = start_server(lake["datasets"], extra=(
        f'[telemetry]\notlp_endpoint = "{receiver.endpoint}"\nprometheus_listen = "127.0.0.1:0"\n'
        'export_interval_secs = 1\nservice_name = "astroflight-test"\n'))
    trace_id, parent_id = os.urandom(16), os.urandom(8)
    traceparent = f"00-{trace_id.hex()}-{parent_id.hex()}-01"
    a = lake["ztf"][5]
    opts = flight.FlightCallOptions(headers=[(b"traceparent", traceparent.encode())])
    t = s.client().do_get(ticket(dataset="ztf", candid=a["candid"]), opts).read_all()
    assert t.num_rows == 3
    receiver.wait(lambda: {sp.name for _, sp in receiver.spans(trace_id)} >= {
        "arrow.flight.protocol.FlightService/DoGet", "do_get", "index.lookup", "storage.read"},
        what="the DoGet's spans")
    spans = receiver.spans(trace_id)
    assert {svc for svc, _ in spans} == {"astroflight-test"}
    by_name = {}
    for _, sp in spans:
        by_name.setdefault(sp.name, []).append(sp)
    (rpc,) = by_name["arrow.flight.protocol.FlightService/DoGet"]
    assert rpc.parent_span_id == parent_id  # the client's span is the parent
    assert rpc.kind == rpc.SPAN_KIND_SERVER
    attrs = {kv.key: kv.value for kv in rpc.attributes}
    assert attrs["rpc.method"].string_value == "DoGet" and attrs["rpc.grpc.status_code"].int_value == 0
    ids = {sp.span_id: sp for _, sp in spans}
    # Every other span descends from the RPC's.

    def root_of(sp):
        while sp.parent_span_id in ids:
            sp = ids[sp.parent_span_id]
        return sp
    assert all(root_of(sp).span_id == rpc.span_id for _, sp in spans)
    reads = by_name["storage.read"]
    read_bytes = sum(next(kv.value.int_value for kv in sp.attributes if kv.key == "bytes") for sp in reads)
    assert read_bytes > 0
    record = s.action("stats")["requests"][-1]
    assert record["bytes"] == read_bytes and record["requests"] == sum(
        next(kv.value.int_value for kv in sp.attributes if kv.key == "requests") for sp in reads)

    # A failed call is traced with its status.
    bad_id = os.urandom(16)
    bad = flight.FlightCallOptions(headers=[(b"traceparent", f"00-{bad_id.hex()}-{parent_id.hex()}-01".encode())])
    with pytest.raises(KeyError):  # NOT_FOUND
        s.client().do_get(ticket(dataset="ztf", candid=1), bad).read_all()
    receiver.wait(lambda: any(sp.name.endswith("/DoGet") for _, sp in receiver.spans(bad_id)), what="the failed span")
    (failed,) = [sp for _, sp in receiver.spans(bad_id) if sp.name.endswith("/DoGet")]
    assert failed.status.code == failed.status.STATUS_CODE_ERROR

    # Metrics over OTLP, and the same instruments as Prometheus text.
    want = {"astroflight.rpc.requests", "astroflight.rpc.duration", "astroflight.rpc.open",
            "astroflight.storage.requests", "astroflight.storage.read"}
    receiver.wait(lambda: want <= receiver.metric_names(), what="the metrics")
    text = urllib.request.urlopen(s.metrics_url, timeout=10).read().decode()
    assert re.search(r'astroflight_rpc_requests_total\{code="Ok",rpc_method="DoGet"\} [1-9]', text), text
    assert re.search(r'astroflight_rpc_requests_total\{code="NotFound",rpc_method="DoGet"\} 1', text), text
    assert 'astroflight_rpc_duration_seconds_bucket{rpc_method="DoGet",le="+Inf"}' in text
    storage = int(re.search(r"astroflight_storage_read_bytes_total (\d+)", text).group(1))
    assert storage >= read_bytes
    assert re.search(r"astroflight_ready 1", text)
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(s.metrics_url.replace("/metrics", "/other"), timeout=10)


def health(server, service):
    with grpc.insecure_channel(server.addr) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def test_the_stats_record_of_each_request_says_how_it_ended(start_server, lake):
    """Every DoGet leaves one record in `stats`: a stream read to the end "ok", a request
    refused while it was planned its status code (the record is built once, before planning)."""
    s = start_server(lake["datasets"])
    c = s.client()
    good = lake["ztf"][0]["candid"]
    with_id = lambda i: flight.FlightCallOptions(headers=[(b"x-request-id", i.encode())])  # noqa: E731
    assert c.do_get(ticket(dataset="ztf", candid=good), with_id("found")).read_all().num_rows == 3
    with pytest.raises(pa.ArrowException, match="no alert with candid 1"):
        c.do_get(ticket(dataset="ztf", candid=1), with_id("missing")).read_all()
    with pytest.raises(pa.ArrowException):
        c.do_get(ticket(dataset="nope", candid=good), with_id("no-dataset")).read_all()
    wait_until(lambda: {"found", "missing", "no-dataset"} <= {r["id"] for r in s.action("stats")["requests"]}, 10,
               "a request left no record")
    found, missing, nodata = (s.request_record(i) for i in ("found", "missing", "no-dataset"))
    assert (found["outcome"], found["dataset"], found["alerts"]) == ("ok", "ztf", 1), found
    assert missing["outcome"] == "NOT_FOUND", missing
    assert nodata["outcome"] in ("NOT_FOUND", "INVALID_ARGUMENT"), nodata


def test_health_waits_for_the_first_index_build_and_reports_each_dataset(start_server, lake, s3_server, tmp_path):
    s3_server.upload_dir(lake["dir"] / "ztf", "lake", "health")
    proxy = FaultProxy(tmp_path, s3_server.endpoint, slow=1.0, slow_secs=1.5)
    try:
        opts = s3_server.dataset_options(endpoint=proxy.endpoint)
        down = {"endpoint": "http://127.0.0.1:9", "region": "us-east-1", "access_key_id": "x",
                "secret_access_key": "y", "allow_http": True, "retries": 0, "connect_timeout_secs": 1}
        s = start_server([("ztf", "ztf", "s3://lake/health", opts), ("down", "ztf", "s3://lake/down", down)],
                         wait_ready=False)
        # Every storage request takes 1.5 s: the first build is still running.
        assert health(s, "") == NOT_SERVING and health(s, "ztf") == NOT_SERVING
        assert health(s, "liveness") == SERVING
        s.wait_ready()
        proxy.set(slow=0)
        assert health(s, "") == SERVING and health(s, "arrow.flight.protocol.FlightService") == SERVING
        assert health(s, "ztf") == SERVING
        assert health(s, "down") == NOT_SERVING  # its storage cannot be listed
        with pytest.raises(grpc.RpcError) as e:
            health(s, "no-such-dataset")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        proxy.stop()


def test_health_needs_no_credentials(start_server, lake, tmp_path):
    tokens = tmp_path / "tokens.toml"
    tokens.write_text('[[token]]\ntoken = "a-token-of-enough-length"\nidentity = "x"\n')
    s = start_server(lake["datasets"], extra=f'[auth]\ntokens_file = "{tokens}"\n')
    assert health(s, "") == SERVING
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(s.client().list_flights())


def test_graceful_shutdown_finishes_open_streams_and_refuses_new_calls(start_server, lake):
    s = start_server(lake["datasets"], top={"shutdown_grace_secs": 20})
    q = flight.Ticket(json.dumps({"alerts": {"dataset": "ztf", "content": "cutouts"}}))
    reader = s.client().do_get(q)
    first = reader.read_chunk()
    s.proc.send_signal(signal.SIGTERM)

    # New calls are refused (new connections find no listener, or the server says UNAVAILABLE),
    # once the server has taken the signal: polled, not a guessed window.
    def refused():
        try:
            flight.connect(s.url).do_get(ticket(dataset="ztf", candid=lake["ztf"][0]["candid"])).read_all()
            return False
        except flight.FlightError:
            return True

    wait_until(refused, 10, "new calls were still served after SIGTERM")
    rows = first.data.num_rows
    while True:
        try:
            rows += reader.read_chunk().data.num_rows
        except StopIteration:
            break
    assert rows == len(lake["ztf"])  # the open stream finished, whole
    assert s.proc.wait(timeout=30) == 0
    log = s.stderr_path.read_text()
    assert "stopping: new calls refused" in log and "astroflight stopped" in log


def test_graceful_shutdown_cuts_streams_past_the_grace_period(start_server, lake):
    s = start_server(lake["datasets"], top={"shutdown_grace_secs": 1})
    q = flight.Ticket(json.dumps({"alerts": {"dataset": "ztf", "content": "full"}}))
    reader = s.client().do_get(q)
    reader.read_chunk()  # ...and then the client stops reading: the stream stalls
    started = time.time()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=30) == 0
    assert time.time() - started < 6
    assert "did not finish within the grace period" in s.stderr_path.read_text()


def test_json_logs(start_server, lake):
    s = start_server(lake["datasets"], top={"log_format": "json"})
    s.client().do_get(ticket(dataset="ztf", candid=lake["ztf"][0]["candid"])).read_all()
    s.stop()
    lines = [json.loads(line) for line in s.stderr_path.read_text().splitlines() if line.strip()]
    assert lines and all({"timestamp", "level", "fields"} <= set(line) for line in lines)
    done = [line for line in lines if line["fields"].get("message") == "do_get done"]
    assert done and done[0]["span"]["name"] == "do_get" and done[0]["fields"]["outcome"] == "ok"


def run_check(binary, config):
    return subprocess.run([binary, "check", "--config", str(config)], capture_output=True, text=True, timeout=120)


def test_check_validates_and_reaches_everything(binary, lake, s3_server, tmp_path):
    from conftest import write_config
    s3_server.upload_dir(lake["dir"] / "ztf", "lake", "check")
    good = tmp_path / "good.toml"
    write_config(good, tmp_path / "w", [("ztf", "ztf", lake["dir"] / "ztf"),
                                        ("s3", "ztf", "s3://lake/check", s3_server.dataset_options())])
    r = run_check(binary, good)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^ok   dataset s3: s3 root reachable", r.stdout, re.M), r.stdout
    assert "all 5 checks passed" in r.stdout
    # The memory budget it resolved (70% of this machine's memory, as no max_memory_bytes is set).
    assert re.search(r"^ok   memory: budget .* \(70% of the machine's\)", r.stdout, re.M), r.stdout
    assert not (tmp_path / "w" / "index").exists(), "check wrote the index"
    bad = tmp_path / "bad.toml"
    write_config(bad, tmp_path / "w", [("s3", "ztf", "s3://lake/check", s3_server.dataset_options(
        endpoint="http://127.0.0.1:9", retries=0, connect_timeout_secs=1))],
        extra=f'[tls]\ncert = "{tmp_path}/missing.pem"\nkey = "{tmp_path}/missing.key"\n')
    r = run_check(binary, bad)
    assert r.returncode == 1
    assert re.search(r"^FAIL tls: cannot read tls.cert", r.stdout, re.M), r.stdout
    assert re.search(r"^FAIL dataset s3: ", r.stdout, re.M), r.stdout
    invalid = tmp_path / "invalid.toml"
    invalid.write_text('[[grant]]\nidentity = "x"\ndatasets = ["nope"]\n')
    r = run_check(binary, invalid)
    assert r.returncode != 0 and "names dataset \"nope\", which is not configured" in r.stderr


def test_s3_requester_pays_and_anonymous(start_server, lake, s3_server, tmp_path):
    s3_server.upload_dir(lake["dir"] / "ztf", "lake", "payer")
    proxy = FaultProxy(tmp_path, s3_server.endpoint)
    try:
        a = lake["ztf"][3]
        s = start_server([("ztf", "ztf", "s3://lake/payer",
                           s3_server.dataset_options(endpoint=proxy.endpoint, requester_pays=True))])
        assert s.client().do_get(ticket(dataset="ztf", candid=a["candid"])).read_all().num_rows == 3
        counts = proxy.state()["counts"]
        assert counts["request_payer"] == counts["requests"] > 0
        # Anonymous: unsigned requests (moto serves them: it does not check signatures).
        before = proxy.state()["counts"]
        opts = {"endpoint": proxy.endpoint, "region": "us-east-1", "allow_http": True, "anonymous": True}
        s2 = start_server([("ztf", "ztf", "s3://lake/payer", opts)])
        assert s2.client().do_get(ticket(dataset="ztf", candid=a["candid"])).read_all().num_rows == 3
        after = proxy.state()["counts"]
        assert after["requests"] > before["requests"] and after["signed"] == before["signed"]
    finally:
        proxy.stop()
    from conftest import write_config
    write_config(tmp_path / "c.toml", tmp_path, [("ztf", "ztf", "s3://lake/payer", {
        "endpoint": "http://127.0.0.1:9", "anonymous": True, "requester_pays": True})])
    r = subprocess.run([s.proc.args[0], "check", "--config", str(tmp_path / "c.toml")], capture_output=True, text=True)
    assert "requester_pays needs signed requests" in r.stdout + r.stderr
