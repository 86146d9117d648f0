"""FITS header benchmark on S3: astroflight's header scan next to astropy over fsspec (s3fs) and
to a whole-file GET, on the same objects, in one run; then an image section next to astropy's
`.section` over fsspec.

The lake: `astroflight gen-fits` files (images with WCS, multi-extension files with a long
primary header, binary tables with a heap, ASCII tables, gzipped images, int16 images), plus the
FITS files that ship with astropy. All of it is uploaded to moto's S3 server on 127.0.0.1, and
every reader goes through the same counting proxy (tests/python/fault_proxy.py, no faults), so
requests and bytes are counted the same way for everyone, per object.

    bash benches/run_fits_e2e.sh [--files 300] [--side 512] [--section-side 4096]

Figures per reader: requests per file, bytes per file, bytes per HDU header, files/s. Targets
(issue 10): one request per HDU header for >= 95% of files, <= 64 KiB read per header, >= 20x
fewer bytes than astropy with fsspec's default block size, and a section reading <= 2x the bytes
of its rows.
"""
import argparse
import gzip
import json
import pathlib
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
import warnings

import astropy
from astropy.io import fits
from pyarrow import flight

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))
sys.path.insert(0, str(REPO / "benches"))
from cutout_e2e import serve  # noqa: E402
from storage_servers import S3_KEY, S3_REGION, S3_SECRET, FaultProxy, S3Server, env_without_aws, toml_value  # noqa: E402

ASTROPY_DATA = pathlib.Path(astropy.__file__).parent / "io" / "fits" / "tests" / "data"
SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fits.gz")


def proxy_paths(proxy):
    return json.loads(urllib.request.urlopen(f"{proxy.endpoint}/__faults__/paths", timeout=10).read())


