"""The few torch.distributed calls a harvest needs; with one process every call is a no-op.

Under torchrun (env RANK / WORLD_SIZE) the process group is created here if the caller has not made one: gloo on
CPU, nccl when the model is on CUDA.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from lmscope.core.errors import InputError, LmscopeError


def launched_world() -> tuple[int, int]:
    """(rank, world_size) from an initialised process group, else from torchrun's environment, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def ensure_group(device: "torch.device | str") -> tuple[int, int]:
    """Join torchrun's process group (if launched by it) and return (rank, world_size)."""
    rank, world = launched_world()
    if world > 1 and not dist.is_initialized():
        # With CUDA, CPU tensors (counters, small statistics) still need a backend: gloo serves them, nccl the rest.
        backend = "cpu:gloo,cuda:nccl" if torch.device(device).type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        rank, world = dist.get_rank(), dist.get_world_size()
    return rank, world


def leave_group() -> None:
    """Destroy the process group, if there is one, once every rank has finished its work: a gloo group left to the
    interpreter's exit can abort the process while its worker threads are torn down ('terminate called without an
    active exception', exit -6), though the work itself succeeded."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        dist.barrier()


def all_gather(obj) -> list:
    """Every rank's `obj`, in rank order (a plain list with one process)."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def on_rank0(fn, *args, **kwargs):
    """Run `fn` on rank 0 only and share its return value; an LmscopeError there is raised on every rank, so a
    bad folder or option stops the whole job with one message instead of leaving the other ranks waiting."""
    outcome = [None, None]
    if launched_world()[0] == 0:
        try:
            outcome = [fn(*args, **kwargs), None]
        except LmscopeError as exc:
            outcome = [None, str(exc)]
        except BaseException as exc:  # tell the others before failing here, or they wait forever
            if active():
                dist.broadcast_object_list([None, f"rank 0 failed: {type(exc).__name__}: {exc}"], src=0)
            raise
    if active():
        dist.broadcast_object_list(outcome, src=0)
    if outcome[1] is not None:
        raise InputError(outcome[1])
    return outcome[0]
