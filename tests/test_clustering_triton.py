"""The fused Triton k-medoids returns exactly what the torch path returns, checked without a GPU.

Triton's interpreter (`TRITON_INTERPRET=1`) runs the kernel on CPU tensors, but the variable is read when the
kernel module is imported, so the equality cases run in one subprocess started with it set
(`clustering_cases.py` run as a script), which reports every case's mismatches as JSON; each case is then its
own test here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from clustering_cases import ALL_CASES, TIE_CASES, torch_path_results
from transformers.dynamic_module_utils import get_imports

from modeling_centerclip import clustering


# Subprocesses import this checkout's package, not whichever one the environment has installed.
ROOT = str(Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def interpreted_results():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": ROOT}
    script = Path(__file__).with_name("clustering_cases.py")
    done = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=550)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ALL_CASES)
def test_fused_kmedoids_equals_torch_path(interpreted_results, case):
    result = interpreted_results[case]
    assert result["kernel_calls"] > 0, "the Triton backend was not used"
    assert result["failures"] == []


# The tie cases under other thread counts and CPU capabilities (ATen's kernels, hence the distance matrix's last
# bits and the sums' order, change with both): the near-tie rule must make every choice come out the same.
TIE_ENVIRONMENTS = [
    {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "avx2"},
    {"OMP_NUM_THREADS": "2", "ATEN_CPU_CAPABILITY": "default"},
]


def test_tie_cases_agree_across_thread_counts_and_cpu_capabilities():
    script = Path(__file__).with_name("clustering_cases.py")
    here = torch_path_results(TIE_CASES)  # this process: its own thread count and the machine's capability
    for settings in TIE_ENVIRONMENTS:
        env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": ROOT, **settings}
        done = subprocess.run([sys.executable, script, "--ties"], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["failures"] == [], settings  # the interpreted kernel equals the torch path
        for name in TIE_CASES:
            assert report["torch"][name] == here[name], (settings, name)  # the torch path equals itself elsewhere


def test_backend_selection_errors(monkeypatch):
    tokens = torch.randn(1, 5, 2)
    with pytest.raises(ValueError, match="backend"):
        clustering.kmedoids(tokens, 2, backend="cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        clustering.kmedoids(tokens, 2, backend="triton")
    assert not clustering._use_triton("auto", tokens.device)  # the CPU default stays the torch path


def test_package_works_without_triton():
    """Hub remote code must load where Triton is missing: the kernel module is imported only on use."""
    script = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, modeling_centerclip\n"
        "from modeling_centerclip.clustering import kmedoids\n"
        "a, m = kmedoids(torch.randn(2, 9, 3), 3)\n"
        "assert m.shape == (2, 3) and 'modeling_centerclip.clustering_triton' not in sys.modules\n"
        "try:\n    kmedoids(torch.randn(2, 9, 3), 3, backend='triton')\nexcept ImportError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "needs the triton package" in done.stdout
    # save_pretrained ships the kernel module too; the remote-code loader must not require Triton for it.
    assert "triton" not in get_imports(Path(clustering.__file__).with_name("clustering_triton.py"))


def test_kernel_compiles_for_hopper_at_vit_b16_segment_size():
    """The interpreter does not type-check like the compiler: compile the real GPU binary (no GPU needed)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from modeling_centerclip.clustering_triton import _kmedoids_kernel, launch_config

    config = launch_config(3 * 196)
    signature = {
        "dist_ptr": "*fp32", "norms_ptr": "*fp32", "mask_ptr": "*u8", "assign_ptr": "*i64", "medoids_ptr": "*i64",
        "cost_ptr": "*fp64", "flag_ptr": "*i32", "N": "i32", "K": "i32", "max_iters": "i32",
        **dict.fromkeys(["SQRT", "HAS_MASK", "BLOCK_I", "BLOCK_N"], "constexpr"),
    }
    constexprs = {"SQRT": True, "HAS_MASK": True, "BLOCK_I": config["BLOCK_I"], "BLOCK_N": config["BLOCK_N"]}
    source = ASTSource(_kmedoids_kernel, signature, constexprs=constexprs)
    options = {key: config[key] for key in ("num_warps", "enable_fp_fusion")}
    kernel = compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    assert "bar.sync" in kernel.asm["ptx"] and len(kernel.asm["cubin"]) > 0
