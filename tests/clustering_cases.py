"""Token sets that exercise the clustering's rules, and the check that both k-medoids backends agree on them.

Shared by tests/test_clustering.py and tests/test_clustering_triton.py. Run as a script it compares the torch and
the fused Triton backends on every case and prints the mismatches as JSON; it needs no pytest, so it also runs
on a GPU machine: `PYTHONPATH=. python3 tests/clustering_cases.py cuda --check` (the tests run it on the CPU with
`TRITON_INTERPRET=1`). `--ties` runs only the tie cases and also prints the torch path's results (the tests compare
them across thread counts and CPU capabilities).
"""

import json
import sys

import torch

from modeling_centerclip import clustering


def random_cases(seed: int):
    """24 random shapes; duplicated (padded) frames in a third, K = N in a sixth."""
    g = torch.Generator().manual_seed(seed)
    for case in range(24):
        n = int(torch.randint(4, 40, (1,), generator=g))
        dim = int(torch.randint(2, 12, (1,), generator=g))
        k = int(torch.randint(1, n + 1, (1,), generator=g))
        tokens = torch.randn(3, n, dim, generator=g)
        if case % 3 == 1:  # duplicated (padded) frames: the second half repeats the first
            half = n // 2
            tokens[:, half : 2 * half] = tokens[:, :half]
        if case % 6 == 2:
            k = n
        yield tokens, k


def masked_case(seed=0, batch=4, n=30, dim=8):
    """Trailing and scattered padding, and a row without real tokens."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, n, dim, generator=g)
    mask = torch.ones(batch, n, dtype=torch.bool)
    mask[0, 20:] = False  # a trailing padded frame
    mask[1, ::3] = False  # scattered padding
    mask[2, :] = False  # no real token: clustered as if unmasked
    return tokens, mask


# Equality cases: name -> a builder of [(tokens, K, kmedoids keyword arguments)].
def _random_shapes(seed: int, distance: str):
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


def run_equality_cases(device: str) -> dict:
    """Subprocess side: every case through both backends; also spectral clustering, bf16 input, batch splits.

    On a GPU machine `cuda` runs the same cases on the compiled kernel.
    """
    import modeling_centerclip.clustering_triton as fused_module

    def on_device(kwargs):
        return {key: value.to(device) if torch.is_tensor(value) else value for key, value in kwargs.items()}

    calls = []
    kernel_entry = fused_module.kmedoids_fused
    fused_module.kmedoids_fused = lambda *args: calls.append(1) or kernel_entry(*args)

    results = {}
    for name, build in CASES.items():
        failures, calls[:] = [], []
        for tokens, k, kwargs in build():
            what = f"{tuple(tokens.shape)} K={k} {kwargs}"
            tokens, kwargs = tokens.to(device), on_device(kwargs)
            reference = clustering.kmedoids(tokens, k, backend="torch", **kwargs)
            failures += _mismatches(clustering.kmedoids(tokens, k, backend="triton", **kwargs), reference, what)
        results[name] = {"failures": failures, "kernel_calls": len(calls)}

    failures, calls[:] = [], []
    tokens = torch.randn(4, 40, 8, generator=torch.Generator().manual_seed(9)).to(device)
    reference = clustering.kmedoids(tokens, 10, backend="torch")
    whole = clustering.kmedoids(tokens, 10, backend="triton")
    parts = [clustering.kmedoids(part, 10, backend="triton") for part in tokens.split(3)]
    failures += _mismatches(whole, reference, "whole batch")
    failures += _mismatches(tuple(torch.cat(p) for p in zip(*parts)), reference, "batch split 3 + 1")
    results["batch_splits"] = {"failures": failures, "kernel_calls": len(calls)}

    failures, calls[:] = [], []
    tokens = torch.randn(2, 30, 8, generator=torch.Generator().manual_seed(10)).bfloat16().to(device)
    with torch.autocast(tokens.device.type, dtype=torch.bfloat16):
        failures += _mismatches(
            clustering.kmedoids(tokens, 7, backend="triton"), clustering.kmedoids(tokens, 7, backend="torch"), "bf16"
        )
    results["bf16_under_autocast"] = {"failures": failures, "kernel_calls": len(calls)}

    failures, calls[:] = [], []
    tokens = torch.randn(3, 40, 8, generator=torch.Generator().manual_seed(11)).to(device)
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[1, 30:] = False
    for kwargs in [{}, on_device({"mask": mask})]:
        failures += _mismatches(
            clustering.spectral_clustering(tokens, 6, knn=8, backend="triton", **kwargs),
            clustering.spectral_clustering(tokens, 6, knn=8, backend="torch", **kwargs),
            f"spectral {list(kwargs)}",
        )
    results["spectral"] = {"failures": failures, "kernel_calls": len(calls)}

    # torch.compile(fullgraph=True) of both backends (the kernel as one custom-op call, the torch path's loop as a
    # while_loop) returns the eager torch path's result; aot_eager keeps the compile short.
    failures, calls[:] = [], []
    with torch._dynamo.config.patch(capture_scalar_outputs=False):
        compiled = torch.compile(clustering.kmedoids, fullgraph=True, backend="aot_eager")
        for tokens, k, kwargs in _grid_ties()[1:2] + _masked_tokens()[:1]:
            tokens, kwargs = tokens.to(device), on_device(kwargs)
            reference = clustering.kmedoids(tokens, k, backend="torch", **kwargs)
            for backend in ("torch", "triton"):
                what = f"compiled {backend} {tuple(tokens.shape)} K={k} {list(kwargs)}"
                failures += _mismatches(compiled(tokens, k, backend=backend, **kwargs), reference, what)
    results["compiled_fullgraph"] = {"failures": failures, "kernel_calls": len(calls)}
    return results


def torch_path_results(names) -> dict:
    """The torch path's `(assignment, medoids)` on the named cases, as lists (compared across processes)."""
    return {
        name: [[part.tolist() for part in clustering.kmedoids(tokens, k, backend="torch", **kwargs)]
               for tokens, k, kwargs in CASES[name]()]
        for name in names
    }  # fmt: skip


