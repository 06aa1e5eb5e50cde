"""The frontier benchmark runs end to end in quick mode (its numbers are not asserted: see the README)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import benchmark_frontier  # noqa: E402

REQUIRED = {"name", "cluster_algo", "speedup_b32", "t2v_r1_mean", "t2v_r1_std", "seeds", "config_b32"}


def test_frontier_benchmark_quick_mode(tmp_path, capsys):
    entries = benchmark_frontier.main(["--quick", "--output_dir", str(tmp_path)])
    written = json.loads((tmp_path / "frontier.json").read_text())
    assert written == json.loads(json.dumps(entries)) and len(written) == len(benchmark_frontier.QUICK_GRID)
    assert [e for e in written if e.get("reference")] == [written[1]]
    for entry in written:
        assert REQUIRED <= set(entry), entry["name"]
        assert entry["speedup_b32"] > 0 and 0 <= entry["t2v_r1_mean"] <= 100 and entry["seeds"] == [0]
        assert entry["config_b32"]["cluster_algo"] == entry["cluster_algo"]
    # The token shares follow the plan: CenterCLIP keeps every token up to its cluster layer, then a third.
    shares = written[1]["token_shares_b32"]
    assert shares[:6] == [1.0] * 6 and shares[6] < 0.4
    assert written[2]["token_shares_b32"][1] < 1.0  # progressive merging starts at layer 1
    assert written[0]["training_free_t2v_r1_mean"] is None and written[1]["training_free_t2v_r1_mean"] is not None
    assert (tmp_path / "frontier.png").stat().st_size > 0
    assert "Pareto frontier" in capsys.readouterr().out


def test_points_map_to_other_towers_by_the_share_of_tokens_kept():
    reference = next(p for p in benchmark_frontier.GRID if p.reference).config_b32
    # The demo: 8 frames, 4 layers, 64 patches per frame; 4 segments of 2 frames keep a third of 128 patches.
    assert benchmark_frontier.scaled_settings(reference, 8, 4, 64) == dict(
        cluster_algo="kmedoids", cluster_layer=2, num_segments=4, num_centers=43, num_frames=8
    )
    assert benchmark_frontier.scaled_settings(reference, 12, 12, 196)["num_centers"] == 196  # ViT-B/16: 4 x 49
    merging = dict(cluster_algo="tome", cluster_layer=3, num_segments=4, num_centers=49, merge_r=2)
    assert benchmark_frontier.scaled_settings(merging, 8, 4, 64)["merge_r"] == 8  # 3 layers' worth per layer
