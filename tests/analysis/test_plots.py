"""The report's plots, drawn straight from analyses: pages of 9 rooms, valid PNG files."""

from __future__ import annotations

from pathlib import Path

from mams.actors.report_plots import write_plots
from mams.domain.analysis import analyze
from mams.domain.report import build_report
from tests.analysis import logs
from tests.analysis.test_cli_report import assert_png


def test_trajectories_page_by_nine_rooms_and_respect_the_cap(tmp_path: Path) -> None:
    rooms = [logs.room_a, logs.room_b, logs.room_c] * 4  # 12 ended rooms
    analyses = [analyze(logs.events_of(room())) for room in rooms]
    report = build_report(analyses)
    paths = write_plots(analyses, report, tmp_path / "out", max_rooms=36)
    assert [p.name for p in paths] == [
        "trajectories.png",
        "trajectories-2.png",
        "by_model.png",
        "by_style.png",
    ]
    for p in paths:
        assert_png(p)
    capped = write_plots(analyses, report, tmp_path / "capped", max_rooms=9)
    assert [p.name for p in capped][:2] == ["trajectories.png", "by_model.png"]
