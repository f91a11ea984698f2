"""Sharded checkpoints on torch.distributed.checkpoint (DCP): each rank writes what it owns; any layout, world
size and ZeRO stage reads them, each rank reading only the slices it needs.

A checkpoint folder (checkpoints/step_XXXXXXXX/):
  __R_0.distcp   rank R's boxes (DCP's files)          .metadata   DCP: every tensor's shape and saved boxes
  jigsaw.json    format, step, run config, layout, Adam step, LR scheduler, tensor names and shapes
  MANIFEST.json  every file with its size and sha256, written last (manager.py: what makes it complete)

Tensors, under the serial model's parameter names and full shapes:
  weights/NAME, exp_avg/NAME, exp_avg_sq/NAME   fp32 master weights and Adam moments. DeepSpeed's ZeRO gives
      each data-parallel rank a flat range (its "fragment") of every local (Jigsaw) shard; the rank writes that
      fragment as boxes of the full tensor (`Split.fragment_chunks`), and of replica ranks holding the same
      chunks only the lowest writes (`Split.saves_chunks`). So the bytes written are the optimizer state once.
  buffers/NAME    plain tensors (the same on every rank: DCP writes them once)
  rng/rank_R      each rank's torch RNG state (restored when the world size is unchanged)
Loading asks, on every rank, for the boxes of its new fragments and DCP's resharding reads the overlapping
parts of the saved boxes straight into DeepSpeed's fp32 partitions; the module weights follow from them
(`update_lp_params`, as after an optimizer step). Nothing is gathered: memory is the rank's own partitions
plus one box in flight.

Why a planner of our own: DCP describes DTensor and ShardedTensor shards, but a ZeRO fragment of a token-
sharded weight is neither (several boxes per rank, cut by a flat range); its SavePlanner/LoadPlanner are the
documented extension points for exactly that, and the resharding itself stays DCP's
(`create_read_items_for_chunk_list`).
"""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
from torch.distributed.checkpoint.planner import LoadPlan, TensorWriteData, WriteItem, WriteItemType
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from .layout_free import FORMAT as LAYOUT_FREE_FORMAT, restore_scheduler
from .zero import ADAM_STATES, adam_step, fragment, has_adam_state, init_adam_state, link_adam_state, \
    update_module_weights, zero_optimizer
# a folder's files and metadata, read without torch (jigsaw-ckpt info), are folder.py's (read_meta re-exported)
from .folder import FORMAT, CorruptCheckpoint, check_file, read_meta, sha256

STATES = ("weights",) + ADAM_STATES


# ---- what a rank holds: its boxes of every saved tensor ----------------------------------------------------
def own_boxes(model, groups, keys, writing: bool) -> dict:
    """{'KEY/NAME': (full shape, [(Chunk, fp32 tensor view)])} of this rank's ZeRO fragments. `writing`: leave
    out parameters whose chunks a lower replica rank holds too (it writes them)."""
    out = {}
    for name, p in model.named_parameters():
        split = p.jigsaw_split
        if writing and not split.saves_chunks(p.full_shape, groups, model.partition):
            continue
        for key in keys:
            held = fragment(p, None if key == "weights" else key)  # None: this rank's partition holds none of p
            boxes = [] if held is None else split.fragment_chunks(*held, p.full_shape, groups, model.partition)
            out[f"{key}/{name}"] = (tuple(p.full_shape), boxes)
    return out


def _box_view(views: dict, index: MetadataIndex):
    """The tensor view of the box that a DCP index names (tensor name and box offsets), or None."""
    return views.get((index.fqn, tuple(index.offset or ())))


def _views(boxes: dict) -> dict:
    return {(fqn, tuple(c.offsets)): t for fqn, (_, items) in boxes.items() for c, t in items}


class _BoxSavePlanner(DefaultSavePlanner):
    """DCP's planner, plus write items for each box of `boxes` (plain state-dict entries as usual)."""

    def __init__(self, boxes: dict):
        super().__init__(flatten_state_dict=False)
        self.boxes, self.views = boxes, _views(boxes)

    def create_local_plan(self):
        plan = super().create_local_plan()
        items = [WriteItem(index=MetadataIndex(fqn, torch.Size(c.offsets)), type=WriteItemType.SHARD,
                           tensor_data=TensorWriteData(
                               chunk=ChunkStorageMetadata(offsets=torch.Size(c.offsets), sizes=torch.Size(c.sizes)),
                               properties=TensorProperties.create_from_tensor(t), size=torch.Size(shape)))
                 for fqn, (shape, boxes) in self.boxes.items() for c, t in boxes]
        self.plan = dataclasses.replace(plan, items=plan.items + items)
        return self.plan

    def lookup_object(self, index):
        view = _box_view(self.views, index)
        return view if view is not None else super().lookup_object(index)


