"""The real alerts of ../shared/data (read in place, never copied into the repository), through
pyarrow.flight: every stamp of every alert byte-identical (gzip as stored, fits after gunzip) with
`array` pixels equal to astropy's reading, alert batches row for row against DuckDB and pyarrow,
and the same on every storage backend. Each test skips, saying so, when ../shared/data is absent
(the `shared_data` fixture)."""

import numpy as np
import pyarrow as pa
import pytest
from pyarrow import flight

from conftest import BACKENDS
from helpers import (alert_batch, as_fits, avro_lake, check_every_stamp, dedupe, duck, get, parquet_alerts, rows_of,
                     source_rows)
from storage_servers import S3_SECRET, env_without_aws


def test_real_parquet_lake_in_place(start_server, shared_data):
    root = shared_data / "ztf" / "parquet"
    s = start_server([("ztf", "ztf", root)])
    c = s.client()
    alerts = parquet_alerts(root)
    assert len(alerts) == 15
    uniq = dedupe(alerts, "candid")  # ZTF18acqucmw is in both the raw and the science lake
    assert len(uniq) == 14
    check_every_stamp(c, "ztf", uniq, "candid", "candids")

    # The README example, verbatim.
    t = c.do_get(flight.Ticket(b'{"cutout": {"dataset": "ztf", "objectId": "ZTF20aabaesm", "kind": "Science", "format": "array"}}')).read_all()
    img = t["pixels"][0].values.to_numpy().reshape(t["height"][0].as_py(), t["width"][0].as_py())
    assert img.shape == (63, 63) and np.isfinite(img).any()

    # objectId + candid, and a candid of another object.
    a, b = uniq[0], next(x for x in uniq if x["objectId"] != uniq[0]["objectId"])
    t = get(c, dataset="ztf", objectId=a["objectId"], candid=a["candid"], kind="Template")
    assert t.num_rows == 1 and t["candid"][0].as_py() == a["candid"]
    with pytest.raises(pa.ArrowKeyError, match=str(b["candid"])):  # NOT_FOUND
        get(c, dataset="ztf", objectId=a["objectId"], candid=b["candid"])


def test_real_avro_alerts(start_server, shared_data, tmp_path):
    lake = tmp_path / "avro-lake"
    alerts = avro_lake(shared_data, lake)
    assert len(alerts) >= 21  # 22 alerts in 10 files (the data README says 21)
    s = start_server([("ztf", "ztf", lake)])
    c = s.client()
    uniq = dedupe(alerts, "candid")
    check_every_stamp(c, "ztf", uniq, "candid", "candids")

    # latest / all by objectId.
    by_obj = {}
    for a in uniq:
        by_obj.setdefault(a["objectId"], []).append(a)
    oids = sorted(by_obj)
    t = get(c, dataset="ztf", objectIds=oids, kind="Science", format="gzip")
    assert t.num_rows == len(oids)
    for r in t.to_pylist():
        latest = max(by_obj[r["objectId"]], key=lambda a: a["jd"])
        assert r["candid"] == latest["candid"] and r["stamp"] == latest["stamps"]["Science"]
    t = get(c, dataset="ztf", objectIds=oids, all=True, kind="Difference")
    assert sorted(t["candid"].to_pylist()) == sorted(a["candid"] for a in uniq)


