"""(state, target, forcings) samples for one rank's tile, and the order in which replicas see them.

Each rank reads only its tile (TokenPartition.lat_slice / lon_slice) of every sample. Every rank of a
replica reads the same time steps: the sampler is seeded by the run's seed and indexed by data-parallel
rank only, so the domain and tensor ranks of a replica draw identical index lists.
"""
from __future__ import annotations

import numpy as np
import torch

from ..forcings import forcing_channels
from ..grid import coord_features
from ..parallel.topology import Layout
from .store import WeatherStore


def split_train_val(store: WeatherStore, span: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Start times of training and validation pairs (a pair spans `span` time steps: lead x rollout).

    The last `val_fraction` of the times are held out, cut at a trajectory boundary (independent runs, or
    stretches between gaps in time) when one holds out between half and 1.5 times that fraction, else at
    the time 1 - val_fraction. No pair spans the cut. Raises ConfigError if either side is empty.
    """
    from ..config import ConfigError

    starts = store.pair_starts(span)
    n = len(store.times)
    target = val_fraction * n
    cut = int(n * (1 - val_fraction))
    boundaries = np.flatnonzero(np.diff(store.trajectory)) + 1  # where a new trajectory begins
    if len(boundaries):
        nearest = boundaries[np.argmin(np.abs((n - boundaries) - target))]
        if 0.5 * target <= n - nearest <= 1.5 * target:
            cut = int(nearest)
    train, val = starts[starts + span < cut], starts[starts >= cut]
    if len(train) == 0 or len(val) == 0:
        raise ConfigError(f"store '{store.path}' ({n} times, {len(boundaries) + 1} trajectories) gives "
                          f"{len(train)} training and {len(val)} validation pairs with 'data.val_fraction' = "
                          f"{val_fraction} and 'data.lead_steps' x 'train.rollout_steps' = {span}: both need one")
    return train, val


class PairDataset(torch.utils.data.Dataset):
    """Item i, starting at starts[i]: (inputs [C + S (+ 3), h, w], targets [K, C, h, w], forcings [K, F, h, w]):
    the state with its static/coordinate channels, the states `lead`, 2 `lead`, ..., K `lead` steps later
    (K = rollout), and the forcing channels of each of the K model steps (computed on this tile for the step's
    input time, and its target time with `forcings_at_target`; F = 0 without forcings). model.rollout stacks
    step k's input as [state_k, static/coordinates, forcings[k]]."""

    def __init__(self, store: WeatherStore, starts: np.ndarray, lead: int, lat: slice, lon: slice,
                 coord_feats: bool, rollout: int = 1, forcings=(), forcings_at_target: bool = False):
        self.store, self.starts, self.lead, self.lat, self.lon = store, np.asarray(starts), lead, lat, lon
        self.rollout = rollout
        self.forcings, self.forcings_at_target = list(forcings), forcings_at_target
        extra = [store.read_static(lat, lon)]
        if coord_feats:
            extra.append(coord_features(store.lat[lat], store.lon[lon]))
        self.extra = torch.from_numpy(np.concatenate(extra))  # constant over time: read once

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        return tuple(t[0] for t in self.read_batch([i]))

    def __getitems__(self, indices):
        """Items of a batch (views of one read_batch)."""
        return list(zip(*self.read_batch(indices)))

    def forcings_for(self, indices, steps: int) -> torch.Tensor:
        """[B, steps, F, h, w]: the forcing channels of `steps` model steps from each item's start, computed
        for this tile's coordinates (never read from the store)."""
        at_target = 1 if self.forcings_at_target else 0
        offsets = np.arange(steps + at_target) * self.lead
        # by the time step, not the store's index: a forecast may run past the store's last time
        times = (self.store.times[self.starts[list(indices)]][:, None] + offsets[None, :] * self.store.time_step).reshape(-1)
        lat, lon = self.store.lat[self.lat], self.store.lon[self.lon]
        f = torch.from_numpy(forcing_channels(self.forcings, lat, lon, times))
        f = f.view(len(indices), steps + at_target, *f.shape[1:])
        return torch.cat([f[:, :steps], f[:, 1:]], dim=2) if at_target else f

    def read_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs [B, C + S (+ 3), h, w], targets [B, K, C, h, w], forcings [B, K, F, h, w]) of the items
        `indices`: the union of their time steps in one store read (WeatherStore.read_into) into a preallocated
        buffer, pinned when CUDA is present and this is the main process (a loader worker's tensors travel by
        shared memory and are pinned by the loader)."""
        times = [[int(self.starts[i]) + k * self.lead for k in range(self.rollout + 1)] for i in indices]
        union = sorted({t for item in times for t in item})
        pin = torch.cuda.is_available() and torch.utils.data.get_worker_info() is None
        n_state, (h, w) = len(self.store.channels), self.extra.shape[1:]
        states = torch.empty((len(union), n_state, h, w), pin_memory=pin)
        self.store.read_into(states.numpy(), union, self.lat, self.lon)
        row = {t: j for j, t in enumerate(union)}
        x = torch.empty((len(indices), n_state + len(self.extra), h, w), pin_memory=pin)
        y = torch.empty((len(indices), self.rollout, n_state, h, w), pin_memory=pin)
        for b, item in enumerate(times):
            x[b, :n_state] = states[row[item[0]]]
            x[b, n_state:] = self.extra
            for k, t in enumerate(item[1:]):
                y[b, k] = states[row[t]]
        return x, y, self.forcings_for(indices, self.rollout)


class _Batches(torch.utils.data.Dataset):
    """A PairDataset indexed by a batch's index list: the DataLoader (batch_size=None) then hands on
    read_batch's tensors as they are, without stacking the items into a second copy."""

    def __init__(self, dataset: PairDataset):
        self.dataset = dataset

    def __getitem__(self, indices):
        return self.dataset.read_batch(indices)


