"""The speed benchmark runs end to end in quick mode (its numbers are not asserted: see the README)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import benchmark_speed  # noqa: E402


def test_speed_benchmark_quick_mode(tmp_path, capsys):
    rows = benchmark_speed.main(["--quick", "--repeats", "1", "--train_steps", "1", "--output_dir", str(tmp_path)])
    report = json.loads((tmp_path / "speed.json").read_text())
    assert report["rows"] == json.loads(json.dumps(rows)) and len(rows) == 1
    row = rows[0]
    for key in ["stock_videos_per_s", "centerclip_videos_per_s", "speedup", "flops_ceiling", "clustering_share",
                "stock_train_step_s", "centerclip_train_step_s", "stock_train_peak_mb", "train_memory_ratio"]:
        assert row[key] > 0, key
    # FLOPs: the tiny case keeps 2 segments x (1 + 8) tokens after layer 2 of 4, against 4 frames x 17.
    assert row["flops_stock"] > row["flops_centerclip"] > 0 and 1 < row["flops_ceiling"] < 2
    assert (tmp_path / "speedup_vs_tokens.png").stat().st_size > 0
    assert "speed-up" in capsys.readouterr().out
