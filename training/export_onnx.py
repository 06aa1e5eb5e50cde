"""Export CenterCLIP's video tower (pixel values + video mask -> video embedding) with `torch.export` and to ONNX.

    python -m training.publish export-onnx --model outputs/demo/centerclip/final --output tower.onnx
    python -m training.export_onnx --model MODEL --output tower.onnx [--batch 2] [--frames 12]   # the same

The exported program takes `pixel_values [B, T, 3, H, W]` float32 and `video_mask [B, T]` bool and returns the
L2-normalised video embeddings `[B, E]`, what retrieval compares. The whole tower is one graph: the k-medoids
loop is an in-graph `while_loop` (an ONNX `Loop`), so ONNX Runtime runs it without PyTorch. The batch size is
fixed at export (`--batch`; static shapes, as a CUDA graph wants). ONNX cannot raise, so the exported graph
does not carry the eager model's data checks (an empty video mask, non-finite tokens): validate inputs before
running it. After writing, the file is run in ONNX Runtime on random frames (one padded frame) and its
embeddings are compared with PyTorch's; the export fails if they differ by more than `--atol` (default 1e-4,
for fp32 embeddings of unit norm). Spectral clustering (`torch.linalg.eigh`) has no ONNX operator.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from torch import nn

from training.cli_errors import require_model_folder
from training.cli_parsers import EXPORT_ONNX_ATOL as DEFAULT_ATOL, add_export_onnx_arguments, new_parser

logger = logging.getLogger(__name__)


class VideoTower(nn.Module):
    """`CenterCLIPModel`'s video path as a module of two tensors: frames and mask -> normalised embeddings."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        embeds = self.model.get_video_features(pixel_values=pixel_values, video_mask=video_mask).pooler_output
        return torch.nn.functional.normalize(embeds, dim=-1)


def example_inputs(config, batch: int, num_frames: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random frames for `config` and a mask with the last frame of the first video padded (when T > 1)."""
    num_frames = num_frames or config.num_frames
    size = config.vision_config.image_size
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, num_frames, 3, size, size, generator=generator)
    video_mask = torch.ones(batch, num_frames, dtype=torch.bool)
    if num_frames > 1:
        video_mask[0, -1] = False
    return pixel_values, video_mask


def export_video_tower(model, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.export.ExportedProgram:
    """`torch.export` of the video tower in eval mode, traced without the data checks (see the module doc)."""
    from modeling_centerclip.input_checks import checks_disabled

    if model.config.cluster_algo == "spectral":
        raise ValueError("cluster_algo='spectral': torch.linalg.eigh has no ONNX operator; export kmedoids, tome, uniform or none")
    tower = VideoTower(model.eval())
    with checks_disabled(), torch.no_grad():
        return torch.export.export(tower, inputs, strict=False)


def export_onnx(model, output: str | Path, batch: int = 2, num_frames: int | None = None, atol: float = DEFAULT_ATOL) -> float:
    """Write the video tower of `model` to `output` (ONNX), check it in ONNX Runtime; returns the max abs difference."""
    output = Path(output)
    if output.suffix != ".onnx":
        raise ValueError(f"--output {output}: must end in .onnx")
    output.parent.mkdir(parents=True, exist_ok=True)
    inputs = example_inputs(model.config, batch, num_frames)
    program = export_video_tower(model, inputs)
    onnx_program = torch.onnx.export(program, inputs, input_names=["pixel_values", "video_mask"],
                                     output_names=["video_embeds"], dynamo=True, verbose=False)  # fmt: skip
    onnx_program.save(str(output))
    check_inputs = example_inputs(model.config, batch, num_frames, seed=1)
    difference = max_difference(model, output, check_inputs)
    if not difference <= atol:  # also catches NaN
        raise RuntimeError(f"{output}: ONNX Runtime embeddings differ from PyTorch's by {difference:.2e} > atol={atol}")
    return difference


def run_onnx(path: str | Path, pixel_values: torch.Tensor, video_mask: torch.Tensor):
    """Embeddings `[B, E]` (numpy) of the exported tower in ONNX Runtime on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixel_values": pixel_values.numpy(), "video_mask": video_mask.numpy()})[0]


def max_difference(model, path: str | Path, inputs: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Largest absolute difference between ONNX Runtime's and PyTorch's embeddings on `inputs`."""
    with torch.no_grad():
        expected = VideoTower(model.eval())(*inputs)
    return float((torch.from_numpy(run_onnx(path, *inputs)) - expected).abs().max())


def run(args: argparse.Namespace) -> None:
    from modeling_centerclip import CenterCLIPModel

    if args.batch < 1:
        raise ValueError(f"--batch {args.batch}: must be at least 1")
    require_model_folder(args.model)
    if not Path(args.model).exists() and "/" not in args.model:
        raise FileNotFoundError(f"--model {args.model}: no such folder (and not a Hub id org/name)")
    model = CenterCLIPModel.from_pretrained(args.model)
    difference = export_onnx(model, args.output, batch=args.batch, atol=args.atol)
    logger.info("Wrote %s; ONNX Runtime vs PyTorch max |difference| %.2e", args.output, difference)
    print(f"wrote {args.output} (max |ONNX Runtime - PyTorch| = {difference:.2e})")


def main(argv=None) -> None:
    """`python -m training.export_onnx` (the same as `python -m training.publish export-onnx`)."""
    parser = new_parser(prog="python -m training.export_onnx", description=__doc__.split("\n")[0])
    add_export_onnx_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(args)


if __name__ == "__main__":
    from training.cli_errors import run_cli

    run_cli("python -m training.export_onnx", main)
