"""Training over several processes: what ``ml.training.train`` does differently in each (the
processes are started by ``ml.training.launch``: ``predis train --nproc N``, or by any launcher
that sets torch.distributed's environment, such as ``torchrun``).

Every process prepares the same data (the preparation is deterministic), takes its share of every
step's batch, and DistributedDataParallel averages the gradients, so a step sees the batch one
process would have seen and the model follows the same course; decisions that could differ between
processes (the time budget's, read from each one's clock) are agreed on, the most cautious winning.
Only rank 0 scores, replays and saves the model. The gloo backend on CPUs, nccl on GPUs (one each).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0 and 1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def agreed(wants: bool) -> bool:
    """True if any process wants it (a stop): every process takes the same decision."""
    if rank_and_world()[1] == 1:
        return wants
    flag = torch.tensor([1 if wants else 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


class BatchLoss(nn.Module):
    """The model's ``batch_loss`` as a module's forward, which is what DDP wraps."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.batch_loss(batch)  # type: ignore[operator,no-any-return]


def wrap(model: nn.Module, device: str) -> nn.Module:
    """``BatchLoss(model)``, in DistributedDataParallel when there are several processes."""
    loss = BatchLoss(model)
    if rank_and_world()[1] == 1:
        return loss
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(device).index] if device.startswith("cuda") else None
    # (find_unused_parameters: a batch may leave a head unused, e.g. no template reads in it)
    return DistributedDataParallel(loss, device_ids=ids, find_unused_parameters=True)
