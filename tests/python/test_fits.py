"""FITS: header tables and image sections against astropy, every card, every offset and size, on
every backend.

The files: the FITS files that ship with astropy (`astropy/io/fits/tests/data`), files astropy
writes here (long strings, HIERARCH, a tile-compressed image, a table with a heap, gzip), the
project's own generator (`astroflight gen-fits`), and invalid files (non-ASCII bytes, a header
cut short, not FITS at all, empty), which must give a clear per-file error while the others are
read.
"""
import io
import json
import pathlib
import shutil
import subprocess
import time
import warnings

import numpy as np
import pyarrow as pa
import pytest
from pyarrow import flight

from helpers import headers
from storage_servers import RangeHttp

astropy = pytest.importorskip("astropy")
from astropy.io import fits  # noqa: E402

ASTROPY_DATA = pathlib.Path(astropy.__file__).parent / "io" / "fits" / "tests" / "data"
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fits.gz", ".fit.gz", ".fts.gz")
INVALID = {
    "bad/nonascii.fits": "not printable ASCII",
    "bad/truncated.fits": "ends inside the header",
    "bad/notfits.fits": "not a FITS file",
    "bad/empty.fits": "empty",
}


def is_fits(p):
    return p.name.lower().endswith(FITS_SUFFIXES)


def build_lake(binary, root):
    """The test lake in `root`; returns the relative paths of the valid files."""
    root = pathlib.Path(root)
    (root / "astropy").mkdir(parents=True)
    for f in sorted(ASTROPY_DATA.iterdir()):
        if f.is_file() and is_fits(f):
            shutil.copy(f, root / "astropy" / f.name)
    w = root / "written"
    w.mkdir()
    rng = np.random.default_rng(5)
    # A primary image with a long header: CONTINUE, HIERARCH, COMMENT/HISTORY, blank cards.
    h = fits.Header()
    h["OBSERVER"] = ("Edwin Hubble", "who")
    h["LONGSTR"] = ("a string value long enough to be written on CONTINUE cards by astropy, " * 3).strip()
    h["HIERARCH ESO DET CHIP NAME"] = "CCD-44"
    h["EXPTIME"] = 1200.5
    h["NCOMB"] = 3
    h["FLAG"] = False
    h["FILTER"] = "F606W"
    h["EMPTY"] = None
    for k in range(150):
        h[f"KEY{k:05d}"] = (k * 0.5, f"card {k}")
    h.add_comment("a comment")
    h.add_history("step one")
    h.add_blank("a blank card")
    fits.PrimaryHDU(rng.normal(size=(300, 200)).astype(">f4"), header=h).writeto(w / "long_header.fits")
    # Multi-extension: image + binary table with variable-length arrays (a heap) + ASCII table.
    vla = fits.Column(name="SPEC", format="PE()", array=np.array(
        [rng.normal(size=n).astype("f4") for n in (3, 0, 7, 2)], dtype=object))
    flux = fits.Column(name="FLUX", format="E", array=rng.normal(size=4).astype("f4"))
    ascii_t = fits.TableHDU.from_columns([fits.Column(name="ID", format="I6", array=np.arange(4)),
                                          fits.Column(name="MAG", format="F8.3", array=rng.normal(size=4) + 20)])
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.arange(100, dtype=">i2").reshape(10, 10), name="SCI"),
                  fits.BinTableHDU.from_columns([flux, vla], name="SPECTRA"), ascii_t]).writeto(w / "mef.fits")
    # A tile-compressed image (fpack style) and a gzipped file.
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(rng.normal(size=(128, 96)).astype("f4"), name="COMP")]) \
        .writeto(w / "compressed.fits.fz")
    fits.PrimaryHDU(np.ones((20, 30), dtype=">f8")).writeto(w / "gzipped.fits.gz")
    # The project's own generator.
    subprocess.run([binary, "gen-fits", "--out", str(root / "gen"), "--files", "12", "--side", "64"],
                   check=True, capture_output=True)
    valid = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and is_fits(p)
                   and p.name != "lzw.fits.Z")
    # Invalid files.
    bad = root / "bad"
    bad.mkdir()
    nonascii = bytearray((w / "long_header.fits").read_bytes())
    nonascii[80 * 6 + 20] = 0xE9
    (bad / "nonascii.fits").write_bytes(bytes(nonascii))
    (bad / "truncated.fits").write_bytes((w / "long_header.fits").read_bytes()[:2880 * 2])
    (bad / "notfits.fits").write_bytes(b"this is not a FITS file at all\n" * 200)
    (bad / "empty.fits").write_bytes(b"")
    return valid