class Meter:
    """Counts of the proxy between two points, per object key (`bench/<key>`)."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.before = proxy_paths(proxy)
        self.t0 = time.perf_counter()

    def stop(self):
        self.secs = time.perf_counter() - self.t0
        after = proxy_paths(self.proxy)
        self.total = {k: after["counts"][k] - self.before["counts"][k] for k in ("requests", "bytes")}
        self.per = {}
        for path, (n, b) in after["paths"].items():
            n0, b0 = self.before["paths"].get(path, [0, 0])
            if n > n0:
                self.per[path] = (n - n0, b - b0)
        return self


def obj_path(key):
    return f"/bench/{key}"


def build_lake(args, lake):
    if (lake / "done").exists():
        return
    if lake.exists():
        shutil.rmtree(lake)
    subprocess.run([args.bin, "gen-fits", "--out", str(lake / "gen"), "--files", str(args.files),
                    "--side", str(args.side)], check=True)
    (lake / "astropy").mkdir()
    for f in ASTROPY_DATA.iterdir():
        if f.is_file() and f.name.lower().endswith(SUFFIXES):
            shutil.copy(f, lake / "astropy" / f.name)
    (lake / "done").write_text("")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--data", type=pathlib.Path, default=pathlib.Path("bench-data-fits"))
    ap.add_argument("--files", type=int, default=300, help="generated FITS files")
    ap.add_argument("--side", type=int, default=512, help="side of the generated images, pixels")
    ap.add_argument("--section-side", type=int, default=4096, help="side of the large image for sections")
    ap.add_argument("--tuned-block", type=int, default=32 * 1024, help="fsspec block size of the tuned astropy run")
    args = ap.parse_args()
    args.data = args.data.resolve()
    lake = args.data / f"lake-{args.files}-{args.side}"
    build_lake(args, lake)
    big = args.data / f"big-{args.section_side}"
    if not (big / "img" / "img_0000.fits").exists():
        subprocess.run([args.bin, "gen-fits", "--out", str(big), "--files", "1", "--side", str(args.section_side)],
                       check=True)
    files = sorted(p.relative_to(lake).as_posix() for p in lake.rglob("*") if p.is_file()
                   and p.name.lower().endswith(SUFFIXES))
    sizes = {f: (lake / f).stat().st_size for f in files}
    print(f"lake: {len(files)} FITS files, {sum(sizes.values()) / 1e6:.1f} MB", flush=True)

    run = args.data / f"run-{uuid.uuid4().hex[:6]}"
    run.mkdir()
    s3 = proxy = proc = None
    try:
        s3 = S3Server(run)
        s3.upload_dir(lake, "bench", "fits")
        s3.upload_dir(big, "bench", "big")
        proxy = FaultProxy(run, s3.endpoint)
        opts = {"endpoint": proxy.endpoint, "region": S3_REGION, "access_key_id": S3_KEY,
                "secret_access_key": S3_SECRET, "allow_http": True}

        # astroflight: the header catalog built at start (every file's headers read).
        lines = ['listen = "127.0.0.1:0"', f'index_dir = "{run / "index"}"']
        for name, root in (("fits", "s3://bench/fits"), ("big", "s3://bench/big")):
            lines += ["[[dataset]]", f'name = "{name}"', 'kind = "fits"', f'root = "{root}"']
            lines += [f"{k} = {toml_value(v)}" for k, v in opts.items()]
        cfg = run / "astroflight.toml"
        cfg.write_text("\n".join(lines) + "\n")
        m = Meter(proxy)
        proc, url = serve(args.bin, cfg, run / "server.log", {**env_without_aws(), "RUST_LOG": "warn"}, 900)
        ours = m.stop()
        c = flight.connect(url)
        table = c.do_get(flight.Ticket(json.dumps({"headers": {"dataset": "fits"}}))).read_all()
        hdus = {}
        for p in table["path"].to_pylist():
            hdus[p] = hdus.get(p, 0) + 1
        assert sorted(hdus) == files, "the header table holds every file"

        results = [("astroflight (header catalog)", ours)]
        import s3fs  # noqa: PLC0415

        def astropy_run(block_size):
            fs = s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET, client_kwargs={
                "endpoint_url": proxy.endpoint, "region_name": S3_REGION}, skip_instance_cache=True)
            kw = {} if block_size is None else {"block_size": block_size}
            m = Meter(proxy)
            failed = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for f in files:
                    try:
                        with fs.open(f"bench/fits/{f}", "rb", **kw) as fh:
                            # astropy recognises gzip by a file's name, not in a file object.
                            src = gzip.GzipFile(fileobj=fh) if f.lower().endswith(".gz") else fh
                            with fits.open(src) as hl:
                                for h in hl:
                                    _ = h.header
                    except Exception as e:  # noqa: BLE001 (counted and reported)
                        failed.append((f, f"{type(e).__name__}: {e}"[:100]))
            r = m.stop()
            r.failed = failed
            return r

        results.append(("astropy + s3fs, default block (50 MiB)", astropy_run(None)))
        results.append((f"astropy + s3fs, block {args.tuned_block // 1024} KiB", astropy_run(args.tuned_block)))
        import boto3  # noqa: PLC0415
        client = boto3.client("s3", endpoint_url=proxy.endpoint, region_name=S3_REGION,
                              aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET)
        m = Meter(proxy)
        for f in files:
            client.get_object(Bucket="bench", Key=f"fits/{f}")["Body"].read()
        results.append(("whole-file GET (boto3)", m.stop()))

        for name, r in results:
            failed = getattr(r, "failed", [])
            if failed:
                print(f"  {name}: {len(failed)} files not read, e.g. {failed[0][0]}: {failed[0][1]}")
        n_hdus = sum(hdus.values())
        print(f"\nheaders of {len(files)} files ({n_hdus} HDUs) on S3 (moto on 127.0.0.1, counted by a proxy):")
        print(f"{'reader':42} {'requests/file':>13} {'KB/file':>9} {'KB/HDU':>8} {'files/s':>8} {'bytes vs ours':>13}")
        for name, r in results:
            per_file = [r.per.get(obj_path(f"fits/{f}"), (0, 0)) for f in files]
            reqs = sum(n for n, _ in per_file)
            byts = sum(b for _, b in per_file)
            ratio = byts / max(1, sum(b for _, b in (ours.per.get(obj_path(f"fits/{f}"), (0, 0)) for f in files)))
            print(f"{name:42} {reqs / len(files):13.2f} {byts / len(files) / 1024:9.1f} {byts / n_hdus / 1024:8.1f} "
                  f"{len(files) / r.secs:8.1f} {ratio:12.1f}x")

        # Targets, from the per-object counts of astroflight's scan.
        gz = [f for f in files if f.lower().endswith(".gz")]
        plain = [f for f in files if f not in gz]
        one_per_hdu = sum(1 for f in plain if ours.per.get(obj_path(f"fits/{f}"), (0, 0))[0] <= hdus[f])
        worst = max(ours.per.get(obj_path(f"fits/{f}"), (0, 0))[1] / hdus[f] for f in plain)
        default_bytes = sum(results[1][1].per.get(obj_path(f"fits/{f}"), (0, 0))[1] for f in files)
        our_bytes = sum(ours.per.get(obj_path(f"fits/{f}"), (0, 0))[1] for f in files)
        print(f"\nfiles read with at most one request per HDU header: {one_per_hdu}/{len(plain)} "
              f"({100 * one_per_hdu / len(plain):.1f}%, target >= 95%; {len(gz)} gzipped files are read whole)")
        print(f"most bytes per HDU header (a file's reads / its HDUs): {worst / 1024:.1f} KiB (target <= 64 KiB)")
        plain_default = sum(results[1][1].per.get(obj_path(f"fits/{f}"), (0, 0))[1] for f in plain)
        plain_ours = sum(ours.per.get(obj_path(f"fits/{f}"), (0, 0))[1] for f in plain)
        print(f"bytes vs astropy + s3fs default: {default_bytes / max(1, our_bytes):.1f}x fewer over all files "
              f"(target >= 20x); {plain_default / max(1, plain_ours):.1f}x fewer over the {len(plain)} files "
              f"not gzipped (gzipped files are read whole by every reader)")

        # A section of the large image: 512 x 512 pixels in its middle.
        n = args.section_side
        x0, y0 = n // 2 - 256, n // 2 - 256
        box = [x0, y0, x0 + 512, y0 + 512]
        rows_bytes = 512 * n * 4
        m = Meter(proxy)
        t = c.do_get(flight.Ticket(json.dumps({"section": {"dataset": "big", "path": "img/img_0000.fits",
                                                           "box": box}}))).read_all()
        sec = m.stop()
        assert (t["width"][0].as_py(), t["height"][0].as_py()) == (512, 512)
        print(f"\nsection 512 x 512 of a {n} x {n} float32 image ({n * n * 4 / 1e6:.0f} MB); its rows are "
              f"{rows_bytes / 1e6:.2f} MB:")
        print(f"{'reader':42} {'requests':>9} {'MB read':>9} {'x rows':>7} {'ms':>8}")
        print(f"{'astroflight section':42} {sec.total['requests']:9d} {sec.total['bytes'] / 1e6:9.2f} "
              f"{sec.total['bytes'] / rows_bytes:7.2f} {sec.secs * 1e3:8.1f}")
        for label, block in (("astropy .section + s3fs, default block", None),
                             (f"astropy .section + s3fs, block {args.tuned_block // 1024} KiB", args.tuned_block)):
            fs = s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET, client_kwargs={
                "endpoint_url": proxy.endpoint, "region_name": S3_REGION}, skip_instance_cache=True)
            kw = {} if block is None else {"block_size": block}
            m = Meter(proxy)
            with fs.open("bench/big/img/img_0000.fits", "rb", **kw) as fh, fits.open(fh, lazy_load_hdus=True) as hl:
                data = hl[0].section[y0:y0 + 512, x0:x0 + 512]
            r = m.stop()
            assert data.shape == (512, 512)
            print(f"{label:42} {r.total['requests']:9d} {r.total['bytes'] / 1e6:9.2f} "
                  f"{r.total['bytes'] / rows_bytes:7.2f} {r.secs * 1e3:8.1f}")
        print(f"\nsection target: <= 2x the bytes of its rows: {sec.total['bytes'] / rows_bytes:.2f}x")
        c.close()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        for srv in (proxy, s3):
            if srv is not None:
                srv.stop()
        shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    main()
