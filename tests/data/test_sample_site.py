"""The generated site: deterministic, with its planted truth and its dirt."""

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from insights.ingest.snowplow import ENRICHED_FIELDS
from insights.sample import generate
from tests.conftest import ROOT


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            h.update(str(path.relative_to(root)).encode() + data)
    return h.hexdigest()


def test_same_seed_same_site_other_seed_other_site(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", users=40, days=5, seed=11)
    b = generate(tmp_path / "b", users=40, days=5, seed=11)
    c = generate(tmp_path / "c", users=40, days=5, seed=12)
    assert a == b
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    assert c["web_events"] > 0


def test_a_site_does_not_depend_on_the_sites_generated_before_it(tmp_path: Path) -> None:
    """Same seed, same bytes, whatever the process made earlier: an item-id-keyed cache once
    carried one site's product titles and prices into the next site's events."""
    generate(tmp_path / "other", users=40, days=5, seed=3)
    generate(tmp_path / "after", users=40, days=5, seed=11)
    code = f"from insights.sample import generate; generate({str(tmp_path / 'alone')!r}, users=40, days=5, seed=11)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    assert _digest(tmp_path / "after") == _digest(tmp_path / "alone")


def test_formats_truth_and_dirt(tmp_path: Path) -> None:
    summary = generate(tmp_path, users=150, days=14, seed=5)
    tsv = sorted((tmp_path / "snowplow_enriched").rglob("*.tsv.gz"))
    assert tsv and all(len(p.relative_to(tmp_path / "snowplow_enriched").parts) == 5 for p in tsv)
    lines = [line for p in tsv for line in gzip.decompress(p.read_bytes()).decode().splitlines()]
    widths = [len(line.split("\t")) for line in lines]
    assert widths.count(len(ENRICHED_FIELDS)) >= len(lines) - summary["malformed"]
    ids = [line.split("\t")[6] for line in lines if len(line.split("\t")) == 131]
    assert len(ids) - len(set(ids)) > 0
    messages = [
        json.loads(x)["type"]
        for p in (tmp_path / "singer").glob("events-*.jsonl")
        for x in p.read_text().splitlines()
        if x.startswith('{"type"') and x.endswith("}")
    ]
    assert {"SCHEMA", "RECORD", "STATE"} <= set(messages)
    truth = [json.loads(x) for x in (tmp_path / "truth" / "users.jsonl").read_text().splitlines()]
    assert any(t["is_bot"] for t in truth) and any(t["churn_date"] for t in truth)
    assert any(t["account_id"] for t in truth) and any(not t["account_id"] for t in truth)
    assert summary["late"] > 0 and summary["duplicates"] > 0 and summary["orders"] > 0
    bot_ua = sum("Googlebot" in line or "python-requests" in line for line in lines)
    assert bot_ua > 0


def test_item_nouns_are_singular() -> None:
    from insights.sample import TAXONOMY, _singular

    leaves = [leaf.rsplit(" > ", 1)[-1] for leaves in TAXONOMY.values() for leaf in leaves]
    nouns = dict(zip(leaves, map(_singular, leaves), strict=True))
    assert nouns["Smartwatches"] == "Smartwatch"
    assert nouns["Dresses"] == "Dress"
    assert nouns["Accessories"] == "Accessory"
    assert nouns["Hiking Boots"] == "Hiking Boot"
    assert nouns["Cookware"] == "Cookware" and nouns["Running"] == "Running"
    # The committed sample is what the generator writes today.
    titles = (ROOT / "data_samples" / "catalog" / "items.csv").read_text()
    assert "Smartwatch " in titles and "Smartwatche " not in titles and "Dresse " not in titles


def test_a_site_of_no_one_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`insights sample --users 0` made the default 2,000 users (0 read as not given) and
    `--users -5` a site of bots only; both are refused, by the CLI and by generate()."""
    from insights.cli import main

    for flag, value in (("--users", "0"), ("--users", "-5"), ("--days", "0"), ("--days", "x")):
        with pytest.raises(SystemExit) as exited:
            main(["--config", str(tmp_path / "none.yml"), "sample", flag, value, "--out", str(tmp_path / "site")])
        assert exited.value.code == 2 and f"argument {flag}: " in capsys.readouterr().err
    with pytest.raises(ValueError, match="users >= 1"):
        generate(tmp_path / "site", users=-5)
    assert not (tmp_path / "site").exists()
