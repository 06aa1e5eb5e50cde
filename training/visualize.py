"""Draw what CenterCLIP keeps of a video: each segment's frames, clusters coloured, kept tokens outlined.

    python -m training.visualize --model outputs/demo/centerclip/final --video clip.mp4 --output kept.png

One row per segment, one panel per frame of it. Every patch is tinted with the colour of its cluster; the
patch holding a cluster's medoid (the token the model keeps) is outlined in white. Padded frames are greyed
out. The image is `cols * (panel + gap) + gap` wide and `rows * (header + panel + gap) + gap` high, with
`cols = frames per segment` and `rows = segments`.
"""

from __future__ import annotations

import argparse
import colorsys
import sys
from pathlib import Path

if __package__ in (None, "") and __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch
from PIL import Image, ImageDraw

GAP, HEADER = 4, 14


def cluster_colours(num_clusters: int) -> np.ndarray:
    """`[K, 3]` uint8 colours spread around the hue circle, alternating lightness so neighbours differ."""
    return np.array(
        [
            [round(255 * c) for c in colorsys.hsv_to_rgb(i / num_clusters, 0.85, 1.0 if i % 2 else 0.7)]
            for i in range(num_clusters)
        ],
        dtype=np.uint8,
    )


def frame_panel(frame: np.ndarray, assignment: np.ndarray, kept: np.ndarray, colours: np.ndarray,
                grid: int, panel: int, real: bool) -> np.ndarray:
    """One frame `[S, S, 3]` uint8 with its `grid x grid` patches tinted by cluster and kept ones outlined."""
    image = np.asarray(Image.fromarray(frame).resize((panel, panel), Image.BICUBIC), dtype=np.float32)
    if not real:
        return (0.3 * image + 0.7 * 128).astype(np.uint8)
    cell = panel / grid
    tint = np.zeros_like(image)
    for patch, cluster in enumerate(assignment):
        row, col = divmod(patch, grid)
        tint[round(row * cell) : round((row + 1) * cell), round(col * cell) : round((col + 1) * cell)] = colours[cluster]
    image = (0.7 * image + 0.3 * tint).astype(np.uint8)
    outline = Image.fromarray(image)
    draw = ImageDraw.Draw(outline)
    for patch in kept:
        row, col = divmod(int(patch), grid)
        box = (round(col * cell), round(row * cell), round((col + 1) * cell) - 1, round((row + 1) * cell) - 1)
        draw.rectangle(box, outline=(255, 255, 255), width=max(1, round(cell / 8)))
    return np.asarray(outline)


def draw_clusters(frames: np.ndarray, video_mask: np.ndarray, medoids: np.ndarray, assignment: np.ndarray,
                  grid: int, panel: int = 160) -> Image.Image:
    """Compose the picture.

    Args:
        frames: `[T, S, S, 3]` uint8, the model's input frames.
        video_mask: `[T]` bool, False for padded frames.
        medoids: `[num_segments, K]`, kept token indices into each segment's pooled patches (frame-major).
        assignment: `[num_segments, N]`, the cluster of each pooled patch token (-1 for padding).
        grid: patches per side of a frame (`image_size / patch_size`).
    """
    segments, per_segment = medoids.shape[0], frames.shape[0] // medoids.shape[0]
    patches = grid * grid
    colours = cluster_colours(medoids.shape[1])
    width = per_segment * (panel + GAP) + GAP
    height = segments * (HEADER + panel + GAP) + GAP
    canvas = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    for s in range(segments):
        top = GAP + s * (HEADER + panel + GAP)
        real_tokens = int((assignment[s] >= 0).sum())
        draw.text((GAP, top), f"segment {s + 1}: keeps {medoids.shape[1]} of {real_tokens} tokens", fill=(230, 230, 230))
        for f in range(per_segment):
            t = s * per_segment + f
            tokens = slice(f * patches, (f + 1) * patches)
            kept = medoids[s][(medoids[s] >= tokens.start) & (medoids[s] < tokens.stop)] - tokens.start
            panel_image = frame_panel(frames[t], assignment[s, tokens], kept, colours, grid, panel, bool(video_mask[t]))
            canvas.paste(Image.fromarray(panel_image), (GAP + f * (panel + GAP), top + HEADER))
    return canvas


def visualize(model, processor, video, output: str | Path, panel: int = 160) -> Path:
    """Run `model` on one video (path or `[frames, H, W, 3]` array) and write the picture to `output`."""
    inputs = processor(videos=[video], return_tensors="pt")
    with torch.inference_mode():
        out = model.get_video_features(inputs["pixel_values"], inputs["video_mask"], output_clusters=True)
    if out.cluster_medoids is None:
        raise ValueError(f"cluster_algo={model.config.cluster_algo!r} reduces no segment at a cluster layer: there is "
                         "nothing to draw; use a model with a cluster layer (kmedoids, spectral, tome, uniform)")
    mean = np.array(processor.image_mean).reshape(1, 3, 1, 1)
    std = np.array(processor.image_std).reshape(1, 3, 1, 1)
    frames = ((inputs["pixel_values"][0].numpy() * std + mean).clip(0, 1) * 255).round().astype(np.uint8)
    vision = model.config.vision_config
    picture = draw_clusters(
        frames.transpose(0, 2, 3, 1),
        inputs["video_mask"][0].numpy(),
        out.cluster_medoids[0].numpy(),
        out.cluster_assignment[0].numpy(),
        grid=vision.image_size // vision.patch_size,
        panel=panel,
    )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    picture.save(output)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="CenterCLIP folder or Hub id (with its processor files)")
    parser.add_argument("--video", required=True, help="a video file")
    parser.add_argument("--output", default="kept_tokens.png", help="PNG to write")
    parser.add_argument("--panel", type=int, default=160, help="pixels per frame panel")
    args = parser.parse_args(argv)

    import modeling_centerclip  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    print(f"wrote {visualize(model, processor, args.video, args.output, args.panel)}")


if __name__ == "__main__":
    main()
