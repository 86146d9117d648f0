"""Flight SQL on the same port as the JSON tickets, through ADBC (`adbc-driver-flightsql` from
PyPI): queries, metadata and prepared statements, results compared with DuckDB running the same
SQL on the same files."""
import json

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa
import pytest
from pyarrow import flight

from helpers import any_bytes, varint_field
from helpers import duck_sql as duck
from helpers import gen


@pytest.fixture
def conn(sql_server):
    s, _ = sql_server
    c = flight_sql.connect(s.url)
    yield c
    c.close()


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


@pytest.fixture(scope="module")
def split_server(binary, sql_server):
    """The same lake, served with small endpoints (every file, or row group, its own) and a row
    limit per stream."""
    from conftest import Server
    _, d = sql_server
    w = d / "split"
    w.mkdir(exist_ok=True)
    s = Server(binary, w, [("ztf", "ztf", d / "ztf"), ("lsst", "lsst", d / "lsst")],
               top={"sql": {"endpoint_bytes": 20000, "max_rows": 250}}, name="split")
    yield s
    s.stop()


def sorted_rows(t, keys):
    return sorted(zip(*(t.column(k).to_pylist() for k in keys)))


def test_scans_split_into_endpoints_that_readers_pull_in_parallel(sql_server, split_server):
    """ADBC's execute_partitions + read_partition, one connection per endpoint, in parallel:
    the union equals DuckDB on the same files."""
    from concurrent.futures import ThreadPoolExecutor
    _, root = sql_server
    sql = ("SELECT objectId, candid, candidate.magpsf AS magpsf, day FROM ztf "
           "WHERE candidate.magpsf > 17 AND day >= 1")
    with flight_sql.connect(split_server.url) as conn, conn.cursor() as cur:
        partitions, schema = cur.adbc_execute_partitions(sql)
    assert len(partitions) > 1, "a scan of 6 files with 20 kB endpoints is split"

    def read(p):
        with flight_sql.connect(split_server.url) as c, c.cursor() as cur:
            cur.adbc_read_partition(p)
            return cur.fetch_arrow_table()

    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(read, partitions))
    got = pa.concat_tables(parts)
    assert got.schema.field("candid").type == pa.int64()
    want = duck(root, sql)
    keys = ["objectId", "candid", "magpsf", "day"]
    assert sorted_rows(got, keys) == sorted_rows(want, keys)
    assert got.num_rows == want.num_rows > 0


def test_flight_info_totals_are_exact_where_statistics_allow(split_server):
    c = split_server.client()

    def info(sql):
        return c.get_flight_info(statement(sql))

    whole = info("SELECT objectId, candid FROM ztf")
    assert whole.total_records == 3 * 2 * 60
    assert len(whole.endpoints) > 1
    # Every endpoint is self-contained: pulled one by one, they add up to the whole.
    assert sum(c.do_get(e.ticket).read_all().num_rows for e in whole.endpoints) == 360
    assert info("SELECT objectId FROM ztf WHERE candidate.magpsf > 18").total_records == -1
    # A query that needs all rows in one place is one endpoint.
    assert len(info("SELECT count(*) FROM ztf").endpoints) == 1
    assert len(info("SELECT candid FROM ztf ORDER BY candid LIMIT 3").endpoints) == 1
    # CancelFlightInfo: nothing is held for a FlightInfo, so it is cancelled at once.
    # (pyarrow has no cancel_flight_info: the action, with a CancelFlightInfoRequest body.)
    r = list(c.do_action(flight.Action("CancelFlightInfo", varint_field(1, whole.serialize()))))
    assert r[0].body.to_pybytes() == bytes([0x08, 1]), "CancelFlightInfoResult{status: CANCELLED}"
    with pytest.raises(pa.ArrowInvalid, match="CancelFlightInfoRequest"):
        list(c.do_action(flight.Action("CancelFlightInfo", b"\xff")))
    c.close()


