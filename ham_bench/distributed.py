"""Data parallelism on torch.distributed: process group, rank-aware helpers, DDP wrapping, samplers.

A run becomes data parallel when it is launched as several processes:

* ``torchrun --nproc_per_node=N -m ham_bench ...`` (or ``--nnodes``): torchrun sets
  ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
* a SLURM job of several tasks started by hydra-submitit-launcher
  (``hydra/launcher=slurm_ddp``): the same variables are exported from
  submitit's job environment (one task per GPU, rank = SLURM task id).

Without either, every helper here is a no-op (rank 0 of 1) and a run is the
plain single process it always was.

Choices:

* Backend NCCL when the run's device is CUDA, else gloo; each process takes
  GPU ``LOCAL_RANK`` (modulo the GPUs it sees).
* ``batch_size`` is the per-rank batch: the global batch is
  ``batch_size x world_size`` and the learning rate is NOT rescaled (say so
  in your overrides: ``optimizer.lr`` is used as given).
* Training data: ``DistributedSampler`` (seed = the run's seed, reshuffled
  every epoch by ``set_epoch``, the tail that does not split evenly dropped).
  Evaluation data: :class:`ShardSampler`, every ``world_size``-th sample
  without padding, so the all-reduced sums count each sample exactly once.
* Masks are drawn from the same seed on every rank and then broadcast from
  rank 0 (:func:`broadcast_masks`); DDP broadcasts parameters and buffers
  from rank 0 when it wraps the model, and averages gradients during
  ``backward()``, so everything that runs after backward (gradient masking,
  RigL's growth scores, the optimizer step, HAM) reads the averaged gradient
  and every rank takes the same step on the same weights.
* BatchNorm statistics are per rank during training (each rank normalises
  its own ``batch_size`` samples, as DDP does by default); before each
  evaluation the buffers are broadcast from rank 0 (:func:`broadcast_buffers`),
  so every rank evaluates, and rank 0 checkpoints, the same model.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Sampler

log = logging.getLogger("ham_bench")

TIMEOUT = timedelta(minutes=30)  # generous: rank 0 may write a large checkpoint while the others wait


# ---- launch -------------------------------------------------------------------------------
def _export_submitit_environment() -> bool:
    """Inside a multi-task submitit job, export torchrun's variables; True if that happened."""
    if not os.environ.get("SUBMITIT_EXECUTOR") or "WORLD_SIZE" in os.environ:
        return False
    try:
        import submitit
    except ImportError:
        return False
    environment = submitit.JobEnvironment()
    if environment.num_tasks <= 1:
        return False
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True


def launch_rank() -> int:
    """This process's rank as its launcher set it, before any process group exists (0 for a plain run)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if os.environ.get("SUBMITIT_EXECUTOR"):
        with contextlib.suppress(ImportError, KeyError, RuntimeError):
            import submitit

            return int(submitit.JobEnvironment().global_rank)
    return 0


def launched() -> bool:
    """Whether this process was started as one rank of a data-parallel run (torchrun or submitit)."""
    return "WORLD_SIZE" in os.environ or _export_submitit_environment()


def init(device: str = "auto") -> bool:
    """Join the process group when launched as a rank (idempotent); False for a plain single process.

    ``device`` is the run's ``device`` key: NCCL for CUDA (``auto`` with a GPU,
    ``cuda``), gloo otherwise. Ranks other than 0 log warnings only.
    """
    if is_distributed():
        return True
    if not launched():
        return False
    use_cuda = torch.cuda.is_available() and (device == "auto" or str(device).startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=TIMEOUT)
    atexit.register(cleanup)
    if rank() > 0:
        logging.getLogger("ham_bench").setLevel(logging.WARNING)
    return True


def cleanup() -> None:
    """Leave the process group (safe to call twice, or when none was joined)."""
    if is_distributed():
        dist.destroy_process_group()


def finish() -> None:
    """All ranks leave together: wait until rank 0 has written the run's last files, then leave the group.

    Leaving one by one from the atexit hook (rank 1 done while rank 0 still writes) sometimes
    aborted a gloo rank with "terminate called without an active exception" (about 1 run in 12
    here); the atexit hook stays as the fallback for runs that fail.
    """
    if is_distributed():
        barrier()
        cleanup()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def backend() -> str | None:
    return dist.get_backend() if is_distributed() else None


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. a dataset download), the others after it finished."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def local_device(device: torch.device) -> torch.device:
    """``cuda`` without an index becomes this rank's GPU; anything else is returned as is."""
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", torch.cuda.current_device())
    return device


