"""TLS, mutual TLS, authentication and per-dataset authorization, with real clients: pyarrow
Flight over TLS (with and without client certificates, with basic credentials through
Handshake and with bearer tokens), ADBC's Flight SQL driver with a token and with a user and
password, the Python client and the command line clients. Certificates are made by the test
(pki.py); password hashes by `astroflight hash-password`. The JDBC and Spark clients with [auth]
are tested with their clients (test_jdbc.py, test_spark.py), on the same fixtures (conftest.py)."""
import json
import pathlib
import subprocess
import time

import adbc_driver_flightsql.dbapi as flight_sql
import pytest
from pyarrow import flight

from helpers import ALICE_PASSWORD, READER_TOKEN, SVC_TOKEN, as_fits, rows, ticket, wait_until
from pki import Ca, write


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    server_ca, client_ca, other_ca = Ca("astroflight test server CA"), Ca("astroflight test clients CA"), Ca("other CA")
    cert, key = server_ca.issue("astroflight", server=True)
    out = {"dir": d, "server_ca": server_ca, "client_ca": client_ca, "other_ca": other_ca,
           "cert": write(d, "server.pem", cert), "key": write(d, "server.key", key),
           "clients_ca": write(d, "clients-ca.pem", client_ca.pem)}
    out["portal"] = client_ca.issue("fink-portal")
    out["stranger"] = client_ca.issue("stranger")
    out["san_only"] = client_ca.issue(None, sans=["san-service.example"])
    out["outsider"] = other_ca.issue("fink-portal")
    return out


def tls_client(server, ca, cert=None):
    kw = {"tls_root_certs": ca.pem}
    if cert:
        kw["cert_chain"], kw["private_key"] = cert
    return flight.connect(f"grpc+tls://{server.addr}", **kw)


def cutout(client, alert, options=None):
    t = ticket(dataset="ztf", candid=alert["candid"]) if "candid" in alert else \
        ticket(dataset="lsst", diaSourceId=alert["diaSourceId"])
    return client.do_get(t, options).read_all() if options else client.do_get(t).read_all()


def names(infos):
    return sorted(json.loads(i.app_metadata)["dataset"] for i in infos)


def test_an_open_server_says_so(start_server, auth_lake):
    s = start_server(auth_lake["datasets"])
    assert names(s.client().list_flights()) == ["lsst", "ztf"]
    assert "OPEN" in s.stderr_path.read_text()


def test_tls_serves_pyarrow_and_refuses_plain_and_unknown_cas(start_server, auth_lake, pki):
    extra = f'[tls]\ncert = "{pki["cert"]}"\nkey = "{pki["key"]}"\n'
    s = start_server(auth_lake["datasets"], extra=extra, scheme="grpc+tls")
    c = tls_client(s, pki["server_ca"])
    a = auth_lake["ztf"][0]
    t = cutout(c, a)
    assert rows(t, "candid")[(a["candid"], "Science")]["stamp"] == as_fits(a["stamps"]["Science"])
    assert names(c.list_flights()) == ["lsst", "ztf"]
    with pytest.raises(flight.FlightUnavailableError):
        flight.connect(f"grpc://{s.addr}").list_actions()
    with pytest.raises(flight.FlightUnavailableError):
        tls_client(s, pki["other_ca"]).list_actions()


def test_a_renewed_certificate_is_served_without_a_restart(start_server, auth_lake, pki, tmp_path):
    cert, key = write(tmp_path, "s.pem", pki["cert"].read_bytes()), write(tmp_path, "s.key", pki["key"].read_bytes())
    extra = f'[tls]\ncert = "{cert}"\nkey = "{key}"\nreload_secs = 0.2\n'
    s = start_server(auth_lake["datasets"], extra=extra, scheme="grpc+tls")
    new_ca = Ca("renewed CA")
    with pytest.raises(flight.FlightUnavailableError):
        tls_client(s, new_ca).list_actions()
    new_cert, new_key = new_ca.issue("astroflight", server=True)
    # The key first, then the certificate: in between the pair does not match, which must be
    # logged and the old certificate kept, not served broken.
    key.write_bytes(new_key)
    wait_until(lambda: "do not load" in s.stderr_path.read_text(), 15, "the mismatched pair was never seen")
    assert list(tls_client(s, pki["server_ca"]).list_actions())
    cert.write_bytes(new_cert)
    deadline = time.time() + 15
    while True:
        try:
            assert list(tls_client(s, new_ca).list_actions())
            break
        except flight.FlightUnavailableError:
            assert time.time() < deadline, "the renewed certificate was not picked up"
            time.sleep(0.2)
    with pytest.raises(flight.FlightUnavailableError):
        tls_client(s, pki["server_ca"]).list_actions()
    log = s.stderr_path.read_text()
    assert "do not load" in log and "reloaded the TLS certificate" in log


