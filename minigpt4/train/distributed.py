"""Process groups for torchrun: gloo on CPU, NCCL on GPU; gradient sync of the trainable set.

Gradients of the (small) trainable set are all-reduced in one flat bucket after the local
micro-batches, which is what DDP does minus the overlap; for a projection layer the message is
tiny and overlap buys nothing, and it keeps steps with all samples skipped on some rank simple.
For LLMs that do not fit one GPU, `wrap_fsdp` shards the frozen LLM's decoder layers with FSDP.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device_type: str) -> DistInfo:
    """Join the torchrun group if launched by torchrun (WORLD_SIZE > 1), else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def all_reduce_sum(values: list[float], info: DistInfo, device) -> list[float]:
    if info.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_params(params: list[torch.Tensor], info: DistInfo) -> None:
    """Every rank starts from rank 0's trainable weights."""
    if info.world > 1:
        for p in params:
            dist.broadcast(p.data, 0)


def sync_grads(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Average gradients over ranks in one flat all-reduce (params without grad count as zero)."""
    if info.world == 1 or not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])
    dist.all_reduce(flat)
    flat /= info.world
    offset = 0
    for p in params:
        n = p.numel()
        g = flat[offset: offset + n].view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        offset += n


def wrap_fsdp(model, device) -> None:
    """Shard each frozen LLM decoder layer over the ranks with FSDP2 (`fully_shard`, which also
    runs on CPU with gloo). Layers are sharded one by one, not the whole LLM, because
    MiniGPT4.forward calls the embedding, decoder and LM head separately; those small parts stay
    replicated. The trainable projection stays outside FSDP and is synced by `sync_grads`."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in model.llm.get_decoder().layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
