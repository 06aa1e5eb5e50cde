"""Peak tensor memory of one call on the CPU, by category: the CPU's `torch.cuda.max_memory_allocated`.

The demo's and the benchmarks' training-memory figures come from here.

A process's peak RSS is no measure of it. glibc keeps freed heap pages and raises its mmap threshold after large
frees, so the peak RSS of a training step depends on the order of allocations more than on their sizes: it made a
LoRA step look 1.04-1.17x as large as full fine-tuning when its tensors peak at 0.76x. PyTorch's profiler records
every allocation and free instead; its memory timeline (the one `torch.profiler.profile.export_memory_timeline`
plots) also says what each live tensor is: parameter, gradient, optimizer state, activation, ...

    stats = peak_tensor_memory(lambda: train_step(batch))
    stats["peak_bytes"], stats["at_peak"]["activation"]
    training_step_memory(model, batch_size=32, max_words=24)   # one training step at the model's shapes
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

# The timeline's columns after its first (unused) one, in torch.profiler._memory_profiler's category order.
CATEGORIES = ("parameter", "optimizer_state", "input", "temporary", "activation", "gradient", "autograd_detail",
              "unknown")  # fmt: skip


def peak_tensor_memory(fn: Callable[[], object]) -> dict:
    """Run `fn` once under the profiler. Returns `peak_bytes` (the highest total of live CPU tensors while it ran,
    less those alive before it), `before_bytes`, and `at_peak`: bytes per category at that moment."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        # Deprecated in favour of a CUDA-only tool; still the profiler's one CPU timeline.
        warnings.simplefilter("ignore", FutureWarning)
        path = Path(folder) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    if not sizes:
        raise RuntimeError("the profiler recorded no CPU tensor allocations")
    totals = [sum(row[1:]) for row in sizes]
    peak = max(range(len(totals)), key=totals.__getitem__)
    return {"peak_bytes": totals[peak] - totals[0], "before_bytes": totals[0],
            "at_peak": dict(zip(CATEGORIES, sizes[peak][1:], strict=True))}  # fmt: skip


def training_step_memory(model, batch_size: int, max_words: int) -> dict:
    """`peak_tensor_memory` of one training step of a CenterCLIP `model` (or a `PeftModel` of one): the training
    loss over both towers (`training.losses.batch_loss`) and AdamW on its trainable weights, on a synthetic batch
    at its shapes (`batch_size` videos of the config's frames and image size, `max_words` tokens). Memory depends
    on shapes only, so random inputs measure it as well as real ones."""
    from training.losses import batch_loss

    config = model.config  # a PeftModel passes it through
    generator = torch.Generator().manual_seed(0)
    size = config.vision_config.image_size
    input_ids = torch.randint(2, config.text_config.vocab_size, (batch_size, max_words), generator=generator)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
             "pixel_values": torch.randn(batch_size, config.num_frames, 3, size, size, generator=generator)}  # fmt: skip
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])

    def step():
        batch_loss(model, batch).backward()
        optimizer.step()

    return peak_tensor_memory(step)


if __name__ == "__main__":  # a quick look: a linear layer's training step
    layer = torch.nn.Linear(1024, 1024)
    optimizer = torch.optim.AdamW(layer.parameters())

    def step():
        layer(torch.randn(512, 1024)).square().sum().backward()
        optimizer.step()

    print(peak_tensor_memory(step))