class _BoxLoadPlanner(DefaultLoadPlanner):
    """DCP's planner, plus read items that fill each box of `boxes` from whatever saved boxes overlap it."""

    def __init__(self, boxes: dict):
        super().__init__(flatten_state_dict=False)
        self.boxes, self.views = boxes, _views(boxes)

    def create_local_plan(self):
        plan = super().create_local_plan()
        reads = []
        for fqn, (shape, boxes) in self.boxes.items():
            md = self.metadata.state_dict_metadata.get(fqn)
            if md is None:
                raise ValueError(f"the checkpoint has no tensor '{fqn}'")
            if tuple(md.size) != tuple(shape):
                raise ValueError(f"tensor '{fqn}': checkpoint shape {tuple(md.size)} != model shape {tuple(shape)}")
            chunks = [ChunkStorageMetadata(offsets=torch.Size(c.offsets), sizes=torch.Size(c.sizes)) for c, _ in boxes]
            reads += create_read_items_for_chunk_list(fqn, md, chunks)
        self.plan = LoadPlan(plan.items + reads)
        return self.plan

    def lookup_tensor(self, index):
        view = _box_view(self.views, index)
        return view if view is not None else super().lookup_tensor(index)


class _HashingWriter(FileSystemWriter):
    """DCP's writer; remembers which files this rank wrote, so that it hashes its own bytes only."""

    written: list = []

    def write_data(self, plan, planner):
        future = super().write_data(plan, planner)
        self.written = sorted({r.storage_data.relative_path for r in future.wait()})
        return future


class _VerifyingReader(FileSystemReader):
    """DCP's reader; checks every file this rank reads against the manifest before reading it (O(bytes read),
    not O(checkpoint))."""

    def __init__(self, folder: str, files: dict):
        super().__init__(folder)
        self.folder, self.files = folder, files

    def read_metadata(self, *args, **kwargs):
        check_file(self.folder, ".metadata", self.files)
        return super().read_metadata(*args, **kwargs)

    def read_data(self, plan, planner):
        for name in sorted({self.storage_data[item.storage_index].relative_path for item in plan.items}):
            check_file(self.folder, name, self.files)
        return super().read_data(plan, planner)


def _unwrap(e: CheckpointException) -> Exception:
    """DCP gathers every rank's exception into one CheckpointException (a BaseException) raised on all ranks:
    the first rank's own exception, so that every rank raises alike."""
    failures = [exc for exc, _ in (e.failures[r] for r in sorted(e.failures))]
    first = next((f for f in failures if isinstance(f, CorruptCheckpoint)), failures[0] if failures else None)
    if isinstance(first, (CorruptCheckpoint, ValueError, OSError)):
        return first
    return RuntimeError(f"torch.distributed.checkpoint failed: {first!r}")


# ---- save and load (collective over the whole world) -------------------------------------------------------
def save(folder: str, engine, model, groups) -> dict:
    """Write this rank's boxes into `folder`; returns {file: {bytes, sha256}} of the files it wrote. A write
    error on any rank is raised on every rank (OSError)."""
    zero = zero_optimizer(engine)
    moments = has_adam_state(zero)
    if moments:
        link_adam_state(zero)
    boxes = own_boxes(model, groups, STATES if moments else ("weights",), writing=True)
    plain = {f"buffers/{n}": b.detach().cpu() for n, b in model.named_buffers()}
    plain[f"rng/rank_{dist.get_rank()}"] = torch.get_rng_state()
    writer = _HashingWriter(folder, thread_count=1)
    try:
        dcp.save(plain, storage_writer=writer, planner=_BoxSavePlanner(boxes))
    except CheckpointException as e:
        raise OSError(f"saving {folder}: {_unwrap(e)}") from None
    return {name: {"bytes": os.path.getsize(os.path.join(folder, name)), "sha256": sha256(os.path.join(folder, name))}
            for name in writer.written}


