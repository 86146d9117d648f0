"""Alert batches (`{"alerts": ...}`) through pyarrow.flight and the astroflight Python client,
checked row for row against DuckDB and pyarrow running the same filter on the same files."""
import datetime
import json
import pathlib

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from pyarrow import flight

import astroflight
from helpers import alert_batch, as_fits, astropy_pixels, duck, gen, rows_of, source_rows

JD_EPOCH = 2440587.5


@pytest.fixture(scope="module")
def lakes(binary, tmp_path_factory):
    d = tmp_path_factory.mktemp("alert-lakes")
    gen(binary, d / "ztf", "ztf")
    gen(binary, d / "lsst", "lsst", 2, 2, 40)
    gen(binary, d / "ztf-nopi", "ztf", 2, 1, 50, "--no-page-index")
    return d


def info(client, q):
    return client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"alerts": q}).encode()))


CONDITIONS = [
    "candidate.magpsf > 19.5",
    "(candidate.magnr - candidate.magpsf) < -4 * (LOG10(candidate.distnr) + 0.2)",
    "candidate.magpsf > 18; candidate.distnr < 2\ncandidate.fid = 2",
    "cdsxmatch = 'RRLyr' OR (candidate.fid = 1 AND ABS(candidate.sigmapsf) < 0.08)",
]


def test_conditions_match_duckdb_for_every_preset(start_server, lakes):
    s = start_server([("ztf", "ztf", lakes / "ztf")], top={"endpoint_bytes": 50_000})
    c = s.client()
    src = source_rows(lakes / "ztf")
    for cond in CONDITIONS:
        expect = duck(lakes / "ztf", " AND ".join(f"({x})" for x in cond.replace("\n", ";").split(";")))
        assert expect, f"the condition {cond!r} matches nothing in the generated lake: a useless test"
        for content in ["lightcurve", "cutouts", "full"]:
            t = alert_batch(c, {"dataset": "ztf", "where": cond, "content": content, "stamps": "gzip"})
            assert t.column("candid").to_pylist() == expect, (cond, content)
            for r in rows_of(t):
                full = src[r["candid"]]
                if content == "full":
                    assert r == full
                elif content == "cutouts":
                    assert set(r) == {"objectId", "candid", "cutoutScience", "cutoutTemplate", "cutoutDifference"}
                    assert r["cutoutScience"] == full["cutoutScience"]
                else:
                    assert set(r) == {"objectId", "candid", "candidate", "prv_candidates"}
                    assert r["candidate"] == {k: full["candidate"][k] for k in
                                              ["jd", "fid", "magpsf", "sigmapsf", "diffmaglim"]}
                    assert r["prv_candidates"] == [
                        {k: p[k] for k in ["jd", "fid", "magpsf", "sigmapsf", "diffmaglim"]}
                        for p in full["prv_candidates"]]
        # The parallel pull of every endpoint gives the same rows in the same order.
        i = info(c, {"dataset": "ztf", "where": cond, "content": "lightcurve"})
        assert len(i.endpoints) > 1
        pulled = pa.concat_tables([c.do_get(e.ticket).read_all() for e in i.endpoints])
        assert pulled.column("candid").to_pylist() == expect
        assert i.total_records >= len(expect)  # an upper bound when not exact
        exact = info(c, {"dataset": "ztf", "where": cond, "content": "lightcurve", "exact": True})
        assert exact.total_records == len(expect)
        assert json.loads(exact.app_metadata)["exact"] is True


def test_columns_stamps_and_compression(start_server, lakes):
    s = start_server([("ztf", "ztf", lakes / "ztf")])
    c = s.client()
    src = source_rows(lakes / "ztf")
    cond = "candidate.magpsf > 19.8"
    expect = duck(lakes / "ztf", cond)
    t = alert_batch(c, {"dataset": "ztf", "where": cond, "content": "columns",
                   "columns": ["candid", "candidate.ra", "candidate.dec", "cdsxmatch"]})
    assert t.schema.names == ["candid", "candidate", "cdsxmatch"]
    assert t.schema.field("candid").type == pa.int64()
    for r in rows_of(t):
        assert r["candidate"] == {"ra": src[r["candid"]]["candidate"]["ra"], "dec": src[r["candid"]]["candidate"]["dec"]}
    # FITS (gunzipped, the default) and pixel arrays, equal to astropy's reading.
    t = alert_batch(c, {"dataset": "ztf", "where": cond, "content": "cutouts"})
    for r in rows_of(t)[:5]:
        assert r["cutoutDifference"]["stampData"] == as_fits(src[r["candid"]]["cutoutDifference"]["stampData"])
    t = alert_batch(c, {"dataset": "ztf", "where": cond, "content": "cutouts", "stamps": "array"})
    x = astroflight.stamps_as_numpy(t, "cutoutScience")
    assert x.shape == (len(expect), 63, 63) and x.dtype == np.float32
    for i, candid in enumerate(t.column("candid").to_pylist()[:5]):
        assert np.array_equal(x[i], astropy_pixels(src[candid]["cutoutScience"]["stampData"]), equal_nan=True)
    # Compressed streams carry the same table.
    plain = alert_batch(c, {"dataset": "ztf", "where": cond, "content": "full"})
    for codec in ["lz4", "zstd"]:
        assert alert_batch(c, {"dataset": "ztf", "where": cond, "content": "full", "compression": codec}).equals(plain)


