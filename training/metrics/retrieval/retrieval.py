"""Retrieval metric for `evaluate`: recall at K, median rank and mean rank from ground-truth ranks.

Load it from this folder (works offline, nothing is downloaded):

    >>> import evaluate
    >>> metric = evaluate.load("training/metrics/retrieval")
    >>> metric.compute(ranks=[1, 3, 12])
    {'R@1': 33.33..., 'R@5': 66.66..., 'R@10': 66.66..., 'MdR': 3.0, 'MnR': 5.33...}

The ranks come from `training.evaluate.retrieval_ranks` (chunked, one rank per query); this module only
aggregates them, so it also accepts `add_batch` calls from several processes.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Text-video retrieval metrics from the rank of the ground truth for every query (ranks start at 1):
R@K = percentage of queries whose ground truth is among the top K (K = 1, 5, 10 by default),
MdR = median rank, MnR = mean rank. Lower MdR/MnR is better.
"""

_KWARGS_DESCRIPTION = """
Args:
    ranks (`list` of `int`): rank of the ground truth for each query, 1 = retrieved first.
        With several captions per video (MSVD), video->text queries pass the best rank among the video's captions.
    recall_at (`list` of `int`, *optional*, defaults to `[1, 5, 10]`): the K values of R@K.
    lower_median (`bool`, *optional*, defaults to `False`): MdR of an even number of ranks is the lower middle rank
        (`torch.median`, as CLIP4Clip's multi-caption text->video path) instead of the mean of the middle two.
Returns:
    `dict`: `R@K` (percent, 0-100) for each K, `MdR` and `MnR` (in ranks).
"""

_CITATION = """
@inproceedings{zhao2022centerclip,
  title={CenterCLIP: Token Clustering for Efficient Text-Video Retrieval},
  author={Zhao, Shuai and Zhu, Linchao and Wang, Xiaohan and Yang, Yi},
  booktitle={SIGIR},
  year={2022}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Retrieval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"ranks": datasets.Value("int64")}),
        )

    def _compute(self, ranks, recall_at=(1, 5, 10), lower_median=False):
        ranks = np.asarray(ranks, dtype=np.int64)
        if ranks.size == 0:
            raise ValueError("ranks: empty, nothing to evaluate")
        if ranks.min() < 1:
            raise ValueError(f"ranks: ranks start at 1, got {int(ranks.min())}")
        scores = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in recall_at}
        scores["MdR"] = float(np.sort(ranks)[(ranks.size - 1) // 2] if lower_median else np.median(ranks))
        scores["MnR"] = float(np.mean(ranks))
        return scores
