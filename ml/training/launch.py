"""``predis train --nproc N``: ``train`` in N local processes (spawned), one of torch.distributed's
process groups (gloo on CPUs, nccl on one GPU each); see ml.training.distributed."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ml.training.train import TrainConfig, train


def _worker(
    rank: int,
    nproc: int,
    port: int,
    log_path: str,
    out_dir: str,
    cfg: TrainConfig,
    registry: bool,
    result: str,
) -> None:
    from accesslog.log import read_log

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=nproc)
    try:
        if cuda:
            torch.cuda.set_device(rank)
        else:  # (the CPUs shared out: N processes of all threads each would thrash)
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // nproc))
        metrics = train(read_log(log_path), out_dir, cfg, registry=registry)
        if rank == 0:
            Path(result).write_text(json.dumps(metrics))
        # Every process waits here for the others before the group goes: a process that left early
        # closed its gloo connections under rank 0's, whose background thread then aborted the
        # process ("terminate called without an active exception"), one run in several.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def train_processes(
    nproc: int, log_path: str, out_dir: str, cfg: TrainConfig, registry: bool = False
) -> dict[str, Any]:
    """``train`` over ``nproc`` local processes (spawned); returns rank 0's metrics."""
    import torch.multiprocessing as mp

    with socket.socket() as probe:  # (a free port for the processes' rendezvous)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    if cfg.batch < nproc:
        from common.errors import ConfigError

        raise ConfigError(f"--batch {cfg.batch} cannot be shared by --nproc {nproc} processes")
    with tempfile.TemporaryDirectory() as tmp:
        result = str(Path(tmp) / "metrics.json")
        mp.start_processes(
            _worker,
            args=(nproc, port, log_path, out_dir, cfg, registry, result),
            nprocs=nproc,
            start_method="spawn",
        )
        return json.loads(Path(result).read_text())  # type: ignore[no-any-return]