@pytest.fixture
def mtls_server(start_server, auth_lake, pki):
    extra = (f'[tls]\ncert = "{pki["cert"]}"\nkey = "{pki["key"]}"\nclient_ca = "{pki["clients_ca"]}"\n'
             '[[grant]]\nidentity = "fink-portal"\ndatasets = ["ztf"]\n'
             '[[grant]]\nidentity = "san-service.example"\ndatasets = ["lsst"]\n')
    return start_server(auth_lake["datasets"], extra=extra, scheme="grpc+tls")


def test_mutual_tls_identity_is_the_certificate_subject(mtls_server, auth_lake, pki):
    s = mtls_server
    portal = tls_client(s, pki["server_ca"], pki["portal"])
    assert names(portal.list_flights()) == ["ztf"]
    assert cutout(portal, auth_lake["ztf"][0]).num_rows == 3
    with pytest.raises(flight.FlightUnauthorizedError, match=r'identity "fink-portal" may not read dataset "lsst"'):
        cutout(portal, auth_lake["lsst"][0])
    # The SAN when the subject has no CN.
    san = tls_client(s, pki["server_ca"], pki["san_only"])
    assert names(san.list_flights()) == ["lsst"]
    assert cutout(san, auth_lake["lsst"][0]).num_rows == 3
    # A known certificate with no grant reads nothing.
    stranger = tls_client(s, pki["server_ca"], pki["stranger"])
    assert names(stranger.list_flights()) == []
    with pytest.raises(flight.FlightUnauthorizedError):
        cutout(stranger, auth_lake["ztf"][0])


def test_mutual_tls_refuses_clients_without_a_certificate_of_its_ca(mtls_server, pki):
    for cert in (None, pki["outsider"]):
        with pytest.raises(flight.FlightUnavailableError):
            tls_client(mtls_server, pki["server_ca"], cert).list_actions()


@pytest.fixture
def auth_server(start_server, auth_lake, pki, auth_files):
    extra = f'[tls]\ncert = "{pki["cert"]}"\nkey = "{pki["key"]}"\n' + auth_files[0]
    return start_server(auth_lake["datasets"], extra=extra, scheme="grpc+tls")


def bearer(token):
    return flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])


def test_every_call_needs_credentials(auth_server, auth_lake, pki):
    c = tls_client(auth_server, pki["server_ca"])
    calls = [lambda: list(c.list_flights()), lambda: cutout(c, auth_lake["ztf"][0]),
             lambda: c.get_flight_info(flight.FlightDescriptor.for_path("ztf")),
             lambda: list(c.do_action(flight.Action("stats", b""))), lambda: list(c.list_actions())]
    for call in calls:
        with pytest.raises(flight.FlightUnauthenticatedError, match="needs credentials"):
            call()
    with pytest.raises(flight.FlightUnauthenticatedError, match="not valid"):
        list(c.list_flights(options=bearer("no-such-token-0123456789")))


