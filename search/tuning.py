"""Text-like queries for tuning an index: what people type sits across the modality gap from every video.

- The library's own captions through the text tower, where at least `MIN_CAPTIONS` rows have one;
- otherwise stored vectors shifted by the measured text-video offset: the mean text embedding of
  `PROMPTS` minus the mean stored video embedding, plus noise, renormalised.

`manifest.json` records which (`index.tuning_queries_from`: `captions` or `offset`).
"""

from __future__ import annotations

import numpy as np

from .models import ModelSpec

MIN_CAPTIONS = 8
COUNT = 200
PROMPTS = ("a video of a person", "a dog running on the grass", "a man is talking", "a woman cooking in a kitchen",
           "people dancing at a party", "a car driving down a road", "a cat playing", "someone playing the guitar",
           "a group of people walking", "a child riding a bike", "a cartoon", "a news reporter speaks",
           "a sports game", "food being prepared", "a bird flying", "a video game")  # fmt: skip


def text_like_queries(spec: ModelSpec, captions: list[str], sample: np.ndarray, count: int = COUNT,
                      seed: int = 0, noise: float = 0.05) -> tuple[np.ndarray, str]:  # fmt: skip
    """`[Q, dim]` L2-normalised tuning queries and where they came from (`captions` or `offset`).
    `sample`: stored video embeddings (a random sample is enough: only their mean and some rows are used)."""
    rng = np.random.default_rng(seed)
    distinct = sorted({c.strip() for c in captions if c and c.strip()})
    encoder = spec.load_text_encoder()
    if len(distinct) >= MIN_CAPTIONS:
        picks = [distinct[i] for i in sorted(rng.choice(len(distinct), size=min(count, len(distinct)), replace=False))]
        queries = np.concatenate([encoder(picks[i : i + 64]).numpy() for i in range(0, len(picks), 64)])
        return queries.astype(np.float32), "captions"
    offset = encoder(list(PROMPTS)).numpy().mean(0) - sample.mean(0)
    rows = sample[rng.integers(0, len(sample), size=min(count, max(len(sample), 1)))]
    queries = rows + offset + rng.normal(0, noise, size=rows.shape)
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32), "offset"
