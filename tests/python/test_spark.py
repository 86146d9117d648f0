"""Spark (pyspark, local mode) pulling every endpoint of an alert batch plan with mapInArrow: one
Spark partition per endpoint, the same rows as the one-shot query; the data source on SQL tables
and alert commands; and both with a token against a server with [auth]."""
import json

import pyarrow as pa
import pytest
from pyarrow import flight

import astroflight
from astroflight.spark import read_alerts
from helpers import READER_TOKEN, SVC_TOKEN, duck, gen, rows_of


def test_spark_reads_every_endpoint_with_map_in_arrow(binary, spark, start_server, tmp_path):
    lake = tmp_path / "ztf"
    gen(binary, lake, "ztf", 3, 2, 60)
    s = start_server([("ztf", "ztf", lake)], top={"endpoint_bytes": 15_000})
    where = "candidate.magpsf > 18.5 OR cdsxmatch = 'RRLyr'"
    q = {"where": where, "content": "lightcurve"}
    with astroflight.connect(s.url) as af:
        info = af.plan("ztf", **q)
        direct = flight.connect(s.url).do_get(flight.Ticket(astroflight.query("ztf", **q))).read_all()
    assert len(info.endpoints) >= 6
    df = read_alerts(spark, s.url, "ztf", **q)
    assert df.rdd.getNumPartitions() == len(info.endpoints)  # one per endpoint
    got = df.toArrow()
    assert got.num_rows == direct.num_rows == len(duck(lake, where)) > 0
    # Exactly the rows of the direct query (types as Spark returns them: the same Arrow types).
    key = lambda r: r["candid"]  # noqa: E731
    assert got.schema.names == direct.schema.names
    assert sorted(rows_of(got.cast(direct.schema)), key=key) == sorted(rows_of(direct), key=key)
    # Spark SQL over the pulled alerts: nested fields work as in any DataFrame.
    df.createOrReplaceTempView("alerts")
    n = spark.sql("SELECT count(*) AS n FROM alerts WHERE candidate.magpsf > 18.5").collect()[0]["n"]
    assert n == len(duck(lake, "candidate.magpsf > 18.5"))
    assert json.loads(info.app_metadata)["endpoints"] == len(info.endpoints)
    assert isinstance(got, pa.Table)
    # An empty result: a DataFrame with the schema and no rows.
    empty = read_alerts(spark, s.url, "ztf", where="candidate.magpsf > 100")
    assert empty.count() == 0 and empty.columns == direct.schema.names


def test_spark_data_source_reads_sql_tables_and_alert_commands(binary, spark, start_server, tmp_path):
    """`spark.read.format("astroflight")` (Spark 4's Python data source): one partition per
    endpoint, the schema from GetFlightInfo, exactly the rows of the direct query; mapInArrow
    (`read_sql`) gives the same rows."""
    from astroflight.spark import read_sql

    lake = tmp_path / "ztf"
    gen(binary, lake, "ztf", 3, 2, 60)
    s = start_server([("ztf", "ztf", lake)], top={"endpoint_bytes": 15_000, "sql": {"endpoint_bytes": 20_000}})
    sql = "SELECT objectId, candid, candidate, prv_candidates, day FROM ztf WHERE candidate.magpsf > 18"
    with astroflight.connect(s.url) as af:
        info = af.plan_sql(sql)
        direct = af.sql(sql)
    df = spark.read.format("astroflight").option("location", s.url).option("sql", sql).load()
    assert df.rdd.getNumPartitions() == len(info.endpoints) > 1
    got = df.toArrow()
    assert got.schema.field("candid").type == pa.int64()
    assert pa.types.is_struct(got.schema.field("candidate").type)
    assert pa.types.is_list(got.schema.field("prv_candidates").type)
    key = lambda r: r["candid"]  # noqa: E731
    assert got.num_rows == direct.num_rows == len(duck(lake, "candidate.magpsf > 18")) > 0
    assert sorted(rows_of(got.cast(direct.schema)), key=key) == sorted(rows_of(direct), key=key)
    mapped = read_sql(spark, s.url, sql)
    assert mapped.rdd.getNumPartitions() == len(info.endpoints)
    assert sorted(rows_of(mapped.toArrow().cast(direct.schema)), key=key) == sorted(rows_of(direct), key=key)
    # A whole table, and an alert batch command.
    table = spark.read.format("astroflight").option("location", s.url).option("table", "ztf").load()
    assert table.count() == 3 * 2 * 60
    q = {"where": "candidate.magpsf > 18.5", "content": "lightcurve"}
    cmd = (spark.read.format("astroflight").option("location", s.url).option("dataset", "ztf")
           .option("command", json.dumps(q)).load())
    assert cmd.count() == len(duck(lake, "candidate.magpsf > 18.5"))
    with pytest.raises(Exception, match="exactly one of the options"):
        spark.read.format("astroflight").option("location", s.url).load().count()


def test_spark_with_a_token(spark, plain_auth_server, auth_lake):
    """Spark pulling from a server with [auth]: the driver plans with the token, and every
    executor's pull carries it."""
    from astroflight.spark import read_sql

    url = plain_auth_server.url
    df = read_sql(spark, url, "SELECT candid FROM ztf", token=SVC_TOKEN)
    assert df.count() == len(auth_lake["ztf"])
    df = (spark.read.format("astroflight").option("location", url).option("token", READER_TOKEN)
          .option("table", "lsst").load())
    assert df.count() == len(auth_lake["lsst"])
    with pytest.raises(Exception, match="may not read dataset"):
        (spark.read.format("astroflight").option("location", url).option("token", READER_TOKEN)
         .option("table", "ztf").load().count())


def test_spark_spreads_endpoints_over_replicas_and_survives_a_dead_one(binary, spark, start_server, tmp_path):
    """A builder and two followers advertising all three: the data source's partitions are
    pulled from every replica; with a follower killed after planning, every row still arrives
    exactly once (each partition moves on to its endpoint's next location)."""
    from storage_servers import free_port

    lake = tmp_path / "ztf"
    gen(binary, lake, "ztf", 3, 2, 60)
    ports = [free_port() for _ in range(3)]
    common = {"advertise": [f"grpc://127.0.0.1:{p}" for p in ports], "endpoint_bytes": 15_000,
              "sql": {"endpoint_bytes": 20_000}}
    opts = {"index_root": str(tmp_path / "published")}
    servers = [start_server([("ztf", "ztf", lake, opts)], top={**common, "listen": f"127.0.0.1:{ports[0]}"})]
    servers += [start_server([("ztf", "ztf", lake, opts)],
                             top={**common, "listen": f"127.0.0.1:{p}", "index_role": "follow"}) for p in ports[1:]]
    sql = "SELECT objectId, candid, candidate.magpsf AS magpsf FROM ztf"
    want = sorted(duck(lake, "true"))

    def load():
        return spark.read.format("astroflight").option("location", servers[1].url).option("sql", sql).load()

    before = [len(s.action("stats")["requests"]) for s in servers]
    got = sorted(r["candid"] for r in load().select("candid").collect())
    assert len(got) == len(set(got)) == 3 * 2 * 60
    after = [len(s.action("stats")["requests"]) for s in servers]
    assert all(a > b for a, b in zip(after, before)), f"every replica served partitions: {before} -> {after}"
    df = load()  # planned while all three serve
    servers[2].proc.kill()
    servers[2].proc.wait()
    again = sorted(r["candid"] for r in df.select("candid").collect())
    assert again == got, "every row exactly once with a replica gone"
    assert got == want
