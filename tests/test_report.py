"""HTML reports: self-contained, escaped, with real PNG plots."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from stead.evals.report import HtmlReport

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_report_embeds_one_png_per_plot_and_colours_statuses(tmp_path: Path) -> None:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    r = HtmlReport("eval <suite>", subtitle="refund & ops")
    r.section("Cases", "two cases")
    r.table(["case", "result", "note"], [["a", "pass", "fail"], ["b", "fail", None]],
            status_column=1)
    r.histogram("latency", {"baseline": [10.0, 12.0, 30.0], "recent": [50.0, 55.0]}, unit="ms")
    r.timeseries("success", {"ops": [(t0, 1.0), (t0 + timedelta(hours=1), 0.5)]})
    r.bars("signals", {"ks": 0.4, "psi": 0.1}, threshold=0.2)
    page = r.write(tmp_path / "out" / "r.html").read_text()

    images = _images(page)
    assert len(images) == 3
    assert all(i.startswith(PNG_MAGIC) for i in images)
    assert "eval &lt;suite&gt;" in page and "refund &amp; ops" in page
    # Only the status column is coloured: "fail" in the note column stays plain.
    assert '<td class="good">pass</td><td>fail</td>' in page
    assert '<td class="bad">fail</td>' in page


def test_empty_series_say_no_data_instead_of_drawing() -> None:
    r = HtmlReport("empty")
    r.histogram("latency", {"recent": []})
    r.timeseries("success", {})
    r.bars("signals", {})
    r.table(["a"], [])
    page = r.render()
    assert _images(page) == []
    assert page.count("no data") == 3
    assert ">none<" in page
