"""Analytic model of one training step of WeatherMixer at a Jigsaw layout on a described machine.

    pred = predict_step(shape, Layout(data, domain, tensor), machine, TrainSetup(global_batch=16))
    pred.t_step, pred.bottleneck, pred.memory, pred.collectives, ...

What it reuses (no formula is written twice):
  model/flops.py         FLOPs per sample (the counted-against-torch formula);
  perf/comm_model.py     bytes of every Jigsaw collective per step and parameters per rank (exact, tested
                         against the counters of parallel/comm_stats.py);
  parallel/partition.py  which tokens and pixels the busiest rank (domain rank 0) owns.
What it adds: per-rank FLOPs, memory, DeepSpeed's data-parallel traffic, bytes read from disk, and times.

Notation (one rank, busiest = domain rank 0): N tokens in all, n own tokens, n_b = n T tokens of its band
(tensor group), B micro-batch, D, Dt, Dc widths, L blocks, e bytes per element (bf16 2, fp32 4),
P parameters held, DP = data, DD = domain, T = tensor, M = DD T, k = accumulation steps per optimizer step.

FLOPs   F_rank = k * train_flops_per_sample * B * n / N          (work splits exactly with the tokens)

Compute time (roofline per kernel; R_gemm = achieved large-GEMM rate x gemm_efficiency, BW_ew = HBM bandwidth
x hbm_efficiency, two machine constants fitted to measured mixer stacks, see docs/perf.md):
  each GEMM (m, k, n): t = max(2 m k n / R_gemm, e (m k + k n + m n) / BW_hbm, t_launch),
  counted 3x (forward, grad-input, grad-weight have the same size); per block the GEMMs are
  W1 (Dt, n, B D), W2 (n, Dt, B D), Wc1 (n_b B, D, Dc/T), Wc2 (n_b B, Dc/T, D); plus embed and head.
  Element-wise traffic per block (fwd + bwd, elements): 27 n B D + 5 n B Dc + 8 Dt B D
  (2 LayerNorms 12, 2 residuals 12, fc2 bias 3, GELU 5 per element of its input, token bias+GELU 8);
  t = max(e * traffic / BW_ew, (24 L + 20) t_launch). Optimizer: 36 bytes per locally updated parameter
  (fp32 master, m, v read+write, fp32 grad read, bit16 param write) + gradient-norm read, over BW_ew.

Memory per rank (bytes), ZeRO stage s over the data group of size DP:
  weights  P e;  grads  P e (s <= 1) or P e / DP (s = 2)
  optimizer (fp32 master 4 + Adam m, v 8 + fp32 grad partition 4) P / DP for s >= 1, else 8 P (fp32) / 16 P
  activations saved for backward (elements, act dtype unless noted), per block:
      4 n B D  +  2 Dt B D  +  2 n_b B Dc / T  +  4 n B (fp32 LayerNorm stats)   (fc1 keeps its own tokens only:
      the band, T times as many, is gathered again in backward, as Megatron's sequence-parallel linear does)
      + gathered channel weights 2 D Dc / T when DD > 1 (autograd keeps the gathered copy)
    embed: n B C_in p^2; head: 2 n B D + 2 n B fp32 (+ its gathered weight when M > 1); loss: B C_out h w fp32;
    when M > 1 the flat copy of the replicated parameters (ReplicatedBucket: LayerNorms save their weights).
    With activation checkpointing (torch.utils.checkpoint around each MixerBlock) a block keeps only its
    input n B D, and one block is recomputed at a time (its full activations are the transient peak).
  plus the machine's reserved_gb (CUDA context, cuBLAS workspace, allocator slack).

Collectives: Jigsaw ones from comm_model (per micro-step; with checkpointing the forward collectives of the
blocks run twice, except the block's last reduce-scatter: see _recomputed), plus DeepSpeed's data-parallel gradient reduction: ZeRO s >= 1 reduce-scatters the
gradients (P e) and all-gathers the updated parameters (P e) over the data group; s = 0 all-reduces (P e).
Ring alpha-beta model, payload S as comm_stats counts it (all-reduce: tensor; all-gather: output;
reduce-scatter: input), p ranks:
    all-reduce      2 (p-1) alpha + 2 (p-1)/p S / bw
    all-gather      (p-1) alpha + (p-1)/p S / bw          reduce-scatter: the same
A group inside one node uses the intra-node bandwidth and latency. A group that spans nodes is a ring whose
members on one node are consecutive, so each node sends one ring edge per spanning group that touches it:
    bw = min(bw_intra, bw_inter_per_gpu * gpus_per_node / spanning groups touching the busiest node)
with the inter-node latency. Rank order: tensor fastest, then domain, then data (GPUs per node from the
machine file), as in parallel/topology.py.

I/O: each rank reads its tile of the state and target of each of its B samples per micro-step:
    R_rank = 2 B C_out h_own w_own bytes_per_value,      t_io = max(R_rank / bw_loader_rank,
                                                               ranks_per_node R_rank / bw_fs_node)
  Optional page cache (machine io.page_cache_gb_per_node and TrainSetup.dataset_steps): a node only ever
  reads its ranks' tiles, min(M, g) / M of every sample (g GPUs per node), so its working set is
  dataset_steps x C_out H W bytes_per_value x min(M, g) / M; when that fits the page cache, reads after the
  first epoch come from memory and the file-system term drops out. This is the one mechanism here by which
  domain parallelism lowers the I/O cost per unit of work; bytes read per unit of work are otherwise the
  same for every layout.

Step time, three overlap assumptions:
    serial       t_io + t_compute + t_comm + t_opt                                (nothing overlaps)
    prefetch     max(t_io, t_compute + t_comm + t_opt)      (what the trainer does: DataLoader workers read
                                                             ahead while the GPU works; collectives are synchronous)
    overlapped   max(t_io, t_compute + t_opt, t_comm)       (ideal: every collective hidden; a lower bound)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

from ..config import ConfigError, read_json_object
from ..model.shape import ModelShape, resolve_grid  # noqa: F401 (resolve_grid re-exported: the planner's grid)
from ..parallel.partition import split_problems
from ..parallel.topology import Layout
from .comm_model import Collective, meta_model, params_per_rank, step_collectives, sum_bytes

GB = 1e9
BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
OVERLAPS = ("serial", "prefetch", "overlapped")


# ---- inputs ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Machine:
    """A GPU cluster, from a JSON file (configs/machines/*.json). Bandwidths in GB/s (1e9 B/s), TFLOP/s."""
    name: str
    gpus_per_node: int
    peak_tflops: dict           # per precision: datasheet dense tensor-core rate ('fp32' = TF32)
    gemm_tflops: dict           # per precision: achieved on a large square GEMM (bench/step measures it)
    gemm_efficiency: float      # fraction of gemm_tflops the model's GEMMs reach
    hbm_efficiency: float       # fraction of hbm_gbps eager element-wise kernels reach (fitted, see docs/perf.md)
    hbm_gb: float
    hbm_gbps: float
    intra_gbps: float           # per GPU, ring (NCCL bus) bandwidth inside a node
    intra_latency_us: float
    inter_gbps_per_gpu: float   # node injection bandwidth / gpus_per_node
    inter_latency_us: float
    fs_gbps_per_node: float     # parallel file system, read, per node
    loader_gbps_per_rank: float  # what one rank's data loader (read + decode + copy) sustains
    page_cache_gb_per_node: float = 0.0   # host memory that can hold training data (0: not modelled)
    kernel_launch_us: float = 5.0
    reserved_gb: float = 2.0
    # fraction of hbm_gbps the optimizer step's few large streaming kernels reach (fused Adam, fp32 grad copies);
    # higher than hbm_efficiency's many small eager kernels. None: the same as hbm_efficiency
    optimizer_hbm_efficiency: float | None = None
    comment: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> "Machine":
        return cls(name=d["name"], gpus_per_node=int(d["gpus_per_node"]), peak_tflops=dict(d["peak_tflops"]),
                   gemm_tflops=dict(d["gemm_tflops"]), gemm_efficiency=float(d["gemm_efficiency"]),
                   hbm_efficiency=float(d["hbm_efficiency"]),
                   hbm_gb=float(d["hbm"]["capacity_gb"]), hbm_gbps=float(d["hbm"]["bandwidth_gbps"]),
                   intra_gbps=float(d["intra_node"]["bandwidth_gbps"]),
                   intra_latency_us=float(d["intra_node"]["latency_us"]),
                   inter_gbps_per_gpu=float(d["inter_node"]["bandwidth_gbps_per_gpu"]),
                   inter_latency_us=float(d["inter_node"]["latency_us"]),
                   fs_gbps_per_node=float(d["io"]["fs_bandwidth_gbps_per_node"]),
                   loader_gbps_per_rank=float(d["io"]["loader_bandwidth_gbps_per_rank"]),
                   page_cache_gb_per_node=float(d["io"].get("page_cache_gb_per_node", 0.0)),
                   kernel_launch_us=float(d.get("kernel_launch_us", 5.0)),
                   reserved_gb=float(d.get("reserved_gb", 2.0)),
                   optimizer_hbm_efficiency=d.get("optimizer_hbm_efficiency"), comment=str(d.get("comment", "")))

    @classmethod
    def load(cls, path: str) -> "Machine":
        """The machine of a JSON file; ConfigError naming the file and what is missing or wrong otherwise."""
        d = read_json_object(path, "machine description")
        try:
            return cls.from_dict(d)
        except KeyError as e:
            raise ConfigError(f"machine description '{path}' has no key {e} (see configs/machines/*.json)") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"machine description '{path}': {e}") from None


@dataclass(frozen=True)
class TrainSetup:
    global_batch: int
    micro_batch: Optional[int] = None   # per rank; None: global_batch / data (no accumulation, as jigsaw-train)
    precision: str = "bf16"             # bf16 | fp32: parameters, activations, gradients, communication
    zero_stage: int = 1
    checkpointing: bool = False         # torch.utils.checkpoint around each MixerBlock
    store_bytes_per_value: int = 4      # float32 store (uncompressed bytes; compression is the loader's cost)
    dataset_steps: int = 0              # time steps in the training set (0: page cache not modelled)
    grad_accum_fp32: bool = False       # bf16 with DeepSpeed's data_types.grad_accum_dtype fp32 (BF16_Optimizer):
                                        # a full fp32 gradient buffer, gradients reduced over data in fp32

    @classmethod
    def from_deepspeed(cls, ds: dict, **kwargs) -> "TrainSetup":
        """What a DeepSpeed JSON config implies: precision, ZeRO stage, fp32 gradient accumulation."""
        bf16 = bool(ds.get("bf16", {}).get("enabled"))
        return cls(precision="bf16" if bf16 else "fp32", zero_stage=int(ds.get("zero_optimization", {}).get("stage", 0)),
                   grad_accum_fp32=bf16 and ds.get("data_types", {}).get("grad_accum_dtype") == "fp32", **kwargs)

    def micro(self, layout: Layout) -> int:
        return self.micro_batch or self.global_batch // layout.data

    def accumulation(self, layout: Layout) -> int:
        per_replica = self.global_batch // layout.data
        return max(1, per_replica // self.micro(layout))

    @property
    def e(self) -> int:
        return BYTES[self.precision]


def layout_problems(shape: ModelShape, layout: Layout, setup: TrainSetup) -> list[str]:
    """Why a layout cannot run this config (empty list: it can), as the trainer's checks would say."""
    out = [f"{key} = {why}" for key, why in split_problems(shape.n_lat, shape.n_lon, shape.cfg.patch, layout.domain,
                                                           layout.tensor, shape.cfg.channel_hidden)]
    try:
        per_replica = layout.micro_batch(setup.global_batch)
    except ConfigError as e:
        return out + [str(e)]
    if per_replica % setup.micro(layout):
        out.append(f"micro-batch {setup.micro(layout)} does not divide {per_replica}")
    return out


# ---- FLOPs and bytes ---------------------------------------------------------------------------------------
def own_tokens(shape: ModelShape, layout: Layout, domain_rank: int = 0) -> int:
    return shape.partition(layout).n_tokens_of(domain_rank, 0)


def flops_per_rank(shape: ModelShape, layout: Layout, micro_batch: int, domain_rank: int = 0) -> float:
    """Training FLOPs of one rank per micro-step: its share n / N of train_flops_per_sample x B."""
    total = shape.train_flops_per_sample() * micro_batch
    return total * own_tokens(shape, layout, domain_rank) / shape.n_tokens


def gemms(shape: ModelShape, layout: Layout, micro_batch: int, domain_rank: int = 0) -> list[tuple[str, int, int, int]]:
    """(name, m, k, n) of each forward GEMM of one rank per micro-step (backward: two of the same size)."""
    c, T, B = shape.cfg, layout.tensor, micro_batch
    n = own_tokens(shape, layout, domain_rank)
    nb, p2, dc = n * T, c.patch ** 2, c.channel_hidden // T
    out = [("embed", n * B, shape.c_in * p2, c.embed_dim)]
    for _ in range(c.depth):
        out += [("token_w1", c.token_hidden, n, B * c.embed_dim), ("token_w2", n, c.token_hidden, B * c.embed_dim),
                ("channel_fc1", nb * B, c.embed_dim, dc), ("channel_fc2", nb * B, dc, c.embed_dim)]
    out.append(("head", n * B, c.embed_dim, shape.c_out * p2))
    return out


def elementwise_elements(shape: ModelShape, layout: Layout, micro_batch: int, domain_rank: int = 0) -> float:
    """Elements read + written by the non-GEMM kernels of one micro-step, forward + backward (see module doc)."""
    c, B = shape.cfg, micro_batch
    n, p2 = own_tokens(shape, layout, domain_rank), c.patch ** 2
    per_block = 27 * n * B * c.embed_dim + 5 * n * B * c.channel_hidden + 8 * c.token_hidden * B * c.embed_dim
    ends = 4 * n * B * shape.c_in * p2 + 12 * n * B * shape.c_out * p2 + 6 * n * B * c.embed_dim
    return c.depth * per_block + ends


# What the meta-model walks give, kept per rank: the planner asks for the same rank's parameters and collectives in
# every memory check and prediction (each micro-batch candidate, each data size), and one meta build of a 3 B
# model takes ~0.2 s. The key is the whole shape (its repr: every field) and the replica's layout; the data size
# is left out, as a rank's parameters and Jigsaw collectives do not depend on it (tests/test_perf_model.py).
_WALKS: dict = {}


def _walked(kind: str, shape: ModelShape, layout: Layout, domain_rank: int, micro_batch: int, walk):
    key = (kind, repr(shape), layout.domain, layout.tensor, domain_rank, micro_batch)
    if key not in _WALKS:
        if len(_WALKS) >= 4096:   # a bound for long sweeps over many shapes
            _WALKS.clear()
        _WALKS[key] = walk(Layout(1, layout.domain, layout.tensor))
    return _WALKS[key]


def _collectives(shape: ModelShape, layout: Layout, micro_batch: int, domain_rank: int = 0) -> list[Collective]:
    def walk(replica):
        model = meta_model(shape.cfg, shape.n_lat, shape.n_lon, shape.c_in, shape.c_out, replica, domain_rank)
        return tuple(step_collectives(model, micro_batch))

    return list(_walked("collectives", shape, layout, domain_rank, micro_batch, walk))   # a copy: callers extend it


def _recomputed(collectives: list[Collective]) -> list[Collective]:
    """The collectives that activation checkpointing runs again in backward: each block's forward ones (the
    token-mixing all-reduce of the partial sums, the tensor all-gather of the band, the weight all-gathers over
    domain) except the block's closing one (the reduce-scatter over tensor), because torch's non-reentrant
    checkpoint stops recomputing after the last op whose saved tensors backward needs (fc2)."""
    out = []
    for block in sorted({c.block for c in collectives if c.block is not None}):
        forward = [c for c in collectives if c.block == block and c.phase == "forward"]
        out += forward[:-1] if forward and forward[-1].key.startswith("reduce_scatter") else forward
    return out


def _comm_bytes(shape, layout, micro, domain_rank, e):
    return sum_bytes(_collectives(shape, layout, micro, domain_rank), e)


def _params(shape, layout, domain_rank=0):
    def walk(replica):
        return params_per_rank(shape.cfg, shape.n_lat, shape.n_lon, shape.c_in, shape.c_out, replica, domain_rank)

    return dict(_walked("params", shape, layout, domain_rank, 0, walk))


def recompute_comm_bytes(shape: ModelShape, layout: Layout, micro_batch: int, e: int, domain_rank: int = 0) -> dict:
    """Extra bytes per micro-step when each block's forward is recomputed in backward (checkpointing)."""
    return sum_bytes(_recomputed(_collectives(shape, layout, micro_batch, domain_rank)), e)


def collective_calls(shape: ModelShape, layout: Layout, checkpointing: bool = False) -> dict:
    """Number of collectives per micro-step and key (for the latency term; tested against comm_stats.calls)."""
    collectives = _collectives(shape, layout, 1)
    if checkpointing:
        collectives += _recomputed(collectives)
    calls: dict = {}
    for c in collectives:
        calls[c.key] = calls.get(c.key, 0) + 1
    return calls


def params_held(shape: ModelShape, layout: Layout, domain_rank: int = 0) -> int:
    p = _params(shape, layout, domain_rank)
    return p["sharded"] + p["replicated"]


def data_parallel_bytes(params: int, layout: Layout, setup: TrainSetup) -> dict:
    """DeepSpeed's per-step traffic over the data group (not counted by comm_stats)."""
    if layout.data == 1:
        return {}
    volume = params * setup.e
    grads = params * 4 if setup.grad_accum_fp32 else volume
    if setup.zero_stage >= 1:
        return {"reduce_scatter/data": grads, "all_gather/data": volume}
    return {"all_reduce/data": grads}


def read_bytes_per_rank(shape: ModelShape, layout: Layout, micro_batch: int, bytes_per_value: int = 4,
                        domain_rank: int = 0) -> int:
    """Bytes one rank reads from the store per micro-step: B samples of its tile, each the state, its
    model.history_steps predecessors and the target (a one-step item, as the rest of this model)."""
    part = shape.partition(layout)
    lat, lon = part.lat_slice(domain_rank), part.lon_slice(0)
    states = 2 + shape.cfg.history_steps
    return states * micro_batch * shape.c_out * (lat.stop - lat.start) * (lon.stop - lon.start) * bytes_per_value


def node_working_set(shape: ModelShape, layout: Layout, machine: Machine, setup: TrainSetup) -> float:
    """Bytes of the training set one node ever reads: its ranks' share min(M, g) / M of every time step."""
    step_bytes = shape.c_out * shape.n_lat * shape.n_lon * setup.store_bytes_per_value
    M = layout.model_parallel
    return setup.dataset_steps * step_bytes * min(M, machine.gpus_per_node) / M


def io_time(shape: ModelShape, layout: Layout, machine: Machine, setup: TrainSetup, read: float) -> float:
    """Seconds to read `read` bytes per rank: loader-limited, and file-system-limited unless cached."""
    t = read / (machine.loader_gbps_per_rank * GB)
    cached = (setup.dataset_steps and machine.page_cache_gb_per_node
              and node_working_set(shape, layout, machine, setup) <= machine.page_cache_gb_per_node * GB)
    if not cached:
        t = max(t, read * min(machine.gpus_per_node, layout.world) / (machine.fs_gbps_per_node * GB))
    return t


# ---- memory ------------------------------------------------------------------------------------------------
def activation_bytes(shape: ModelShape, layout: Layout, micro_batch: int, e: int, checkpointing: bool = False,
                     domain_rank: int = 0, loss: bool = True) -> dict:
    """Bytes saved for backward on one rank (see module doc); {'blocks', 'gathered_weights', 'ends', 'total'}."""
    c, T, DD, M, B = shape.cfg, layout.tensor, layout.domain, layout.model_parallel, micro_batch
    n, p2 = own_tokens(shape, layout, domain_rank), c.patch ** 2
    nb = n * T
    D, Dt, Dc = c.embed_dim, c.token_hidden, c.channel_hidden
    # own tokens only before fc1: the band is gathered again in backward (parallel.mappings.gathered_linear)
    block_act = (4 * n * B * D + 2 * Dt * B * D + 2 * nb * B * (Dc // T)) * e + 4 * n * B * 4
    gathered_block = 2 * DD * math.ceil(D * (Dc // T) / DD) * e if DD > 1 else 0
    # the head's gathered weight is kept for its input gradient; the embedding's is not (its input needs none)
    gathered_ends = M * math.ceil(D * shape.c_out * p2 / M) * e if M > 1 else 0
    part = shape.partition(layout)
    lat = part.lat_slice(domain_rank)
    pixels = (lat.stop - lat.start) * (part.lon_slice(0).stop - part.lon_slice(0).start)
    # the replicated parameters' one flat copy (parallel.layers.ReplicatedBucket), saved through its views
    bucket = _params(shape, layout, domain_rank)["replicated"] * e if M > 1 else 0
    ends = n * B * shape.c_in * p2 * e + 2 * n * B * D * e + 2 * n * B * 4 + gathered_ends + bucket
    if loss:
        ends += B * shape.c_out * pixels * 4          # AreaWeightedMSE keeps pred - target (fp32)
    if checkpointing:
        blocks = c.depth * n * B * D * e + (block_act + gathered_block if c.depth else 0)   # one block recomputed
        gathered = 0
    else:
        blocks, gathered = c.depth * block_act, c.depth * gathered_block
    return {"blocks": blocks, "gathered_weights": gathered, "ends": ends, "total": blocks + gathered + ends}


def memory_bytes(shape: ModelShape, layout: Layout, setup: TrainSetup, machine: Optional[Machine] = None,
                 domain_rank: int = 0) -> dict:
    """Per-rank bytes: weights, grads, optimizer (ZeRO-partitioned over data), activations, reserved, total."""
    P, e, dp = params_held(shape, layout, domain_rank), setup.e, layout.data
    grads = P * e if setup.zero_stage <= 1 else math.ceil(P / dp) * e
    if setup.grad_accum_fp32:
        grads += 4 * P   # BF16_Optimizer's fp32 accumulation buffer, full on every rank
    if setup.zero_stage >= 1:
        optimizer = 16 * math.ceil(P / dp)           # fp32 master + m + v + fp32 grad partition
    else:
        optimizer = (8 if setup.precision == "fp32" else 16) * P
    act = activation_bytes(shape, layout, setup.micro(layout), e, setup.checkpointing, domain_rank)
    reserved = int((machine.reserved_gb if machine else 0) * GB)
    out = {"weights": P * e, "grads": grads, "optimizer": optimizer, "activations": act["total"],
           "reserved": reserved}
    out["total"] = sum(out.values())
    return out


# ---- times -------------------------------------------------------------------------------------------------
def placement(axis: str, layout: Layout, gpus_per_node: int) -> dict:
    """Size of an axis's groups, whether they span nodes, and how many spanning groups share a node's NICs."""
    groups = layout.axis_groups(axis)
    spanning = [g for g in groups if len({r // gpus_per_node for r in g}) > 1]
    per_node: dict = {}
    for g in spanning:
        for node in {r // gpus_per_node for r in g}:
            per_node[node] = per_node.get(node, 0) + 1
    return {"size": len(groups[0]), "spans_nodes": bool(spanning), "groups_per_node": max(per_node.values(), default=0)}


def link(axis: str, layout: Layout, machine: Machine) -> tuple[float, float]:
    """(bandwidth in B/s, latency in s) a ring over this axis's groups sees (see module doc)."""
    where = placement(axis, layout, machine.gpus_per_node)
    if not where["spans_nodes"]:
        return machine.intra_gbps * GB, machine.intra_latency_us * 1e-6
    node_bw = machine.inter_gbps_per_gpu * machine.gpus_per_node * GB
    return min(machine.intra_gbps * GB, node_bw / where["groups_per_node"]), machine.inter_latency_us * 1e-6


def ring_time(op: str, nbytes: float, p: int, bandwidth: float, latency: float, calls: int = 1) -> float:
    """Ring alpha-beta time of `calls` collectives moving `nbytes` in all (payload as comm_stats counts)."""
    if p <= 1 or nbytes <= 0:
        return 0.0
    steps = 2 * (p - 1) if op == "all_reduce" else p - 1
    volume = nbytes * (p - 1) / p * (2 if op == "all_reduce" else 1)
    return calls * steps * latency + volume / bandwidth


def collective_times(collectives: dict, calls: dict, layout: Layout, machine: Machine) -> dict:
    sizes = {"tensor": layout.tensor, "domain": layout.domain, "jigsaw": layout.model_parallel, "data": layout.data}
    out = {}
    for key, nbytes in collectives.items():
        op, axis = key.split("/")
        bw, lat = link(axis, layout, machine)
        out[key] = ring_time(op, nbytes, sizes[axis], bw, lat, calls.get(key, 1))
    return out


def kernel_time(flops: float, nbytes: float, rate: float, bandwidth: float, launch: float) -> float:
    return max(flops / rate, nbytes / bandwidth, launch)


def compute_time(shape: ModelShape, layout: Layout, machine: Machine, micro_batch: int, precision: str,
                 checkpointing: bool = False, domain_rank: int = 0) -> float:
    """Seconds of GPU kernels for one micro-step on one rank (roofline per GEMM, see module doc)."""
    e = BYTES[precision]
    rate, bw = machine.gemm_tflops[precision] * 1e12 * machine.gemm_efficiency, machine.hbm_gbps * GB
    launch = machine.kernel_launch_us * 1e-6
    t = 0.0
    for name, m, k, n in gemms(shape, layout, micro_batch, domain_rank):
        one = kernel_time(2 * m * k * n, e * (m * k + k * n + m * n), rate, bw, launch)
        t += one * (3 + (1 if checkpointing and name.startswith(("token", "channel")) else 0))
    traffic = elementwise_elements(shape, layout, micro_batch, domain_rank) * e
    if checkpointing:
        traffic *= 4 / 3
    n_kernels = 24 * shape.cfg.depth + 20
    return t + max(traffic / (bw * machine.hbm_efficiency), n_kernels * launch)


def optimizer_time(params: int, layout: Layout, setup: TrainSetup, machine: Machine) -> float:
    local = params / layout.data if setup.zero_stage >= 1 else params
    efficiency = machine.optimizer_hbm_efficiency or machine.hbm_efficiency
    return (36 * local + params * setup.e) / (machine.hbm_gbps * GB * efficiency)


@dataclass
class StepPrediction:
    layout: Layout
    micro_batch: int
    accumulation: int
    flops_per_step: float            # model FLOPs of the global batch
    flops_per_rank: float            # per optimizer step
    params_per_rank: int
    memory: dict                     # bytes
    collectives: dict                # bytes per step per rank (Jigsaw + data-parallel)
    comm_times: dict                 # seconds per step
    read_bytes_per_rank: int         # per step
    t_compute: float
    t_comm: float
    t_io: float
    t_optimizer: float
    times: dict = field(default_factory=dict)      # t_step under each overlap assumption
    fits: bool = True
    checkpointing: bool = False

    def t_step(self, overlap: str = "prefetch") -> float:
        return self.times[overlap]

    def tflops_per_gpu(self, overlap: str = "prefetch") -> float:
        return self.flops_per_step / self.times[overlap] / self.layout.world / 1e12

    def bottleneck(self, overlap: str = "prefetch") -> str:
        """What sets the step time under `overlap`: compute, communication or I/O ('memory' if it does not fit).

        serial: the largest term; prefetch: I/O if it exceeds compute + communication, else the larger of the
        two; overlapped: the largest of I/O, compute, communication."""
        if not self.fits:
            return "memory"
        compute, comm = self.t_compute + self.t_optimizer, self.t_comm
        if overlap == "prefetch" and self.t_io < compute + comm:
            return "compute" if compute >= comm else "communication"
        parts = {"compute": compute, "communication": comm, "I/O": self.t_io}
        return max(parts, key=parts.get)

    def explain(self, machine: Machine, overlap: str = "prefetch") -> str:
        t = self.times[overlap]
        mem = self.memory["total"] / GB
        if not self.fits:
            return f"memory: needs {mem:.1f} GB > {machine.hbm_gb:.0f} GB HBM"
        kind = self.bottleneck(overlap)
        if kind == "communication":
            key = max(self.comm_times, key=self.comm_times.get)
            share = self.comm_times[key] / t
            return (f"communication: {key} {self.comm_times[key] * 1e3:.1f} ms ({share:.0%} of the step); "
                    f"all comm {self.t_comm * 1e3:.1f} ms vs compute {self.t_compute * 1e3:.1f} ms")
        if kind == "I/O":
            return (f"I/O: {self.read_bytes_per_rank / GB:.2f} GB read per rank per step takes {self.t_io * 1e3:.1f} ms "
                    f"vs compute {self.t_compute * 1e3:.1f} ms")
        tail = f"; memory {mem:.1f}/{machine.hbm_gb:.0f} GB" + (" (tight)" if mem > 0.85 * machine.hbm_gb else "")
        top = max(self.comm_times, key=self.comm_times.get) if self.comm_times else ""
        heaviest = f" (mostly {top})" if top and self.t_comm > 0.1 * t else ""
        return (f"compute: {self.t_compute * 1e3:.1f} ms kernels + {self.t_optimizer * 1e3:.1f} ms optimizer, "
                f"comm {self.t_comm * 1e3:.1f} ms{heaviest}, I/O {self.t_io * 1e3:.1f} ms{tail}")


def predict_step(shape: ModelShape, layout: Layout, machine: Machine, setup: TrainSetup,
                 domain_rank: int = 0) -> StepPrediction:
    """Everything about one optimizer step at `layout` on `machine` (busiest rank: domain rank 0)."""
    problems = layout_problems(shape, layout, setup)
    if problems:
        raise ConfigError(f"layout {layout}: " + "; ".join(problems))
    B, k, e = setup.micro(layout), setup.accumulation(layout), setup.e
    P = params_held(shape, layout, domain_rank)

    jigsaw = _comm_bytes(shape, layout, B, domain_rank, e)
    if setup.checkpointing:
        for key, v in recompute_comm_bytes(shape, layout, B, e, domain_rank).items():
            jigsaw[key] = jigsaw.get(key, 0) + v
    calls = {key: n * k for key, n in collective_calls(shape, layout, setup.checkpointing).items()}
    collectives = {key: v * k for key, v in jigsaw.items()}
    dp = data_parallel_bytes(P, layout, setup)
    collectives.update(dp)
    calls.update({key: max(1, math.ceil(P / 5e8)) for key in dp})   # DeepSpeed's reduce_bucket_size
    comm_times = collective_times(collectives, calls, layout, machine)

    read = read_bytes_per_rank(shape, layout, B, setup.store_bytes_per_value, domain_rank) * k
    t_io = io_time(shape, layout, machine, setup, read)
    t_compute = k * compute_time(shape, layout, machine, B, setup.precision, setup.checkpointing, domain_rank)
    t_opt = optimizer_time(P, layout, setup, machine)
    t_comm = sum(comm_times.values())
    times = {"serial": t_io + t_compute + t_comm + t_opt,
             "prefetch": max(t_io, t_compute + t_comm + t_opt),
             "overlapped": max(t_io, t_compute + t_opt, t_comm)}
    memory = memory_bytes(shape, layout, setup, machine, domain_rank)
    flops_step = shape.train_flops_per_sample() * setup.global_batch
    return StepPrediction(layout=layout, micro_batch=B, accumulation=k, flops_per_step=flops_step,
                          flops_per_rank=k * flops_per_rank(shape, layout, B, domain_rank), params_per_rank=P,
                          memory=memory, collectives=collectives, comm_times=comm_times, read_bytes_per_rank=read,
                          t_compute=t_compute, t_comm=t_comm, t_io=t_io, t_optimizer=t_opt, times=times,
                          fits=memory["total"] <= machine.hbm_gb * GB, checkpointing=setup.checkpointing)


# ---- layouts -----------------------------------------------------------------------------------------------
def layouts_for(world: int) -> list[Layout]:
    """Every (data, domain, tensor) with data x domain x tensor = world."""
    out = []
    for tensor in range(1, world + 1):
        if world % tensor:
            continue
        for domain in range(1, world // tensor + 1):
            if (world // tensor) % domain == 0:
                out.append(Layout(world // (tensor * domain), domain, tensor))
    return out


def best_micro_batch(shape: ModelShape, layout: Layout, machine: Machine, setup: TrainSetup) -> Optional[int]:
    """Largest micro-batch dividing global_batch / data that fits in HBM (gradient accumulation), or None."""
    per_replica = setup.global_batch // layout.data
    for micro in sorted((b for b in range(1, per_replica + 1) if per_replica % b == 0), reverse=True):
        trial = dataclasses.replace(setup, micro_batch=micro)
        if memory_bytes(shape, layout, trial, machine)["total"] <= machine.hbm_gb * GB:
            return micro
    return None
