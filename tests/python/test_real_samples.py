"""Every stamp of every real alert in ../shared/data comes back through pyarrow.flight exactly:
byte-identical (gzip as stored, fits after gunzip), and `array` pixels equal to astropy's reading."""

import numpy as np
import pyarrow as pa
import pytest
from pyarrow import flight

from helpers import avro_lake, check_every_stamp, dedupe, get, parquet_alerts


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
