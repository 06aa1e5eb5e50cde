"""The kept-tokens picture (`python -m training.visualize`)."""

import numpy as np
import torch
from PIL import Image
from tiny_models import tiny_centerclip_config

from modeling_centerclip import CenterCLIPModel, CenterCLIPProcessor
from training.visualize import GAP, HEADER, main


def test_visualize_command_writes_the_picture(tmp_path, tiny_tokenizer, make_video):
    torch.manual_seed(0)
    CenterCLIPModel(tiny_centerclip_config()).save_pretrained(tmp_path / "model")
    CenterCLIPProcessor(tokenizer=tiny_tokenizer, num_frames=4, image_size=32).save_pretrained(tmp_path / "model")
    video = make_video(tmp_path / "clip with space.mp4", 3, size=32)  # 3 frames: the 4th is padding
    main(["--model", str(tmp_path / "model"), "--video", video, "--output", str(tmp_path / "kept.png"), "--panel", "64"])

    picture = np.asarray(Image.open(tmp_path / "kept.png").convert("RGB"))
    segments, per_segment = 2, 2  # the tiny config: 4 frames in 2 segments
    assert picture.shape == (segments * (HEADER + 64 + GAP) + GAP, per_segment * (64 + GAP) + GAP, 3)
    panel = picture[GAP + HEADER : GAP + HEADER + 64, GAP : GAP + 64]
    assert panel.std() > 10, "the first frame's panel holds a picture, not a blank"
    # the padded frame (segment 2, frame 2) is greyed out: far less contrast than its real neighbour
    top = 2 * GAP + HEADER + 64 + HEADER
    real, padded = picture[top : top + 64, GAP : GAP + 64], picture[top : top + 64, 2 * GAP + 64 : 2 * GAP + 128]
    assert padded.std() < real.std()
