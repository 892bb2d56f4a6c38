"""This process's place among DDP training processes, and the collective steps of a rank.

`Ranks` is what the training loop (`gistnet.train`) asks of the processes it runs in: one
rank of one outside a launch, rank r of N under `torch.distributed.run` (started by
`gistnet.launch`). Each rank takes a contiguous part of the step's global batch, weighs
its loss by its share (so DDP's averaged gradient is the gradient of the whole batch's
mean), and agrees with rank 0 on whether to stop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (1 of 1 outside a launch)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        # torch.distributed.run sets these in every process it starts.
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self, device: torch.device) -> torch.device:
        """Join the process group: NCCL with GPU `local_rank`, gloo on the CPU."""
        if not self.active:
            return device
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    def part(self, idx: np.ndarray) -> tuple[np.ndarray, float]:
        """This rank's contiguous part of the global batch, and the weight of its mean loss:
        DDP averages gradients over ranks, so part_size * world_size / batch makes the
        average the gradient of the whole batch's mean, whatever the parts' sizes."""
        if not self.active:
            return idx, 1.0
        part = np.array_split(idx, self.world_size)[self.rank]
        return part, len(part) * self.world_size / len(idx)

    def batch_mean(
        self, loss: float, stats: dict[str, float], count: int, total: int
    ) -> tuple[float, dict[str, float]]:
        """The whole batch's mean loss (and stats) from each rank's mean over its part."""
        if not self.active:
            return loss, stats
        import torch.distributed as dist

        names = sorted(stats)
        values = torch.tensor([loss, *(stats[n] for n in names)], dtype=torch.float64)
        values *= count / total
        dist.all_reduce(values)
        return float(values[0]), {n: float(v) for n, v in zip(names, values[1:], strict=True)}

    def agree(self, flag: bool) -> bool:
        """Rank 0's flag, on every rank (whether to stop)."""
        if not self.active:
            return flag
        import torch.distributed as dist

        value = torch.tensor([1 if (flag and self.is_main) else 0], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def finish(self) -> None:
        if not self.active:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
