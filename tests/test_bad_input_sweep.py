"""The bad-input sweep (issue #13): one row per case, each an input and what it must give.

A row's `run(tmp_path)` feeds one bad input; `raises` is the exception it must raise (None: it must succeed,
and `check` may inspect the result) and `match` a fragment of the message, which names the field, file or
argument at fault. Keep the list in sections by area.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import tiny_centerclip_config

from modeling_centerclip import CenterCLIPModel, NonFiniteTokensError


@dataclass
class Case:
    id: str
    run: Callable[[Path], Any]
    raises: type[BaseException] | None
    match: str = ""
    check: Callable[[Any], None] | None = None


CASES: list[Case] = []

# --- model and configuration ----------------------------------------------------------------------------


def tiny_model(**overrides) -> CenterCLIPModel:
    torch.manual_seed(0)
    return CenterCLIPModel(tiny_centerclip_config(**overrides)).eval()


def videos(batch=2, frames=4):
    return torch.randn(batch, frames, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def texts(count=2):
    return torch.randint(1, 97, (count, 7), generator=torch.Generator().manual_seed(0))


def nan_pixel(algo):
    pixels = videos()
    pixels[1, 3, 0, 5, 5] = float("nan")
    return tiny_model(cluster_algo=algo).get_video_features(pixels)


def nan_in_padded_frame(_):
    pixels = videos()
    pixels[0, 3] = float("nan")  # frame 3 of video 0 is padding
    return tiny_model().get_video_features(pixels, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))


def finite_embedding(out):
    assert torch.isfinite(out.pooler_output).all()


def changed_config(_):
    model = tiny_model()
    model.config.num_segments = 3  # 4 frames do not split into 3 segments
    return model.get_video_features(videos())


CASES += [
    Case("video_mask transposed [T, B]", lambda _: tiny_model().get_video_features(videos(), torch.ones(4, 2, dtype=torch.bool)),
         ValueError, r"video_mask has shape \(4, 2\) but pixel_values \(2, 4, 3, 32, 32\)"),
    Case("video_mask [1, T] for two videos", lambda _: tiny_model().get_video_features(videos(), torch.ones(1, 4, dtype=torch.bool)),
         ValueError, r"video_mask has shape \(1, 4\)"),
    Case("video_mask row without a real frame", lambda _: tiny_model().get_video_features(videos(), torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])),
         ValueError, r"no real frame .* batch index \[1\]"),
    Case("NaN pixel reaching k-medoids", lambda _: nan_pixel("kmedoids"), NonFiniteTokensError, r"vision layer 2 .* batch positions \[1\]"),
    Case("NaN pixel reaching spectral clustering", lambda _: nan_pixel("spectral"), NonFiniteTokensError, r"batch positions \[1\]"),
    Case("NaN pixel in a padded frame is ignored", nan_in_padded_frame, None, check=finite_embedding),
    Case("forward with no videos", lambda _: tiny_model()(input_ids=texts(), pixel_values=videos(batch=0)), ValueError, "no video"),
    Case("forward without pixel_values", lambda _: tiny_model()(input_ids=texts()), ValueError, "pixel_values is required"),
    Case("return_loss with 2 texts and 3 videos", lambda _: tiny_model()(input_ids=texts(2), pixel_values=videos(3), return_loss=True),
         ValueError, "2 texts and 3 videos"),
    Case("config changed after construction", changed_config, ValueError, "num_segments"),
    Case("spectral_sigma NaN", lambda _: tiny_centerclip_config(spectral_sigma=float("nan")), ValueError, "spectral_sigma=nan: must be a finite"),
    Case("spectral_sigma inf", lambda _: tiny_centerclip_config(spectral_sigma=float("inf")), ValueError, "spectral_sigma=inf"),
    Case("logit_scale_init_value NaN", lambda _: tiny_centerclip_config(logit_scale_init_value=float("nan")), ValueError, "logit_scale_init_value"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input(case: Case, tmp_path):
    if case.raises is None:
        result = case.run(tmp_path)
        if case.check is not None:
            case.check(result)
        return
    with pytest.raises(case.raises, match=case.match):
        case.run(tmp_path)
