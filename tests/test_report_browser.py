"""The HTML report in headless Chromium: it opens from disk, its script runs, its plots draw.

Skipped only when no Chromium binary is found (`apt-get install chromium`; .ci/run installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.rundir.record import load_run
from harness.views import plots, report

from .test_report import ESCAPED_SCRIPT, rich_run
from .test_report_headline import forgetting_run

CHROMIUM = next(filter(None, (shutil.which(n) for n in (
    "chromium", "chromium-browser", "google-chrome", "google-chrome-stable"))), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium)")

# No network, no first-run UI, no background services: the page must stand on its own.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", "--mute-audio"]
ACCENT = (0x25, 0x63, 0xEB)  # the first adapter arm's bars and lines (plots.PALETTE[0])
HEADER = (0x15, 0x1A, 0x24)  # the page header's background
ALERT_BG = (0xFD, 0xEC, 0xEA)  # a red card's background (--bad-bg)


def chromium(tmp_path: Path, *args: str) -> str:
    cmd = [str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.fixture(scope="module")
def html_file(tmp_path_factory) -> Path:
    run = load_run(rich_run(tmp_path_factory.mktemp("runs")))
    return report.write_reports(run)[0]


def test_page_loads_with_tables_plots_and_sorted_examples(html_file: Path, tmp_path: Path):
    dom = chromium(tmp_path, "--dump-dom", html_file.as_uri())
    assert 'data-js="ready"' in dom  # the inline script ran (so the CSP hash matched)
    assert 'data-sorted="gain"' in dom
    # five plots, and the frontier against parameters and train time (test_report)
    assert dom.count('<svg class="chart"') == 7 and dom.count("<table") >= 6
    assert len(re.findall(r'<tr data-id="item-\d+"', dom)) == 50
    assert ESCAPED_SCRIPT in dom and "<script>alert" not in dom


def test_sort_order_chosen_by_link(html_file: Path, tmp_path: Path):
    dom = chromium(tmp_path, "--dump-dom", html_file.as_uri() + "#sort=regression")
    assert 'data-sorted="regression"' in dom
    gains = [float(g) for g in re.findall(r'<tr data-id="[^"]+" data-g0="([^"]+)"', dom)]
    assert len(gains) == 50 and gains == sorted(gains)


def test_screenshot_is_not_blank(html_file: Path, tmp_path: Path):
    shot = tmp_path / "report.png"
    # tall enough for the plots below the cards, leaderboard, summary and headline tables
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,3200", html_file.as_uri())
    assert shot.stat().st_size > 50_000  # a blank 1280x2000 page compresses to a few KB
    image = pytest.importorskip("PIL.Image")
    with image.open(shot) as im:
        colors = {c for _, c in im.convert("RGB").getcolors(maxcolors=1 << 22)}
    assert len(colors) > 200  # text, tables, plots: anti-aliased, many shades
    assert HEADER in colors and ACCENT in colors  # header painted, plot bars drawn


@pytest.fixture(scope="module")
def default_like(tmp_path_factory) -> Path:
    """The default suite's shape: one trained arm and a loss-only forgetting set `general`,
    on which the adapter got significantly worse."""
    run = load_run(forgetting_run(tmp_path_factory.mktemp("default")))
    return report.write_reports(run)[0]


def colors_of(png: Path) -> set[tuple[int, int, int]]:
    image = pytest.importorskip("PIL.Image")
    with image.open(png) as im:
        return {c for _, c in im.convert("RGB").getcolors(maxcolors=1 << 22)}


def test_forgetting_card_is_visible_at_the_top(default_like: Path, tmp_path: Path):
    dom = chromium(tmp_path, "--dump-dom", default_like.as_uri())
    cards = dom.split('<div class="cards">')[1].split('<section id="summary">')[0]
    assert re.search(r'<div class="card forgetting alert">\s*<div class="k">Forgetting · '
                     r'Perplexity \(general\)', cards)
    assert "significantly worse" in cards
    # The first screenful (1280 x 600: header, menu, cards) is painted with the red card.
    shot = tmp_path / "top.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,600", default_like.as_uri())
    assert ALERT_BG in colors_of(shot)


def test_browser_filters_the_forgetting_set_and_sorts_by_loss(default_like: Path,
                                                             tmp_path: Path):
    dom = chromium(tmp_path, "--dump-dom", default_like.as_uri() + "#sort=loss-rise&set=general")
    assert 'data-sorted="loss-rise" data-set="general"' in dom
    rows = re.findall(r'<tr data-id="[^"]+"[^>]* data-l0="([^"]+)" data-set="([^"]*)"'
                      r'( hidden="")?', dom)
    assert len(rows) == 100
    assert all(bool(hidden) == (s != "general") for _, s, hidden in rows)  # only general shown
    changes = [float(d) for d, _, _ in rows]
    assert changes == sorted(changes, reverse=True)  # largest loss increase first


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def test_frontier_plots_of_a_method_sweep(method_sweep: Path, tmp_path: Path):
    """The real lora / dora / ia3 x rank sweep: three scatter plots of five arms each; the
    section alone (the report's own head and styles) paints each method in its colour."""
    page = (method_sweep / "report.html").as_uri()
    dom = chromium(tmp_path, "--dump-dom", page)
    section = dom.split('<section id="frontier">')[1].split("</section>")[0]
    assert section.count('<svg class="chart"') == 3 and section.count('class="dot"') == 15
    assert "Trainable parameters" in section and "Peak training memory (MiB)" in section
    # The other plots share the palette: look at this section without them.
    html = (method_sweep / "report.html").read_text()
    alone = tmp_path / "frontier.html"
    alone.write_text(html.split("<body")[0] + '<body><main class="wrap"><section id="frontier">'
                     + section + "</section></main></body></html>")
    shot = tmp_path / "frontier.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1400", alone.as_uri())
    assert {_rgb(c) for c in plots.PALETTE[:3]} <= colors_of(shot)  # lora, dora, ia3