def test_basic_credentials_through_handshake_give_a_session_token(auth_server, auth_lake, pki):
    c = tls_client(auth_server, pki["server_ca"])
    key, value = c.authenticate_basic_token("alice", ALICE_PASSWORD)
    assert key == b"authorization" and value.startswith(b"Bearer afs1.")
    opts = flight.FlightCallOptions(headers=[(key, value)])
    a = auth_lake["ztf"][1]
    t = cutout(c, a, opts)
    assert rows(t, "candid")[(a["candid"], "Difference")]["stamp"] == as_fits(a["stamps"]["Difference"])
    assert names(c.list_flights(options=opts)) == ["ztf"]
    # A dataset without a grant: PERMISSION_DENIED before any data (not even a schema).
    with pytest.raises(flight.FlightUnauthorizedError, match=r'identity "alice" may not read dataset "lsst"') as e:
        c.do_get(ticket(dataset="lsst", diaSourceId=auth_lake["lsst"][0]["diaSourceId"]), opts).read_all()
    assert "never sent a data message" in str(e.value)
    with pytest.raises(flight.FlightUnauthorizedError):
        c.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(
            {"alerts": {"dataset": "lsst"}})), opts)
    # The server-wide reindex needs a grant of everything.
    with pytest.raises(flight.FlightUnauthorizedError, match="reindex"):
        list(c.do_action(flight.Action("reindex", b""), opts))
    # Wrong password and unknown user: one message, no hint which.
    for user, password in (("alice", "wrong"), ("mallory", ALICE_PASSWORD)):
        with pytest.raises(flight.FlightUnauthenticatedError, match="unknown user or wrong password"):
            tls_client(auth_server, pki["server_ca"]).authenticate_basic_token(user, password)
    # A forged session token (another identity under alice's signature) is refused.
    token = value.decode().split(" ", 1)[1]
    parts = token.split(".")
    import base64
    parts[1] = base64.urlsafe_b64encode(b"svc").decode().rstrip("=")
    with pytest.raises(flight.FlightUnauthenticatedError, match="not valid"):
        list(c.list_flights(options=bearer(".".join(parts))))


def test_static_tokens_and_grants(auth_server, auth_lake, pki):
    c = tls_client(auth_server, pki["server_ca"])
    assert names(c.list_flights(options=bearer(READER_TOKEN))) == ["lsst"]
    assert cutout(c, auth_lake["lsst"][0], bearer(READER_TOKEN)).num_rows == 3
    with pytest.raises(flight.FlightUnauthorizedError, match='identity "reader" may not read dataset "ztf"'):
        cutout(c, auth_lake["ztf"][0], bearer(READER_TOKEN))
    assert names(c.list_flights(options=bearer(SVC_TOKEN))) == ["lsst", "ztf"]
    # stats: the reader sees its datasets and its own requests; svc sees everything.
    stats = json.loads(next(iter(c.do_action(flight.Action("stats", b""), bearer(READER_TOKEN)))).body.to_pybytes())
    assert [d["name"] for d in stats["datasets"]] == ["lsst"]
    assert {r["identity"] for r in stats["requests"]} == {"reader"}
    stats = json.loads(next(iter(c.do_action(flight.Action("stats", b""), bearer(SVC_TOKEN)))).body.to_pybytes())
    assert {d["name"] for d in stats["datasets"]} == {"ztf", "lsst"}


def test_a_revoked_token_stops_working_without_a_restart(auth_server, auth_files, pki):
    c = tls_client(auth_server, pki["server_ca"])
    assert names(c.list_flights(options=bearer(READER_TOKEN))) == ["lsst"]
    auth_files[1].write_text(f'[[token]]\ntoken = "{SVC_TOKEN}"\nidentity = "svc"\n')
    deadline = time.time() + 15
    while True:
        try:
            list(c.list_flights(options=bearer(READER_TOKEN)))
        except flight.FlightUnauthenticatedError:
            break
        assert time.time() < deadline, "the revoked token still works"
        time.sleep(0.2)
    assert names(c.list_flights(options=bearer(SVC_TOKEN))) == ["lsst", "ztf"]


def test_no_secret_reaches_logs_errors_or_stats(auth_server, auth_lake, pki):
    c = tls_client(auth_server, pki["server_ca"])
    _, value = c.authenticate_basic_token("alice", ALICE_PASSWORD)
    session = value.decode().split(" ", 1)[1]
    stats = json.loads(next(iter(c.do_action(flight.Action("stats", b""), bearer(SVC_TOKEN)))).body.to_pybytes())
    messages = [json.dumps(stats)]
    for token in (session + "x", READER_TOKEN + "x", "Basic xyz"):
        try:
            list(c.list_flights(options=bearer(token)))
        except flight.FlightError as e:
            messages.append(str(e))
    auth_server.stop()
    log = auth_server.stderr_path.read_text()
    for secret in (SVC_TOKEN, READER_TOKEN, ALICE_PASSWORD, session, session.rsplit(".", 1)[1]):
        for text in [log, *messages]:
            assert secret not in text


def adbc(server, pki, **db_kwargs):
    kw = {"adbc.flight.sql.client_option.tls_root_certs": pki["server_ca"].pem.decode(), **db_kwargs}
    return flight_sql.connect(f"grpc+tls://{server.addr}", db_kwargs=kw)