def test_a_stream_past_max_rows_is_refused_with_a_clear_status(split_server):
    # One endpoint of 360 rows on a server whose sql.max_rows is 250: cut while streaming (a
    # one-endpoint query whose count is known in advance is refused by GetFlightInfo instead).
    for sql, words in [("SELECT candid FROM ztf ORDER BY candid", "the result is cut"),
                       ("SELECT candid FROM ztf WHERE candidate.magpsf > 0 ORDER BY candid", "the result is cut")]:
        with flight_sql.connect(split_server.url) as conn, conn.cursor() as cur, pytest.raises(Exception) as e:
            cur.execute(sql)
            cur.fetch_arrow_table()
        msg = str(e.value)  # ADBC keeps the gRPC code in the message: "(ResourceExhausted; ...)"
        assert "ResourceExhausted" in msg and "sql.max_rows (250)" in msg and words in msg, msg
    # Split scans stay within the limit per endpoint.
    with flight_sql.connect(split_server.url) as conn:
        assert fetch(conn, "SELECT candid FROM ztf").num_rows == 360


def ids(root, n=3):
    t = duck(root, "SELECT objectId, candid FROM ztf ORDER BY candid")
    objects = sorted(set(t.column("objectId").to_pylist()))[:n]
    return objects, t.column("candid").to_pylist()[:n]


def test_id_filters_read_through_the_index_and_explain_shows_it(sql_server, conn):
    _, root = sql_server
    objects, candids = ids(root)
    in_list = ", ".join(f"'{o}'" for o in objects)
    sql = (f"SELECT objectId, candid, candidate.magpsf AS magpsf FROM ztf WHERE objectId IN ({in_list}) "
           "AND candidate.magpsf > 0")
    got = fetch(conn, sql)
    want = duck(root, sql)
    assert sorted_rows(got, ["objectId", "candid", "magpsf"]) == sorted_rows(want, ["objectId", "candid", "magpsf"])
    assert got.num_rows >= len(objects)
    plan = "\n".join(fetch(conn, "EXPLAIN " + sql).column("plan").to_pylist())
    assert "LakeScanExec: table=ztf, index=[objectId (3 ids)]" in plan, plan
    assert "parquet access plans" in plan, plan
    # candid, alone and combined with objectId (the conditions intersect).
    c = fetch(conn, f"SELECT candid FROM ztf WHERE candid = {candids[1]}").column("candid").to_pylist()
    assert c == [candids[1]]
    both = fetch(conn, f"SELECT candid FROM ztf WHERE candid IN ({candids[0]}, {candids[1]}) "
                       f"AND objectId = '{objects[0]}'")
    assert sorted(both.column("candid").to_pylist()) == sorted(
        duck(root, f"SELECT candid FROM ztf WHERE candid IN ({candids[0]}, {candids[1]}) "
                   f"AND objectId = '{objects[0]}'").column("candid").to_pylist())
    # An id the index does not know: no file is read, no row comes back.
    assert fetch(conn, "SELECT candid FROM ztf WHERE objectId = 'ZTF00nothere'").num_rows == 0
    # Rubin: the nested diaSourceId.
    src = duck(root, "SELECT diaSource.diaSourceId AS s FROM lsst LIMIT 2").column("s").to_pylist()
    got = fetch(conn, f"SELECT diaSource.diaSourceId AS s FROM lsst WHERE diaSource.diaSourceId IN ({src[0]}, {src[1]})")
    assert sorted(got.column("s").to_pylist()) == sorted(src)
    plan = "\n".join(fetch(conn, f"EXPLAIN SELECT * FROM lsst WHERE diaSource.diaSourceId = {src[0]}")
                     .column("plan").to_pylist())
    assert "index=[diaSource.diaSourceId (1 ids)]" in plan, plan


