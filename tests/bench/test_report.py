"""`fairdml report` from a store with known numbers; the HTML renders in headless Chromium."""

import shutil
import subprocess
import sys

import pytest
from scipy import stats

from fairdml.bench.report import build_report, load_published
from fairdml.bench.store import ResultsStore

MAPS = {"contrastive": [0.30, 0.34, 0.32], "proxy_anchor": [0.40, 0.42, 0.44]}


@pytest.fixture
def known_store(tmp_path):
    store = ResultsStore(tmp_path / "results.sqlite")
    store.bind_preset({"name": "known", "run": {"data": {"name": "cub200"}},
                       "protocol": {"confidence": 0.95}})
    for method, values in MAPS.items():
        config = {"loss": {"name": method}}
        for repeat, value in enumerate(values):
            for kind, offset in (("separated", 0.0), ("concatenated", 0.05)):
                store.add_run(method=method, stage="repeat", repeat=repeat, fold=-1, kind=kind,
                              split="test", seed=repeat, config=config, wall_seconds=1.0,
                              metrics={"recall@1": value + 0.3 + offset, "map@r": value + offset,
                                       "r_precision": value + 0.05, "nmi": 0.5, "f1": 0.2})
            store.add_curve(method, "repeat", repeat, 0, [(1, value - 0.1), (2, value)])
    store.add_run(method="untrained trunk", stage="baseline", repeat=0, fold=-1,
                  kind="baseline", split="test", seed=0, config={"loss": {"name": "x"}},
                  wall_seconds=1.0, metrics={"recall@1": 0.2, "map@r": 0.1,
                                             "r_precision": 0.1, "nmi": 0.3, "f1": 0.1})
    store.close()
    return tmp_path


def test_report_tables_hold_the_known_intervals(known_store):
    report = build_report(known_store)
    assert report["columns"] == ["recall@1", "r_precision", "map@r", "nmi", "f1"]
    cell = report["table"][("proxy_anchor", "separated")]["map@r"]
    values = MAPS["proxy_anchor"]
    low, high = stats.t.interval(0.95, df=2, loc=sum(values) / 3, scale=stats.sem(values))
    assert cell.mean == pytest.approx(0.42)
    assert cell.half_width == pytest.approx((high - low) / 2)
    assert cell.best
    assert not report["table"][("contrastive", "separated")]["map@r"].best
    markdown = (known_store / "report.md").read_text()
    assert f"**{cell.text()}**" in markdown
    assert "untrained trunk" in markdown
    assert "Proxy Anchor" in markdown  # published CUB numbers are listed beside
    assert len(report["plots"]) == 4
    html = (known_store / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "<td class='best'>" in html


def test_published_numbers_are_complete_and_typed():
    rows = load_published()
    assert len(rows) > 300
    keys = {(r["method"], r["backbone"], r["dataset"], r["metric"]) for r in rows}
    assert ("Proxy Anchor", "R50", "CUB-200-2011", "recall@1") in keys
    proxy_anchor = [r for r in rows if r["method"] == "Proxy Anchor" and r["backbone"] == "R50"
                    and r["dataset"] == "CUB-200-2011" and r["metric"] == "recall@1"]
    assert proxy_anchor[0]["value"] == pytest.approx(69.7)
    assert all(r["source_table"] for r in rows)


def test_report_command_prints_the_table(known_store):
    done = subprocess.run([sys.executable, "-m", "fairdml.cli", "report", str(known_store)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "proxy_anchor" in done.stdout and "separated" in done.stdout


def test_report_of_a_directory_without_results_is_a_clear_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fairdml.cli", "report", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "holds no benchmark results" in done.stderr


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed "
                    "(Debian package 'chromium'; .ci/run installs it)")
def test_report_html_renders_in_headless_chromium(known_store, tmp_path):
    build_report(known_store)
    profile = tmp_path / "profile"
    done = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
         "--dump-dom", (known_store / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert 'data-images-loaded="4/4"' in dom, "not every plot decoded and rendered"
    assert dom.count("<table class=\"results\"") == 3  # separated, concatenated, baseline
    assert "proxy_anchor" in dom
