"""(state, target, forcings) samples for one rank's tile, and the order in which replicas see them.

Each rank reads only its tile (TokenPartition.lat_slice / lon_slice) of every sample. Every rank of a
replica reads the same time steps: the sampler is seeded by the run's seed and indexed by data-parallel
rank only, so the domain and tensor ranks of a replica draw identical index lists (and, with data.lon_roll,
identical longitude shifts: each rank then reads its tile of the rolled sample).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch

from ..forcings import forcing_channels
from ..grid import coord_features
from ..parallel.topology import Layout
from .store import WeatherStore


def split_train_val(store: WeatherStore, span: int, val_fraction: float,
                    before: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Start times of training and validation pairs (a pair spans `span` time steps after its start, lead x
    rollout, and `before` steps of input history before it, lead x model.history_steps).

    The last `val_fraction` of the times are held out, cut at a trajectory boundary (independent runs, or
    stretches between gaps in time) when one holds out between half and 1.5 times that fraction, else at
    the time 1 - val_fraction. No pair spans the cut. Raises ConfigError if either side is empty.
    """
    from ..config import ConfigError

    starts = store.pair_starts(span, before)
    n = len(store.times)
    target = val_fraction * n
    cut = int(n * (1 - val_fraction))
    boundaries = np.flatnonzero(np.diff(store.trajectory)) + 1  # where a new trajectory begins
    if len(boundaries):
        nearest = boundaries[np.argmin(np.abs((n - boundaries) - target))]
        if 0.5 * target <= n - nearest <= 1.5 * target:
            cut = int(nearest)
    train, val = starts[starts + span < cut], starts[starts - before >= cut]
    if len(train) == 0 or len(val) == 0:
        raise ConfigError(f"store '{store.path}' ({n} times, {len(boundaries) + 1} trajectories) gives "
                          f"{len(train)} training and {len(val)} validation pairs with 'data.val_fraction' = "
                          f"{val_fraction}, 'data.lead_steps' x 'train.rollout_steps' = {span} and input history "
                          f"reaching {before} store steps back ('model.history_steps' x 'data.lead_steps'): both "
                          f"need one")
    return train, val


