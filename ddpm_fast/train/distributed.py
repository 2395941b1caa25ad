"""The process group of a training run under ``torchrun``: setup, teardown and the three
collectives training needs. Communication is ``torch.distributed`` only: nccl on CUDA, gloo on
the CPU.

``torchrun`` (single node, or ``--nnodes M --rdzv-backend c10d``) tells each process who it
is through the environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...). A
process started without it is a world of one: no process group, no communication.
"""

import contextlib
import dataclasses
import datetime
import gc
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistContext:
    """Who this process is in the job, and the device it trains on."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self):
        """Rank 0: the only process that writes logs, pictures and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


def env_rank():
    """This process's rank as torchrun set it (0 outside torchrun); usable before setup."""
    return int(os.environ.get("RANK", "0"))


def _env_int(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def rank_device(device, local_rank, world_size):
    """The device one rank trains on, given the device the user asked for.

    With several ranks, CUDA means ``cuda:LOCAL_RANK``: each rank of a node owns one GPU, so an
    explicit index ('cuda:1') is refused.
    """
    if device.type != "cuda" or world_size == 1:
        return device
    if device.index is not None:
        raise ValueError(f"--device {device} names one GPU, but under torchrun each rank uses "
                         f"cuda:LOCAL_RANK; pass --device cuda (or leave it out)")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK={local_rank} needs GPU {local_rank}, but this node has "
                         f"{torch.cuda.device_count()}; start at most that many processes per node "
                         f"(torchrun --nproc_per_node)")
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def process_group(device, timeout_s=600.0):
    """Join the job torchrun started, yield its :class:`DistContext`, leave it on exit.

    ``device`` is the device asked for (``torch.device``); see :func:`rank_device`.

    Outside torchrun (``WORLD_SIZE`` unset or 1) this yields a world of one and communicates
    nothing. A process group the caller already initialised is used as it is and left open.
    ``timeout_s`` bounds how long a rank waits for the others in one collective: a rank that
    stops answering fails the job after that long instead of hanging it (torchrun already ends
    the job at once when a rank's process exits).
    """
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
        yield DistContext(rank, local_rank, world_size,
                          rank_device(device, local_rank, world_size))
        return
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = rank_device(device, local_rank, world_size)
    if world_size == 1:
        yield DistContext(0, 0, 1, device)
        return
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # DistributedDataParallel's constructor imports torch._dynamo. Imported for the first time
    # while a process group exists, torch._dynamo keeps references to it (torch 2.13), so
    # destroy_process_group() below no longer frees it: its gloo worker threads run on into the
    # interpreter's shutdown, and one that then drops a tensor waits for the GIL and aborts the
    # process ("terminate called without an active exception"). Imported first, it keeps none.
    import torch._dynamo  # noqa: F401

    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield DistContext(rank, local_rank, world_size, device)
    finally:
        # destroy_process_group() frees the group only once nothing else holds it, and the run's
        # DistributedDataParallel wrapper holds it until collected: the run's frames can sit in
        # a reference cycle, which only the cycle collector frees (on rank 0, the traceback of
        # an exception that pyparsing caught and kept while matplotlib drew the loss curve).
        gc.collect()
        dist.destroy_process_group()


def broadcast_from_main(ctx, obj):
    """Rank 0's ``obj`` (any picklable object, e.g. a checkpoint dict) on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(ctx, tensor):
    """The mean of ``tensor`` over all ranks (a new tensor; the input is left alone)."""
    if not ctx.distributed:
        return tensor.clone()
    total = tensor.clone()
    dist.all_reduce(total)
    return total / ctx.world_size


def check_same_on_all_ranks(ctx, module, what):
    """Raise unless ``module``'s floating-point state is identical on every rank.

    Compares one float64 sum and sum of squares per tensor (a few hundred numbers, not the
    weights themselves), so it is cheap enough to run before every checkpoint. Rank 0 alone
    writes checkpoints: if ranks had drifted apart, its weights would not be the job's.
    """
    if not ctx.distributed:
        return
    tensors = [t for t in module.state_dict().values() if t.dtype.is_floating_point]
    mine = torch.stack([s for t in tensors for s in (t.double().sum(), t.double().square().sum())])
    everyone = [torch.empty_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(everyone, mine)
    differ = [r for r, theirs in enumerate(everyone) if not torch.equal(theirs, everyone[0])]
    if differ:
        raise RuntimeError(f"{what} differ between rank 0 and rank(s) {differ}: the ranks have "
                           f"drifted apart, so rank 0's checkpoint would not be the job's weights")
