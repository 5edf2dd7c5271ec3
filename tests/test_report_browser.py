"""The report as a reader sees it: ``report.html`` in headless Chromium, and readable figures.

The browser test needs Debian's ``chromium`` (``.ci/run`` installs it); it is skipped without.
"""

from __future__ import annotations

import base64
import math
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from helpers import MAIN, make_study  # tests/ is on sys.path (no __init__.py)
from matplotlib.text import Text

from loraplace.report import figures
from loraplace.report.build import write_report

CHROMIUM = Path("/usr/bin/chromium")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Appended to a copy of the report: once every image has loaded, it writes into the DOM (which
# --dump-dom prints) the size the browser decoded and how many dark pixels it drew on a canvas.
PROBE = """<script>
window.addEventListener("load", () => {
  for (const img of document.images) {
    img.dataset.decodedWidth = img.naturalWidth;
    img.dataset.decodedHeight = img.naturalHeight;
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(img, 0, 0);
    const px = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let dark = 0;
    for (let i = 0; i < px.length; i += 4) if (px[i + 3] > 0 && px[i] < 128) dark++;
    img.dataset.darkPixels = dark;
  }
  document.body.dataset.probed = "after-load";
});
</script>"""


class _Dom(HTMLParser):
    """Images (their attributes), tables (rows of cell texts) and the body's attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.tables: list[list[list[str]]] = []
        self.body: dict[str, str] = {}
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(attrs)
        elif tag == "body":
            self.body = attrs
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk (the PNG specification, section 11.2.2)."""
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _dark_pixels(png: bytes, path: Path) -> int:
    """The probe's count, by matplotlib's PNG decoder: red below 128 in a non-transparent pixel."""
    path.write_bytes(png)
    rgba = mpimg.imread(path)
    alpha = rgba[..., 3] if rgba.shape[-1] == 4 else np.ones(rgba.shape[:2])
    return int(((np.round(rgba[..., 0] * 255) < 128) & (alpha > 0)).sum())


def _dump_dom(page: Path, profile: Path) -> str:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",  # lets the load event fire before the DOM is dumped
        "--dump-dom",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="headless Chromium not installed (/usr/bin/chromium): apt-get install chromium",
)
def test_report_html_in_a_real_browser(tmp_path):
    study = make_study(tmp_path / "study", MAIN)
    report = write_report(study)
    page = report / "probed.html"
    source = (report / "report.html").read_text()
    page.write_text(source.replace("</body>", PROBE + "</body>"))
    dom = _Dom()
    dom.feed(_dump_dom(page, tmp_path / "profile"))

    assert dom.body.get("data-probed") == "after-load"
    assert len(dom.images) == source.count("<img") >= 3  # pareto, curves, placement at least
    for img in dom.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        png = base64.b64decode(img["src"][len(prefix) :])
        width, height = _png_size(png)
        assert width > 100 and height > 100
        # Decoded at the size the PNG declares (a broken image is 0 x 0), and drawn whole: a
        # truncated PNG keeps its declared size but lacks the pixels of its missing rows.
        assert (int(img["data-decoded-width"]), int(img["data-decoded-height"])) == (width, height)
        dark = _dark_pixels(png, tmp_path / "figure.png")
        assert dark > 1000 and int(img["data-dark-pixels"]) == dark
        assert img["alt"]

    assert len(dom.tables) == source.count("<table") >= 2
    for table in dom.tables:
        assert len(table) >= 2 and all(len(row) == len(table[0]) for row in table)
    summary = dom.tables[0]  # the first table: one row per strategy, in config order
    assert summary[0][0] == "Strategy" and [row[0] for row in summary[1:]] == list(MAIN)
    per_run = next(table for table in dom.tables if table[0][:2] == ["Strategy", "Seed"])
    finished_or_failed = sorted(p.parent.name for p in (study / "runs").glob("*/result.json"))
    assert len(per_run) - 1 == len(finished_or_failed)
    assert {row[0] for row in per_run[1:]} == set(MAIN)


def _drawn(monkeypatch, draw) -> list:
    """Figures that ``draw`` made, kept open (figures.py closes them after saving)."""
    kept: list = []
    monkeypatch.setattr(figures.plt, "close", kept.append)
    draw()
    for fig in kept:
        fig.canvas.draw()
    return kept


def _labels(axis) -> list[str]:
    ticks = axis.get_major_ticks() + axis.get_minor_ticks()
    return [t.label1.get_text() for t in ticks if t.label1.get_visible() and t.label1.get_text()]


