"""Data-parallel training under ``torchrun``: one episode stream per rank, gradients averaged.

``edgefs train`` started by ``torchrun --nproc-per-node N`` (or ``python -m
torch.distributed.run``) finds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its
environment: :func:`init` joins the process group (gloo on CPU; nccl on GPU, one GPU
per local rank). Every rank samples its own episodes (the trainer offsets the seed by
rank); after each backward :func:`average_gradients` all-reduces the gradients, so one
optimizer step follows the gradient of the mean loss over the N ranks' episodes -- what
a single process averaging those N episodes takes -- and every rank holds the same
weights (``--episodes`` counts these steps: N ranks see N times as many episodes). Only
rank 0 validates and writes checkpoints, logs and the config. Started
without those variables every function here is a no-op and training is one process.

The trainer's episodes call ``episode_loss`` rather than ``forward``, which
``DistributedDataParallel`` needs to hook a backward; averaging the gradients
explicitly (one flat all-reduce per step) gives DDP's arithmetic without that constraint,
and works through the second-order inner loops of the MAML family unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import distributed as dist
from torch import nn

from edgefs.errors import ConfigError

_owns_group = False  # this process initialised the group, so cleanup() destroys it
_stepped: set[int] = set()  # id() of modules whose first step average_gradients has seen


def launched() -> bool:
    """Whether a launcher (torchrun) asked for more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> int:
    """Number of processes in the group (1 when not distributed)."""
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if _active() else 0


def is_main() -> bool:
    """Rank 0: the one process that validates and writes files."""
    return rank() == 0


def init(device: torch.device) -> torch.device:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Args:
        device: the configured device; ``cuda`` becomes ``cuda:LOCAL_RANK`` when distributed.

    Returns:
        The device this rank trains on (``device`` unchanged when not launched).

    Raises:
        ConfigError: a launch that cannot work (no torch.distributed, fewer GPUs than local ranks).
    """
    global _owns_group
    if not launched():
        return device
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE is set but this PyTorch has no torch.distributed; start one process")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        gpus = torch.cuda.device_count()
        if local >= gpus:
            raise ConfigError(f"local rank {local} needs a GPU of its own but {gpus} are visible; start at most "
                              f"{gpus} processes per node (--nproc-per-node {gpus}) or use --device cpu")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _owns_group = True
    return device


def _collective_device() -> torch.device:
    # nccl reduces CUDA tensors only; gloo takes CPU ones.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if _active():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the body on rank 0 first, then on the others (rank 0 writes a file the others read)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def broadcast_float(value: float) -> float:
    """Rank 0's ``value`` on every rank (so decisions taken from a clock agree)."""
    if not _active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.broadcast(t, 0)
    return float(t[0])


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if _active():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, 0)


def _all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    """Average ``tensors`` over the ranks in place, one flat all-reduce per dtype and device."""
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        flat /= world()
        offset = 0
        for t in group:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def average_gradients(module: nn.Module) -> None:
    """Replace every gradient by its mean over the ranks; average floating-point buffers too.

    A parameter with no gradient on some ranks counts as zero there; one with no gradient on
    any rank keeps ``None`` (the optimizer then skips it, as it would in one process).
    Batch-norm running statistics are averaged as well, so every rank holds the same model
    and rank 0's checkpoint stands for all of them. At a module's first step rank 0's
    parameters are copied to the others first: a method may set a parameter from its first
    episode outside the gradient (the Siamese bias), which would leave the ranks apart.
    """
    if not _active():
        return
    if id(module) not in _stepped:
        _stepped.add(id(module))
        with torch.no_grad():
            for p in module.parameters():
                dist.broadcast(p.data, 0)
    params = [p for p in module.parameters() if p.requires_grad]
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    grads = []
    for p, anywhere in zip(params, present.tolist(), strict=True):
        if anywhere:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    with torch.no_grad():
        _all_reduce_mean(grads)
        _all_reduce_mean([b for b in module.buffers() if b.is_floating_point()])


def cleanup() -> None:
    """Destroy the process group if :func:`init` made it."""
    global _owns_group
    if _owns_group and dist.is_initialized():
        dist.destroy_process_group()
    _owns_group = False
    _stepped.clear()
