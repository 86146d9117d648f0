"""astroflight's Python client: pure Python on pyarrow.flight.

    import astroflight
    af = astroflight.connect("grpc://127.0.0.1:8815")
    t = af.alerts("ztf", nights=["2019-09-03"], where="candidate.magpsf > 19.5", content="lightcurve")
    for batch in af.iter_batches("ztf", classes=["SN"], content="cutouts", stamps="array"):
        ...
    x = astroflight.stamps_as_numpy(t, "cutoutScience")   # N x 63 x 63 float32

`alerts()` plans the query with GetFlightInfo and pulls every endpoint in parallel (each on
its own connection to the endpoint's first advertised location, or to this server), then
concatenates them in plan order: the same rows, in the same order, as one sequential pull.

A server with `[auth]` takes a token or a user's password, and TLS options go to pyarrow:

    af = astroflight.connect("grpc+tls://flight.example.org:8815", token="...",
                             tls_root_certs=open("ca.pem", "rb").read())
    af = astroflight.connect("grpc+tls://flight.example.org:8815", username="alice", password="...")
"""
import json
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
from pyarrow import flight

__all__ = ["Client", "connect", "stamps_as_numpy", "query", "sql_command"]

_FLIGHT_SQL = "type.googleapis.com/arrow.flight.protocol.sql."


def _field(tag, value):
    """A length-delimited protobuf field."""
    n, size = len(value), bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        size.append(b | (0x80 if n else 0))
        if not n:
            return bytes([tag << 3 | 2]) + bytes(size) + value


def sql_command(sql):
    """A Flight SQL CommandStatementQuery (packed in a google.protobuf.Any) for a plain
    pyarrow.flight client: `client.get_flight_info(FlightDescriptor.for_command(sql_command(q)))`
    plans the query into endpoints, whose tickets DoGet reads. (ADBC and JDBC do this for you.)"""
    return _field(1, (_FLIGHT_SQL + "CommandStatementQuery").encode()) + _field(2, _field(1, sql.encode()))


def query(dataset, nights=None, start=None, end=None, classes=None, where=None, content="lightcurve",
          columns=None, stamps=None, limit=None, exact=False, compression=None, annotate=None):
    """The JSON alerts command (the server's contract: see the README). `where` may be a string
    or a list of conditions (combined with AND); `start`/`end` are the command's `from`/`to`."""
    q = {"dataset": dataset, "content": content}
    if nights is not None:
        q["nights"] = list(nights)
    if start is not None:
        q["from"] = start
    if end is not None:
        q["to"] = end
    if classes:
        q["classes"] = list(classes)
    if where:
        q["where"] = where if isinstance(where, str) else "; ".join(where)
    if columns:
        q["columns"] = list(columns)
        q["content"] = "columns"
    if stamps:
        q["stamps"] = stamps
    if limit is not None:
        q["limit"] = int(limit)
    if exact:
        q["exact"] = True
    if compression:
        q["compression"] = compression
    if annotate:
        q["annotate"] = list(annotate)
    return json.dumps({"alerts": q}).encode()


def _auth_headers(client, token, username, password):
    """The headers every call carries: a bearer token, given or from a Handshake with the user's
    basic credentials (a session token, good on every connection and replica)."""
    if token and username:
        raise ValueError("give a token or a username and password, not both")
    if username is not None:
        return [client.authenticate_basic_token(username, password or "")]
    if token:
        return [(b"authorization", b"Bearer " + token.encode())]
    return []


