"""Contrastive loss over the global batch: embeddings of all processes are gathered with their gradients."""

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F

from modeling_centerclip.modeling_centerclip import video_text_contrastive_loss


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather `tensor` [b, ...] from every process into [sum of b, ...], in rank order, keeping gradients.

    The backward pass sums, for each process's shard, the gradients that every process computed for it
    (`torch.distributed.nn.functional.all_gather` does a reduce-scatter). When every process computes the same
    global loss from the gathered tensors, process r's shard gets `world_size * dL/d(shard_r)`; DDP then
    averages parameter gradients over processes, which gives exactly `dL/dparams` of one process that saw the
    whole global batch. Parameters used directly in the global loss (`logit_scale`) get `dL/dscale` on every
    process and the average keeps it. Local batch sizes may differ (a skipped video): shards are padded to the
    largest and the padding is cut out again. No-op with a single process.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = F.pad(tensor, (0, 0) * (tensor.dim() - 1) + (0, max(sizes) - tensor.shape[0]))
    with warnings.catch_warnings():  # its suggested successor has no gloo backward; this one works everywhere
        warnings.simplefilter("ignore", FutureWarning)
        shards = dist_nn.all_gather(padded)
    return torch.cat([shard[:n] for shard, n in zip(shards, sizes)], dim=0)


def global_contrastive_loss(text_embeds: torch.Tensor, video_embeds: torch.Tensor, logit_scale: torch.Tensor):
    """Symmetric InfoNCE over all processes' pairs.

    Args:
        text_embeds: [b, d] L2-normalised, this process's captions (pair i matches `video_embeds[i]`).
        video_embeds: [b, d] L2-normalised.
        logit_scale: scalar parameter, log of the inverse temperature.
    Returns:
        (loss, logits_per_text [B, B]) with B = world_size * b; the loss is the same on every process.
    """
    dtype = torch.promote_types(text_embeds.dtype, torch.float32)  # the softmax runs in fp32 under fp16/bf16
    all_text = gather_with_grad(text_embeds.to(dtype))
    all_video = gather_with_grad(video_embeds.to(dtype))
    logits_per_text = logit_scale.to(dtype).exp() * all_text @ all_video.t()
    return video_text_contrastive_loss(logits_per_text), logits_per_text


def batch_loss(model, batch: dict) -> torch.Tensor:
    """Forward one local batch through `model` (plain or DDP-wrapped) and return the global-batch loss.

    `batch` holds `input_ids` [b, L], `attention_mask` [b, L], `pixel_values` [b, T, 3, H, W] and optionally
    `video_mask` [b, T]; caption i describes video i. The call goes through the wrapper so DDP sees the forward.
    """
    outputs = model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        pixel_values=batch["pixel_values"],
        video_mask=batch.get("video_mask"),
    )
    logit_scale = getattr(model, "module", model).logit_scale
    loss, _ = global_contrastive_loss(outputs.text_embeds, outputs.video_embeds, logit_scale)
    return loss