def test_a_point_query_reads_what_a_cutout_reads(sql_server):
    """The same alerts' stamps, by SQL and by a cutout ticket: the server's per-request records
    (`stats`) show the bytes each read from storage, warm caches on both sides."""
    s, root = sql_server
    _, candids = ids(root, 2)
    c = s.client()

    def bytes_of(ticket, rid):
        opts = flight.FlightCallOptions(headers=[(b"x-request-id", rid.encode())])
        c.do_get(ticket, opts).read_all()
        return s.request_record(rid)["bytes"]

    sql = ("SELECT objectId, candid, cutoutScience, cutoutTemplate, cutoutDifference FROM ztf "
           f"WHERE candid IN ({candids[0]}, {candids[1]})")
    ticket = c.get_flight_info(statement(sql)).endpoints[0].ticket
    cutout = flight.Ticket(json.dumps({"cutout": {"dataset": "ztf", "candids": candids, "format": "gzip"}}).encode())
    bytes_of(ticket, "sql-warm")
    bytes_of(cutout, "cutout-warm")
    sql_bytes, cutout_bytes = bytes_of(ticket, "sql-point"), bytes_of(cutout, "cutout-point")
    full = bytes_of(c.get_flight_info(statement(sql.split(" WHERE")[0])).endpoints[0].ticket, "sql-full")
    print(f"\nbytes read: SQL point query {sql_bytes}, cutout {cutout_bytes}, full scan {full}")
    # The same pages (the stamps' pages hold many rows in this small lake, so both read whole
    # pages); a few hundred bytes of difference at most.
    assert 0 < sql_bytes <= 1.02 * cutout_bytes, (sql_bytes, cutout_bytes)
    assert sql_bytes * 3 < full, (sql_bytes, full)
    c.close()


def test_parameters_are_bound_through_do_put(sql_server, conn):
    _, root = sql_server
    objects, _ = ids(root, 1)
    got = fetch(conn, "SELECT candid FROM ztf WHERE objectId = ? AND candidate.magpsf > ? ORDER BY candid",
                (objects[0], 0.0))
    want = duck(root, f"SELECT candid FROM ztf WHERE objectId = '{objects[0]}' AND candidate.magpsf > 0 "
                      "ORDER BY candid")
    assert got.column("candid").to_pylist() == want.column("candid").to_pylist() != []
    # A `?` inside a string is text, not a parameter.
    assert fetch(conn, "SELECT '?' AS q, candid FROM ztf WHERE objectId = ? LIMIT 1",
                 (objects[0],)).column("q").to_pylist() == ["?"]


def test_tickets_that_this_server_did_not_issue_are_refused(sql_server):
    s, _ = sql_server
    c = s.client()
    bad = any_bytes("type.googleapis.com/arrow.flight.protocol.sql.TicketStatementQuery",
                    bytes([0x0A, 8]) + b"SELECT 1")
    with pytest.raises(pa.ArrowInvalid, match="not a handle this server issued"):
        c.do_get(flight.Ticket(bad)).read_all()
    c.close()


def statement(sql):
    q = sql.encode()
    return flight.FlightDescriptor.for_command(
        any_bytes("type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery", varint_field(1, q)))


def test_an_endpoint_whose_file_changed_fails_alone_with_data_loss(binary, tmp_path):
    """Plan a split scan, rewrite one file of the lake, pull every endpoint: the endpoint of that
    file fails with DATA_LOSS naming it, the others answer as planned."""
    import shutil
    from conftest import Server
    gen(binary, tmp_path / "ztf", "ztf", 2, 2, 40)
    s = Server(binary, tmp_path, [("ztf", "ztf", tmp_path / "ztf")], top={"sql": {"endpoint_bytes": 20000}})
    try:
        c = s.client()
        info = c.get_flight_info(statement("SELECT candid FROM ztf"))
        assert len(info.endpoints) == 4
        victim = sorted((tmp_path / "ztf").rglob("*.parquet"))[0]
        shutil.copy(victim, tmp_path / "copy.parquet")
        data = victim.read_bytes()
        victim.write_bytes(data + b"x")  # another size: another version
        outcomes = []
        for e in info.endpoints:
            try:
                outcomes.append(c.do_get(e.ticket).read_all().num_rows)
            except flight.FlightInternalError as err:
                outcomes.append(str(err))
        failed = [o for o in outcomes if isinstance(o, str)]
        # Caught by the endpoint's version check, or (when the listing the server reuses for a
        # few seconds is older than the change) by the versioned read itself.
        assert len(failed) == 1 and "data loss" in failed[0], outcomes
        assert ("changed since this query was planned" in failed[0]
                or "is not the version the index holds" in failed[0]), failed[0]
        assert victim.name[:20] in failed[0], failed[0]
        assert sum(o for o in outcomes if isinstance(o, int)) == 3 * 40
        c.close()
    finally:
        s.stop()
