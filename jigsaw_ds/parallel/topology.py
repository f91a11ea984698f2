"""The Jigsaw layout: data x domain x tensor, tensor varying fastest.

Process groups come from megatron-core's parallel_state, whose context-parallel axis sits where our
domain axis sits in the rank order (tp fastest, then cp, then dp) and means the same thing: split the
sequence (here: the tokens of the globe). A DeepSpeed ProcessTopology with axes ['data', 'domain',
'tensor'] describes the same layout, and JigsawMPU hands DeepSpeed the data-parallel group (ZeRO shards
optimizer states over it) and the model-parallel ("jigsaw") group, domain x tensor.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from ..errors import AllocationError, ConfigError
from . import comm_stats

AXES = ("data", "domain", "tensor")


@dataclass(frozen=True)
class Layout:
    data: int = 1
    domain: int = 1
    tensor: int = 1

    @property
    def model_parallel(self) -> int:
        """M: ranks of one model replica (the jigsaw group)."""
        return self.domain * self.tensor

    @property
    def world(self) -> int:
        return self.data * self.domain * self.tensor

    # The rank order (tensor fastest, then domain, then data) lives in these two methods only: megatron's
    # parallel_state, DeepSpeed's ProcessTopology, the planner and checkpoints all go through them.
    def coords(self, rank: int) -> tuple[int, int, int]:
        """(data, domain, tensor) coordinates of a global rank."""
        t = rank % self.tensor
        d = (rank // self.tensor) % self.domain
        return rank // self.model_parallel, d, t

    def rank(self, data: int, domain: int, tensor: int) -> int:
        """The global rank at (data, domain, tensor) coordinates: the inverse of coords."""
        return (data * self.domain + domain) * self.tensor + tensor

    def axis_groups(self, axis: str) -> list[list[int]]:
        """Global ranks of every group of an axis ('data', 'domain', 'tensor' or 'jigsaw' = domain x tensor)."""
        varying = {"data": ("data",), "domain": ("domain",), "tensor": ("tensor",), "jigsaw": ("domain", "tensor")}[axis]
        groups: dict = {}
        for r in range(self.world):
            fixed = tuple(c for name, c in zip(AXES, self.coords(r)) if name not in varying)
            groups.setdefault(fixed, []).append(r)
        return list(groups.values())

    def micro_batch(self, global_batch: int) -> int:
        """Samples per data-parallel replica per optimizer step; ConfigError if they are not whole."""
        if global_batch % self.data:
            raise ConfigError(f"train.global_batch = {global_batch} is not divisible by the data-parallel size "
                              f"{self.data} (world / (parallel.domain x parallel.tensor)): each replica must get the "
                              f"same number of samples")
        return global_batch // self.data

    @classmethod
    def for_world(cls, world: int, domain: int, tensor: int) -> "Layout":
        """The layout a world size leaves for given domain and tensor sizes; AllocationError otherwise."""
        m = domain * tensor
        if world % m:
            raise AllocationError(f"world size {world} is not divisible by parallel.domain x parallel.tensor = "
                                  f"{domain} x {tensor} = {m}: the data-parallel size would not be whole")
        return cls(world // m, domain, tensor)

    def __str__(self) -> str:
        return f"data={self.data} x domain={self.domain} x tensor={self.tensor}"


class JigsawGroups:
    """One rank's view of the layout: its coordinates and the process groups the parallel layers use.

    `comm(axis)` returns the group to communicate over, or None where that group has one rank (the
    layers then skip the collective), so the serial model is the same code with every group None.
    """

    def __init__(self, layout: Layout, rank: int = 0, handles: Optional[dict] = None):
        self.layout = layout
        self.rank = rank
        self.data_rank, self.domain_rank, self.tensor_rank = layout.coords(rank)
        self.handles = handles or {}

    @classmethod
    def serial(cls) -> "JigsawGroups":
        return cls(Layout())

    @property
    def jigsaw_rank(self) -> int:
        """Rank inside the model replica (domain x tensor), tensor fastest."""
        return self.domain_rank * self.layout.tensor + self.tensor_rank

    def size(self, axis: str) -> int:
        return {"data": self.layout.data, "domain": self.layout.domain, "tensor": self.layout.tensor,
                "jigsaw": self.layout.model_parallel}[axis]

    def rank_in(self, axis: str) -> int:
        return {"data": self.data_rank, "domain": self.domain_rank, "tensor": self.tensor_rank,
                "jigsaw": self.jigsaw_rank}[axis]

    def comm(self, axis: str):
        return self.handles.get(axis) if self.size(axis) > 1 else None


def initialize(layout: Layout) -> JigsawGroups:
    """Build the groups for `layout` through megatron-core's parallel_state (torch.distributed must be up)."""
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=layout.tensor, context_parallel_size=layout.domain,
                                 create_gloo_process_groups=False)
    handles = {
        "tensor": ps.get_tensor_model_parallel_group(),
        "domain": ps.get_context_parallel_group(),
        "jigsaw": ps.get_tensor_and_context_parallel_group(),
        "data": ps.get_data_parallel_group(with_context_parallel=False),
    }
    for name, group in handles.items():
        comm_stats.name_group(group, name)
    groups = JigsawGroups(layout, dist.get_rank(), handles)
    _check_against_megatron(groups, ps)
    return groups


