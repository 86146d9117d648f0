"""The README's examples ("What it serves, one example each" and the quick start), run as
written against a server on the demo lake's alert datasets (generated with the demo's
parameters, so the ids the README quotes are there)."""
import pathlib
import re

from helpers import gen

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_examples_run_against_the_demo_lake(binary, start_server, tmp_path):
    text = README.read_text()
    section = text.split("## What it serves, one example each", 1)[1].split("\n## ", 1)[0]
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = python_blocks(quick) + python_blocks(section)
    assert len(blocks) == 5, len(blocks)
    for survey in ("ztf", "lsst"):
        gen(binary, tmp_path / survey, survey, 3, 2, 200)
    s = start_server([("ztf", "ztf", tmp_path / "ztf"), ("lsst", "lsst", tmp_path / "lsst")])
    scope = {}
    for i, block in enumerate(blocks):
        code = block.replace("grpc://127.0.0.1:8815", s.url)
        exec(compile(code, f"README example {i + 1}", "exec"), scope)
        # Every example that reads a table must have read something.
        if "t" in scope:
            assert scope["t"].num_rows > 0, f"README example {i + 1} read no rows"
            del scope["t"]
    assert scope["img"].shape == (63, 63)
    assert sum(p.num_rows for p in scope["parts"]) == scope["info"].total_records
