import datetime
import glob
import gzip
import io
import json
import pathlib
import subprocess
import time

import duckdb
import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from astropy.io import fits
from pyarrow import flight

KINDS = ["Science", "Template", "Difference"]

# The credentials of the `auth_files` fixture (conftest.py): a token of every dataset, a token of
# lsst, and a user of ztf.
SVC_TOKEN = "svc-token-0123456789abcdef"
READER_TOKEN = "reader-token-0123456789abcdef"
ALICE_PASSWORD = "correct horse battery staple"


def ticket(**cutout):
    return flight.Ticket(json.dumps({"cutout": cutout}))


def alert_batch(client, q):
    """An `alerts` ticket, read whole."""
    return client.do_get(flight.Ticket(json.dumps({"alerts": q}).encode())).read_all()


def source_rows(root, id_path=("candid",)):
    """Every row of a lake read with pyarrow, by id."""
    out = {}
    for f in sorted(pathlib.Path(root).rglob("*.parquet")):
        for r in rows_of(pq.ParquetFile(f).read()):
            v = r
            for p in id_path:
                v = v[p]
            out[v] = r
    return out


def headers(client, **query):
    """A `headers` ticket (FITS header tables, or the headers of alert stamps), read whole."""
    return client.do_get(flight.Ticket(json.dumps({"headers": query}))).read_all()


def get(client, **cutout):
    return client.do_get(ticket(**cutout)).read_all()


def parquet_alerts(root, ztf=True):
    """Every alert of a lake, read with pyarrow: dicts with ids, time and stamps as stored."""
    out = []
    for f in sorted(glob.glob(f"{root}/**/*.parquet", recursive=True)):
        if ztf:
            t = pq.read_table(f, columns=["objectId", "candid", "candidate", *[f"cutout{k}" for k in KINDS]])
            for r in t.to_pylist():
                out.append({
                    "file": f, "objectId": r["objectId"], "candid": r["candid"], "jd": r["candidate"]["jd"],
                    "stamps": {k: (r[f"cutout{k}"] or {}).get("stampData") for k in KINDS},
                })
        else:
            t = pq.read_table(f, columns=["diaSource", *[f"cutout{k}" for k in KINDS]])
            for r in t.to_pylist():
                out.append({
                    "file": f, "diaSourceId": r["diaSource"]["diaSourceId"],
                    "diaObjectId": r["diaSource"]["diaObjectId"], "mjd": r["diaSource"]["midpointMjdTai"],
                    "stamps": {k: r[f"cutout{k}"] for k in KINDS},
                })
    return out


def as_fits(stored):
    return gzip.decompress(stored) if stored[:2] == b"\x1f\x8b" else stored


def astropy_pixels(stored):
    with fits.open(io.BytesIO(as_fits(stored))) as h:
        return np.asarray(h[0].data, dtype=np.float32)


def rows(table, id_col):
    """(id, kind) -> row dict."""
    out = {}
    for r in table.to_pylist():
        key = (r[id_col], r["kind"])
        assert key not in out, f"duplicate row {key}"
        out[key] = r
    return out


def check_every_stamp(client, dataset, alerts, id_col, id_field):
    """All three formats, every kind, many ids in one ticket: byte-identical and equal to astropy."""
    ids = [a[id_col] for a in alerts]
    gz = rows(get(client, dataset=dataset, **{id_field: ids}, kind="All", format="gzip"), id_col)
    fi = rows(get(client, dataset=dataset, **{id_field: ids}, kind="All", format="fits"), id_col)
    ar = rows(get(client, dataset=dataset, **{id_field: ids}, kind="All", format="array"), id_col)
    assert len(gz) == len(fi) == len(ar) == 3 * len(alerts)
    for a in alerts:
        for k in KINDS:
            stored = a["stamps"][k]
            key = (a[id_col], k)
            assert gz[key]["stamp"] == stored
            assert fi[key]["stamp"] == as_fits(stored)
            want = astropy_pixels(stored)
            r = ar[key]
            got = np.asarray(r["pixels"], dtype=np.float32).reshape(r["height"], r["width"])
            assert got.shape == want.shape
            assert np.array_equal(got, want, equal_nan=True), f"pixels of {key}"


def varint_field(tag, value):
    """A length-delimited protobuf field (any length)."""
    n, out = len(value), bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            break
    return bytes([tag << 3 | 2]) + bytes(out) + value


def any_bytes(type_url, value):
    """A google.protobuf.Any: field 1 the type URL, field 2 the value."""
    return varint_field(1, type_url.encode()) + varint_field(2, value)


def sql_command(sql):
    """A Flight SQL CommandStatementQuery as a FlightDescriptor, for a plain pyarrow.flight client."""
    return flight.FlightDescriptor.for_command(
        any_bytes("type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery", varint_field(1, sql.encode())))