def test_nights_classes_limit_and_annotations(start_server, lakes):
    s = start_server([("ztf", "ztf", lakes / "ztf")], top={"endpoint_bytes": 30_000})
    c = s.client()
    jds = duck(lakes / "ztf", "true", "candidate.jd")
    nights = sorted({datetime.date(1970, 1, 1) + datetime.timedelta(days=int(jd - JD_EPOCH)) for jd in jds})
    assert len(nights) >= 3
    n1 = nights[1]
    lo = JD_EPOCH + (n1 - datetime.date(1970, 1, 1)).days
    expect = duck(lakes / "ztf", f"candidate.jd >= {lo!r} AND candidate.jd < {lo + 1!r}")
    t = alert_batch(c, {"dataset": "ztf", "nights": [n1.isoformat()], "annotate": ["night", "class"]})
    assert t.column("candid").to_pylist() == expect and expect
    assert set(t.column("night").to_pylist()) == {n1}
    # from/to: nights inclusive.
    t = alert_batch(c, {"dataset": "ztf", "from": nights[0].isoformat(), "to": nights[1].isoformat()})
    assert t.num_rows == len(duck(lakes / "ztf", f"candidate.jd < {lo + 1!r}"))
    # Classes (cdsxmatch by default) and the classes action.
    expect = duck(lakes / "ztf", "cdsxmatch IN ('RRLyr', 'QSO')")
    t = alert_batch(c, {"dataset": "ztf", "classes": ["RRLyr", "QSO"], "annotate": ["class"]})
    assert t.column("candid").to_pylist() == expect and expect
    assert set(t.column("class").to_pylist()) == {"RRLyr", "QSO"}
    counts = astroflight.connect(s.url).classes("ztf")
    assert counts["class"] == "cdsxmatch" and counts["files_not_counted"] == 0
    con = duckdb.connect()
    files = sorted(str(p) for p in (lakes / "ztf").rglob("*.parquet"))
    ref = {(str(datetime.date(1970, 1, 1) + datetime.timedelta(days=int(n))), k): v for n, k, v in con.execute(
        f"SELECT floor(candidate.jd - {JD_EPOCH}), cdsxmatch, count(*) FROM read_parquet({files!r}) GROUP BY ALL").fetchall()}
    assert {(r["night"], r["class"]): r["alerts"] for r in counts["counts"]} == ref
    # The estimate of a class query comes from those counts, without reading.
    i = info(c, {"dataset": "ztf", "classes": ["RRLyr", "QSO"]})
    assert i.total_records == len(expect)
    # A limit: exactly the first rows of the unlimited stream, through every endpoint.
    whole = alert_batch(c, {"dataset": "ztf", "where": "candidate.magpsf > 19"}).column("candid").to_pylist()
    for n in [1, 7, len(whole) + 5]:
        assert alert_batch(c, {"dataset": "ztf", "where": "candidate.magpsf > 19", "limit": n}).column("candid").to_pylist() == whole[:n]
        i = info(c, {"dataset": "ztf", "where": "candidate.magpsf > 19", "limit": n})
        assert i.total_records == min(n, len(whole))
        got = [x for e in i.endpoints for x in c.do_get(e.ticket).read_all().column("candid").to_pylist()]
        assert got == whole[:n]


