"""Flight SQL on the same port as the JSON tickets, through ADBC (`adbc-driver-flightsql` from
PyPI): queries, metadata and prepared statements, results compared with DuckDB running the same
SQL on the same files."""
import json
import pathlib

import adbc_driver_flightsql.dbapi as flight_sql
import duckdb
import pyarrow as pa
import pytest
from pyarrow import flight

from test_alerts import gen


@pytest.fixture(scope="module")
def sql_server(binary, tmp_path_factory):
    from conftest import Server
    d = tmp_path_factory.mktemp("sql")
    gen(binary, d / "ztf", "ztf", 3, 2, 60)
    gen(binary, d / "lsst", "lsst", 2, 1, 30)
    s = Server(binary, d, [("ztf", "ztf", d / "ztf"), ("lsst", "lsst", d / "lsst")])
    yield s, d
    s.stop()


@pytest.fixture
def conn(sql_server):
    s, _ = sql_server
    c = flight_sql.connect(s.url)
    yield c
    c.close()


def duck(root, sql):
    """DuckDB on the lake's files as a view named like the dataset (Hive partitions typed as
    integers, as astroflight types them)."""
    con = duckdb.connect()
    for name in ("ztf", "lsst"):
        files = sorted(str(p) for p in (pathlib.Path(root) / name).rglob("*.parquet"))
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({files!r}, hive_partitioning=true, "
                    f"hive_types={{'year': INTEGER, 'month': INTEGER, 'day': INTEGER}})")
    return con.execute(sql).to_arrow_table()


def fetch(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetch_arrow_table()


def test_query_equals_duckdb_row_for_row(sql_server, conn):
    _, root = sql_server
    sql = ("SELECT objectId, candid, candidate.magpsf AS magpsf, year, month, day FROM ztf "
           "WHERE candidate.magpsf > 18 ORDER BY candid")
    got = fetch(conn, sql)
    want = duck(root, sql)
    assert got.num_rows == want.num_rows > 0
    assert got.column("candid").to_pylist() == want.column("candid").to_pylist()
    assert got.column("objectId").to_pylist() == want.column("objectId").to_pylist()
    assert got.column("magpsf").to_pylist() == want.column("magpsf").to_pylist()
    assert got.column("day").to_pylist() == want.column("day").to_pylist()
    assert got.schema.field("candid").type == pa.int64()
    assert got.schema.field("year").type == pa.int32()


def test_nested_fields_stay_nested_and_both_spellings_work(conn):
    t = fetch(conn, "SELECT candid, candidate, prv_candidates FROM ztf ORDER BY candid LIMIT 5")
    assert pa.types.is_struct(t.schema.field("candidate").type)
    assert pa.types.is_list(t.schema.field("prv_candidates").type)
    a = fetch(conn, "SELECT candidate.magpsf AS m FROM ztf ORDER BY candid LIMIT 5")
    b = fetch(conn, "SELECT candidate['magpsf'] AS m FROM ztf ORDER BY candid LIMIT 5")
    assert a.column("m").to_pylist() == b.column("m").to_pylist()
    assert a.column("m").to_pylist() == [r["magpsf"] for r in t.column("candidate").to_pylist()]


def test_aggregate_by_night_equals_duckdb(sql_server, conn):
    _, root = sql_server
    sql = ("SELECT year, month, day, count(*) AS n, avg(candidate.magpsf) AS m FROM ztf "
           "GROUP BY year, month, day ORDER BY year, month, day")
    got, want = fetch(conn, sql), duck(root, sql)
    assert got.column("n").to_pylist() == want.column("n").to_pylist()
    assert got.column("day").to_pylist() == want.column("day").to_pylist()
    assert got.column("m").to_pylist() == pytest.approx(want.column("m").to_pylist())


def test_metadata_lists_every_dataset_with_its_schema(conn):
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    assert [c["catalog_name"] for c in objects] == ["astroflight"]
    schemas = objects[0]["catalog_db_schemas"]
    assert [s["db_schema_name"] for s in schemas] == ["public"]
    tables = {t["table_name"]: t for t in schemas[0]["db_schema_tables"]}
    assert {"ztf", "lsst"} <= set(tables)
    cols = [c["column_name"] for c in tables["ztf"]["table_columns"]]
    assert {"objectId", "candid", "candidate", "prv_candidates", "year", "month", "day"} <= set(cols)
    schema = conn.adbc_get_table_schema("ztf")
    assert schema.field("candid").type == pa.int64()
    assert conn.adbc_get_table_types() == ["TABLE"]
    assert conn.adbc_get_info()["vendor_name"] == "astroflight"


def test_prepared_statement_without_parameters(conn):
    with conn.cursor() as cur:
        cur.adbc_prepare("SELECT count(*) AS n FROM lsst")
        cur.execute("SELECT count(*) AS n FROM lsst")
        assert cur.fetchone()[0] == 2 * 30


def test_query_errors_name_what_was_wrong(conn):
    for sql, words in [("SELEC 1", "SELEC"), ("SELECT * FROM nope", "nope"),
                       ("SELECT nope FROM ztf", "nope"), ("SELECT objectid FROM ztf", "objectid"),
                       ("SELECT candid FROM ztf WHERE candidate.magpsf > 'bright'", "bright"),
                       ("CREATE TABLE t (a INT)", "DDL"), ("INSERT INTO ztf SELECT * FROM ztf", "DML")]:
        with conn.cursor() as cur, pytest.raises(Exception) as e:
            cur.execute(sql)
            cur.fetch_arrow_table()
        assert str(e.value).startswith("INVALID_ARGUMENT:"), (sql, str(e.value))
        assert words in str(e.value), (sql, str(e.value))


def test_json_tickets_and_flight_sql_share_the_port(sql_server):
    s, _ = sql_server
    c = s.client()
    t = c.do_get(flight.Ticket(json.dumps({"alerts": {"dataset": "lsst", "content": "lightcurve"}}).encode())).read_all()
    assert t.num_rows == 2 * 30
    # A Flight SQL query from a plain Flight client: GetSchema, then GetFlightInfo + DoGet.
    q = b"SELECT count(*) AS n FROM lsst"
    cmd = flight.FlightDescriptor.for_command(
        any_bytes("type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery", bytes([0x0A, len(q)]) + q))
    assert c.get_schema(cmd).schema.names == ["n"]
    info = c.get_flight_info(cmd)
    assert c.do_get(info.endpoints[0].ticket).read_all().column("n").to_pylist() == [2 * 30]
    # A Flight SQL command this server does not serve is UNIMPLEMENTED, naming it.
    with pytest.raises(pa.ArrowNotImplementedError, match="CommandStatementUpdate is not supported"):
        c.get_flight_info(flight.FlightDescriptor.for_command(
            any_bytes("type.googleapis.com/arrow.flight.protocol.sql.CommandStatementUpdate", b"")))
    c.close()


def any_bytes(type_url, value):
    """A google.protobuf.Any: field 1 the type URL, field 2 the value (lengths < 128)."""
    u = type_url.encode()
    return bytes([0x0A, len(u)]) + u + bytes([0x12, len(value)]) + value
