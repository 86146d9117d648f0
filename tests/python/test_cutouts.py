"""Cutouts through pyarrow.flight on generated lakes (ZTF and Rubin): every stamp of every alert
against the files, every format, the headers of the stamps, clear errors, the command line client,
and corrupt or missing files failing their own requests only."""
import io
import json
import subprocess

import numpy as np
import pyarrow as pa
import pytest
from astropy.io import fits
from pyarrow import flight

from helpers import as_fits, check_every_stamp, get, headers, parquet_alerts
from helpers import gen_small as gen


@pytest.fixture(scope="module")
def lakes(binary, tmp_path_factory):
    d = tmp_path_factory.mktemp("lakes")
    gen(binary, d / "ztf", "ztf")
    gen(binary, d / "lsst", "lsst")
    gen(binary, d / "lsst10", "lsst", 30, "--lsst-schema", "v10_0", "--no-page-index")
    return d


def test_generated_ztf_and_rubin(start_server, lakes):
    s = start_server([("ztf", "ztf", lakes / "ztf"), ("lsst", "lsst", lakes / "lsst"),
                      ("lsst10", "lsst", lakes / "lsst10")])
    c = s.client()
    check_every_stamp(c, "ztf", parquet_alerts(lakes / "ztf"), "candid", "candids")
    rubin = parquet_alerts(lakes / "lsst", ztf=False)
    check_every_stamp(c, "lsst", rubin, "diaSourceId", "diaSourceIds")
    check_every_stamp(c, "lsst10", parquet_alerts(lakes / "lsst10", ztf=False), "diaSourceId", "diaSourceIds")
    t = get(c, dataset="lsst", diaSourceId=rubin[3]["diaSourceId"], kind="Science", format="array")
    assert (t["width"][0].as_py(), t["height"][0].as_py()) == (51, 51)
    assert t["diaObjectId"][0].as_py() == rubin[3]["diaObjectId"]

    names = sorted(i.descriptor.path[0].decode() for i in c.list_flights())
    assert names == ["lsst", "lsst10", "ztf"]
    # Each dataset's segment index: its alerts, segments, bytes on disk and generation.
    stats = {d["name"]: d for d in s.action("stats")["datasets"]}
    for name, alerts in (("ztf", len(parquet_alerts(lakes / "ztf"))), ("lsst", len(rubin))):
        ix = stats[name]["index"]
        assert ix["alerts"] == alerts and ix["segments"] == 1 and ix["generation"] >= 1, ix
        assert 0 < ix["bytes"] < 64 * alerts + 4096, ix
    info = c.get_flight_info(flight.FlightDescriptor.for_command(
        b'{"cutout": {"dataset": "lsst", "diaSourceIds": [%d, %d]}}' % (rubin[0]["diaSourceId"], rubin[1]["diaSourceId"])))
    assert info.total_records == 6
    assert info.schema.names == ["diaSourceId", "diaObjectId", "kind", "stamp"]
    assert c.do_get(info.endpoints[0].ticket).read_all().num_rows == 6
    schema = c.get_schema(flight.FlightDescriptor.for_command(b'{"cutout": {"dataset": "ztf", "objectId": "x", "format": "array"}}')).schema
    assert schema.names == ["objectId", "candid", "kind", "pixels", "width", "height"]
    assert schema.field("pixels").type == pa.list_(pa.field("item", pa.float32(), nullable=False))


