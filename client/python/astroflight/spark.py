"""astroflight results as Spark DataFrames: one Spark partition per endpoint of the plan, each
pulled by an executor (no data passes through the driver).

Two ways, the same rows:

* the data source (Spark 4's Python data source API):

      from astroflight.spark import AstroflightDataSource
      spark.dataSource.register(AstroflightDataSource)
      df = (spark.read.format("astroflight").option("location", "grpc://astroflight:8815")
            .option("sql", "SELECT objectId, candid, candidate FROM ztf WHERE candidate.magpsf > 19")
            .load())

  with exactly one of the options `sql` (Flight SQL), `table` (a whole table: `SELECT *`) or
  `dataset` + `command` (an alert batch query: the JSON body of `{"alerts": ...}`, e.g.
  `{"where": "candidate.magpsf > 19.5", "content": "lightcurve"}`);

* `mapInArrow` over the endpoints (`read_alerts`, `read_sql`), for Spark 3.3+.

The plan (GetFlightInfo) runs on the driver; its schema becomes the DataFrame's, converted by
Spark's own Arrow type mapping (int64 ids stay LongType, structs and lists stay nested).
Executors need pyarrow and this package. A server with `[auth]`: the option `token` (or the
`token` argument of `read_alerts` / `read_sql`); the bearer token goes with every executor's
pull. Over TLS (`grpc+tls://`), executors verify the server with the system's CAs.
"""
import json

from pyarrow import flight

import astroflight

__all__ = ["AstroflightDataSource", "read_alerts", "read_sql", "read_endpoints"]


def read_endpoints(batches, default_location, arrow_schema=None, token=None):
    """The `mapInArrow` body: each input row is an endpoint (`ticket` bytes and `locations`, the
    replicas that serve it, empty for the planning server); yields the endpoint's record batches
    as they arrive (cast to `arrow_schema`, the Arrow form of the DataFrame's schema, when
    given), from its first location that answers."""
    for b in batches:
        for ticket, locations in zip(b.column("ticket").to_pylist(), b.column("locations").to_pylist()):
            yield from _stream(ticket, locations, default_location, arrow_schema, token)


def _stream(ticket, locations, default_location, arrow_schema=None, token=None):
    """One endpoint from its locations in the server's order (it rotates them per endpoint: the
    endpoints spread round robin over the replicas); a location that fails is left for the next,
    the rows already read skipped ([`astroflight.stream_endpoint`]). Spark's types are not all
    Arrow's (timestamps are microseconds, fields nullable): batches are cast to the Arrow form of
    the Spark schema, which Spark checks."""
    headers = [(b"authorization", b"Bearer " + token.encode())] if token else []
    yield from astroflight.stream_endpoint(ticket, locations, default_location,
                                           flight.FlightCallOptions(headers=headers), cast_to=arrow_schema)


def _spark_schema(arrow_schema):
    """The Spark schema of an Arrow schema, and that schema's own Arrow form."""
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    schema = from_arrow_schema(arrow_schema)
    return schema, to_arrow_schema(schema)


def _endpoints(info):
    return [(e.ticket.ticket, [loc.uri.decode() for loc in e.locations]) for e in info.endpoints]


def _frame(spark, location, info, token=None):
    endpoints = _endpoints(info)
    schema, arrow_schema = _spark_schema(info.schema)
    if not endpoints:
        return spark.createDataFrame([], schema)
    plan = spark.createDataFrame(endpoints, "ticket binary, locations array<string>").repartition(len(endpoints))
    return plan.mapInArrow(lambda it: read_endpoints(it, location, arrow_schema, token), schema)


def read_alerts(spark, location, dataset, token=None, **q):
    """A DataFrame of an alert batch query (`q` as `astroflight.query`), one partition per
    endpoint, through mapInArrow."""
    with astroflight.connect(location, token=token) as af:
        return _frame(spark, location, af.plan(dataset, **q), token)


def read_sql(spark, location, sql, token=None):
    """A DataFrame of a Flight SQL query, one partition per endpoint, through mapInArrow."""
    with astroflight.connect(location, token=token) as af:
        return _frame(spark, location, af.plan_sql(sql), token)


def _plan(options):
    """What a data source's options ask for, planned: (location, Arrow schema, endpoints), all
    picklable (Spark ships the data source to its Python workers)."""
    location, info = _flight_info(options)
    return location, info.schema, _endpoints(info), options.get("token")


def _flight_info(options):
    """GetFlightInfo of what a data source's options ask for."""
    location = options.get("location", "grpc://127.0.0.1:8815")
    given = [k for k in ("sql", "table", "command") if options.get(k)]
    if len(given) != 1:
        raise ValueError("the astroflight data source takes exactly one of the options sql, table, or command "
                         f"(with dataset); got {given or 'none'}")
    with astroflight.connect(location, token=options.get("token")) as af:
        if options.get("sql"):
            return location, af.plan_sql(options["sql"])
        if options.get("table"):
            name = options["table"].replace('"', '""')
            return location, af.plan_sql(f'SELECT * FROM "{name}"')
        if not options.get("dataset"):
            raise ValueError("the astroflight data source's command option needs the dataset option")
        q = json.loads(options["command"])
        if not isinstance(q, dict):
            raise ValueError("the command option is the JSON object of an alert batch query")
        q.pop("dataset", None)
        body = json.loads(astroflight.query(options["dataset"]).decode())["alerts"]
        body.update(q)
        cmd = json.dumps({"alerts": body}).encode()
        return location, af._flight.get_flight_info(flight.FlightDescriptor.for_command(cmd), af.options)


try:
    from pyspark.sql.datasource import DataSource, DataSourceReader, InputPartition
except ImportError:  # pyspark < 4: the data source API is absent; mapInArrow still works
    DataSource = None

if DataSource is not None:

    class _Endpoint(InputPartition):
        def __init__(self, ticket, locations):
            super().__init__(ticket)
            self.ticket = ticket
            self.locations = locations

    class _Reader(DataSourceReader):
        def __init__(self, location, endpoints, arrow_schema, token):
            self.location = location
            self.endpoints = endpoints
            self.arrow_schema = arrow_schema
            self.token = token

        def partitions(self):
            return [_Endpoint(t, locs) for t, locs in self.endpoints]

        def read(self, partition):
            yield from _stream(partition.ticket, partition.locations, self.location, self.arrow_schema, self.token)

    class AstroflightDataSource(DataSource):
        """`spark.read.format("astroflight")`: options `location` (default
        grpc://127.0.0.1:8815), `token` (a server with `[auth]`), and one of `sql`, `table`, or
        `dataset` + `command`."""

        @classmethod
        def name(cls):
            return "astroflight"

        def _info(self):
            if not hasattr(self, "_planned"):
                self._planned = _plan(self.options)
            return self._planned

        def schema(self):
            return _spark_schema(self._info()[1])[0]

        def reader(self, schema):
            from pyspark.sql.pandas.types import to_arrow_schema

            location, _, endpoints, token = self._info()
            return _Reader(location, endpoints, to_arrow_schema(schema), token)
else:
    AstroflightDataSource = None
