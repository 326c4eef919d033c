"""The run report page: built from a real attacked DP + CKKS run, checked in headless Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from federation.config import from_flat
from server.app import run_server
from server.html_report import REPORT_FILE, write_comparison, write_report
from server.report import integer_rounds
from simulations.adversary import make_adversarial_client_app
from simulations.cli import app as cli_app
from simulations.simulate import with_dp_recipe

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def attacked_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 clients, 2 rounds, DP, CKKS, the encrypted filter, one sign-flipping attacker."""
    from tests.conftest import FakeGrid

    out = tmp_path_factory.mktemp("report") / "run"
    cfg = from_flat({k: v for k, v in with_dp_recipe({
        "num-clients": 4, "num-server-rounds": 2, "partition": "iid", "data-dir": "subset",
        "dp-epsilon": 8.0, "secure-aggregation": "ckks", "defense": "norm,cosine",
        "malicious": 0.25, "attack": "sign-flip:scale=4", "out-dir": str(out)}).items()
        if v is not None})
    grid: Any = FakeGrid(make_adversarial_client_app(cfg), 4)
    run_server(grid, cfg, progress=lambda _l: None)
    return out


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.refs: list[str] = []
        self.scripts = 0
        self.headings: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag in ("link", "script", "iframe") or (tag == "img" and not (a.get("src") or "").startswith("data:")):
            self.refs.append(tag)
        if tag == "script":
            self.scripts += 1
        self._in_h2 = tag == "h2"

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def _parse(path: Path) -> tuple[str, _Page]:
    text = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    return text, page


def test_every_run_folder_gets_a_self_contained_page(attacked_run: Path) -> None:
    text, page = _parse(attacked_run / REPORT_FILE)  # written by the run itself
    assert page.headings == ["Accuracy and loss", "Privacy spent", "Accepted and rejected clients",
                             "Bytes and crypto time"]
    assert page.refs == [] and page.scripts == 0  # no external asset, nothing to execute
    assert len(page.images) == 4
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == PNG_MAGIC and len(png) > 5000
    rows = [json.loads(line) for line in (attacked_run / "metrics.jsonl").read_text().splitlines()]
    attacker = {rows[0]["clients"][n] for n in rows[0]["rejected"]}
    assert attacker  # the sign-flipper was caught, and the page names it with the reason
    for label in attacker:
        assert re.search(rf"{label}: [^<]*(norm|cosine)", text)
    assert "budget ε = 8 per client" in text and "ckks" in text


def test_round_axis_has_whole_rounds_only() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for rounds in ([1, 2], [1, 2, 3], list(range(1, 41))):
        fig, ax = plt.subplots()
        ax.plot(rounds, rounds)
        integer_rounds(ax, rounds)
        fig.canvas.draw()
        ticks = [t for t in ax.get_xticks() if rounds[0] - 0.5 <= t <= rounds[-1] + 0.5]
        plt.close(fig)
        assert ticks and all(float(t).is_integer() for t in ticks), (rounds, ticks)


def test_peer_text_is_escaped_and_rollbacks_are_shown(attacked_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "hostile"
    shutil.copytree(attacked_run, run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    node = str(rows[-1]["accepted"][0])
    rows[-1]["rejected"][node] = '<script>alert("x")</script><img src=http://evil/>'
    rows[-1]["rolled_back"] = True
    rows[-1]["recovery"] = {"excluded": [int(node)]}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"round": ')
    write_report(run)  # a torn last line is skipped, not fatal
    text, page = _parse(run / REPORT_FILE)
    assert page.scripts == 0 and page.refs == []
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert "rolled back" in text and "rolled back rounds</td><td>2<" in text
    assert f"(redone without {rows[-1]['clients'][node]})" in text


def test_report_command_rewrites_the_page_and_names_a_bad_folder(attacked_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(attacked_run, run)
    (run / REPORT_FILE).unlink()
    result = CliRunner().invoke(cli_app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / REPORT_FILE).read_text().startswith("<!DOCTYPE html>")
    bad = CliRunner().invoke(cli_app, ["report", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "RUN_DIR" in bad.output + (bad.stderr or "")


def _chromium(page: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """Screenshot ``page`` headless; return the PNG and the page's console messages."""
    shot = tmp_path / f"{page.stem}.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'chrome-profile'}", "--enable-logging=stderr", "--v=0",
         "--window-size=1100,1400", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return shot, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def _painted(shot: Path) -> float:
    """Fraction of the screenshot's pixels that are not page background (white)."""
    import matplotlib.image as mpimg

    px = np.asarray(mpimg.imread(shot))[..., :3]
    return float((px.min(axis=-1) < 0.9).mean())


def test_pages_render_in_headless_chromium_without_console_errors(attacked_run: Path, tmp_path: Path) -> None:
    comparison = write_comparison(tmp_path / "compare.html",
                                  [("attacked + filter", attacked_run), ("again", attacked_run)],
                                  title="two runs", table="a  b\n1  2\n")
    for page in (attacked_run / REPORT_FILE, comparison):
        shot, console = _chromium(page, tmp_path)
        assert console == [], console
        assert shot.read_bytes()[:8] == PNG_MAGIC
        assert _painted(shot) > 0.005  # text, tables and figures were drawn, not a blank page
    # the console check can fail: a page with a script error is caught
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><p>x</p><script>notDefined()</script></body></html>")
    _shot, console = _chromium(broken, tmp_path)
    assert any("notDefined" in line for line in console)