def test_real_samples_as_alert_batches(start_server, shared_data, tmp_path):
    """Alert batches of the science lake and the avro alerts equal DuckDB's and pyarrow's reading."""
    science = shared_data / "ztf" / "parquet" / "science"
    avro = avro_lake(shared_data, tmp_path / "avro-lake")
    assert avro
    s = start_server([("science", "ztf", science), ("avro", "ztf", tmp_path / "avro-lake", {"class": ""})])
    c = s.client()
    src = source_rows(science)
    for cond in ["candidate.magpsf > 0", "candidate.magpsf > 17.5", "cdsxmatch <> 'zzz'"]:
        expect = duck(science, cond)
        for content in ["lightcurve", "full"]:
            t = alert_batch(c, {"dataset": "science", "where": cond, "content": content, "stamps": "gzip"})
            assert t.column("candid").to_pylist() == expect, (cond, content)
            if content == "full":
                for r in rows_of(t):
                    # repr: NaN (in Fink's lc_features) equals itself there.
                    assert repr(r) == repr(src[r["candid"]])
    t = alert_batch(c, {"dataset": "science", "nights": ["2019-09-03"], "content": "cutouts"})
    assert sorted(t.column("candid").to_pylist()) == sorted(src)
    for r in rows_of(t):
        assert r["cutoutScience"]["stampData"] == as_fits(src[r["candid"]]["cutoutScience"]["stampData"])
    # The avro alerts (several schema versions, one parquet file each): the light curve of each.
    t = alert_batch(c, {"dataset": "avro", "where": "candidate.magpsf > 0", "content": "columns",
                   "columns": ["candid", "candidate.magpsf"]})
    expect = duck(tmp_path / "avro-lake", "candidate.magpsf > 0")
    assert sorted(t.column("candid").to_pylist()) == sorted(expect) and expect


def check_real_parquet(c, alerts):
    uniq = dedupe(alerts, "candid")
    assert len(uniq) == 14
    check_every_stamp(c, "ztf", uniq, "candid", "candids")
    a, b = uniq[0], next(x for x in uniq if x["objectId"] != uniq[0]["objectId"])
    t = get(c, dataset="ztf", objectId=a["objectId"], candid=a["candid"], kind="Template")
    assert t.num_rows == 1 and t["candid"][0].as_py() == a["candid"]
    with pytest.raises(pa.ArrowKeyError, match=str(b["candid"])):  # NOT_FOUND
        get(c, dataset="ztf", objectId=a["objectId"], candid=b["candid"])
    with pytest.raises(pa.ArrowKeyError, match="ZTF99zzzzzzz"):
        get(c, dataset="ztf", objectId="ZTF99zzzzzzz")
    with pytest.raises(pa.ArrowInvalid, match="unknown dataset"):
        get(c, dataset="nope", objectId="x")


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_samples_on_every_backend(backend, place, start_server, shared_data, tmp_path):
    """Index build, every stamp of every real sample byte-identical (parquet lake and the avro
    alerts), latest/all semantics, and errors, with the lake on S3, HDFS or HTTP."""
    src = shared_data / "ztf" / "parquet"
    # Over HTTP the shared data is served in place, so its files are listed in the config
    # (nothing may be written into ../shared); the avro lake below uses a manifest.
    root, opts = place(backend, src, f"real-{backend}", manifest=False)
    avro = tmp_path / "avro-lake"
    avro_rows = avro_lake(shared_data, avro)
    avro_alerts = dedupe(avro_rows, "candid")
    aroot, aopts = place(backend, avro, f"avro-{backend}")
    s = start_server([("ztf", "ztf", root, opts), ("avro", "ztf", aroot, aopts)],
                     env={**env_without_aws(), "RUST_LOG": "debug"})
    c = s.client()
    check_real_parquet(c, parquet_alerts(src))
    check_every_stamp(c, "avro", avro_alerts, "candid", "candids")
    oids = sorted({a["objectId"] for a in avro_alerts})
    t = get(c, dataset="avro", objectIds=oids, all=True, kind="Difference")
    assert sorted(t["candid"].to_pylist()) == sorted(a["candid"] for a in avro_alerts)

    infos = {i.descriptor.path[0].decode(): i for i in c.list_flights()}
    # Rows indexed (the raw and science lakes share one alert, served once).
    assert infos["ztf"].total_records == 15 and infos["avro"].total_records == len(avro_rows)
    stats = s.action("stats")
    assert {d["storage"] for d in stats["datasets"]} == {backend}
    assert stats["io"]["requests"] > 0
    s.stop()
    log = s.stderr_path.read_text()
    assert "DEBUG" in log  # the check below is only meaningful if debug logging was on
    assert S3_SECRET not in log, "the S3 secret key appeared in the server's log"
