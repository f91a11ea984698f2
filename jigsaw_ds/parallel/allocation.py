"""Check the Jigsaw layout against the job's allocation, from environment variables only.

Runs before torch.distributed starts and before anything heavy (store generation, model, DeepSpeed
engine), so that a wrong allocation fails in seconds with a message that says why. The allocation is
read from the launcher's environment:

| launcher              | world        | rank          | ranks on this node                             |
|-----------------------|--------------|---------------|------------------------------------------------|
| torchrun              | WORLD_SIZE   | RANK          | LOCAL_WORLD_SIZE (the same on every node)      |
| deepspeed launcher    | WORLD_SIZE   | RANK          | LOCAL_SIZE (this node only; CROSS_SIZE nodes)  |
| srun (SLURM)          | SLURM_NTASKS | SLURM_PROCID  | SLURM_STEP_TASKS_PER_NODE, e.g. "4(x2),2"       |
| none (one process)    | 1            | 0             | 1                                              |

Rules (docs/scaling.md explains them):
  * world % (domain x tensor) == 0, else an error (Layout.for_world's message plus what to ask for);
  * train.global_batch % data-parallel size == 0, else an error;
  * every tensor group inside one node, else a WARNING, not an error. Ranks are ordered tensor fastest,
    so with ranks placed on nodes in blocks (the launchers' and SLURM's default) the tensor groups stay
    inside nodes iff every node's rank count is a multiple of `tensor`. A group that spans nodes gives the
    same results, only slower (its collectives run in every layer, over the network instead of NVLink),
    so it is allowed for tests and odd allocations; `strict=True` refuses it instead;
  * one process alone in a SLURM allocation of several tasks (jigsaw-train started without srun) is an
    error: it would otherwise wait forever for ranks that never start.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping, Optional

from ..errors import AllocationError, ConfigError
from .topology import Layout


@dataclass(frozen=True)
class Allocation:
    """What the environment says about this process's place in the job."""

    launcher: str                              # "torchrun", "deepspeed launcher", "SLURM (srun)", "one process"
    world: int
    rank: int
    local_rank: int
    local_world_size: Optional[int]            # ranks on this node; None if the launcher does not say
    node_sizes: Optional[tuple[int, ...]] = None  # ranks on every node, in rank order, where known
    placement: str = "block"                   # how ranks are placed on nodes: block, cyclic, plane=N, ...
    source: str = ""                           # the variables read, for messages

    @property
    def nodes_known(self) -> bool:
        """True where every rank sees every node's size (the check then gives the same answer everywhere)."""
        return self.node_sizes is not None


def parse_tasks_per_node(text: str) -> tuple[int, ...]:
    """SLURM's compressed tasks-per-node list: "4(x2),2" -> (4, 4, 2)."""
    sizes: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise AllocationError(f"cannot read SLURM tasks-per-node list '{text}'")
        sizes += [int(m.group(1))] * int(m.group(2) or 1)
    return tuple(sizes)


