"""The Flight SQL JDBC driver (org.apache.arrow:flight-sql-jdbc-driver from Maven Central) in a
small Java program (tests/jdbc/JdbcCheck.java, run by tests/jdbc/jdbc.sh): it connects, lists
tables and columns through DatabaseMetaData, runs a query and a prepared statement with a
parameter; the rows equal DuckDB's on the same files."""
import json
import pathlib
import subprocess

import pytest

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