ERRORS = [
    # NOT_FOUND (pyarrow raises ArrowKeyError for it), naming the id.
    (b'{"cutout": {"dataset": "ztf", "objectId": "ZTF99zzzzzzz"}}', pa.ArrowKeyError, "ZTF99zzzzzzz"),
    (b'{"cutout": {"dataset": "ztf", "candid": 12345}}', pa.ArrowKeyError, "12345"),
    (b'{"cutout": {"dataset": "lsst", "diaSourceId": 7}}', pa.ArrowKeyError, "diaSourceId 7"),
    # INVALID_ARGUMENT (ArrowInvalid), saying what is accepted.
    (b'{"cutout": ', pa.ArrowInvalid, "not valid JSON"),
    (b'{"cutout": {"dataset": "sdss", "objectId": "x"}}', pa.ArrowInvalid, 'unknown dataset "sdss"'),
    (b'{"cutout": {"dataset": "ztf", "objectId": "x", "kind": "Raw"}}', pa.ArrowInvalid, "Science, Template, Difference, All"),
    (b'{"cutout": {"dataset": "ztf", "objectId": "x", "format": "jpeg"}}', pa.ArrowInvalid, "fits, gzip, array"),
    (b'{"cutout": {"dataset": "lsst", "objectId": "x"}}', pa.ArrowInvalid, "holds Rubin alerts"),
    (b'{"cutout": {"dataset": "ztf", "objectid": "x"}}', pa.ArrowInvalid, "unknown field `objectid`"),
    (b'{"cutout": {"dataset": "ztf", "candid": 1, "diaSourceId": 2}}', pa.ArrowInvalid, "cannot be mixed"),
    (b'\x08\x96\x01garbage', pa.ArrowInvalid, "protobuf"),
]


def test_errors_are_clear_statuses(start_server, lakes):
    s = start_server([("ztf", "ztf", lakes / "ztf"), ("lsst", "lsst", lakes / "lsst")])
    c = s.client()
    for ticket, exc, needle in ERRORS:
        with pytest.raises(exc) as e:
            c.do_get(flight.Ticket(ticket)).read_all()
        assert needle in str(e.value), (ticket, str(e.value))
    # The server is still fine afterwards.
    assert get(c, dataset="ztf", candid=parquet_alerts(lakes / "ztf")[0]["candid"]).num_rows == 3


