"""Several processes meta-training one model: ``torchrun --nproc_per_node=G -m attnopt train``.

Each process adapts its share of every meta-batch (``--meta-batch`` B is the global batch,
B / G tasks per process); the meta-gradients are averaged with one all-reduce, so every
process takes the same Adam step and G processes compute what one process with meta-batch B
computes. Episode indices are global: process r of G takes tasks r·B/G .. (r+1)·B/G - 1 of
each meta-batch. Validation and test episodes are shared out the same way and gathered, so
every process evaluates and none waits for another; rank 0 alone logs and writes files.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from attnopt.errors import UserError
from attnopt.runtime.device import select_device


@dataclass(frozen=True)
class Processes:
    """This process's place among the ``world`` processes of a run."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, first: int, meta_batch: int) -> range:
        """The global episode indices this process adapts in the meta-batch starting at
        ``first``."""
        local = meta_batch // self.world
        start = first + self.rank * local
        return range(start, start + local)

    def share_of(self, episodes: int) -> range:
        """This process's block of ``episodes`` evaluation episodes: blocks of
        ceil(episodes / world) in rank order (the last ones shorter or empty)."""
        block = -(-episodes // self.world)
        return range(min(self.rank * block, episodes), min((self.rank + 1) * block, episodes))


def start(force_cpu: bool, meta_batch: int) -> tuple[Processes, torch.device]:
    """Join the torchrun process group when started by torchrun (WORLD_SIZE > 1), and pick
    this process's device: GPU ``LOCAL_RANK`` with NCCL, else the CPU with gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes(), select_device(force_cpu)
    if meta_batch % world:
        raise UserError(
            f"--meta-batch {meta_batch} cannot be split across {world} processes; "
            f"use a multiple of {world}"
        )
    device = select_device(force_cpu, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # Imported before the group exists: imported later (Adam's constructor does), it keeps
        # references to the group, so destroy_process_group would leave gloo's threads running
        # into interpreter shutdown, where they can abort the process ("terminate called
        # without an active exception").
        importlib.import_module("torch._dynamo")

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size()), device


def stop(failed: bool = False) -> None:
    """Leave the process group: after waiting for the others, or at once when this process
    ``failed`` (the others then fail in their next collective instead of waiting for it)."""
    if dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()


def average_gradients(parameters: Iterable[torch.nn.Parameter], procs: Processes) -> None:
    """Replace every gradient by its mean over the processes, in one all-reduce."""
    if procs.world == 1:
        return
    params = [p for p in parameters if p.grad is not None]
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= procs.world
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.grad.numel()].view_as(p.grad))
        offset += p.grad.numel()


def gather_episodes(scores: torch.Tensor, episodes: int, procs: Processes) -> torch.Tensor:
    """Per-episode ``scores`` (rows, len(share_of(episodes))) of every process, joined in
    episode order: (rows, episodes)."""
    if procs.world == 1:
        return scores
    block = -(-episodes // procs.world)
    padded = scores.new_full((scores.shape[0], block), float("nan"))
    padded[:, : scores.shape[1]] = scores
    parts = [torch.empty_like(padded) for _ in range(procs.world)]
    dist.all_gather(parts, padded)
    return torch.cat(parts, dim=1)[:, :episodes]  # only the last blocks are padded


def any_process(flag: bool, procs: Processes) -> bool:
    """Whether ``flag`` is true in any process (every process gets the same answer)."""
    if procs.world == 1:
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces GPU tensors
    return bool(sum_over_processes(torch.tensor([float(flag)], device=device), procs) > 0)


def all_processes(flag: bool, procs: Processes) -> bool:
    """Whether ``flag`` is true in every process."""
    return not any_process(not flag, procs)


def barrier(procs: Processes) -> None:
    """Wait until every process gets here."""
    if procs.world > 1:
        dist.barrier()


def broadcast_from_main(tensor: torch.Tensor, procs: Processes) -> None:
    """Overwrite ``tensor`` (on this process's device) with rank 0's, in every process."""
    if procs.world > 1:
        with torch.no_grad():
            dist.broadcast(tensor, src=0)


def sum_over_processes(values: torch.Tensor, procs: Processes) -> torch.Tensor:
    """``values`` summed over the processes (for logging statistics)."""
    if procs.world > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values