def typed(value, astropy_value):
    """Our value (as written) read as astropy reads it."""
    if isinstance(astropy_value, bool):
        return {"T": True, "F": False}.get(value, value)
    if isinstance(astropy_value, int):
        return int(value)
    if isinstance(astropy_value, float):
        return float(value.replace("D", "E").replace("d", "e"))
    if isinstance(astropy_value, complex):
        re_, im = value.strip("()").split(",")
        return complex(float(re_.replace("D", "E")), float(im.replace("D", "E")))
    return value


def hdu_type(hdu):
    if isinstance(hdu, fits.GroupsHDU):
        return "GROUPS"
    if isinstance(hdu, fits.PrimaryHDU):
        return "PRIMARY"
    if isinstance(hdu, fits.ImageHDU):
        return "IMAGE"
    if isinstance(hdu, fits.TableHDU):
        return "TABLE"
    if isinstance(hdu, fits.BinTableHDU):
        return "COMPRESSED_IMAGE" if hdu.header.get("ZIMAGE") is True else "BINTABLE"
    return type(hdu).__name__


def padded(n):
    return -(-n // 2880) * 2880


def check_against_astropy(root, rel, rows):
    """Every row of one file equals astropy's reading of it."""
    rows = sorted(rows, key=lambda r: r["hdu"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Compressed HDUs as the binary tables they are on disk (their raw cards and sizes).
        with fits.open(root / rel, disable_image_compression=True) as hl:
            assert len(rows) == len(hl), f"{rel}: {len(rows)} HDUs, astropy {len(hl)}"
            for r, hdu in zip(rows, hl):
                i = r["hdu"]
                where = f"{rel} HDU {i}"
                assert r["error"] is None, f"{where}: {r['error']}"
                info = hl.fileinfo(i)
                assert r["header_offset"] == info["hdrLoc"], where
                assert r["data_offset"] == info["datLoc"], where
                assert padded(r["data_size"]) == info["datSpan"], where
                if not (hdu.header.get("ZIMAGE") is True):
                    assert r["data_size"] == hdu.size, where
                assert r["type"] == hdu_type(hdu), where
                assert r["bitpix"] == hdu.header["BITPIX"], where
                assert r["naxis"] == hdu.header["NAXIS"], where
                assert r["naxes"] == [hdu.header[f"NAXIS{k}"] for k in range(1, hdu.header["NAXIS"] + 1)], where
                assert r["extname"] == hdu.header.get("EXTNAME"), where
                if r["type"] == "COMPRESSED_IMAGE":
                    assert r["zbitpix"] == hdu.header["ZBITPIX"], where
                    assert r["znaxes"] == [hdu.header[f"ZNAXIS{k}"] for k in range(1, hdu.header["ZNAXIS"] + 1)]
                cards = list(hdu.header.cards)
                assert len(r["cards"]) == len(cards), f"{where}: {len(r['cards'])} cards, astropy {len(cards)}"
                for ours, theirs in zip(r["cards"], cards):
                    assert ours["key"] == theirs.keyword, where
                    try:
                        value = theirs.value
                    except Exception:  # noqa: BLE001 (an unparsable card: astropy cannot read it either)
                        continue
                    if isinstance(value, fits.card.Undefined):
                        assert ours["value"] is None, f"{where} {theirs.keyword}"
                    else:
                        assert typed(ours["value"], value) == value, f"{where} {theirs.keyword}: {ours['value']!r}"
                    assert (ours["comment"] or "") == theirs.comment, f"{where} {theirs.keyword}"


@pytest.fixture(scope="module")
def lake(binary, tmp_path_factory):
    root = tmp_path_factory.mktemp("fitslake")
    return root, build_lake(binary, root)


def by_path(table):
    out = {}
    for r in table.to_pylist():
        out.setdefault(r["path"], []).append(r)
    return out


def check_lake(client, root, valid):
    t = headers(client, dataset="fits")
    files = by_path(t)
    for rel in valid:
        assert rel in files, f"{rel} is missing from the header table"
        check_against_astropy(root, rel, files[rel])
    for rel, message in INVALID.items():
        errors = [r["error"] for r in files[rel] if r["error"]]
        assert len(errors) == 1 and message in errors[0], f"{rel}: {errors}"
    gz = [r for r in files["written/gzipped.fits.gz"]]
    assert all(r["gzip"] for r in gz)
    assert not any(r["gzip"] for r in files["written/mef.fits"])
    return t


def section(client, **ticket):
    return client.do_get(flight.Ticket(json.dumps({"section": ticket}))).read_all()


def same(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


def check_section_row(t, expect, wcs_expect=None):
    """One section row against astropy: pixels, the FITS bytes (data and WCS)."""
    assert t.num_rows == 1
    r = t.to_pylist()[0]
    px = np.asarray(r["pixels"], dtype=np.float64).reshape(r["height"], r["width"])
    assert same(px, expect), (px[:2, :4], np.asarray(expect)[:2, :4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(io.BytesIO(r["fits"])) as hl:
            assert len(hl) == 1 and same(hl[0].data, expect)
            if wcs_expect is not None:
                from astropy.wcs import WCS  # noqa: PLC0415
                ours = WCS(hl[0].header)
                assert np.array_equal(ours.wcs.crpix, wcs_expect.wcs.crpix)
                assert np.array_equal(ours.wcs.crval, wcs_expect.wcs.crval)
                assert np.array_equal(ours.pixel_scale_matrix, wcs_expect.pixel_scale_matrix)
    return r


def check_sections(c, root):
    """Sections by pixel box and by sky position equal astropy's `.section` and `Cutout2D`."""
    from astropy import units as u  # noqa: PLC0415
    from astropy.coordinates import SkyCoord  # noqa: PLC0415
    from astropy.nddata import Cutout2D  # noqa: PLC0415
    from astropy.wcs import WCS  # noqa: PLC0415
    from astropy.wcs.utils import wcs_to_celestial_frame  # noqa: PLC0415

    cases = [("gen/img/img_0000.fits", 0), ("gen/mef/mef_0001.fits", 1), ("gen/mef/mef_0001.fits", 3),
             ("gen/img/int_0005.fts", 0), ("written/long_header.fits", 0), ("written/mef.fits", 1),
             # uint16 (BZERO 32768), int16, BLANK as NaN (BITPIX 64), float32, int32.
             ("astropy/fixed-1890.fits", 0), ("astropy/o4sp040b0_raw.fits", 1), ("astropy/test0.fits", 2),
             ("astropy/blank.fits", 0), ("astropy/scale.fits", 0)]
    for rel, h in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(root / rel) as hl:
                hdu = hl[h]
                ny, nx = hdu.header["NAXIS2"], hdu.header["NAXIS1"]
                boxes = [[0, 0, nx, ny]]
                if nx > 8 and ny > 8:
                    boxes += [[1, 2, nx // 2, ny // 3], [nx - 5, ny - 4, nx + 10, ny + 10]]
                for box in boxes:
                    x0, y0, x1, y1 = box
                    t = section(c, dataset="fits", path=rel, hdu=h, box=box)
                    r = check_section_row(t, hdu.section[y0:y1, x0:x1])
                    assert r["box"] == [x0, y0, min(x1, nx), min(y1, ny)]
                if "CTYPE1" not in hdu.header:
                    continue
                if hdu.header["CTYPE1"] != "RA---TAN":
                    with pytest.raises(pa.ArrowInvalid, match="TAN"):
                        section(c, dataset="fits", path=rel, hdu=h, ra=1.0, dec=1.0, size_arcsec=1.0)
                    continue
                wcs = WCS(hdu.header)
                frame = wcs_to_celestial_frame(wcs)
                # Positions off the knife-edges where a box edge is an exact integer: there, the
                # last bit of the projection (ours, or wcslib's) decides the rounding.
                from astropy.wcs.utils import proj_plane_pixel_scales  # noqa: PLC0415
                arcsec = float(proj_plane_pixel_scales(wcs)[0]) * 3600  # one pixel
                for (px, py), size in (((nx * 0.4 + 0.23, ny * 0.55 + 0.31), 30.3 * arcsec), ((2.1, ny - 3.3), 5.6 * arcsec),
                                       ((nx / 2 + 0.137, ny / 2 - 0.21), 10.2 * arcsec)):
                    sky = wcs.pixel_to_world(px, py)
                    pos = SkyCoord(sky.ra, sky.dec, frame=frame)
                    cut = Cutout2D(hdu.data, pos, size * u.arcsec, wcs=wcs)
                    t = section(c, dataset="fits", path=rel, hdu=h, ra=float(sky.ra.deg), dec=float(sky.dec.deg),
                                size_arcsec=size)
                    check_section_row(t, cut.data, cut.wcs)


@pytest.mark.parametrize("backend", ["file", "s3", "hdfs", "http"])
def test_header_tables_equal_astropy_on_every_backend(backend, lake, start_server, place):
    root, valid = lake
    # Over HTTP the FITS files are named in the root's `_manifest` (not a FITS name, so the
    # other backends ignore it).
    where, opts = place(backend, root, f"fits-{backend}", is_data=is_fits)
    s = start_server([("fits", "fits", where, opts)])
    c = s.client()
    check_lake(c, root, valid)
    check_sections(c, root)
    stats = s.action("stats")
    ds = next(d for d in stats["datasets"] if d["name"] == "fits")
    assert ds["files"] == len(valid) + len(INVALID) and ds["files_with_errors"] == len(INVALID)


def test_prefix_keys_where_and_endpoints(lake, start_server):
    root, valid = lake
    s = start_server([("fits", "fits", str(root))], top={"fits": {"endpoint_hdus": 7}})
    c = s.client()
    everything = headers(c, dataset="fits")
    # prefix
    gen = headers(c, dataset="fits", prefix="gen/img/")
    assert gen.num_rows > 0 and all(p.startswith("gen/img/") for p in gen["path"].to_pylist())
    # typed key columns, named as asked; a key only `where` names is not in the output
    t = headers(c, dataset="fits", prefix="gen/", keys=["EXPTIME", "NCOMBINE", "FILTER", "ESO DET CHIP NAME", "EXTEND"],
                where="EXPTIME > 100 AND FILTER = 'F606W' AND \"MJD-OBS\" > 0")
    assert t.schema.field("EXPTIME").type == pa.float64()
    assert t.schema.field("NCOMBINE").type == pa.int64()
    assert t.schema.field("FILTER").type == pa.string()
    assert t.schema.field("EXTEND").type == pa.bool_()
    assert "MJD-OBS" not in t.schema.names
    rows = t.to_pylist()
    assert rows and all(r["EXPTIME"] > 100 and r["FILTER"] == "F606W" for r in rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expect = set()
        for rel in valid:
            if not rel.startswith("gen/"):
                continue
            with fits.open(root / rel) as hl:
                for i, hdu in enumerate(hl):
                    hd = hdu.header
                    if hd.get("EXPTIME", 0) > 100 and hd.get("FILTER") == "F606W" and hd.get("MJD-OBS", 0) > 0:
                        expect.add((rel, i))
    assert {(r["path"], r["hdu"]) for r in rows} == expect
    # A HIERARCH key, by its astropy name.
    mef = headers(c, dataset="fits", prefix="gen/mef/", keys=["ESO DET CHIP NAME"], where="hdu = 0").to_pylist()
    assert len(mef) == 2
    for r in mef:
        assert r["ESO DET CHIP NAME"] == fits.getheader(root / r["path"])["ESO DET CHIP NAME"]
    # Endpoints: a plan of many endpoints, each a range of files, whose union is the whole.
    info = c.get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"headers": {"dataset": "fits"}})))
    assert info.total_records == everything.num_rows
    assert len(info.endpoints) >= everything.num_rows // 7 - 1
    parts = [c.do_get(e.ticket).read_all() for e in info.endpoints]
    assert all(p.schema == everything.schema for p in parts)
    got = sorted((r["path"], r["hdu"]) for p in parts for r in p.to_pylist())
    assert got == sorted((r["path"], r["hdu"]) for r in everything.to_pylist())
    meta = json.loads(info.app_metadata)
    assert meta["files"] == len(valid) + len(INVALID)
    # GetSchema and ListFlights
    schema = c.get_schema(flight.FlightDescriptor.for_command(json.dumps({"headers": {"dataset": "fits", "keys": ["EXPTIME"]}}))).schema
    assert schema.names[:11] == ["path", "hdu", "type", "extname", "bitpix", "naxis", "naxes", "header_offset",
                                 "data_offset", "data_size", "cards"]
    assert schema.names[-1] == "EXPTIME"
    listed = {i.descriptor.path[0].decode(): i for i in c.list_flights()}
    assert json.loads(listed["fits"].app_metadata)["kind"] == "fits"


BAD_SECTIONS = [
    ({"dataset": "fits", "path": "gen/tables/bin_0002.fits", "hdu": 1, "box": [0, 0, 2, 2]}, pa.ArrowInvalid, "BINTABLE HDU, not an image"),
    ({"dataset": "fits", "path": "written/compressed.fits.fz", "hdu": 1, "box": [0, 0, 2, 2]}, pa.ArrowInvalid, "tile-compressed"),
    ({"dataset": "fits", "path": "written/gzipped.fits.gz", "box": [0, 0, 2, 2]}, pa.ArrowInvalid, "gzipped"),
    ({"dataset": "fits", "path": "gen/img/img_0000.fits", "hdu": 4, "box": [0, 0, 2, 2]}, pa.ArrowKeyError, "has 1 HDUs"),
    ({"dataset": "fits", "path": "nope.fits", "box": [0, 0, 2, 2]}, pa.ArrowKeyError, "no file"),
    ({"dataset": "fits", "path": "gen/img/img_0000.fits", "box": [5000, 0, 5002, 2]}, pa.ArrowInvalid, "outside the image"),
    ({"dataset": "fits", "path": "gen/img/img_0000.fits", "ra": 0.0, "dec": -89.0, "size_arcsec": 2}, pa.ArrowInvalid, "does not overlap"),
    ({"dataset": "fits", "path": "gen/mef/mef_0001.fits", "hdu": 0, "box": [0, 0, 2, 2]}, pa.ArrowInvalid, "sections are of 2-D images"),
    ({"dataset": "fits", "path": "written/mef.fits", "hdu": 1, "ra": 1, "dec": 1, "size_arcsec": 2}, pa.ArrowInvalid, "no WCS"),
    ({"dataset": "fits", "path": "astropy/arange.fits", "box": [0, 0, 2, 2]}, pa.ArrowInvalid, "sections are of 2-D images"),
    ({"dataset": "fits", "path": "astropy/scale.fits", "ra": 266.4, "dec": -28.93, "size_arcsec": 1}, pa.ArrowInvalid, "less than one pixel"),
    ({"dataset": "fits", "path": "gen/img/img_0000.fits", "box": [0, 0, 2]}, pa.ArrowInvalid, "x0, y0, x1, y1"),
]


@pytest.mark.parametrize("ticket,error,message", BAD_SECTIONS)
def test_bad_sections_say_what_is_wrong(ticket, error, message, lake, start_server):
    root, _ = lake
    s = start_server([("fits", "fits", str(root))])
    with pytest.raises(error, match=message):
        section(s.client(), **ticket)


def test_sections_read_only_their_rows(binary, start_server, tmp_path):
    root = tmp_path / "big"
    subprocess.run([binary, "gen-fits", "--out", str(root), "--files", "1", "--side", "2048"], check=True)
    s = start_server([("fits", "fits", str(root))])
    c = s.client()
    opts = flight.FlightCallOptions(headers=[(b"x-request-id", b"sec-1")])
    t = c.do_get(flight.Ticket(json.dumps({"section": {"dataset": "fits", "path": "img/img_0000.fits",
                                                        "box": [100, 200, 164, 264]}})), opts).read_all()
    assert t["width"][0].as_py() == 64 and t["height"][0].as_py() == 64
    rec = s.request_record("sec-1")
    rows_bytes = 64 * 2048 * 4
    assert rec["requests"] == 2, rec
    assert rows_bytes <= rec["bytes"] <= rows_bytes + 64 * 1024, rec


BAD_QUERIES = [
    ({"headers": {"dataset": "fits", "where": "EXPTIME >"}}, "where"),
    ({"headers": {"dataset": "fits", "where": "nosuchfunc(EXPTIME) > 1"}}, "nosuchfunc"),
    ({"headers": {"dataset": "fits", "keys": [""]}}, "not a FITS keyword"),
    ({"headers": {"dataset": "fits", "prefix": "/abs"}}, "relative"),
    ({"headers": {"dataset": "nope"}}, "unknown dataset"),
    ({"headers": {"dataset": "fits", "objectId": "ZTF1"}}, "not by alert ids"),
    ({"headers": {"dataset": "ztf", "prefix": "a/"}}, "not FITS files"),
    ({"headers": {"dataset": "fits", "kyes": ["A"]}}, "unknown field"),
    ({"cutout": {"dataset": "fits", "objectId": "ZTF1"}}, "holds FITS files"),
]


@pytest.mark.parametrize("query,message", BAD_QUERIES)
def test_bad_queries_say_what_is_wrong(query, message, lake, start_server):
    root, _ = lake
    (root.parent / "no-alerts").mkdir(exist_ok=True)
    s = start_server([("fits", "fits", str(root)), ("ztf", "ztf", str(root.parent / "no-alerts"))])
    with pytest.raises(pa.ArrowInvalid, match=message):
        s.client().do_get(flight.Ticket(json.dumps(query))).read_all()


def test_catalog_refreshes_by_action_and_schedule(binary, start_server, tmp_path):
    root = tmp_path / "live"
    subprocess.run([binary, "gen-fits", "--out", str(root), "--files", "3", "--side", "32"], check=True)
    s = start_server([("fits", "fits", str(root))], top={"reindex_interval_secs": 1})
    c = s.client()
    first = headers(c, dataset="fits")
    assert sorted(set(first["path"].to_pylist())) == ["img/img_0000.fits", "mef/mef_0001.fits", "tables/bin_0002.fits"]
    # A new upload appears by itself (the schedule), a rewritten file is read again, a deleted
    # one disappears.
    fits.PrimaryHDU(np.zeros((4, 4), dtype=">f4"), header=fits.Header([("EXPTIME", 7.0)])).writeto(root / "new.fits")
    (root / "tables" / "bin_0002.fits").unlink()
    deadline = time.time() + 60
    while time.time() < deadline:
        paths = set(headers(c, dataset="fits")["path"].to_pylist())
        if "new.fits" in paths and "tables/bin_0002.fits" not in paths:
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"the catalog did not follow the files: {paths}")
    fits.PrimaryHDU(np.zeros((4, 4), dtype=">f4"), header=fits.Header([("EXPTIME", 9.5)])).writeto(
        root / "new.fits", overwrite=True)
    body = json.loads(next(iter(c.do_action(flight.Action("reindex", b"")))).body.to_pybytes())
    fits_stats = next(d for d in body["datasets"] if d["dataset"] == "fits")
    assert fits_stats["indexed"] == 1 and fits_stats["unchanged"] == 2
    t = headers(c, dataset="fits", prefix="new", keys=["EXPTIME"])
    assert t["EXPTIME"].to_pylist() == [9.5]


def test_header_reads_are_ranged(binary, start_server, tmp_path):
    """Large files: one request per HDU header, each at most 32 KiB, data never read."""
    root = tmp_path / "big"
    subprocess.run([binary, "gen-fits", "--out", str(root), "--files", "6", "--side", "1024"], check=True)
    srv = RangeHttp(tmp_path, root, name="big-http")
    try:
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.f*") if p.is_file())
        s = start_server([("fits", "fits", f"{srv.url}/", {"files": files})])
        t = headers(s.client(), dataset="fits")
        stats = srv.stats()
        hdus = t.num_rows
        gz = root / "img" / "gz_0004.fits.gz"
        plain_bytes = stats["bytes"] - gz.stat().st_size
        # One request per HDU for the uncompressed files (the last HDU of a file that holds
        # only small ones can share its first read), plus one GET of the gzipped file.
        # (HTTP cannot list: the server asks each listed file's size with a HEAD.)
        assert stats["requests"] - len(files) <= hdus + 1, (stats, hdus)
        assert plain_bytes <= (hdus - 1) * 32 * 1024, stats
        plain_total = sum((root / f).stat().st_size for f in files) - gz.stat().st_size
        assert plain_bytes < plain_total / 10, (stats, plain_total)
    finally:
        srv.stop()
