"""`astroflight transfer`: a batch query pulled into a folder of parquet files, partitioned by
night or class, resumable, from a saved plan; read back with pandas and checked against DuckDB."""
import datetime
import fcntl
import json
import pathlib
import shutil
import subprocess

import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from helpers import gen
from helpers import duck

NIGHTS = "2020-01-01..2020-01-03"  # the generator's first three nights


@pytest.fixture(scope="module")
def lake(binary, tmp_path_factory):
    d = tmp_path_factory.mktemp("transfer-lake") / "ztf"
    gen(binary, d, "ztf", 3, 2, 120)
    return d


def transfer(binary, *args, check=True):
    p = subprocess.run([binary, "transfer", "--quiet", *map(str, args)], capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"transfer failed ({p.returncode}):\n{p.stderr}")
    summary = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else None
    return p, summary


def parts(out):
    return sorted(str(p.relative_to(out)) for p in pathlib.Path(out).rglob("*.parquet"))


def hive_night(d):
    """The folder of a night, as Fink's transfer client (pyarrow's write_to_dataset) names it."""
    return f"year={d.year:04d}/month={d.month:02d}/day={d.day:02d}"


def test_time_partitions_read_back_with_exact_types(binary, spark, start_server, lake, tmp_path):
    s = start_server([("ztf", "ztf", lake)], top={"endpoint_bytes": 30_000})
    out = tmp_path / "out"
    where = "candidate.magpsf > 18; candidate.fid = 1"
    p, summary = transfer(binary, "--server", s.url, "--dataset", "ztf", "--nights", NIGHTS, "--where", where,
                          "--content", "lightcurve", "--out", out, "--partition-by", "time", "--parallel", 3)
    assert "plan: at most" in p.stderr and "endpoints" in p.stderr, p.stderr  # the size before the pull
    expect = duck(lake, "candidate.magpsf > 18 AND candidate.fid = 1")
    assert summary["endpoints"] > 3 and summary["pulled"] == summary["endpoints"] and summary["failed"] == 0
    assert summary["rows"] == len(expect) and summary["bytes"] > 0
    files = parts(out)
    assert {f.rsplit("/", 1)[0] for f in files} == {f"year=2020/month=01/day=0{d}" for d in (1, 2, 3)}, files
    assert not list(out.rglob("*.tmp"))
    df = pd.read_parquet(out)
    assert sorted(df["candid"].tolist()) == sorted(expect)
    assert str(df["candid"].dtype) == "int64" and str(df["objectId"].dtype) == "object"
    # pandas, pyarrow's Hive partitioning and Spark give back year, month and day, which agree with
    # each row's night.
    assert {(int(y), int(m), int(d)) for y, m, d in zip(df["year"], df["month"], df["day"])} == {(2020, 1, d) for d in (1, 2, 3)}
    t = pads.dataset(out, format="parquet", partitioning="hive").to_table(columns=["candid", "night", "year", "month", "day"])
    assert sorted(t.column("candid").to_pylist()) == sorted(expect)
    for r in t.to_pylist():
        assert (r["year"], r["month"], r["day"]) == (r["night"].year, r["night"].month, r["night"].day), r
    rows = spark.read.parquet(str(out)).select("candid", "night", "year", "month", "day").collect()
    assert sorted(r["candid"] for r in rows) == sorted(expect)
    assert all((r["year"], r["month"], r["day"]) == (r["night"].year, r["night"].month, r["night"].day) for r in rows)
    first = df["candidate"].iloc[0]
    assert isinstance(first, dict) and isinstance(first["magpsf"], float) and isinstance(first["jd"], float)
    assert df["prv_candidates"].map(lambda v: v is None or len(v) >= 0).all()
    # Each file holds the alerts of its folder's night, and the night is a column too.
    for f in files:
        t = pq.read_table(out / f, columns=["night", "candidate"])
        nights = {hive_night(d) for d in t.column("night").to_pylist()}
        assert nights == {f.rsplit("/", 1)[0]}, f
        jd = t.column("candidate").combine_chunks().field("jd").to_pylist()
        for j, n in zip(jd, t.column("night").to_pylist()):
            assert datetime.date(1970, 1, 1) + datetime.timedelta(days=int((j - 2440587.5) // 1)) == n


def test_class_partitions(binary, spark, start_server, lake, tmp_path):
    s = start_server([("ztf", "ztf", lake)], top={"endpoint_bytes": 30_000})
    out = tmp_path / "by-class"
    _, summary = transfer(binary, "--server", s.url, "--dataset", "ztf", "--class", "RRLyr", "--class", "EB*",
                          "--content", "cutouts", "--out", out, "--partition-by", "class")
    expect = duck(lake, "cdsxmatch IN ('RRLyr', 'EB*')")
    assert summary["rows"] == len(expect) > 0
    # Folder names as pyarrow's write_to_dataset spells them; the class is in the folder only.
    folders = {"RRLyr": "class=RRLyr", "EB*": "class=EB%2A"}
    assert {f.split("/")[0] for f in parts(out)} == set(folders.values())
    df = pd.read_parquet(out)
    assert sorted(df["candid"].tolist()) == sorted(expect)
    hive = pads.dataset(out, format="parquet", partitioning="hive").to_table(columns=["candid", "class"]).to_pylist()
    by_spark = spark.read.parquet(str(out)).select("candid", "class").collect()
    for cls, folder in folders.items():
        want = sorted(duck(lake, f"cdsxmatch = '{cls}'"))
        t = pd.read_parquet(out / folder)
        assert "class" not in t.columns
        assert sorted(t["candid"]) == want
        assert sorted(df[df["class"] == cls]["candid"]) == want
        assert sorted(r["candid"] for r in hive if r["class"] == cls) == want
        assert sorted(r["candid"] for r in by_spark if r["class"] == cls) == want
    assert isinstance(df["cutoutScience"].iloc[0]["stampData"], bytes)


def test_resume_skips_finished_endpoints_and_never_keeps_half_files(binary, start_server, lake, tmp_path):
    s = start_server([("ztf", "ztf", lake)], top={"endpoint_bytes": 30_000})
    out = tmp_path / "resume"
    args = ["--server", s.url, "--dataset", "ztf", "--where", "candidate.magpsf > 17", "--out", out]
    _, first = transfer(binary, *args)
    n = first["endpoints"]
    assert n >= 4
    done = sorted((out / ".astroflight" / "done").glob("*.json"))
    assert len(done) == n
    # Endpoint 1: stopped mid-write (no commit record, a half-written temporary file).
    rec1 = json.loads(done[1].read_text())
    for f in rec1["files"]:
        final = out / f
        final.with_name(f".{final.name}.tmp").write_bytes(final.read_bytes()[:100])
        final.unlink()
    done[1].unlink()
    # Endpoint 2: committed, then stopped before its renames.
    rec2 = json.loads(done[2].read_text())
    for f in rec2["files"]:
        final = out / f
        final.rename(final.with_name(f".{final.name}.tmp"))
    # A half file under a temporary name is invisible to readers meanwhile.
    assert len(pd.read_parquet(out)) == first["rows"] - rec1["rows"] - rec2["rows"]
    _, second = transfer(binary, *args)
    assert second["pulled"] == 1 and second["skipped"] == n - 1, second
    assert second["rows"] == rec1["rows"] and second["total_rows"] == first["rows"]
    assert not list(out.rglob("*.tmp"))
    df = pd.read_parquet(out)
    assert sorted(df["candid"]) == sorted(duck(lake, "candidate.magpsf > 17"))
    # A third run has nothing left to do.
    _, third = transfer(binary, *args)
    assert third["pulled"] == 0 and third["skipped"] == n
    # A second transfer into a folder being written is refused (it would take the first one's
    # temporary files for leftovers).
    with open(out / ".astroflight" / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        p, _ = transfer(binary, *args, check=False)
        assert p.returncode != 0 and "another transfer" in p.stderr, p.stderr
    # Another query into the same folder is refused, not mixed in.
    p, _ = transfer(binary, "--server", s.url, "--dataset", "ztf", "--out", out, check=False)
    assert p.returncode != 0 and "another query" in p.stderr


def test_saved_plan_pulled_later_and_a_changed_file(binary, start_server, tmp_path):
    lake = tmp_path / "ztf"
    gen(binary, lake, "ztf", 2, 2, 40)
    s = start_server([("ztf", "ztf", lake)], top={"endpoint_bytes": 1})
    plan = tmp_path / "plan.json"
    p, _ = transfer(binary, "--server", s.url, "--dataset", "ztf", "--content", "full", "--exact",
                    "--plan-out", plan)
    assert "plan: 160 alerts" in p.stderr, p.stderr
    saved = json.loads(plan.read_text())
    assert saved["total_records"] == 160 and saved["exact"] and len(saved["endpoints"]) == 4
    assert not (tmp_path / "pulled").exists()  # planning pulls nothing
    _, summary = transfer(binary, "--plan", plan, "--out", tmp_path / "pulled", "--partition-by", "time")
    assert summary["rows"] == 160
    assert sorted(pd.read_parquet(tmp_path / "pulled")["candid"]) == sorted(duck(lake, "true"))
    # Someone pulls the same plan after one file of the lake was rewritten: that endpoint is
    # DATA_LOSS (the plan names file versions), the others land, and the run says so.
    files = sorted(lake.rglob("*.parquet"))
    other = tmp_path / "other"
    gen(binary, other, "ztf", 1, 1, 41)
    files[1].write_bytes(next(other.rglob("*.parquet")).read_bytes())
    p, summary = transfer(binary, "--plan", plan, "--out", tmp_path / "later", check=False)
    assert p.returncode == 1 and summary["failed"] == 1 and summary["pulled"] == 3, p.stderr
    assert "plan again" in p.stderr
    assert not list((tmp_path / "later").rglob("*.tmp"))  # the failed endpoint left nothing behind
    assert len(pd.read_parquet(tmp_path / "later")) == 120


def test_empty_result_and_bad_queries(binary, start_server, lake, tmp_path):
    s = start_server([("ztf", "ztf", lake)])
    out = tmp_path / "empty"
    _, summary = transfer(binary, "--server", s.url, "--dataset", "ztf", "--where", "candidate.magpsf > 100",
                          "--out", out)
    assert summary["rows"] == 0 and parts(out) == ["empty.parquet"]
    df = pd.read_parquet(out)
    assert len(df) == 0 and list(df.columns) == ["objectId", "candid", "candidate", "prv_candidates", "night"]
    p, _ = transfer(binary, "--server", s.url, "--dataset", "ztf", "--where", "candidate.nosuch > 1",
                    "--out", tmp_path / "bad", check=False)
    assert p.returncode != 0 and "nosuch" in p.stderr
    p, _ = transfer(binary, "--server", s.url, "--dataset", "ztf", "--nights", "2020-01-05..2020-01-01",
                    "--out", tmp_path / "bad2", check=False)
    assert p.returncode != 0 and "ends before" in p.stderr
    shutil.rmtree(tmp_path / "bad", ignore_errors=True)
