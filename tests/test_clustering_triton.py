"""The fused Triton k-medoids returns exactly what the torch path returns, checked without a GPU.

Triton's interpreter (`TRITON_INTERPRET=1`) runs the kernel on CPU tensors, but the variable is read when the
kernel module is imported, so the equality cases run in one subprocess started with it set (this file run as
a script), which reports every case's mismatches as JSON; each case is then its own test here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers.dynamic_module_utils import get_imports

from modeling_centerclip import clustering


# Cases: name -> list of (tokens, K, kmedoids keyword arguments), built in the subprocess only.
def _random_shapes(seed: int, distance: str):
    from test_clustering import random_cases  # duplicates (padded frames) in a third, K = N in a sixth

    return [(tokens, k, {"distance": distance}) for tokens, k in random_cases(seed)]


def _exact_duplicates():
    frame = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(4))
    return [(frame.repeat(1, 3, 1), k, {}) for k in (1, 4, 6, 10, 18)]  # three identical frames


def _padded_vit_b32_segment():
    g = torch.Generator().manual_seed(3)
    frames = torch.randn(2, 3, 49, 64, generator=g) + torch.randn(2, 1, 49, 64, generator=g) * 3
    frames[1, 2] = frames[1, 1]  # the last frame repeats the one before, as padding does
    return [(frames.flatten(1, 2), 49, {}), (frames.flatten(1, 2), 49, {"distance": "cosine"})]


def _n_equals_2k():
    g = torch.Generator().manual_seed(5)
    tokens = torch.randn(3, 24, 8, generator=g)
    padded = tokens.clone()
    padded[:, 12:] = padded[:, :12]
    return [(tokens, 12, {}), (padded, 12, {}), (padded, 12, {"distance": "cosine"})]


def _grid_ties():
    # Integer coordinates: many exactly equal distances and costs, so every tie rule is exercised.
    g = torch.Generator().manual_seed(6)
    return [(torch.randint(0, 3, (4, 30, 3), generator=g).float(), k, {}) for k in (2, 5, 9, 15)]


def _few_iterations():
    g = torch.Generator().manual_seed(7)
    tokens = torch.randn(3, 36, 6, generator=g)
    return [(tokens, 6, {"max_iters": m}) for m in (0, 1, 2, 3)]


def _larger_random():
    g = torch.Generator().manual_seed(8)
    return [
        (torch.randn(2, 100, 32, generator=g) * 2, 25, {}),
        (torch.randn(1, 70, 16, generator=g), 35, {"distance": "cosine"}),
    ]


def _masked_tokens():
    from test_clustering import masked_case  # trailing and scattered padding, and a row without real tokens

    cases = []
    for seed, k in [(0, 5), (1, 6), (2, 24)]:  # K = 24 exceeds row 0's 20 real tokens
        tokens, mask = masked_case(seed=seed)
        cases += [(tokens, k, {"mask": mask}), (tokens, k, {"mask": mask, "distance": "cosine"})]
    padded = torch.randn(2, 3, 12, 4, generator=torch.Generator().manual_seed(12))
    padded[:, 2] = padded[:, 1]  # a repeated padding frame, masked out, with exact duplicates left in it
    mask = torch.ones(2, 3, 12, dtype=torch.bool)
    mask[1, 2] = False
    return cases + [(padded.flatten(1, 2), k, {"mask": mask.flatten(1)}) for k in (4, 12, 30)]


CASES = {
    "random_shapes_euclidean": lambda: _random_shapes(0, "euclidean"),
    "random_shapes_cosine": lambda: _random_shapes(1, "cosine"),
    "exact_duplicates": _exact_duplicates,
    "padded_vit_b32_segment": _padded_vit_b32_segment,
    "n_equals_2k": _n_equals_2k,
    "grid_ties": _grid_ties,
    "few_iterations": _few_iterations,
    "larger_random": _larger_random,
    "masked_tokens": _masked_tokens,
}


def _mismatches(fused, reference, what: str) -> list[str]:
    return [
        f"{what}: {name} differs in segments {torch.nonzero((a != b).any(-1)).flatten().tolist()}"
        for name, a, b in zip(("assignment", "medoids"), fused, reference)
        if not torch.equal(a, b)
    ]


def _run_cases() -> dict:
    """Subprocess side: every case through both backends; also spectral clustering, bf16 input, batch splits."""
    import modeling_centerclip.clustering_triton as fused_module

    calls = []
    kernel_entry = fused_module.kmedoids_fused
    fused_module.kmedoids_fused = lambda *args: calls.append(1) or kernel_entry(*args)

    results = {}
    for name, build in CASES.items():
        failures, calls[:] = [], []
        for tokens, k, kwargs in build():
            what = f"{tuple(tokens.shape)} K={k} {kwargs}"
            reference = clustering.kmedoids(tokens, k, backend="torch", **kwargs)
            failures += _mismatches(clustering.kmedoids(tokens, k, backend="triton", **kwargs), reference, what)
        results[name] = {"failures": failures, "kernel_calls": len(calls)}

    failures, calls[:] = [], []
    tokens = torch.randn(4, 40, 8, generator=torch.Generator().manual_seed(9))
    reference = clustering.kmedoids(tokens, 10, backend="torch")
    whole = clustering.kmedoids(tokens, 10, backend="triton")
    parts = [clustering.kmedoids(part, 10, backend="triton") for part in tokens.split(3)]
    failures += _mismatches(whole, reference, "whole batch")
    failures += _mismatches(tuple(torch.cat(p) for p in zip(*parts)), reference, "batch split 3 + 1")
    results["batch_splits"] = {"failures": failures, "kernel_calls": len(calls)}

    failures, calls[:] = [], []
    tokens = torch.randn(2, 30, 8, generator=torch.Generator().manual_seed(10)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        failures += _mismatches(
            clustering.kmedoids(tokens, 7, backend="triton"), clustering.kmedoids(tokens, 7, backend="torch"), "bf16"
        )
    results["bf16_under_autocast"] = {"failures": failures, "kernel_calls": len(calls)}

    failures, calls[:] = [], []
    tokens = torch.randn(3, 40, 8, generator=torch.Generator().manual_seed(11))
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[1, 30:] = False
    for kwargs in [{}, {"mask": mask}]:
        failures += _mismatches(
            clustering.spectral_clustering(tokens, 6, knn=8, backend="triton", **kwargs),
            clustering.spectral_clustering(tokens, 6, knn=8, backend="torch", **kwargs),
            f"spectral {list(kwargs)}",
        )
    results["spectral"] = {"failures": failures, "kernel_calls": len(calls)}
    return results


ALL_CASES = [*CASES, "batch_splits", "bf16_under_autocast", "spectral"]


@pytest.fixture(scope="module")
def interpreted_results():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=550, cwd=Path(__file__).parents[1]
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ALL_CASES)
def test_fused_kmedoids_equals_torch_path(interpreted_results, case):
    result = interpreted_results[case]
    assert result["kernel_calls"] > 0, "the Triton backend was not used"
    assert result["failures"] == []


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


if __name__ == "__main__":
    print(json.dumps(_run_cases()))