def test_pareto_ticks_state_their_values(tmp_path, monkeypatch):
    # Losses 2e-5 apart around 5.936: matplotlib's defaults label this axis "+5.936" / "1e-5".
    rows = [
        {
            "strategy": name,
            "trainable_params": params,
            "eval_loss_mean": loss,
            "eval_loss_std": 1e-6,
            "n": 3,
            "pareto": True,
        }
        for name, params, loss in (("all", 2_442_240, 5.93601), ("attn", 921_600, 5.93603))
    ]
    (fig,) = _drawn(monkeypatch, lambda: figures.plot_pareto(rows, tmp_path / "p.png"))
    ax = fig.axes[0]
    assert ax.yaxis.get_offset_text().get_text() == ""
    assert ax.xaxis.get_offset_text().get_text() == ""
    y_labels = _labels(ax.yaxis)
    assert len(y_labels) >= 3
    for tick, text in zip(ax.yaxis.get_majorticklocs(), y_labels):
        assert "e" not in text.lower() and float(text.replace("\u2212", "-")) == pytest.approx(tick)
    # Parameter counts read as 900k, 1M, 2M: an engineering suffix, never 1e6 or 2442240.
    assert {"900k", "1M", "2M"} <= set(_labels(ax.xaxis))


def test_curve_steps_are_whole_numbers_with_separators(tmp_path, monkeypatch):
    run = [{"step": 12_000 + s, "loss": 5.936 + 1e-6 * s} for s in range(5)]
    (fig,) = _drawn(monkeypatch, lambda: figures.plot_curves({"all": [run]}, tmp_path / "c.png"))
    ax = fig.axes[0]
    assert ax.xaxis.get_offset_text().get_text() == ""
    assert ax.yaxis.get_offset_text().get_text() == ""
    x_labels = _labels(ax.xaxis)
    assert "12,000" in x_labels and "12,004" in x_labels
    assert all(text.replace(",", "").isdigit() for text in x_labels)


def test_a_rank_sweep_takes_a_colour_per_placement_and_a_line_style_per_rank():
    styles = figures._styles(["attn r2", "mlp r2", "attn r8", "mlp r8", "attn r32"])
    assert styles["attn r2"][0] == styles["attn r8"][0] == styles["attn r32"][0]
    assert styles["attn r2"][0] != styles["mlp r2"][0]
    assert len({styles[f"attn r{r}"][1] for r in (2, 8, 32)}) == 3
    assert styles["mlp r8"][1] == styles["attn r8"][1]
    # Without ranks, a colour per curve (twelve of them cycle through ten colours).
    plain = figures._styles([f"s{i}" for i in range(3)])
    assert len({colour for colour, _ in plain.values()}) == 3


def _sweep_rows(losses: tuple[float, ...], per_doubling: float) -> list[dict]:
    """Summary rows of four placements at ranks 2, 8 and 32 with 3 seeds each: placement ``i``
    has loss ``losses[i]`` at r1, less ``per_doubling`` for each doubling of rank."""
    placements = zip(
        ("all-linear", "ffn-only", "attention-only", "last-half"),
        (305_280, 190_080, 115_200, 152_640),
        losses,
    )
    return [
        {
            "strategy": f"{name} r{rank}",
            "trainable_params": params * rank,
            "eval_loss_mean": loss - per_doubling * math.log2(rank),
            "eval_loss_std": 0.006,
            "n": 3,
            "pareto": name in ("all-linear", "ffn-only"),
        }
        for name, params, loss in placements
        for rank in (2, 8, 32)
    ]


def test_pareto_labels_stay_inside_the_axes_and_apart(tmp_path, monkeypatch):
    # A rank sweep's twelve conditions, crowded as in a budget-curve study.
    rows = _sweep_rows(losses=(0.78, 0.79, 0.80, 0.81), per_doubling=0.012)
    (fig,) = _drawn(monkeypatch, lambda: figures.plot_pareto(rows, tmp_path / "p.png"))
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    labels = [t for t in ax.texts if t.get_text()]
    assert sorted(t.get_text() for t in labels) == sorted(r["strategy"] for r in rows)
    boxes = [t.get_window_extent(renderer) for t in labels]
    for box in boxes:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0
        assert box.y1 <= frame.y1
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), "two point labels overlap"
    # Every point has 3 seeds: said once on the axis, not in each label.
    assert "over 3 seeds" in ax.get_ylabel()


def test_a_pareto_label_far_from_its_point_has_a_line_to_it(tmp_path, monkeypatch):
    # Twelve conditions whose losses nearly coincide: some labels must move away from their
    # points, and each of those is joined to its point by a line.
    rows = _sweep_rows(losses=(0.780, 0.781, 0.782, 0.783), per_doubling=0.004)
    (fig,) = _drawn(monkeypatch, lambda: figures.plot_pareto(rows, tmp_path / "p.png"))
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    lines = {tuple(t.xy) for t in ax.texts if not t.get_text()}
    far = 0
    for label in (t for t in ax.texts if t.get_text()):
        box = Text.get_window_extent(label, renderer)
        px, py = ax.transData.transform(label.xy)
        gap = math.hypot(px - min(max(px, box.x0), box.x1), py - min(max(py, box.y0), box.y1))
        if gap > 12 * fig.dpi / 72.0:
            far += 1
            assert tuple(label.xy) in lines, f"{label.get_text()} is far from its point, unjoined"
    assert far >= 1 and len(lines) == far