def run_tie_cases() -> dict:
    """The tie cases through both backends (`failures`: kernel vs torch) and the torch path's results (`torch`)."""
    failures = []
    for name in TIE_CASES:
        for tokens, k, kwargs in CASES[name]():
            reference = clustering.kmedoids(tokens, k, backend="torch", **kwargs)
            fused = clustering.kmedoids(tokens, k, backend="triton", **kwargs)
            failures += _mismatches(fused, reference, f"{name} {tuple(tokens.shape)} K={k} {kwargs}")
    return {"failures": failures, "torch": torch_path_results(TIE_CASES)}


ALL_CASES = [*CASES, "batch_splits", "bf16_under_autocast", "spectral", "compiled_fullgraph"]
# Cases whose results are decided by ties (exact in real arithmetic, near-ties after fp32 rounding).
TIE_CASES = ["grid_ties", "exact_duplicates", "n_equals_2k"]

if __name__ == "__main__":
    # python clustering_cases.py [DEVICE] [--check]: the JSON report; --check also exits 1 when a case differs
    # or the kernel did not run (for a run outside pytest, e.g. benchmarks/gpu_checks.sh).
    if "--ties" in sys.argv:  # the tie cases only, with the torch path's results, for the cross-process test
        print(json.dumps(run_tie_cases()))
        sys.exit(0)
    args = [arg for arg in sys.argv[1:] if arg != "--check"]
    report = run_equality_cases(args[0] if args else "cpu")
    print(json.dumps(report))
    if "--check" in sys.argv:
        bad = sorted(name for name, result in report.items() if result["failures"] or not result["kernel_calls"])
        print(f"{len(report) - len(bad)} of {len(report)} cases equal with the kernel used; differing: {bad}")
        sys.exit(1 if bad else 0)
