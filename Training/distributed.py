"""Training across processes and machines with ``torch.distributed``, started by ``torchrun``.

``torchrun --nproc-per-node N -m Training.train meta --config ... --run ...`` starts N ranks (add torchrun's
``--nnodes``, ``--node-rank`` and ``--rdzv-endpoint`` for several machines). Each rank runs its share of every
batch of Reptile episodes (``meta_batch`` / N); :mod:`.training_loop` sums the ranks' adapted weights with one
all-reduce per outer step (batched Reptile across ranks, the same step as one process running the whole batch).
Rank 0 alone reads and writes the run folder (checkpoints, logs, validation) and sends the weights it starts or
resumes from to the other ranks; every rank reads the training cases itself.

The backend is gloo on CPUs and NCCL on GPUs (rank ``r`` of a node uses ``cuda:LOCAL_RANK``). Without torchrun's
environment (``WORLD_SIZE`` unset or 1) everything here is a no-op: one process, rank 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from MetaRegistrationLib.errors import InputError


@dataclass(frozen=True)
class World:
    """The processes of a run: this one's rank among ``size`` and its rank on its own machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process is rank 0, the one that reads and writes the run folder."""
        return self.rank == 0

    def share(self, first_episode: int, batch: int) -> range:
        """The episodes of the batch ``[first_episode, first_episode + batch)`` this rank runs (``batch`` is a
        multiple of ``size``): consecutive blocks, rank 0 first."""
        per_rank = batch // self.size
        start = first_episode + self.rank * per_rank
        return range(start, start + per_rank)

    def sum(self, tensors: dict[str, torch.Tensor]) -> None:
        """Replace each tensor by its sum over the ranks, in place (one all-reduce of them all, flattened)."""
        if self.size == 1:
            return
        flat = torch.cat([tensor.reshape(-1) for tensor in tensors.values()])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for tensor in tensors.values():
            tensor.copy_(flat[offset: offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()

    def from_main(self, value):
        """Rank 0's ``value`` (any picklable object), on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def weights_from_main(self, model: torch.nn.Module) -> None:
        """Overwrite ``model``'s parameters and buffers with rank 0's, in place."""
        if self.size == 1:
            return
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)

    def gather(self, value) -> list:
        """Every rank's ``value``, in rank order (on every rank)."""
        if self.size == 1:
            return [value]
        values = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: ``cuda:LOCAL_RANK`` for a CUDA run of several ranks on a machine, else ``device``."""
        if device.type == "cuda" and self.size > 1 and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device


def join(device: torch.device) -> World:
    """The world of this process: joins torchrun's process group if it started several ranks.

    Raises:
        InputError: if torchrun's environment is incomplete.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    try:
        world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    except (KeyError, ValueError):
        raise InputError(f"WORLD_SIZE is {size} but RANK is {os.environ.get('RANK')!r}: start several ranks with "
                         "torchrun") from None
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(world.device(device))
        dist.init_process_group(backend)
    return world


def leave(world: World) -> None:
    """Leave the process group :func:`join` joined (after the last collective call)."""
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