def test_cli_cutout_and_incremental_index(binary, start_server, lakes, tmp_path):
    s = start_server([("ztf", "ztf", lakes / "ztf")])
    out = tmp_path / "stamps"
    a = parquet_alerts(lakes / "ztf")[5]
    r = subprocess.run([binary, "cutout", "--server", s.url, "--dataset", "ztf", "--object", a["objectId"],
                        "--candid", str(a["candid"]), "--kind", "All", "--format", "gzip", "-o", str(out)],
                       check=True, capture_output=True, text=True)
    assert "wrote 3 files" in r.stdout
    for k, stored in a["stamps"].items():
        assert (out / f"{a['objectId']}_{a['candid']}_{k}.fits.gz").read_bytes() == stored
    r = subprocess.run([binary, "cutout", "--server", s.url, "--dataset", "ztf", "--candid", str(a["candid"]),
                        "--kind", "Science", "--format", "array", "-o", str(out)], check=True, capture_output=True, text=True)
    import numpy as np
    from helpers import astropy_pixels
    npy = np.load(out / f"{a['objectId']}_{a['candid']}_Science.npy")
    assert np.array_equal(npy, astropy_pixels(a["stamps"]["Science"]), equal_nan=True)
    r = subprocess.run([binary, "cutout", "--server", s.url, "--dataset", "ztf", "--object", "ZTF99zzzzzzz", "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "ZTF99zzzzzzz" in r.stderr
    s.stop()
    # The index is incremental: a second run reads nothing new.
    r = subprocess.run([binary, "index", "--config", str(s.config)], check=True, capture_output=True, text=True)
    assert "0 indexed, 4 unchanged" in r.stdout, r.stdout


def test_corrupt_and_missing_files_fail_their_requests_only(binary, start_server, tmp_path):
    lake = tmp_path / "ztf"
    gen(binary, lake, "ztf", 40)
    alerts = parquet_alerts(lake)
    files = sorted({a["file"] for a in alerts})
    s = start_server([("ztf", "ztf", lake)])
    c = s.client()
    first = lambda f: next(a for a in alerts if a["file"] == f)
    # Corrupt the data of one file (its footer stays readable), delete another.
    import pathlib
    data = bytearray(pathlib.Path(files[0]).read_bytes())
    data[4:len(data) // 2] = b"\x5a" * (len(data) // 2 - 4)
    pathlib.Path(files[0]).write_bytes(bytes(data))
    pathlib.Path(files[1]).unlink()
    for f, needle in [(files[0], pathlib.Path(files[0]).name), (files[1], "missing")]:
        with pytest.raises(flight.FlightInternalError) as e:  # DATA_LOSS
            get(c, dataset="ztf", candid=first(f)["candid"])
        assert needle in str(e.value) and "data loss" in str(e.value).lower(), str(e.value)
    # Every other file still answers.
    assert get(c, dataset="ztf", candid=first(files[2])["candid"]).num_rows == 3


def test_alert_stamp_headers(binary, start_server, tmp_path):
    """The `headers` ticket on alert datasets: the FITS headers of each stamp, and every HDU of a
    Rubin stamp as a cutout `array`."""
    gen(binary, tmp_path / "ztf", "ztf")
    gen(binary, tmp_path / "lsst", "lsst")
    s = start_server([("ztf", "ztf", tmp_path / "ztf"), ("lsst", "lsst", tmp_path / "lsst")])
    c = s.client()
    alerts = parquet_alerts(tmp_path / "ztf")
    a = next(x for x in alerts if all(x["stamps"].values()))
    t = headers(c, dataset="ztf", candid=a["candid"], keys=["NAXIS1"])
    assert t.num_rows == 3
    assert t.schema.names[15:] == ["objectId", "candid", "kind", "NAXIS1"]
    assert sorted(t["kind"].to_pylist()) == ["Difference", "Science", "Template"]
    for r in t.to_pylist():
        stored = a["stamps"][r["kind"]]
        with fits.open(io.BytesIO(as_fits(stored))) as hl:
            assert [c_["key"] for c_ in r["cards"]] == [x.keyword for x in hl[0].header.cards]
            assert r["NAXIS1"] == hl[0].header["NAXIS1"]
        assert r["candid"] == a["candid"] and r["objectId"] == a["objectId"]
    # Rubin stamps hold three HDUs (image, uncertainty, PSF): the table lists all three, and
    # the cutout ticket's `hdu` decodes any of them as `array`.
    rubin = parquet_alerts(tmp_path / "lsst", ztf=False)
    ids = [rubin[0]["diaSourceId"], rubin[1]["diaSourceId"]]
    t = headers(c, dataset="lsst", diaSourceIds=ids, keys=["EXTNAME"], where="kind = 'Science'")
    assert t.num_rows == 6 and set(t["kind"].to_pylist()) == {"Science"}
    assert sorted(t["hdu"].to_pylist()) == [0, 0, 1, 1, 2, 2]
    assert set(zip(t["hdu"].to_pylist(), t["EXTNAME"].to_pylist())) == {(0, None), (1, "UNCERTAINTY"), (2, "PSF")}
    for hdu in (0, 1, 2):
        arr = c.do_get(flight.Ticket(json.dumps({"cutout": {"dataset": "lsst", "diaSourceId": ids[0],
                                                            "kind": "Science", "format": "array", "hdu": hdu}}))).read_all()
        r = arr.to_pylist()[0]
        with fits.open(io.BytesIO(rubin[0]["stamps"]["Science"])) as hl:
            expect = np.asarray(hl[hdu].data, dtype=np.float32)
        assert (r["height"], r["width"]) == expect.shape
        assert np.array_equal(np.asarray(r["pixels"], dtype=np.float32).reshape(expect.shape), expect)
    with pytest.raises(pa.ArrowInvalid, match="has 3 HDUs, not an HDU 3"):
        c.do_get(flight.Ticket(json.dumps({"cutout": {"dataset": "lsst", "diaSourceId": ids[0], "format": "array",
                                                      "hdu": 3}}))).read_all()
    with pytest.raises(pa.ArrowInvalid, match="`hdu` chooses the image"):
        c.do_get(flight.Ticket(json.dumps({"cutout": {"dataset": "lsst", "diaSourceId": ids[0], "hdu": 1}}))).read_all()
    with pytest.raises(pa.ArrowKeyError, match="ZTF99zzzzzzz"):
        headers(c, dataset="ztf", objectId="ZTF99zzzzzzz")