# ---- the run dir --------------------------------------------------------------------------
def hydra_overrides_for_rank(argv: list[str]) -> list[str]:
    """Extra Hydra overrides for ranks other than 0, from the launcher's ``RANK`` (before Hydra starts).

    Hydra creates a run dir per process, with ``.hydra/`` and a log file in it;
    ranks > 0 keep theirs empty (no ``.hydra/``, logging to the console only) so
    :func:`shared_run_dir` can remove it and use rank 0's.
    """
    if int(os.environ.get("RANK", "0")) == 0:
        return []
    extra = []
    if not any(arg.startswith("hydra.output_subdir=") for arg in argv):
        extra.append("hydra.output_subdir=null")
    if not any(arg.startswith(("hydra/job_logging=", "hydra.job_logging")) for arg in argv):
        extra.append("hydra/job_logging=stdout")
    return extra


def shared_run_dir(own: Path) -> Path:
    """Rank 0's run dir, on every rank: one run dir per run, not per process.

    A rank whose Hydra dir differs from rank 0's (``${now:...}`` resolved a few
    microseconds apart) removes its own if it is empty.
    """
    own = Path(own)
    if not is_distributed():
        return own
    chosen = Path(broadcast_object(str(own.resolve())))
    if rank() > 0 and own.resolve() != chosen:
        with contextlib.suppress(OSError):
            own.rmdir()
    return chosen


# ---- samplers ----------------------------------------------------------------------------
def train_sampler(dataset: Dataset, seed: int) -> DistributedSampler | None:
    """This rank's share of the training data, reshuffled per epoch (``set_epoch``); None when not distributed."""
    if not is_distributed():
        return None
    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed,
                              drop_last=True)


class ShardSampler(Sampler[int]):
    """Samples ``rank, rank + world_size, ...`` in order: the ranks' shards partition the set exactly."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        self.size = len(dataset)
        self.num_replicas = num_replicas
        self.rank = rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.num_replicas))


def eval_sampler(dataset: Dataset) -> ShardSampler | None:
    """This rank's evaluation shard (no padding, no duplicates); None when not distributed."""
    return ShardSampler(dataset, world_size(), rank()) if is_distributed() else None


# ---- collectives -------------------------------------------------------------------------
def global_sums(*values: torch.Tensor | int | float) -> list[float]:
    """The values summed over ranks, as Python numbers (one host sync; one all-reduce when distributed).

    Not distributed: each value as is (``tensor.item()``), so single-process
    numbers are bit-for-bit what they were.
    """
    if not is_distributed():
        return [v.item() if torch.is_tensor(v) else v for v in values]
    device = next((v.device for v in values if torch.is_tensor(v)), torch.device("cpu"))
    if backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    stacked = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).detach().reshape(())
                           for v in values])
    dist.all_reduce(stacked)
    return stacked.tolist()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src,
                               device=torch.device("cuda", torch.cuda.current_device())
                               if backend() == "nccl" else None)
    return holder[0]


@torch.no_grad()
def broadcast_tensors_(tensors, src: int = 0) -> None:
    """Overwrite each tensor in place with rank ``src``'s (bool tensors travel as uint8)."""
    if not is_distributed():
        return
    for tensor in tensors:
        if tensor.dtype == torch.bool:
            carrier = tensor.to(torch.uint8)
            dist.broadcast(carrier, src=src)
            tensor.copy_(carrier.bool())
        else:
            dist.broadcast(tensor, src=src)


def broadcast_masks(sparsifier) -> None:
    """Rank 0's masks on every rank (they are drawn from the same seed; this makes it a guarantee)."""
    broadcast_tensors_(sparsifier.masks().values())


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank."""
    broadcast_tensors_(model.buffers())


# ---- the model ---------------------------------------------------------------------------
def finds_unused_parameters(sparsifier) -> bool:
    """Whether DDP must look for parameters without a gradient.

    STR's thresholds leave the forward pass at its final projection; a
    sparsifier can say so itself with ``ddp_find_unused_parameters = True``.
    Every other built-in method uses all its parameters in every step.
    """
    return bool(sparsifier.unused_parameters_under_ddp)


def wrap_model(model: nn.Module, device: torch.device, sparsifier=None) -> nn.Module:
    """``DistributedDataParallel(model)`` when distributed, else ``model`` itself.

    Call it after the sparsifier attached to (and reparameterized) the plain
    model: DDP then registers the parameters the forward pass really uses.
    """
    if not is_distributed():
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=finds_unused_parameters(sparsifier))


def describe(batch_size: int) -> str:
    """One log line: processes, backend and the global batch."""
    return (f"data parallel: {world_size()} processes ({backend()}), global batch {batch_size * world_size()} "
            f"= {batch_size} per rank x {world_size()} (optimizer.lr is used as given, not rescaled)")
