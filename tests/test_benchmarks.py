"""The speed benchmark runs end to end in quick mode (its numbers are not asserted: see the README)."""

import json
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from modeling_centerclip import clustering
from modeling_centerclip import modeling_centerclip as modeling
from modeling_centerclip.clustering import kmedoids

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
    # One clustering call: the torch path dispatches ~200 operations here, the fused path its distance matrix,
    # a few allocations and one kernel launch.
    assert row["ops_per_call_torch"] > 100 > 25 > row["ops_per_call_triton"] > 0
    assert [point["batch"] for point in row["by_batch"]] == [2] and row["by_batch"][0]["speedup"] == row["speedup"]


def test_operation_counters():
    cpu = torch.device("cpu")
    assert benchmark_speed.device_ops(lambda: torch.ones(3).add(1).sum(), cpu) == 3  # ones, add, sum
    tokens = torch.randn(2, 12, 4)
    launches = benchmark_speed.LaunchCounter()
    launches[(2,)]("any", "arguments")
    assert launches.launches == 1
    torch_ops = benchmark_speed.ops_per_call(partial(kmedoids, tokens, 3), "torch")
    fused_ops = benchmark_speed.ops_per_call(partial(kmedoids, tokens, 3), "triton")
    assert torch_ops > 50 and fused_ops == 17  # 12 for input, distances and norms (views too), 4 allocations, 1 launch


def test_forced_clustering_backend_reaches_the_models_calls(monkeypatch):
    """The CUDA run times the tower with the torch path forced; here forcing Triton on CPU tensors must fail."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    tokens = torch.randn(2, 12, 4)
    with benchmark_speed.clustering_backend("triton"):
        for cluster in (modeling.kmedoids, modeling.spectral_clustering):
            with pytest.raises(ValueError, match="TRITON_INTERPRET"):
                cluster(tokens, 3)
    assert modeling.kmedoids is clustering.kmedoids and kmedoids(tokens, 3)[1].shape == (2, 3)


def test_gpu_checks_script_runs_every_step_and_names_the_failed_ones(tmp_path):
    """The one-call GPU script (benchmarks/gpu_checks.sh) goes on after a failing step and exits non-zero."""
    import subprocess

    python = tmp_path / "python"  # stands in for python3: the machine check works, every step fails but one
    python.write_text('#!/bin/sh\ncase "$*" in *clustering_cases*) exit 0;; *pytest*|*benchmark_speed*) exit 3;; '
                      'esac\necho "torch x"\n')
    python.chmod(0o755)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_checks.sh"
    done = subprocess.run(["bash", str(script)], env={"PATH": "/usr/bin:/bin", "PY": str(python),
                                                      "OUT": str(tmp_path / "out")},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "tests: rc=3" in done.stdout and "clustering_cuda: rc=0" in done.stdout
    assert "benchmark_speed: rc=3" in done.stdout and "benchmark_compile: rc=3" in done.stdout
    assert done.stdout.strip().endswith("failed steps: tests benchmark_speed benchmark_compile")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "benchmark_compile.log", "benchmark_speed.log", "clustering_cuda.log", "machine.txt", "tests.log"]


def test_search_benchmark_quick_mode_measures_every_in_memory_kind(tmp_path):
    """Part 1-3 of the search benchmark end to end on tiny shapes: ivfpq, built on disk, is part 4's."""
    import benchmark_search

    benchmark_search.main(["--quick", "--output_dir", str(tmp_path)])
    report = json.loads((tmp_path / "search.json").read_text())
    assert {row["kind"] for row in report["ann"]} == set(benchmark_search.IN_MEMORY_KINDS) == {"flat", "ivf", "hnsw"}
