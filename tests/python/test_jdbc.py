"""The Flight SQL JDBC driver (org.apache.arrow:flight-sql-jdbc-driver from Maven Central) in a
small Java program (tests/jdbc/JdbcCheck.java, run by tests/jdbc/jdbc.sh): it connects, lists
tables and columns through DatabaseMetaData, runs a query and a prepared statement with a
parameter; the rows equal DuckDB's on the same files. With [auth], it connects with a token and
with a user and password, and sees only the datasets granted."""
import json
import pathlib
import re
import subprocess

import pytest

from helpers import ALICE_PASSWORD, READER_TOKEN
from helpers import duck_sql as duck

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def jdbc_run(sql_server):
    s, root = sql_server
    oid = duck(root, "SELECT objectId FROM ztf ORDER BY candid LIMIT 1").column(0)[0].as_py()
    r = subprocess.run(["bash", str(REPO / "tests/jdbc/jdbc.sh"), s.addr, oid], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    out = {}
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            o = json.loads(line)
            out[o["what"]] = o
    return out, root, oid


def test_jdbc_lists_tables_and_columns(jdbc_run):
    out, _, _ = jdbc_run
    assert out["product"]["name"] == "astroflight"
    assert ["astroflight", "public", "ztf", "TABLE"] in out["tables"]["tables"]
    assert ["astroflight", "public", "lsst", "TABLE"] in out["tables"]["tables"]
    cols = dict(out["columns"]["columns"])
    assert cols["objectId"] == "VARCHAR" and cols["candid"] == "BIGINT" and cols["year"] == "INTEGER"
    assert "candidate" in cols and "prv_candidates" in cols


def test_jdbc_query_and_prepared_statement_equal_duckdb(jdbc_run):
    out, root, oid = jdbc_run
    want = duck(root, "SELECT objectId, candid, candidate.magpsf AS magpsf, day FROM ztf "
                      "WHERE candidate.magpsf > 18 ORDER BY candid")
    q = out["query"]
    assert q["types"] == ["VARCHAR", "BIGINT", "FLOAT", "INTEGER"]
    assert [r[1] for r in q["rows"]] == want.column("candid").to_pylist()
    assert [r[0] for r in q["rows"]] == want.column("objectId").to_pylist()
    assert [r[2] for r in q["rows"]] == pytest.approx(want.column("magpsf").to_pylist())
    assert [r[3] for r in q["rows"]] == want.column("day").to_pylist()
    p = duck(root, f"SELECT candid, candidate.jd AS jd FROM ztf WHERE objectId = '{oid}' ORDER BY candid")
    rows = out["prepared"]["rows"]
    assert [r[0] for r in rows] == p.column("candid").to_pylist() != []
    assert [r[1] for r in rows] == pytest.approx(p.column("jd").to_pylist())


def jdbc_auth(server, params):
    """JdbcCheck's `auth` mode against a server with [auth]: its outputs by name."""
    r = subprocess.run(["bash", str(REPO / "tests/jdbc/jdbc.sh"), "auth", server.addr, params],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return {o["what"]: o for o in map(json.loads, filter(lambda l: l.startswith("{"), r.stdout.splitlines()))}


def test_jdbc_with_a_token_and_with_a_password(plain_auth_server, auth_lake):
    s = plain_auth_server
    assert "plain TCP" in s.stderr_path.read_text()
    out = jdbc_auth(s, f"token={READER_TOKEN}")
    assert out["tables"]["tables"] == ["lsst"]
    assert out["count_lsst"]["value"] == len(auth_lake["lsst"])
    assert "may not read dataset" in out["count_ztf"]["error"]
    out = jdbc_auth(s, f"user=alice&password={ALICE_PASSWORD.replace(' ', '%20')}")
    assert out["tables"]["tables"] == ["ztf"]
    assert out["count_ztf"]["value"] == len(auth_lake["ztf"])
    assert "may not read dataset" in out["count_lsst"]["error"]
    out = jdbc_auth(s, "user=alice&password=wrong")
    assert "connect" in out and re.search("(?i)unauthenticated|unknown user", out["connect"]["error"])