def proc_rss(pid, field="VmRSS"):
    """A process's resident memory (VmRSS) or its peak (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for process {pid}")


def proc_cpu_seconds(pid):
    """User + system CPU seconds a process has used (all its threads)."""
    import os
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(condition, deadline_secs, what):
    """Poll `condition` (every 20 ms) until it is true; fail naming `what` past the deadline.
    For events a test waits for, instead of sleeping a guessed window."""
    until = time.monotonic() + deadline_secs
    while not condition():
        if time.monotonic() > until:
            raise AssertionError(f"{what} (within {deadline_secs} s)")
        time.sleep(0.02)


def steady(value, quiet_secs, deadline_secs, what):
    """Poll `value()` until it has not changed for `quiet_secs`; fail naming `what` if it is
    still changing after `deadline_secs`. Returns the steady value."""
    until = time.monotonic() + deadline_secs
    last, since = value(), time.monotonic()
    while time.monotonic() - since < quiet_secs:
        if time.monotonic() > until:
            raise AssertionError(f"{what} (still changing after {deadline_secs} s)")
        time.sleep(0.05)
        now = value()
        if now != last:
            last, since = now, time.monotonic()
    return last


def gen(binary, out, survey, nights=3, files=2, alerts=80, *extra):
    """A generated alert lake (`astroflight gen`), deterministic for given arguments."""
    subprocess.run([binary, "gen", "--survey", survey, "--out", str(out), "--nights", str(nights),
                    "--files-per-night", str(files), "--alerts-per-file", str(alerts), *extra],
                   check=True, capture_output=True)


def duck(root, sql_where, cols="candid"):
    """DuckDB on the same files: the ids of the rows matching `sql_where`, in file order."""
    con = duckdb.connect()
    files = sorted(str(p) for p in pathlib.Path(root).rglob("*.parquet"))
    q = f"SELECT {cols} FROM read_parquet({files!r}, hive_partitioning=false, union_by_name=true) WHERE {sql_where}"
    return [r[0] for r in con.execute(q).fetchall()]


def rows_of(t):
    """Rows as dicts (nanosecond timestamps as integers: Python datetimes cannot hold them)."""
    for i, f in enumerate(t.schema):
        if pa.types.is_timestamp(f.type):
            t = t.set_column(i, f.name, t.column(i).cast(pa.int64()))
    return t.to_pylist()


def dedupe(alerts, key):
    seen = {}
    for a in alerts:
        if a[key] in seen:
            assert seen[a[key]]["stamps"] == a["stamps"], "a duplicated alert has the same stamps"
        else:
            seen[a[key]] = a
    return list(seen.values())


def avro_lake(shared_data, out):
    """Write the real avro alerts into a Fink-like parquet lake (year=/month=/day=), one parquet
    file per avro file (they carry different schema versions)."""
    alerts = []
    for i, f in enumerate(sorted(glob.glob(str(shared_data / "ztf" / "avro" / "*.avro")))):
        with open(f, "rb") as fh:
            recs = list(fastavro.reader(fh))
        keep = ["objectId", "candid", "candidate", *[f"cutout{k}" for k in KINDS]]
        table = pa.Table.from_pylist([{k: r[k] for k in keep} for r in recs])
        jd = recs[0]["candidate"]["jd"]
        day = datetime.date(2000, 1, 1) + datetime.timedelta(days=int(jd - 2451544.5))
        d = out / f"year={day.year:04d}" / f"month={day.month:02d}" / f"day={day.day:02d}"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, d / f"part-{i:05d}.snappy.parquet", compression="snappy")
        for r in recs:
            alerts.append({"objectId": r["objectId"], "candid": r["candid"], "jd": r["candidate"]["jd"],
                           "stamps": {k: r[f"cutout{k}"]["stampData"] for k in KINDS}})
    return alerts


def duck_sql(root, sql):
    """DuckDB on the lake's files as a view named like the dataset (Hive partitions typed as
    integers, as astroflight types them)."""
    con = duckdb.connect()
    for name in ("ztf", "lsst"):
        files = sorted(str(p) for p in (pathlib.Path(root) / name).rglob("*.parquet"))
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({files!r}, hive_partitioning=true, "
                    f"hive_types={{'year': INTEGER, 'month': INTEGER, 'day': INTEGER}})")
    return con.execute(sql).to_arrow_table()


def gen_small(binary, out, survey, alerts=60, *extra):
    """A small generated lake: 2 nights x 2 files."""
    gen(binary, out, survey, 2, 2, alerts, *extra)


def hash_password(binary, password):
    """The server's own hash of `password` (`astroflight hash-password`), as a users file holds it."""
    r = subprocess.run([binary, "hash-password"], input=password + "\n", capture_output=True, text=True, check=True)
    h = r.stdout.strip()
    assert h.startswith("$argon2id$") and password not in h
    return h