class Client:
    def __init__(self, location, parallel=4, token=None, username=None, password=None, **kwargs):
        self.location = location
        self.parallel = parallel
        self._kwargs = kwargs
        self._flight = flight.connect(location, **kwargs)
        self.headers = _auth_headers(self._flight, token, username, password)
        self.options = flight.FlightCallOptions(headers=self.headers)

    def close(self):
        self._flight.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def plan_sql(self, sql):
        """GetFlightInfo of a Flight SQL query: its schema and endpoints."""
        return self._flight.get_flight_info(flight.FlightDescriptor.for_command(sql_command(sql)), self.options)

    def plan(self, dataset, **q):
        """GetFlightInfo of a query: schema, total_records, total_bytes and the endpoints."""
        return self._flight.get_flight_info(flight.FlightDescriptor.for_command(query(dataset, **q)), self.options)

    def _read_endpoint(self, endpoint):
        c = self._connect_endpoint(endpoint)
        try:
            return c.do_get(endpoint.ticket, self.options).read_all()
        finally:
            c.close()

    def _connect_endpoint(self, endpoint):
        loc = endpoint.locations[0].uri.decode() if endpoint.locations else None
        return flight.connect(loc or self.location, **self._kwargs)

    def _stream_endpoint(self, endpoint, out, cancel):
        """Put the batches of one endpoint on the bounded queue `out` as they arrive, then None
        (or the exception). Stops early when `cancel` is set."""
        try:
            c = self._connect_endpoint(endpoint)
            try:
                for chunk in c.do_get(endpoint.ticket, self.options):
                    if not _put(out, chunk.data, cancel):
                        return
            finally:
                c.close()
            _put(out, None, cancel)
        except BaseException as e:  # handed to the consumer, which raises it
            _put(out, e, cancel)

    def iter_batches(self, dataset, buffer=4, **q):
        """Yield the record batches of a query as they arrive, endpoint by endpoint in plan order,
        while up to `parallel` endpoints stream at once. Each endpoint keeps at most `buffer`
        batches ahead of the consumer (then its stream waits: the server sees backpressure), so
        memory stays bounded however large the result."""
        info = self.plan(dataset, **q)
        if not info.endpoints:
            return
        cancel = threading.Event()
        queues = [queue.Queue(maxsize=buffer) for _ in info.endpoints]
        pool = ThreadPoolExecutor(max_workers=self.parallel)
        try:
            for e, out in zip(info.endpoints, queues):
                pool.submit(self._stream_endpoint, e, out, cancel)
            for out in queues:
                while True:
                    item = out.get()
                    if item is None:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    yield item
        finally:
            cancel.set()
            pool.shutdown(wait=False, cancel_futures=True)

    def alerts(self, dataset, as_pandas=False, **q):
        """The whole result of a query as one pyarrow.Table (or a pandas DataFrame)."""
        return self._pull(self.plan(dataset, **q), as_pandas)

    def sql(self, query, as_pandas=False):
        """The whole result of a Flight SQL query, every endpoint pulled in parallel."""
        return self._pull(self.plan_sql(query), as_pandas)

    def _pull(self, info, as_pandas):
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            tables = list(pool.map(self._read_endpoint, info.endpoints))
        t = pa.concat_tables(tables) if tables else info.schema.empty_table()
        return t.to_pandas() if as_pandas else t

    def classes(self, dataset):
        """Alerts per night and class of a dataset (the `classes` action)."""
        body = json.dumps({"dataset": dataset}).encode()
        r = next(iter(self._flight.do_action(flight.Action("classes", body), self.options)))
        return json.loads(r.body.to_pybytes())


def _put(q, item, cancel):
    """Put on a bounded queue unless the consumer went away; False then."""
    while not cancel.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


def connect(location="grpc://127.0.0.1:8815", parallel=4, token=None, username=None, password=None, **kwargs):
    """A client of the server at `location`; `token`, or `username` and `password`, for a
    server with `[auth]`; other keyword arguments go to `pyarrow.flight.connect` (TLS:
    `tls_root_certs`, and for mutual TLS `cert_chain` and `private_key`)."""
    return Client(location, parallel=parallel, token=token, username=username, password=password, **kwargs)


def stamps_as_numpy(table, column="cutoutScience"):
    """The stamps of a table pulled with stamps="array" as one float32 array N x H x W (every
    stamp must have the same size, as ZTF's 63 x 63 do; null stamps are NaN-filled)."""
    col = table.column(column).combine_chunks()
    width = col.field("width").to_numpy(zero_copy_only=False)
    height = col.field("height").to_numpy(zero_copy_only=False)
    n = len(col)
    if n == 0:
        return np.empty((0, 0, 0), dtype=np.float32)
    valid = ~np.isnan(width.astype(float))
    if not valid.any():
        raise ValueError(f"every {column} stamp is null")
    w, h = int(width[valid][0]), int(height[valid][0])
    if not (np.all(width[valid] == w) and np.all(height[valid] == h)):
        raise ValueError(f"{column} stamps have different sizes; stack them one by one")
    out = np.full((n, h, w), np.nan, dtype=np.float32)
    pixels = col.field("pixels")
    flat = pixels.flatten().to_numpy(zero_copy_only=False)
    offsets = pixels.offsets.to_numpy()
    for i in np.nonzero(valid)[0]:
        out[i] = flat[offsets[i]:offsets[i + 1]].reshape(h, w)
    return out
