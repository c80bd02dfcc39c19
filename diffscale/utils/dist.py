"""Process-group start-up for the three launchers (none, torchrun, SLURM) and small collective helpers."""

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _slurm_env() -> None:
    """Translate SLURM's variables to torchrun's, so one code path serves both launchers."""
    os.environ.setdefault("RANK", os.environ["SLURM_PROCID"])
    os.environ.setdefault("WORLD_SIZE", os.environ["SLURM_NTASKS"])
    os.environ.setdefault("LOCAL_RANK", os.environ["SLURM_LOCALID"])
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_STEP_NODELIST", os.environ.get("SLURM_NODELIST", "127.0.0.1"))
        # "node[01-04]" -> "node01": the first host of the allocation hosts the rendezvous.
        head = nodes.split(",")[0]
        if "[" in head:
            prefix, rest = head.split("[", 1)
            head = prefix + rest.split("-")[0].split(",")[0].rstrip("]")
        os.environ["MASTER_ADDR"] = head
    os.environ.setdefault("MASTER_PORT", "29500")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(launcher: str = "none", need_group: bool = False) -> DistInfo:
    """Start the process group (if launched by torchrun or SLURM) and pick this process's device.

    `need_group`: FSDP and DeepSpeed need a process group even on one process; one is made on loopback.
    """
    if launcher == "slurm":
        _slurm_env()
    elif launcher == "none" and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        launcher = "pytorch"  # started by torchrun without saying so
    if launcher == "none":
        if not need_group:
            device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
            return DistInfo(0, 1, 0, device)
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(minutes=30))
    return DistInfo(rank, world_size, local_rank, device)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op on one process); returns the tensor."""
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_rows(x: torch.Tensor, same_size: bool = False) -> torch.Tensor:
    """Concatenate [n_r, ...] from every rank in rank order. Ranks may hold different n_r; `same_size=True` (every
    rank holds the same n, e.g. one micro-batch each) skips the size exchange and its host sync, for use in the
    training loop. Collective."""
    if not is_dist() or get_world_size() == 1:
        return x
    world = get_world_size()
    if same_size:
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)
    sizes = torch.zeros(world, dtype=torch.int64, device=x.device)
    sizes[dist.get_rank()] = x.shape[0]
    all_reduce_sum(sizes)
    padded = torch.zeros(int(sizes.max()), *x.shape[1:], dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(n)] for p, n in zip(parts, sizes, strict=True)])


def broadcast_object(obj: object, src: int = 0) -> object:
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def destroy() -> None:
    if is_dist():
        dist.destroy_process_group()
