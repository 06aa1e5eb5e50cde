"""Contrastive loss over the global batch: embeddings of all processes are gathered with their gradients."""

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F

from modeling_centerclip.modeling_centerclip import video_text_contrastive_loss


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(tensor: torch.Tensor, pad_to: int | None = None) -> torch.Tensor:
    """All-gather `tensor` [b, ...] from every process into [sum of b, ...], in rank order, keeping gradients.

    The backward pass sums, for each process's shard, the gradients that every process computed for it
    (`torch.distributed.nn.functional.all_gather` does a reduce-scatter). When every process computes the same
    global loss from the gathered tensors, process r's shard gets `world_size * dL/d(shard_r)`; DDP then
    averages parameter gradients over processes, which gives exactly `dL/dparams` of one process that saw the
    whole global batch. Parameters used directly in the global loss (`logit_scale`) get `dL/dscale` on every
    process and the average keeps it. No-op with a single process.

    Local batch sizes may differ (a skipped video). With `pad_to` (a bound every process knows, such as the
    per-device batch size) each shard is padded to it and the result is `[world_size * pad_to, ...]` with the
    padding left in (the caller masks it): no host synchronisation. Without it, the sizes are gathered first
    and the padding is cut out again.
    """
    if not _distributed():
        return tensor
    if pad_to is None:
        size = torch.tensor([tensor.shape[0]], device=tensor.device)
        sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, size)
        sizes = [int(s) for s in sizes]
        length = max(sizes)
    else:
        length = pad_to
    padded = F.pad(tensor, (0, 0) * (tensor.dim() - 1) + (0, length - tensor.shape[0]))
    with warnings.catch_warnings():  # its suggested successor has no gloo backward; this one works everywhere
        warnings.simplefilter("ignore", FutureWarning)
        shards = dist_nn.all_gather(padded)
    if pad_to is not None:
        return torch.cat(shards, dim=0)
    return torch.cat([shard[:n] for shard, n in zip(shards, sizes)], dim=0)


def masked_contrastive_loss(logits_per_text: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy of a `[N, N]` similarity matrix whose diagonal holds the pairs, over the valid
    pairs only: padding rows are left out and padding columns are no candidates. No valid pair: loss 0."""
    blocked = torch.finfo(logits_per_text.dtype).min  # finite, so even an all-padding matrix stays NaN-free

    def one_way(logits):
        log_probs = logits.masked_fill(~valid[None, :], blocked).log_softmax(dim=1).diagonal()
        return -torch.where(valid, log_probs, 0.0).sum() / valid.sum().clamp(min=1)

    return (one_way(logits_per_text) + one_way(logits_per_text.t())) / 2


def global_contrastive_loss(text_embeds: torch.Tensor, video_embeds: torch.Tensor, logit_scale: torch.Tensor,
                            valid: torch.Tensor | None = None, pad_to: int | None = None):  # fmt: skip
    """Symmetric InfoNCE over all processes' pairs.

    Args:
        text_embeds: [b, d] L2-normalised, this process's captions (pair i matches `video_embeds[i]`).
        video_embeds: [b, d] L2-normalised.
        logit_scale: scalar parameter, log of the inverse temperature.
        valid: [b] bool, False for padding pairs (default: all valid).
        pad_to: see `gather_with_grad`; the training loop passes the per-device batch size.
    Returns:
        (loss, logits_per_text [B, B]) with B the gathered batch; the loss is the same on every process.
    """
    dtype = torch.promote_types(text_embeds.dtype, torch.float32)  # the softmax runs in fp32 under fp16/bf16
    all_text = gather_with_grad(text_embeds.to(dtype), pad_to)
    all_video = gather_with_grad(video_embeds.to(dtype), pad_to)
    logits_per_text = logit_scale.to(dtype).exp() * all_text @ all_video.t()
    if valid is None and (pad_to is None or not _distributed()):
        return video_text_contrastive_loss(logits_per_text), logits_per_text
    if valid is None:
        valid = torch.ones(text_embeds.shape[0], dtype=torch.bool, device=text_embeds.device)
    if _distributed():
        padded = F.pad(valid.to(torch.uint8), (0, (pad_to or valid.shape[0]) - valid.shape[0]))
        shards = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
        dist.all_gather(shards, padded)  # no gradient, no host sync
        valid = torch.cat(shards).bool()
    return masked_contrastive_loss(logits_per_text, valid), logits_per_text


def batch_loss(model, batch: dict, pad_to: int | None = None) -> torch.Tensor:
    """Forward one local batch through `model` (plain or DDP-wrapped) and return the global-batch loss.

    `batch` holds `input_ids` [b, L], `attention_mask` [b, L], `pixel_values` [b, T, 3, H, W] and optionally
    `video_mask` [b, T] and `valid` [b] (False: a padding item); caption i describes video i. The call goes through
    the wrapper so DDP sees the forward.
    """
    outputs = model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        pixel_values=batch["pixel_values"],
        video_mask=batch.get("video_mask"),
    )
    logit_scale = getattr(model, "module", model).logit_scale
    loss, _ = global_contrastive_loss(outputs.text_embeds, outputs.video_embeds, logit_scale,
                                      valid=batch.get("valid"), pad_to=pad_to)  # fmt: skip
    return loss
