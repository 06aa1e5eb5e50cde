"""Two CPU processes (gloo) give the same loss and gradients as one process on the same global batch."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from modeling_centerclip import CenterCLIPConfig, CenterCLIPModel
from training.losses import batch_loss, gather_with_grad

GLOBAL_BATCH = 6
VOCAB = 40


def tiny_model() -> CenterCLIPModel:
    torch.manual_seed(0)
    config = CenterCLIPConfig(
        text_config=dict(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=8,
        ),
        projection_dim=16, num_frames=4, num_segments=2, num_centers=8, cluster_layer=1, cluster_algo="kmedoids",
    )
    return CenterCLIPModel(config).double()  # float64: the comparison is not blurred by summation order


def global_batch() -> dict:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(2, VOCAB, (GLOBAL_BATCH, 8), generator=generator)
    input_ids[:, -1] = 1  # EOS token: CLIP pools the text at the EOS position
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(GLOBAL_BATCH, 4, 3, 32, 32, generator=generator, dtype=torch.float64),
    }


def loss_and_grads(model, batch):
    loss = batch_loss(model, batch)
    loss.backward()
    module = getattr(model, "module", model)
    return loss.detach(), {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def _worker(rank: int, world_size: int, port: int, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == world_size
    model = accelerator.prepare(tiny_model())  # DDP: gradients are averaged over processes
    # Uneven shards (4 + 2), as when a video of one process failed to decode: padding must not leak in.
    bounds = [0, 4, GLOBAL_BATCH]
    local = {k: v[bounds[rank] : bounds[rank + 1]] for k, v in global_batch().items()}
    gathered = gather_with_grad(local["input_ids"])
    loss, grads = loss_and_grads(model, local)
    torch.save({"loss": loss, "grads": grads, "gathered": gathered}, os.path.join(out_dir, f"rank{rank}.pt"))
    accelerator.wait_for_everyone()
    accelerator.end_training()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gather_is_identity_on_one_process():
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x


@pytest.mark.timeout(180)
def test_two_processes_match_one_process_on_global_batch(tmp_path):
    reference_loss, reference_grads = loss_and_grads(tiny_model(), global_batch())

    mp.start_processes(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    for result in results:
        # every process gathered the global batch in rank order and computed the global loss
        torch.testing.assert_close(result["gathered"], global_batch()["input_ids"], rtol=0, atol=0)
        torch.testing.assert_close(result["loss"], reference_loss, rtol=1e-12, atol=0)
        assert result["grads"].keys() == reference_grads.keys()
        for name, grad in reference_grads.items():
            # DDP's average of the per-process gradients equals the one-process gradient (not 1/2 or 2x of it)
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")
    assert reference_grads["logit_scale"].abs() > 0 and reference_grads["visual_projection.weight"].abs().sum() > 0


class RandomItems(torch.utils.data.Dataset):
    """Each item draws from torch's RNG, like a training item's random caption and frames."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return {"index": index, "value": torch.rand(())}


def _epoch_worker(rank: int, world_size: int, port: int, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    from training.train import EpochSeededItems, start_epoch

    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=0))
    items = EpochSeededItems(RandomItems(), seed=0)
    loader = accelerator.prepare(torch.utils.data.DataLoader(items, batch_size=2, shuffle=True))
    seen = []
    for epoch in range(2):
        start_epoch(loader, items, epoch)
        seen += [(epoch, int(i), float(v)) for batch in loader for i, v in zip(batch["index"], batch["value"])]
    torch.save(seen, os.path.join(out_dir, f"epochs{rank}.pt"))
    accelerator.wait_for_everyone()
    accelerator.end_training()


@pytest.mark.timeout(180)
def test_items_are_reseeded_every_epoch_with_two_processes(tmp_path):
    from training.train import EpochSeededItems

    mp.start_processes(_epoch_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    seen = [entry for r in range(2) for entry in torch.load(tmp_path / f"epochs{r}.pt")]
    reference = EpochSeededItems(RandomItems(), seed=0)
    for epoch in range(2):
        assert sorted(i for e, i, _ in seen if e == epoch) == list(range(8)), "each epoch covers every item once"
    for epoch, index, value in seen:
        reference.set_epoch(epoch)
        assert value == float(reference[index]["value"]), (epoch, index)
    first = {i: v for e, i, v in seen if e == 0}
    assert all(first[i] != v for e, i, v in seen if e == 1), "a new epoch draws new random choices"