def test_python_client_and_pandas_types(start_server, lakes):
    s = start_server([("ztf", "ztf", lakes / "ztf")], top={"endpoint_bytes": 20_000})
    with astroflight.connect(s.url, parallel=3) as af:
        t = af.alerts("ztf", where=["candidate.magpsf > 19", "candidate.fid = 1"])
        assert t.column("candid").to_pylist() == duck(lakes / "ztf", "candidate.magpsf > 19 AND candidate.fid = 1")
        df = af.alerts("ztf", where="candidate.magpsf > 19", as_pandas=True)
        assert str(df["candid"].dtype) == "int64" and isinstance(df["candidate"].iloc[0], dict)
        batches = list(af.iter_batches("ztf", where="candidate.magpsf > 19", buffer=1))
        assert sum(b.num_rows for b in batches) == len(df)
        # Streamed in plan order: the same rows in the same order as the whole pull.
        assert [c for b in batches for c in b.column("candid").to_pylist()] == df["candid"].tolist()
        # A consumer may stop early: the streams behind it end, nothing hangs.
        it = af.iter_batches("ztf", content="full", buffer=1)
        assert next(it).num_rows > 0
        it.close()
        with pytest.raises(pa.ArrowInvalid, match="nosuch"):
            next(af.iter_batches("ztf", where="candidate.nosuch > 1"))


def test_rubin_lightcurve_and_lake_without_page_index(start_server, lakes):
    s = start_server([("lsst", "lsst", lakes / "lsst"), ("old", "ztf", lakes / "ztf-nopi")])
    c = s.client()
    expect = duck(lakes / "lsst", "diaSource.psfFlux > 20000", "diaSource.diaSourceId")
    assert expect
    t = alert_batch(c, {"dataset": "lsst", "where": "diaSource.psfFlux > 20000"})
    assert t.column("diaSource").combine_chunks().field("diaSourceId").to_pylist() == expect
    assert set(t.schema.names) == {"diaSource", "prvDiaSources"}
    with pytest.raises(pa.ArrowInvalid, match="has no class"):
        alert_batch(c, {"dataset": "lsst", "classes": ["SN"]})
    expect = duck(lakes / "ztf-nopi", "candidate.magpsf < 18.5")
    assert alert_batch(c, {"dataset": "old", "where": "candidate.magpsf < 18.5"}).column("candid").to_pylist() == expect


def test_bad_conditions_and_empty_results(start_server, lakes):
    s = start_server([("ztf", "ztf", lakes / "ztf")])
    c = s.client()
    for where, needle in [
        ("candidate.magpsf >", "where"),
        ("candidate.nosuch > 1", "nosuch"),
        ("objectid = 'x'", "objectid"),
        ("candidate.magpsf > 'abc'", "abc"),
        ("candidate.magpsf + 1", "not a condition"),
    ]:
        for call in [lambda: alert_batch(c, {"dataset": "ztf", "where": where}),
                     lambda: info(c, {"dataset": "ztf", "where": where})]:
            with pytest.raises(pa.ArrowInvalid) as e:
                call()
            assert needle in str(e.value), (where, str(e.value))
    with pytest.raises(pa.ArrowInvalid, match="no column"):
        alert_batch(c, {"dataset": "ztf", "content": "columns", "columns": ["candidate.nope"]})
    # An empty result: the right schema, no rows, an endpoint list that pulls nothing.
    t = alert_batch(c, {"dataset": "ztf", "where": "candidate.magpsf > 100"})
    assert t.num_rows == 0 and t.schema.names == ["objectId", "candid", "candidate", "prv_candidates"]
    t = alert_batch(c, {"dataset": "ztf", "nights": ["1999-01-01"]})
    assert t.num_rows == 0 and t.schema.names == ["objectId", "candid", "candidate", "prv_candidates"]
    i = info(c, {"dataset": "ztf", "where": "candidate.magpsf > 100", "exact": True})
    assert i.total_records == 0 and i.schema.names == t.schema.names


def test_a_file_changed_after_planning_fails_its_endpoint_only(binary, start_server, tmp_path):
    lake = tmp_path / "ztf"
    gen(binary, lake, "ztf", 2, 2, 40)
    s = start_server([("ztf", "ztf", lake)], top={"endpoint_bytes": 1})
    c = s.client()
    i = info(c, {"dataset": "ztf", "content": "full"})
    assert len(i.endpoints) == 4  # one file each
    files = sorted(lake.rglob("*.parquet"))
    # Rewrite one file with other content (same path): its endpoint must not mix versions.
    other = tmp_path / "other"
    gen(binary, other, "ztf", 1, 1, 41)
    files[1].write_bytes(next(other.rglob("*.parquet")).read_bytes())
    results = []
    for e in i.endpoints:
        try:
            results.append(c.do_get(e.ticket).read_all().num_rows)
        except flight.FlightInternalError as err:  # DATA_LOSS
            assert "data loss" in str(err).lower() or "changed" in str(err).lower(), str(err)
            results.append("data loss")
    assert results.count("data loss") == 1 and results.count(40) == 3, results