def allocation_from_env(env: Optional[Mapping[str, str]] = None) -> Allocation:
    """The allocation as the launcher's environment describes it (launcher variables win over SLURM's)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        world, rank = int(env["WORLD_SIZE"]), int(env["RANK"])
        local_rank = int(env.get("LOCAL_RANK", 0))
        if "LOCAL_WORLD_SIZE" in env:  # torchrun: the same nproc_per_node on every node, ranks in blocks
            local = int(env["LOCAL_WORLD_SIZE"])
            nodes = (local,) * (world // local) if local and world % local == 0 else None
            return Allocation("torchrun", world, rank, local_rank, local, nodes,
                              source=f"WORLD_SIZE={world}, LOCAL_WORLD_SIZE={local}")
        if "LOCAL_SIZE" in env:  # deepspeed launcher: this node's slots; other nodes may differ
            local = int(env["LOCAL_SIZE"])
            nodes = (local,) if int(env.get("CROSS_SIZE", "1")) == 1 else None
            return Allocation("deepspeed launcher", world, rank, local_rank, local, nodes,
                              source=f"WORLD_SIZE={world}, LOCAL_SIZE={local}, CROSS_SIZE={env.get('CROSS_SIZE', '?')}")
        return Allocation("launcher", world, rank, local_rank, None, source=f"WORLD_SIZE={world}")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        world, rank = int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"])
        tpn = env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", ""))
        nodes = parse_tasks_per_node(tpn) if tpn else None
        node_id = int(env.get("SLURM_NODEID", 0))
        local = nodes[node_id] if nodes and node_id < len(nodes) else None
        if "SLURM_STEP_ID" not in env:  # the batch script itself (or salloc's shell), not a task of srun
            return Allocation("SLURM batch step", world, rank, 0, local, nodes,
                              source=f"SLURM_NTASKS={world}, no SLURM_STEP_ID")
        return Allocation("SLURM (srun)", world, rank, int(env.get("SLURM_LOCALID", 0)), local, nodes,
                          placement=env.get("SLURM_DISTRIBUTION", "block"),
                          source=f"SLURM_NTASKS={world}, tasks per node {tpn or '?'}")
    return Allocation("one process", 1, 0, 0, 1, (1,), source="no launcher variables")


def check_allocation(world: int, local_world_size: Optional[int], domain: int, tensor: int,
                     global_batch: Optional[int] = None, *, node_sizes: Optional[tuple[int, ...]] = None,
                     placement: str = "block", source: str = "", strict: bool = False) -> list[str]:
    """Check a layout against an allocation; returns warnings, raises AllocationError saying what to change.

    local_world_size: ranks on this node (None: unknown, the node check is skipped); node_sizes: ranks
    on every node in rank order where known (checked instead); placement: how ranks are placed on nodes
    (SLURM_DISTRIBUTION; launchers place them in blocks).
    """
    where = f" ({source})" if source else ""
    m = domain * tensor
    try:
        layout = Layout.for_world(world, domain, tensor)
    except AllocationError as e:
        lower, upper = world // m * m, (world // m + 1) * m
        ranks = "e.g. " + " or ".join(str(n) for n in (lower, upper) if n)
        raise AllocationError(f"{e}{where}. Start a multiple of {m} ranks ({ranks}), or choose parallel.domain and "
                              f"parallel.tensor whose product divides {world}") from None
    if global_batch is not None:
        try:
            layout.micro_batch(global_batch)
        except ConfigError as e:
            raise AllocationError(f"{e}; world {world} / ({domain} x {tensor}){where}. Use a multiple of "
                                  f"{layout.data}") from None
    warnings: list[str] = []
    crossing = _tensor_groups_cross_nodes(tensor, local_world_size, node_sizes, placement)
    if crossing:
        message = (f"tensor groups span nodes: {crossing}{where}. Each tensor group (parallel.tensor = {tensor} "
                   f"consecutive ranks) communicates in every layer, so it should sit inside one node; results are "
                   f"the same, only slower. Use a multiple of {tensor} ranks per node (e.g. --ntasks-per-node), "
                   f"ranks placed in blocks, or a smaller parallel.tensor")
        if strict:
            raise AllocationError(message)
        warnings.append(message)
    return warnings


def _tensor_groups_cross_nodes(tensor: int, local_world_size: Optional[int], node_sizes: Optional[tuple[int, ...]],
                               placement: str) -> str:
    """Why some tensor group spans nodes, or '' where none does (or it cannot be known)."""
    if tensor == 1:
        return ""
    multi_node = node_sizes is None or len(node_sizes) > 1
    kind = placement.split(":")[0].split(",")[0]
    if kind == "cyclic" and multi_node:
        return f"ranks are placed on nodes round-robin (SLURM_DISTRIBUTION={placement}); use --distribution=block"
    if kind.startswith("plane="):
        block = int(kind.split("=")[1])
        return f"ranks are placed in blocks of {block} (SLURM_DISTRIBUTION={placement})" if block % tensor and multi_node else ""
    if kind not in ("block", ""):
        return f"rank placement SLURM_DISTRIBUTION={placement} cannot be checked" if multi_node else ""
    if node_sizes is not None:  # every node boundary (a running sum of node sizes) must fall between groups
        if any(sum(node_sizes[:i]) % tensor for i in range(1, len(node_sizes))):
            return f"ranks per node {list(node_sizes)} are not all multiples of parallel.tensor = {tensor}"
        return ""
    if local_world_size and local_world_size % tensor:  # the world is a multiple of tensor: >1 node here
        return f"this node runs {local_world_size} ranks, not a multiple of parallel.tensor = {tensor}"
    return ""


def check_allocation_from_env(domain: int, tensor: int, global_batch: Optional[int] = None,
                              env: Optional[Mapping[str, str]] = None, strict: bool = False) -> list[str]:
    """check_allocation on the launcher's environment; returns the warnings THIS rank should print.

    Errors (AllocationError) are raised on every rank. Warnings come back on rank 0, except under a multi-node
    deepspeed launch, where each rank sees only its own node: there the first rank of a node that breaks
    the rule reports it.
    """
    a = allocation_from_env(env)
    if a.launcher == "SLURM batch step" and a.world > 1:
        raise AllocationError(f"jigsaw-train runs as one process in a SLURM allocation of {a.world} tasks "
                              f"({a.source}): start it with srun (launch/slurm/jigsaw.sbatch does), or use torchrun / "
                              f"the deepspeed launcher inside the allocation")
    warnings = check_allocation(a.world, a.local_world_size, domain, tensor, global_batch, node_sizes=a.node_sizes,
                                placement=a.placement, source=f"{a.launcher}: {a.source}", strict=strict)
    reporter = a.rank == 0 if a.nodes_known else a.local_rank == 0
    return warnings if reporter else []


def env_rank(env: Optional[Mapping[str, str]] = None) -> int:
    """This process's global rank before torch.distributed starts (for printing errors once)."""
    env = os.environ if env is None else env
    return int(env.get("RANK", env.get("SLURM_PROCID", "0")))