class ReplicaBatches(torch.utils.data.Sampler):
    """Index lists of each optimizer step for one data-parallel replica.

    The global stream is a fresh permutation of all pairs per epoch (seeded by seed and epoch only); step s
    takes stream[s G : (s + 1) G] and replica r keeps its r-th micro-batch of that. With the same seed
    and global batch, the union over replicas is the same for any layout, so losses do not depend on it.
    `start_step` resumes the stream exactly.
    """

    def __init__(self, n_items: int, global_batch: int, dp_rank: int, dp_size: int, seed: int,
                 start_step: int = 0, steps: int = 10**9, shuffle: bool = True):
        self.n, self.g, self.rank = n_items, global_batch, dp_rank
        self.micro = Layout(data=dp_size).micro_batch(global_batch)  # ValueError unless the replicas' shares are whole
        self.seed, self.start, self.steps, self.shuffle = seed, start_step, steps, shuffle
        self._cached_epoch: tuple[int, np.ndarray] = (-1, np.empty(0, int))

    def _epoch(self, e: int) -> np.ndarray:
        """The order of epoch e, made once per epoch (a step asks for it once per index)."""
        if self._cached_epoch[0] != e:
            order = np.random.default_rng([self.seed, e]).permutation(self.n) if self.shuffle else np.arange(self.n)
            self._cached_epoch = (e, order)
        return self._cached_epoch[1]

    def indices_for_step(self, step: int) -> list[int]:
        lo = step * self.g + self.rank * self.micro
        out = []
        for pos in range(lo, lo + self.micro):
            e, i = divmod(pos, self.n)
            out.append(int(self._epoch(e)[i]))
        return out

    def __iter__(self):
        for step in range(self.start, self.start + self.steps):
            yield self.indices_for_step(step)

    def __len__(self):
        return self.steps


def make_loader(dataset: PairDataset, sampler: ReplicaBatches, num_workers: int, prefetch_factor: int):
    """Batches of the sampler's index lists. Workers start by forkserver: tensorstore, which the store reads
    with, cannot run in a process forked from one that has used it. Without workers, a thread of this
    process reads `prefetch_factor` batches ahead (tensorstore decodes without holding the GIL)."""
    kwargs = dict(sampler=sampler, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available())
    if num_workers:
        kwargs.update(prefetch_factor=prefetch_factor, persistent_workers=False, multiprocessing_context="forkserver")
        return torch.utils.data.DataLoader(_Batches(dataset), **kwargs)
    return _ThreadPrefetch(torch.utils.data.DataLoader(_Batches(dataset), **kwargs), prefetch_factor)


class _ThreadPrefetch:
    """Iterate `loader` in a background thread, at most `depth` batches ahead; its errors are raised here."""

    def __init__(self, loader, depth: int):
        self.loader, self.depth = loader, depth

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        import queue
        import threading

        batches, stop, done = queue.Queue(self.depth), threading.Event(), object()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    batches.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        def produce():
            try:
                for batch in self.loader:
                    if not put(batch):
                        return
                put(done)
            except BaseException as e:  # the consumer re-raises it
                put(e)

        thread = threading.Thread(target=produce, name="jigsaw-prefetch", daemon=True)
        thread.start()
        try:
            while (item := batches.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:  # the consumer stopped (or failed): let the producer go
            stop.set()


class DeviceBatches:
    """A loader's (x, y) batches on `device` as fp32, one batch ahead: on CUDA the next batch's copy from
    pinned host memory runs on a side stream while the current step computes, so the step does not wait
    for the copy (about 0.6 GB per sample at 0.25 deg: its inputs and target). On the CPU it only converts
    the dtype."""

    def __init__(self, loader, device: torch.device):
        self.batches, self.device = iter(loader), device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.ahead = self._fetch()

    def _fetch(self):
        try:
            batch = next(self.batches)
        except StopIteration:
            return None
        if self.stream is None:
            return tuple(t.to(self.device, torch.float32) for t in batch)
        with torch.cuda.stream(self.stream):
            return tuple(t.to(self.device, torch.float32, non_blocking=True) for t in batch)

    def __iter__(self):
        return self

    def __next__(self):
        if self.ahead is None:
            raise StopIteration
        batch = self.ahead
        if self.stream is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(self.stream)  # the copy is done before the step reads it
            for t in batch:
                t.record_stream(compute)  # and its memory is not reused while the step still reads it
        self.ahead = self._fetch()
        return batch
