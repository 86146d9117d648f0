"""Alert batches as Spark DataFrames: one Spark partition per endpoint of the plan, each pulled
by an executor with `mapInArrow` (no data passes through the driver).

    from astroflight.spark import read_alerts
    df = read_alerts(spark, "grpc://astroflight:8815", "ztf", nights=["2019-09-03"],
                     where="candidate.magpsf > 19.5", content="lightcurve")

Executors need pyarrow and this package; the plan (GetFlightInfo) runs on the driver.
"""
from pyarrow import flight

import astroflight

__all__ = ["read_alerts", "read_endpoints"]


def read_endpoints(batches, default_location):
    """The `mapInArrow` body: each input row is an endpoint (`ticket` bytes and `location`, empty
    for the planning server); yields the endpoint's record batches as they arrive."""
    for b in batches:
        for ticket, location in zip(b.column("ticket").to_pylist(), b.column("location").to_pylist()):
            c = flight.connect(location or default_location)
            try:
                for chunk in c.do_get(flight.Ticket(ticket)):
                    yield chunk.data
            finally:
                c.close()


def read_alerts(spark, location, dataset, **q):
    """A DataFrame of an alert batch query (`q` as `astroflight.query`), one partition per
    endpoint. The schema is the plan's, converted by Spark's own Arrow type mapping."""
    from pyspark.sql.pandas.types import from_arrow_schema

    with astroflight.connect(location) as af:
        info = af.plan(dataset, **q)
    endpoints = [(e.ticket.ticket, e.locations[0].uri.decode() if e.locations else None) for e in info.endpoints]
    schema = from_arrow_schema(info.schema)
    if not endpoints:
        return spark.createDataFrame([], schema)
    plan = spark.createDataFrame(endpoints, "ticket binary, location string").repartition(len(endpoints))
    return plan.mapInArrow(lambda it: read_endpoints(it, location), schema)