from conftest import BACKENDS  # noqa: E402


@pytest.mark.parametrize("backend", BACKENDS)
def test_alert_batches_on_every_backend(backend, binary, place, start_server, tmp_path, request):
    """The batch suite on S3, HDFS and HTTP: presets and conditions equal DuckDB on the local
    copy, every endpoint pulled, exact counts, and a file replaced after planning is DATA_LOSS
    for its endpoint only."""
    gen(binary, tmp_path / "ztf", "ztf", 2, 2, 40)
    gen(binary, tmp_path / "lsst", "lsst", 1, 2, 30, "--no-page-index")
    zroot, zopts = place(backend, tmp_path / "ztf", f"batch-ztf-{backend}")
    lroot, lopts = place(backend, tmp_path / "lsst", f"batch-lsst-{backend}")
    s = start_server([("ztf", "ztf", zroot, zopts), ("lsst", "lsst", lroot, lopts)], top={"endpoint_bytes": 1})
    c = s.client()
    src = source_rows(tmp_path / "ztf")
    for cond in CONDITIONS[:2]:
        expect = duck(tmp_path / "ztf", " AND ".join(f"({x})" for x in cond.replace("\n", ";").split(";")))
        for content in ["lightcurve", "full"]:
            t = alert_batch(c, {"dataset": "ztf", "where": cond, "content": content, "stamps": "gzip"})
            assert t.column("candid").to_pylist() == expect, (backend, cond, content)
            if content == "full":
                for r in rows_of(t):
                    assert r == src[r["candid"]]
        i = info(c, {"dataset": "ztf", "where": cond, "exact": True})
        assert i.total_records == len(expect) and len(i.endpoints) == 4
        assert [x for e in i.endpoints for x in c.do_get(e.ticket).read_all().column("candid").to_pylist()] == expect
    expect = duck(tmp_path / "lsst", "diaSource.psfFlux > 20000", "diaSource.diaSourceId")
    t = alert_batch(c, {"dataset": "lsst", "where": "diaSource.psfFlux > 20000", "content": "cutouts", "stamps": "array"})
    assert t.column("diaSource").combine_chunks().field("diaSourceId").to_pylist() == expect
    assert astroflight.stamps_as_numpy(t, "cutoutScience").shape[1:] == (51, 51)

    i = info(c, {"dataset": "ztf", "content": "lightcurve"})
    files = sorted((tmp_path / "ztf").rglob("*.parquet"))
    rel = files[0].relative_to(tmp_path / "ztf").as_posix()
    other = files[1]
    if backend == "s3":
        request.getfixturevalue("s3_server").s3.upload_file(str(other), "lake", f"batch-ztf-{backend}/{rel}")
    elif backend == "hdfs":
        request.getfixturevalue("hdfs_cluster").put(other, f"/lakes/batch-ztf-{backend}/{rel}")
    else:
        files[0].write_bytes(other.read_bytes())
    outcomes = []
    for e in i.endpoints:
        try:
            outcomes.append(c.do_get(e.ticket).read_all().num_rows)
        except flight.FlightInternalError as err:
            assert "data loss" in str(err).lower(), str(err)
            outcomes.append("data loss")
    assert outcomes == ["data loss", 40, 40, 40], (backend, outcomes)


def test_readme_ml_recipe_runs(binary, start_server, tmp_path):
    """The numpy/PyTorch recipe of docs/alerts.md, run as written against a generated lake."""
    readme = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "alerts.md").read_text()
    block = readme.split("<!-- recipe: ml -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    lake = tmp_path / "ztf"
    gen(binary, lake, "ztf", 3, 2, 60)
    s = start_server([("ztf", "ztf", lake)], top={"endpoint_bytes": 200_000})
    scope = {}
    exec(compile(block.replace("grpc://127.0.0.1:8815", s.url), "README recipe", "exec"), scope)
    X, y, labels = scope["X"], scope["y"], scope["labels"]
    nights = "candidate.jd >= 2458849.5 AND candidate.jd < 2458851.5"  # 2020-01-01 and 02
    expect = duck(lake, f"cdsxmatch IN ('RRLyr', 'EB*', 'QSO') AND {nights}", "cdsxmatch")
    assert X.shape == (len(expect), 3, 63, 63) and X.dtype == np.float32 and len(expect) > 0
    assert not np.isnan(X).any() and X.std() > 0
    assert sorted(labels[i] for i in y) == sorted(expect)
