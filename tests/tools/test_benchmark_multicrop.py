"""benchmarks/multicrop_speed.py runs both multi-crop forms on the same batch and reports their times and ratio."""

import json

from benchmarks import multicrop_speed


def test_multicrop_speed_reports_both_forms(tmp_path, capsys):
    rows = multicrop_speed.main(["--batch", "4", "--repeats", "1", "--local-crops", "0", "2", "--out", str(tmp_path)])
    assert set(rows) == {0, 2}
    for r in rows.values():
        assert r["wall_s"]["per image"] > 0 and r["wall_s"]["per batch"] > 0
        assert r["ratio"] == r["wall_s"]["per image"] / r["wall_s"]["per batch"]
    assert "| 2 + 2 |" in capsys.readouterr().out and "| 2 + 2 |" in (tmp_path / "report.md").read_text()
    assert set(json.loads((tmp_path / "results.json").read_text())["rows"]) == {"0", "2"}
