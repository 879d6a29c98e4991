"""Self-contained HTML reports with plots, for the people who look at evals and drift.

    report = HtmlReport("stead eval", subtitle="evals/refund.yaml")
    report.table(["case", "result"], [["small refund", "pass"]], status_column=1)
    report.histogram("latency", {"cases": [120.0, 180.0]}, unit="ms")
    report.write(Path("eval.html"))

Plots are drawn with matplotlib (Agg backend, no display needed) and embedded as PNG data
URIs, so the file can be mailed, attached to a CI run or opened from disk without a server.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

# The object-oriented API only (no pyplot): no global figure state, no display backend.
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# Cells with these words are coloured; anything else is plain.
_GOOD = {"pass", "ok", "completed", "not crossed", "same"}
_BAD = {"fail", "failed", "crossed", "error", "diverged", "changed"}
_WARN = {"insufficient data", "skipped", "escalated", "denied", "refused"}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }
h1 { margin-bottom: 0.2rem; } .sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.good { background: #e3f6e3; } td.bad { background: #fbe0e0; }
td.warn { background: #fff4d6; } img { max-width: 100%; } .muted { color: #666; }
"""


class HtmlReport:
    """Collects sections, tables and plots in order; ``write`` renders one HTML file."""

    def __init__(self, title: str, *, subtitle: str = "") -> None:
        self.title = title
        self.subtitle = subtitle
        self._parts: list[str] = []

    def section(self, heading: str, text: str = "") -> None:
        self._parts.append(f"<h2>{html.escape(heading)}</h2>")
        if text:
            self._parts.append(f"<p>{html.escape(text)}</p>")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]], *,
              status_column: int | None = None) -> None:
        """A table; cells of ``status_column`` (or any cell reading exactly like a status
        word) are coloured good/bad/warn."""
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
        body = []
        for row in rows:
            cells = []
            for i, value in enumerate(row):
                text = "" if value is None else str(value)
                css = _status_class(text) if status_column is None or i == status_column else ""
                attr = f' class="{css}"' if css else ""
                cells.append(f"<td{attr}>{html.escape(text)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        if not body:
            body.append(f'<tr><td colspan="{len(headers)}" class="muted">none</td></tr>')
        self._parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>"
                           + "".join(body) + "</tbody></table>")

    def histogram(self, title: str, series: Mapping[str, Sequence[float]], *, unit: str = "",
                  bins: int = 30) -> None:
        """Overlaid histograms on shared bins (e.g. baseline vs recent latency)."""
        values = [v for vs in series.values() for v in vs]
        if not values:
            self._empty(title)
            return
        fig, ax = _figure()
        lo, hi = min(values), max(values)
        edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)] if hi > lo else bins
        for name, vs in series.items():
            if vs:
                ax.hist(list(vs), bins=edges, alpha=0.55, label=f"{name} (n={len(vs)})")
        ax.set_xlabel(unit or "value")
        ax.set_ylabel("count")
        ax.legend()
        self._plot(title, fig)

    def timeseries(self, title: str, series: Mapping[str, Sequence[tuple[datetime, float]]], *,
                   unit: str = "") -> None:
        """One line per series over time (e.g. success rate per hour)."""
        if not any(series.values()):
            self._empty(title)
            return
        fig, ax = _figure()
        for name, points in series.items():
            pts = sorted(points)
            if pts:
                # matplotlib's date numbers: days since the Unix epoch.
                ax.plot([p[0].timestamp() / 86400 for p in pts], [p[1] for p in pts],
                        marker="o", label=name)
        ax.xaxis_date()
        ax.set_ylabel(unit or "value")
        ax.legend()
        fig.autofmt_xdate()
        self._plot(title, fig)

    def bars(self, title: str, values: Mapping[str, float], *, unit: str = "",
             threshold: float | None = None) -> None:
        """Horizontal bars; with a threshold, bars beyond it are red and a line marks it."""
        if not values:
            self._empty(title)
            return
        fig, ax = _figure(height=0.6 + 0.35 * len(values))
        names = list(values)
        nums = [values[n] for n in names]
        colors = ["#c0392b" if threshold is not None and v > threshold else "#2e86c1"
                  for v in nums]
        ax.barh(names, nums, color=colors)
        if threshold is not None:
            ax.axvline(threshold, color="#555", linestyle="--", label=f"threshold {threshold:g}")
            ax.legend()
        ax.set_xlabel(unit or "value")
        ax.invert_yaxis()
        self._plot(title, fig)

    def render(self) -> str:
        sub = f'<p class="sub">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        return ("<!doctype html><html><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head>"
                f"<body><h1>{html.escape(self.title)}</h1>{sub}"
                + "\n".join(self._parts) + "</body></html>\n")

    def write(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(), encoding="utf-8")
        return path

    # ------------------------------------------------------------------ internals

    def _empty(self, title: str) -> None:
        self._parts.append(f"<h3>{html.escape(title)}</h3><p class=\"muted\">no data</p>")

    def _plot(self, title: str, fig: Figure) -> None:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90)
        _close(fig)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        self._parts.append(f"<h3>{html.escape(title)}</h3>"
                           f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">')


def _status_class(text: str) -> str:
    word = text.strip().lower()
    if word in _GOOD:
        return "good"
    if word in _BAD:
        return "bad"
    if word in _WARN:
        return "warn"
    return ""


def _figure(*, height: float = 3.2) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(8, height))
    return fig, fig.add_subplot()


def _close(fig: Figure) -> None:
    # Figures made without pyplot are not registered anywhere; clearing frees them at once.
    fig.clear()

__all__ = ["HtmlReport"]