def test_adbc_with_a_token_and_with_a_password(auth_server, auth_lake, pki):
    with adbc(auth_server, pki, **{"adbc.flight.sql.authorization_header": f"Bearer {READER_TOKEN}"}) as conn:
        cur = conn.cursor()
        cur.execute("SELECT count(*) AS n FROM lsst")
        assert cur.fetchone()[0] == len(auth_lake["lsst"])
        tables = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        listed = [t["table_name"] for c in tables for s in c["catalog_db_schemas"] for t in s["db_schema_tables"]]
        assert listed == ["lsst"]
        with pytest.raises(Exception, match="may not read dataset"):
            cur.execute("SELECT count(*) FROM ztf")
            cur.fetchall()
        cur.close()
    with adbc(auth_server, pki, username="alice", password=ALICE_PASSWORD) as conn:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM ztf")
        assert cur.fetchone()[0] == len(auth_lake["ztf"])
        cur.close()
    with pytest.raises(Exception, match="(?i)unauthenticated|unknown user"):
        with adbc(auth_server, pki, username="alice", password="wrong") as conn:
            conn.cursor().execute("SELECT 1")


def test_the_python_client_with_a_token_a_password_and_tls(auth_server, auth_lake, pki):
    import astroflight
    url = f"grpc+tls://{auth_server.addr}"
    roots = pki["server_ca"].pem
    with astroflight.connect(url, token=READER_TOKEN, tls_root_certs=roots) as af:
        t = af.alerts("lsst", content="columns", columns=["diaSource.diaSourceId"])
        assert t.num_rows == len(auth_lake["lsst"])
        with pytest.raises(flight.FlightUnauthorizedError):
            af.alerts("ztf", content="lightcurve")
    with astroflight.connect(url, username="alice", password=ALICE_PASSWORD, tls_root_certs=roots) as af:
        assert af.alerts("ztf", content="columns", columns=["candid"]).num_rows == len(auth_lake["ztf"])
        assert sum(b.num_rows for b in af.iter_batches("ztf", content="columns", columns=["candid"])) == len(
            auth_lake["ztf"])
    with pytest.raises(flight.FlightUnauthenticatedError):
        astroflight.connect(url, tls_root_certs=roots).alerts("ztf")


def test_the_command_line_clients_over_tls_with_a_token(binary, auth_server, auth_lake, pki, tmp_path):
    import glob
    import os

    import pyarrow.parquet as pq
    ca = write(tmp_path, "ca.pem", pki["server_ca"].pem)
    url = f"grpc+tls://{auth_server.addr}"
    a = auth_lake["ztf"][2]
    base = [binary, "cutout", "--server", url, "--tls-ca", str(ca), "--dataset", "ztf", "--candid",
            str(a["candid"]), "--kind", "Science"]
    env = {k: v for k, v in os.environ.items() if k != "ASTROFLIGHT_TOKEN"}
    r = subprocess.run(base + ["-o", str(tmp_path / "none")], capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "needs credentials" in r.stderr
    r = subprocess.run(base + ["-o", str(tmp_path / "stamps")], capture_output=True, text=True,
                       env={**env, "ASTROFLIGHT_TOKEN": SVC_TOKEN})
    assert r.returncode == 0, r.stderr
    (f,) = glob.glob(str(tmp_path / "stamps" / "*.fits"))
    assert pathlib.Path(f).read_bytes() == as_fits(a["stamps"]["Science"])
    out = tmp_path / "transfer"
    plan = tmp_path / "plan.json"
    r = subprocess.run([binary, "transfer", "--server", url, "--tls-ca", str(ca), "--token", READER_TOKEN,
                        "--dataset", "lsst", "--content", "lightcurve", "--plan-out", str(plan)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert READER_TOKEN not in plan.read_text()  # the token is not saved with the plan
    r = subprocess.run([binary, "transfer", "--plan", str(plan), "--server", url, "--tls-ca", str(ca), "--token",
                        READER_TOKEN, "--out", str(out), "--quiet"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    rows = sum(pq.read_metadata(p).num_rows for p in glob.glob(str(out / "**" / "*.parquet"), recursive=True))
    assert rows == len(auth_lake["lsst"])
