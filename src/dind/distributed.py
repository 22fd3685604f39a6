"""Data parallelism under torchrun: this process's rank and device, the per-step seed, and
the check that the replicas stayed equal. torchrun sets the environment; gloo on the CPU,
NCCL on CUDA."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Process:
    """This process's place in a data-parallel run (rank 0 of 1 without torchrun)."""

    rank: int
    local_rank: int
    world: int
    device: torch.device

    @classmethod
    def join(cls) -> Process:
        """Join torchrun's process group (gloo on CPU, NCCL on CUDA) and take this rank's device."""
        rank, local_rank, world = dist_env()
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return cls(rank, local_rank, world, device)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def seed_step(seed: int, step: int, rank: int) -> None:
    torch.manual_seed((seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63))


@torch.no_grad()
def replica_divergence(model: torch.nn.Module) -> float:
    """Largest |w_rank - w_rank0| over all weights and ranks (0.0 when DDP keeps them equal)."""
    flat = torch.cat([p.detach().flatten().float() for p in model.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, 0)
    diff = (flat - ref).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)
