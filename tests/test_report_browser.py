"""The step's HTML report as a browser shows it: headless Chromium loads the page (no network;
a file:// URL), dumps the DOM it built and takes a screenshot. Skipped where no Chromium is
installed (`apt-get install chromium` on Debian)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from validator.adapters import htmlreport
from validator.adapters.step_report import step_to_report
from tests.test_report import HOSTILE, parse_html, real_steps
from validator.adapters import leaderboard as L

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((p for p in map(shutil.which, BROWSERS) if p), None)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason=f"no Chromium binary on PATH (looked for {', '.join(BROWSERS)}): apt-get install chromium")
WINDOW = (1400, 2000)
TIMEOUT_S = 90


def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}", *args, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    base = tmp_path_factory.mktemp("browser")
    normal, failed = real_steps(base / "steps")
    return {name: (step, htmlreport.write_report(step_to_report(step), base / name)["html"])
            for name, step in (("normal", normal), ("failed", failed))}


@pytest.mark.parametrize("name", ["normal", "failed"])
def test_browser_renders_every_model_with_its_status_and_reason(pages, name, tmp_path):
    step, page = pages[name]
    shot = tmp_path / f"{name}.png"
    run = chromium(page, tmp_path / "profile", f"--screenshot={shot}")
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    img = imread(shot)
    assert img.shape[:2] == (WINDOW[1], WINDOW[0])
    ink = (img[..., :3].mean(axis=2) < 0.6).mean()  # the share of dark (text, lines) pixels
    assert img.std() > 0.05 and 0.005 < ink < 0.5, f"{shot}: looks blank (std {img.std():.3f}, ink {ink:.4f})"
    assert np.unique(img[..., :3].reshape(-1, 3), axis=0).shape[0] > 20  # text and colours, not a flat fill

    # the DOM as Chromium built it: every model's row, its status and reason as text, no injected markup
    dom = chromium(page, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = parse_html(dom.stdout)
    assert "script" not in parsed.tags
    header = [c for c, _ in L.GLOSSARY]
    table = next(t for t in parsed.tables if t and t[0] == header)
    models = step["competitions"]["c00"]["models"]
    assert [row[1] for row in table[1:]] == [m["label"] for m in models]
    assert [row[-1] for row in table[1:]] == [L.status_text(m) for m in models]
    assert any(HOSTILE in row[-1] for row in table[1:])  # shown as the text it is
    assert step["weights_set"] in "".join(parsed.text)