def meta_of(engine, model, step: int, run_config: dict) -> dict:
    """What jigsaw.json says of a checkpoint (rank 0 writes it at commit)."""
    zero = zero_optimizer(engine)
    return {"format": FORMAT, "step": step, "config": run_config, "world": dist.get_world_size(),
            "moments": has_adam_state(zero), "adam_step": adam_step(zero),
            "scheduler": engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else None,
            "optimizer_wrapper": type(zero).__name__, "module_dtype": str(next(model.parameters()).dtype),
            "tensors": {name: list(p.full_shape) for name, p in model.named_parameters()}}


def check_model(meta: dict, model) -> None:
    """Same parameter names and full shapes as the checkpoint; ValueError naming the first that differs."""
    saved = meta["tensors"]
    for name, p in model.named_parameters():
        if name not in saved:
            raise ValueError(f"the checkpoint has no parameter '{name}'")
        if tuple(saved[name]) != tuple(p.full_shape):
            raise ValueError(f"parameter '{name}': checkpoint shape {tuple(saved[name])} != model shape {tuple(p.full_shape)}")


def load(folder: str, files: dict, engine, model, groups, weights_only: bool = False) -> dict:
    """Fill this rank's engine from a checkpoint at whatever layout it was saved (collective); returns its meta.
    weights_only: fp32 master (hence module) weights and buffers; the optimizer and schedule start afresh."""
    meta = read_meta(folder, files)
    check_model(meta, model)
    moments = meta["moments"] and not weights_only
    if moments:
        init_adam_state(engine, meta["adam_step"])  # Adam's state exists only after a step: make it
    boxes = own_boxes(model, groups, STATES if moments else ("weights",), writing=False)
    plain = {f"buffers/{n}": b for n, b in model.named_buffers()}  # loaded in place
    rng_key = f"rng/rank_{dist.get_rank()}"
    if meta["world"] == dist.get_world_size() and not weights_only:
        plain[rng_key] = torch.get_rng_state()
    try:
        dcp.load(plain, storage_reader=_VerifyingReader(folder, files), planner=_BoxLoadPlanner(boxes))
    except CheckpointException as e:
        raise _unwrap(e) from None
    if rng_key in plain:
        torch.set_rng_state(plain[rng_key])
    update_module_weights(engine)
    if not weights_only:
        restore_scheduler(engine, meta["scheduler"])
    return meta


def load_module(folder: str, files: dict, model, groups) -> dict:
    """The weights (and buffers) of a checkpoint straight into a model's parameters at its layout, without an
    optimizer (inference: jigsaw-eval under the launcher); each rank reads the boxes of its own Jigsaw shards.
    Collective; returns the checkpoint's meta."""
    meta = read_meta(folder, files)
    check_model(meta, model)
    boxes = {}
    for name, p in model.named_parameters():
        split, args = p.jigsaw_split, (p.full_shape, groups, model.partition)
        boxes[f"weights/{name}"] = (tuple(p.full_shape),
                                    list(zip(split.chunks(*args), split.chunk_views(p.data, *args))))
    plain = {f"buffers/{n}": b for n, b in model.named_buffers()}
    try:
        dcp.load(plain, storage_reader=_VerifyingReader(folder, files), planner=_BoxLoadPlanner(boxes))
    except CheckpointException as e:
        raise _unwrap(e) from None
    return meta


def read_full(folder: str, files: dict, moments: bool = True) -> dict:
    """The whole checkpoint as full tensors, in one process without a process group (export, evaluation): the
    layout-free file's structure (layout_free.py). Memory: the output plus one box in flight."""
    meta = read_meta(folder, files)
    moments = moments and meta["moments"]
    reader = _VerifyingReader(folder, files)
    md = reader.read_metadata()
    state = {f"{key}/{name}": torch.empty(shape, dtype=torch.float32) for name, shape in meta["tensors"].items()
             for key in (STATES if moments else ("weights",))}
    state.update({k: torch.empty(tuple(v.size), dtype=v.properties.dtype)
                  for k, v in md.state_dict_metadata.items() if k.startswith("buffers/")})
    try:
        dcp.load(state, storage_reader=_VerifyingReader(folder, files), no_dist=True)
    except CheckpointException as e:
        raise _unwrap(e) from None
    pick = lambda prefix: {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return {"format": LAYOUT_FREE_FORMAT, "step": meta["step"], "config": meta["config"], "model": pick("weights/"),
            "buffers": pick("buffers/"),
            "optimizer": {**{key: pick(f"{key}/") if moments else {n: None for n in meta["tensors"]}
                             for key in ADAM_STATES}, "step": meta["adam_step"] if moments else 0},
            "scheduler": meta["scheduler"] if moments else None}
