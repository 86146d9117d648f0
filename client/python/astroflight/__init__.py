"""astroflight's Python client: pure Python on pyarrow.flight.

    import astroflight
    af = astroflight.connect("grpc://127.0.0.1:8815")
    t = af.alerts("ztf", nights=["2019-09-03"], where="candidate.magpsf > 19.5", content="lightcurve")
    for batch in af.iter_batches("ztf", classes=["SN"], content="cutouts", stamps="array"):
        ...
    x = astroflight.stamps_as_numpy(t, "cutoutScience")   # N x 63 x 63 float32

`alerts()` plans the query with GetFlightInfo and pulls every endpoint in parallel, each on its
own connection, then concatenates them in plan order: the same rows, in the same order, as one
sequential pull. An endpoint that lists several locations (a server with `advertise`: its
replicas) is pulled from the least busy of them (the fewest pulls this client has in flight
there; ties go to the server's order, which it rotates per endpoint); one without locations from
this server. When a location fails (down, or lost mid-stream), the endpoint is read again from the
next one, skipping the rows already received: every row arrives exactly once (an endpoint's
ticket gives the same rows in the same order on every replica).

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

__all__ = ["Client", "connect", "stamps_as_numpy", "query", "sql_command", "stream_endpoint"]

# Failures of a location, not of the request: the endpoint is tried on its next location. Any
# other error (a bad query, no permission) would fail the same everywhere and is raised.
_RETRYABLE = (flight.FlightUnavailableError, flight.FlightTimedOutError, flight.FlightInternalError,
              ConnectionError)


class _Balancer:
    """Pulls in flight per location, for choosing the least busy of an endpoint's locations; a
    location that failed goes last for the client's later endpoints."""

    def __init__(self):
        self._lock = threading.Lock()
        self._busy = {}
        self._failed = set()
        self.failovers = 0

    def order(self, locations):
        with self._lock:  # sorted is stable: ties keep the server's order
            return sorted(locations, key=lambda loc: (loc in self._failed, self._busy.get(loc, 0)))

    def failed(self, loc):
        with self._lock:
            self._failed.add(loc)
            self.failovers += 1

    def take(self, loc, n):
        with self._lock:
            self._busy[loc] = self._busy.get(loc, 0) + n


def stream_endpoint(ticket, locations, default_location, call_options=None, connect_kwargs=None,
                    balancer=None, cast_to=None):
    """Yield the record batches of one endpoint (`ticket`: a `flight.Ticket` or its bytes) from
    the first of `locations` that answers (none: `default_location`). A location that fails is
    left for the next, and the endpoint is read again there from the start, skipping the rows
    already yielded, so that each row is yielded once. Raises the last failure when every
    location failed. `cast_to`: an Arrow schema each batch is cast to (Spark's)."""
    if not isinstance(ticket, flight.Ticket):
        ticket = flight.Ticket(ticket)
    # Flight's "reuse the connection" location means the server the plan came from.
    locations = [loc for loc in (locations or []) if loc and not loc.startswith("arrow-flight-reuse-connection:")]
    locations = locations or [default_location]
    if balancer is not None:
        locations = balancer.order(locations)
    delivered, last = 0, None
    for loc in locations:
        skip = delivered
        if balancer is not None:
            balancer.take(loc, 1)
        try:
            c = flight.connect(loc, **(connect_kwargs or {}))
            try:
                for chunk in c.do_get(ticket, call_options):
                    b = chunk.data
                    if skip >= b.num_rows:
                        skip -= b.num_rows
                        continue
                    if skip:
                        b, skip = b.slice(skip), 0
                    delivered += b.num_rows
                    yield b if cast_to is None or b.schema == cast_to else b.cast(cast_to, safe=False)
                return
            finally:
                c.close()
        except _RETRYABLE as e:
            last = e
            if balancer is not None:
                balancer.failed(loc)
        finally:
            if balancer is not None:
                balancer.take(loc, -1)
    raise last

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
        self._balancer = _Balancer()

    @property
    def failovers(self):
        """How many times an endpoint moved to its next location because one failed."""
        return self._balancer.failovers

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

    def _endpoint_batches(self, endpoint):
        return stream_endpoint(endpoint.ticket, [loc.uri.decode() for loc in endpoint.locations], self.location,
                               self.options, self._kwargs, self._balancer)

    def _read_endpoint(self, endpoint):
        batches = list(self._endpoint_batches(endpoint))
        return pa.Table.from_batches(batches) if batches else None

    def _stream_endpoint(self, endpoint, out, cancel):
        """Put the batches of one endpoint on the bounded queue `out` as they arrive, then None
        (or the exception). Stops early when `cancel` is set."""
        try:
            for b in self._endpoint_batches(endpoint):
                if not _put(out, b, cancel):
                    return
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
            tables = [t for t in pool.map(self._read_endpoint, info.endpoints) if t is not None]
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
