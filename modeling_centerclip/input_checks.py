"""The video path's checks on data (an empty video mask, non-finite tokens), kept inside compiled graphs.

A check that reads tensor values would break a `torch.compile(fullgraph=True)` graph (`.item()`, `.tolist()`).
Each check here is a `torch.library` custom op registered as effectful: the compiler keeps it in the graph as
one opaque call (never dead-code eliminated, never reordered), and at run time it raises the same named error as
in eager mode. While a CUDA stream is being captured into a CUDA graph the checks return at once (a capture
cannot read values), so a replayed graph runs without them; exported graphs (`torch.export`, ONNX) are traced
inside `checks_disabled()`, as ONNX cannot raise.
"""

import contextlib
import re

import torch
from torch._higher_order_ops.effects import _EffectType


class NonFiniteTokensError(ValueError):
    """NaN or inf tokens reached the clustering (a NaN pixel, diverged or corrupt weights).

    `layer` is the vision layer whose input held them, `videos` the batch positions of the affected videos.
    """

    def __init__(self, layer: int, videos: list[int]):
        self.layer, self.videos = layer, videos
        super().__init__(
            f"non-finite (NaN or inf) tokens at the input of vision layer {layer} (the cluster layer) in the videos "
            f"at batch positions {videos}; check those videos' pixel values and the model weights (a diverging "
            "learning rate makes them NaN)"
        )


# Hub remote code can import a second copy of this module under another name; each copy registers its own ops.
_PREFIX = "centerclip::" + re.sub(r"\W", "_", __name__) + "_"
_enabled = [True]


@contextlib.contextmanager
def checks_disabled():
    """Trace without the data checks (for `torch.export` / ONNX, which cannot raise); eager calls are unaffected
    outside the block."""
    _enabled[0] = False
    try:
        yield
    finally:
        _enabled[0] = True


def _capturing(tensor: torch.Tensor) -> bool:
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()


@torch.library.custom_op(_PREFIX + "check_video_mask", mutates_args=())
def _check_video_mask(video_mask: torch.Tensor) -> None:
    if _capturing(video_mask):
        return
    empty = (~video_mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"video_mask marks no real frame for the video(s) at batch index {empty}")


@torch.library.custom_op(_PREFIX + "check_finite_tokens", mutates_args=())
def _check_finite_tokens(hidden_states: torch.Tensor, frame_mask: torch.Tensor, layer: int, num_frames: int) -> None:
    if _capturing(hidden_states):
        return
    finite = torch.isfinite(hidden_states).flatten(1).all(dim=1) | ~frame_mask  # [B*T]
    if not bool(finite.all()):
        bad_frames = (~finite).nonzero().flatten()
        raise NonFiniteTokensError(layer, sorted(set((bad_frames // num_frames).tolist())))


for _op in (_check_video_mask, _check_finite_tokens):
    _op.register_fake(lambda *args: None)
    torch.library._register_effectful_op(_op._qualname, _EffectType.ORDERED)


def check_video_mask(video_mask: torch.Tensor) -> None:
    """Raise `ValueError` naming the batch positions of videos whose bool mask `[B, T]` holds no real frame."""
    if _enabled[0]:
        _check_video_mask(video_mask)


def check_finite_tokens(hidden_states: torch.Tensor, frame_mask: torch.Tensor, layer: int, num_frames: int) -> None:
    """Raise `NonFiniteTokensError` if a real frame's tokens (`[B*T, L, D]`, `frame_mask [B*T]`) are NaN/inf."""
    if _enabled[0]:
        _check_finite_tokens(hidden_states.detach(), frame_mask, layer, num_frames)


__all__ = ["NonFiniteTokensError", "check_finite_tokens", "check_video_mask", "checks_disabled"]