def _check_against_megatron(groups: JigsawGroups, ps) -> None:
    """Our coordinates must be Megatron's; a change in its rank order would otherwise go unnoticed."""
    theirs = (ps.get_data_parallel_rank(), ps.get_context_parallel_rank(), ps.get_tensor_model_parallel_rank())
    ours = (groups.data_rank, groups.domain_rank, groups.tensor_rank)
    if theirs != ours:
        raise RuntimeError(f"rank {groups.rank}: megatron coordinates (dp, cp, tp) = {theirs} differ from the Jigsaw "
                           f"layout's (data, domain, tensor) = {ours}")


def deepspeed_topology(layout: Layout):
    """DeepSpeed's description of the same layout (axes data, domain, tensor; the last varies fastest)."""
    from deepspeed.runtime.pipe.topology import ProcessTopology

    return ProcessTopology(axes=list(AXES), dims=[layout.data, layout.domain, layout.tensor])


class JigsawMPU:
    """The `mpu` object deepspeed.initialize takes: data-parallel group = data axis, model-parallel = jigsaw."""

    def __init__(self, groups: JigsawGroups):
        self.groups = groups
        self.topology = deepspeed_topology(groups.layout)

    def get_data_parallel_group(self):
        return self.groups.handles["data"]

    def get_data_parallel_world_size(self):
        return self.groups.layout.data

    def get_data_parallel_rank(self):
        return self.groups.data_rank

    def get_model_parallel_group(self):
        return self.groups.handles["jigsaw"]

    def get_model_parallel_world_size(self):
        return self.groups.layout.model_parallel

    def get_model_parallel_rank(self):
        return self.groups.jigsaw_rank


def init_distributed(backend: Optional[str] = None) -> tuple[int, int, int]:
    """Start torch.distributed from the launcher's environment; returns (rank, world, local_rank).

    Accepts the variables of the deepspeed launcher and torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*),
    of srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; master = first host of the node list, which the
    launch scripts export as MASTER_ADDR), and a bare single process (world 1 on a free local port).
    """
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env:
        env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
        env.setdefault("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
    if "RANK" not in env:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", "29500")
    rank, world, local_rank = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            local_rank = _gpu_for(local_rank)
            env["LOCAL_RANK"] = str(local_rank)  # DeepSpeed places its engine on cuda:LOCAL_RANK
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return rank, world, local_rank


def _gpu_for(local_rank: int) -> int:
    """This rank's GPU: its local rank, or GPU 0 when srun shows each task only its own GPU (SLURM GPU
    binding: one device in CUDA_VISIBLE_DEVICES). More ranks than GPUs on a node is refused here rather
    than by NCCL later ("Duplicate GPU detected")."""
    n = torch.cuda.device_count()
    if local_rank < n:
        return local_rank
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if n == 1 and "SLURM_LOCALID" in os.environ and visible and "," not in visible:
        return 0
    raise RuntimeError(f"local rank {local_rank} has no GPU: this node shows {n} GPU(s); start at most {n} "
                       f"ranks per node (one GPU per rank)")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reduce_sum(values: np.ndarray, groups, axis: str) -> np.ndarray:
    """values summed over the ranks of `axis` (a copy; the array itself where the group has one rank). The
    numbers travel on the backend's device: the rank's GPU under NCCL, host memory under gloo."""
    if groups.size(axis) == 1:
        return values
    nccl = dist.get_backend(groups.handles[axis]) == "nccl"
    t = torch.from_numpy(np.ascontiguousarray(values)).to("cuda" if nccl else "cpu")
    dist.all_reduce(t, group=groups.handles[axis])
    return t.cpu().numpy()