class PairDataset(torch.utils.data.Dataset):
    """Item i, starting at starts[i]: (inputs [C (1 + H) + S (+ 3), h, w], targets [K, C, h, w], forcings
    [K, F, h, w]): the state, the H = `history` states `lead`, .., H `lead` steps before it (newest first),
    the static/coordinate channels, the states `lead`, 2 `lead`, ..., K `lead` steps later (K = rollout),
    and the forcing channels of each of the K model steps (computed on this tile for the step's
    input time, and its target time with `forcings_at_target`; F = 0 without forcings). model.rollout stacks
    step k's input as [state_k, its H predecessors, static/coordinates, forcings[k]].

    An item read with a longitude shift s (augmentation, data.lon_roll) is the sample rolled by s columns:
    tile column j holds source column (j + s) mod n_lon of the state, targets, static fields and forcings
    (computed at the source longitudes), while the coordinate features stay those of column j. So every
    rank reads its own tile of the rolled sample (one read, of one column range or two where it wraps), and
    never the whole field."""

    def __init__(self, store: WeatherStore, starts: np.ndarray, lead: int, lat: slice, lon: slice,
                 coord_feats: bool, rollout: int = 1, forcings=(), forcings_at_target: bool = False,
                 history: int = 0):
        self.store, self.starts, self.lead, self.lat, self.lon = store, np.asarray(starts), lead, lat, lon
        self.rollout, self.history = rollout, history
        self.forcings, self.forcings_at_target = list(forcings), forcings_at_target
        self.static = torch.from_numpy(store.read_static(lat, lon))  # constant over time: read once
        self.coords = torch.from_numpy(coord_features(store.lat[lat], store.lon[lon]) if coord_feats
                                       else np.zeros((0, *self.static.shape[1:]), np.float32))

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        return tuple(t[0] for t in self.read_batch([i]))

    def __getitems__(self, indices):
        """Items of a batch (views of one read_batch)."""
        return list(zip(*self.read_batch(indices)))

    def source_columns(self, shift: int):
        """The store columns of this tile rolled by `shift`: tile column j reads store column
        (lon.start + j + shift) mod n_lon; a slice, or an index array where the range wraps past the last
        longitude (one read all the same: WeatherStore._tile)."""
        n_lon = self.store.n_lon
        start, stop = self.lon.indices(n_lon)[:2]
        first, width = (start + shift) % n_lon, stop - start
        if first + width <= n_lon:
            return slice(first, first + width)
        return (first + np.arange(width)) % n_lon

    def forcings_for(self, indices, steps: int, lon_shifts=None) -> torch.Tensor:
        """[B, steps, F, h, w]: the forcing channels of `steps` model steps from each item's start, computed
        for this tile's coordinates (never read from the store), at the source longitudes of a rolled item."""
        at_target = 1 if self.forcings_at_target else 0
        offsets = np.arange(steps + at_target) * self.lead
        lat, lon = self.store.lat[self.lat], self.store.lon[self.lon]
        starts = self.store.times[self.starts[list(indices)]]

        def compute(start_times, lon_deg):
            # by the time step, not the store's index: a forecast may run past the store's last time
            times = (start_times[:, None] + offsets[None, :] * self.store.time_step).reshape(-1)
            f = torch.from_numpy(forcing_channels(self.forcings, lat, lon_deg, times))
            return f.view(len(start_times), steps + at_target, *f.shape[1:])

        if lon_shifts is None or not self.forcings:
            f = compute(starts, lon)
        else:
            f = torch.cat([compute(starts[b:b + 1], self.store.lon[self.source_columns(shift)])
                           for b, shift in enumerate(lon_shifts)])
        return torch.cat([f[:, :steps], f[:, 1:]], dim=2) if at_target else f

    def read_batch(self, indices, lon_shifts=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs [B, C (1 + H) + S (+ 3), h, w], targets [B, K, C, h, w], forcings [B, K, F, h, w]) of the items
        `indices`, each rolled by its entry of `lon_shifts` (None: no roll). The union of the time steps of
        the items that share a shift is read in one store read (WeatherStore.read_into) into
        a preallocated buffer, pinned when CUDA is present and this is the main process (a loader worker's
        tensors travel by shared memory and are pinned by the loader)."""
        shifts = [0] * len(indices) if lon_shifts is None else [int(s) for s in lon_shifts]
        # per item: its input time, its history (newest first), then its K targets
        times = [[int(self.starts[i]) + k * self.lead for k in [0, *range(-1, -self.history - 1, -1),
                                                                *range(1, self.rollout + 1)]] for i in indices]
        pin = torch.cuda.is_available() and torch.utils.data.get_worker_info() is None
        n_static, (h, w) = len(self.static), self.coords.shape[1:]
        n_state, n_inputs = len(self.store.channels), len(self.store.channels) * (1 + self.history)
        x = torch.empty((len(indices), n_inputs + n_static + len(self.coords), h, w), pin_memory=pin)
        y = torch.empty((len(indices), self.rollout, n_state, h, w), pin_memory=pin)
        x[:, n_inputs + n_static:] = self.coords
        for shift in sorted(set(shifts)):
            items = [b for b, s in enumerate(shifts) if s == shift]
            union = sorted({t for b in items for t in times[b]})
            states = torch.empty((len(union), n_state, h, w))  # staging only: x and y are what travel
            source = self.source_columns(shift)  # shift 0: the tile itself
            self.store.read_into(states.numpy(), union, self.lat, source)
            static = self.static if shift == 0 else torch.from_numpy(self.store.read_static(self.lat, source))
            row = {t: j for j, t in enumerate(union)}
            for b in items:
                for j, t in enumerate(times[b][:1 + self.history]):
                    x[b, j * n_state:(j + 1) * n_state] = states[row[t]]
                x[b, n_inputs:n_inputs + n_static] = static
                for k, t in enumerate(times[b][1 + self.history:]):
                    y[b, k] = states[row[t]]
        return x, y, self.forcings_for(indices, self.rollout, lon_shifts)


class Draw(NamedTuple):
    """One replica's micro-batch of one step: the items, and each item's longitude shift in grid columns
    (None: no roll)."""
    indices: list
    lon_shifts: Optional[list] = None


class _Batches(torch.utils.data.Dataset):
    """A PairDataset indexed by a Draw: the DataLoader (batch_size=None) then hands on read_batch's tensors
    as they are, without stacking the items into a second copy."""

    def __init__(self, dataset: PairDataset):
        self.dataset = dataset

    def __getitem__(self, draw: Draw):
        return self.dataset.read_batch(*draw)


class ReplicaBatches(torch.utils.data.Sampler):
    """Index lists of each optimizer step for one data-parallel replica.

    The global stream is a fresh permutation of all pairs per epoch (seeded by seed and epoch only); step s
    takes stream[s G : (s + 1) G] and replica r keeps its r-th micro-batch of that. With the same seed
    and global batch, the union over replicas is the same for any layout, so losses do not depend on it.
    `start_step` resumes the stream exactly. With lon_roll = n_lon (> 0) each position of the stream also
    gets a longitude shift in [0, n_lon), drawn per epoch from its own generator, so the order is the same
    with or without it.
    """

    def __init__(self, n_items: int, global_batch: int, dp_rank: int, dp_size: int, seed: int,
                 start_step: int = 0, steps: int = 10**9, shuffle: bool = True, lon_roll: int = 0):
        self.n, self.g, self.rank = n_items, global_batch, dp_rank
        self.micro = Layout(data=dp_size).micro_batch(global_batch)  # ValueError unless the replicas' shares are whole
        self.seed, self.start, self.steps, self.shuffle, self.lon_roll = seed, start_step, steps, shuffle, lon_roll
        self._cached_epoch: tuple[int, np.ndarray, Optional[np.ndarray]] = (-1, np.empty(0, int), None)

    def _epoch(self, e: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """The order (and shifts) of epoch e, made once per epoch (a step asks for it once per index)."""
        if self._cached_epoch[0] != e:
            order = np.random.default_rng([self.seed, e]).permutation(self.n) if self.shuffle else np.arange(self.n)
            shifts = np.random.default_rng([self.seed, e, 1]).integers(0, self.lon_roll, self.n) \
                if self.lon_roll else None
            self._cached_epoch = (e, order, shifts)
        return self._cached_epoch[1:]

    def _positions(self, step: int):
        lo = step * self.g + self.rank * self.micro
        return [divmod(pos, self.n) for pos in range(lo, lo + self.micro)]

    def indices_for_step(self, step: int) -> list[int]:
        return [int(self._epoch(e)[0][i]) for e, i in self._positions(step)]

    def draw(self, step: int) -> Draw:
        """This replica's items of `step` and, with lon_roll, their shifts."""
        shifts = [int(self._epoch(e)[1][i]) for e, i in self._positions(step)] if self.lon_roll else None
        return Draw(self.indices_for_step(step), shifts)

    def __iter__(self):
        for step in range(self.start, self.start + self.steps):
            yield self.draw(step)

    def __len__(self):
        return self.steps


def make_loader(dataset: PairDataset, sampler: ReplicaBatches, num_workers: int, prefetch_factor: int):
    """Batches of the sampler's index lists. Workers start by forkserver: tensorstore, which the store reads
    with, cannot run in a process forked from one that has used it. Without workers, a thread of this
    process reads `prefetch_factor` batches ahead (tensorstore decodes without holding the GIL)."""
    # its own generator: a loader iterator draws its workers' base seed, which from the global generator would
    # shift the model's random stream (drop_path, dropout) by one draw after a resume
    kwargs = dict(sampler=sampler, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                  generator=torch.Generator())
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
