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
from .store import WeatherStore, shifted_columns


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
        self._scales: dict = {}  # device -> (mean, std) [C, 1, 1] for normalise_
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
        return shifted_columns(slice(*self.lon.indices(self.store.n_lon)[:2]), shift, self.store.n_lon)

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

    def batch_shapes(self, n_items: int) -> tuple[tuple, tuple]:
        """Shapes of read_batch's inputs and targets for `n_items` items: what a ring buffer holds."""
        h, w = self.coords.shape[1:]
        n_state = len(self.store.channels)
        n_x = n_state * (1 + self.history) + len(self.static) + len(self.coords)
        return (n_items, n_x, h, w), (n_items, self.rollout, n_state, h, w)

    def empty_batch(self, n_items: int, pin: bool = False, touch: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh (inputs, targets) buffers for read_batch; `pin`: page-locked, for copies to a GPU (resident
        from the start); `touch`: zeroed now, so that their page faults are paid once here and not by the
        first reads into them (a fresh 0.25 deg batch costs more in page faults than in decoding)."""
        make = torch.zeros if touch and not pin else torch.empty
        shape_x, shape_y = self.batch_shapes(n_items)
        return make(shape_x, pin_memory=pin), make(shape_y, pin_memory=pin)

    def normalise_(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Normalise in place the state channels of a batch read with normalise=False, on whatever device it
        is: the same float32 operations as WeatherStore.read_into's, so the result is bit for bit its own."""
        n_state = len(self.store.channels)
        if x.device not in self._scales:  # copied to the device once, not with every batch
            self._scales[x.device] = tuple(torch.from_numpy(v).to(x.device)[:, None, None]
                                           for v in (self.store.mean, self.store.std))
        mean, std = self._scales[x.device]
        for states in (x[:, :n_state * (1 + self.history)].unflatten(1, (1 + self.history, n_state)), y):
            states.sub_(mean).div_(std)

    def read_batch(self, indices, lon_shifts=None, out=None,
                   normalise: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs [B, C (1 + H) + S (+ 3), h, w], targets [B, K, C, h, w], forcings [B, K, F, h, w]) of the items
        `indices`, each rolled by its entry of `lon_shifts` (None: no roll), written into `out` (an (inputs,
        targets) pair of empty_batch's shapes, e.g. a loader's ring buffer; None: fresh ones). With
        normalise=False the state channels are left in physical units, for normalise_ on the GPU.

        Each time step is decoded once, straight into its place in the batch (WeatherStore.read_into with one
        destination per time; no staging array): the union of the times of the items that share a shift is
        one store read, and a time that two items need (an item's target is another's input) is decoded into
        the first place and copied to the others."""
        shifts = [0] * len(indices) if lon_shifts is None else [int(s) for s in lon_shifts]
        # per item: its input time, its history (newest first), then its K targets
        times = [[int(self.starts[i]) + k * self.lead for k in [0, *range(-1, -self.history - 1, -1),
                                                                *range(1, self.rollout + 1)]] for i in indices]
        x, y = self.empty_batch(len(indices)) if out is None else out
        if (tuple(x.shape), tuple(y.shape)) != self.batch_shapes(len(indices)):
            raise ValueError(f"read_batch: out is {tuple(x.shape)}, {tuple(y.shape)}, expected "
                             f"{self.batch_shapes(len(indices))}")
        n_state, n_inputs, n_static = len(self.store.channels), len(self.store.channels) * (1 + self.history), len(self.static)

        def place(b: int, j: int) -> torch.Tensor:
            """Where time j of item b goes: an input slot of x, or a target of y ([C, h, w] views)."""
            return x[b, j * n_state:(j + 1) * n_state] if j <= self.history else y[b, j - 1 - self.history]

        x[:, n_inputs + n_static:] = self.coords
        for shift in sorted(set(shifts)):
            items = [b for b, s in enumerate(shifts) if s == shift]
            places: dict[int, list] = {}  # time -> every place it goes, in item order
            for b in items:
                for j, t in enumerate(times[b]):
                    places.setdefault(t, []).append(place(b, j))
            union = sorted(places)
            source = self.source_columns(shift)  # shift 0: the tile itself
            self.store.read_into([places[t][0].numpy() for t in union], union, self.lat, source, normalise)
            for t in union:
                for other in places[t][1:]:
                    other.copy_(places[t][0])
            static = self.static if shift == 0 else torch.from_numpy(self.store.read_static(self.lat, source))
            for b in items:
                x[b, n_inputs:n_inputs + n_static] = static
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
    with or without it. With `accumulate` = A > 1 a step's share is iterated as A consecutive micro-batches
    of share / A items (gradient accumulation: the same items, the same order).
    """

    def __init__(self, n_items: int, global_batch: int, dp_rank: int, dp_size: int, seed: int,
                 start_step: int = 0, steps: int = 10**9, shuffle: bool = True, lon_roll: int = 0,
                 accumulate: int = 1):
        self.n, self.g, self.rank = n_items, global_batch, dp_rank
        self.share = Layout(data=dp_size).micro_batch(global_batch)  # ValueError unless the replicas' shares are whole
        if self.share % accumulate:
            raise ValueError(f"{accumulate} micro-batches do not divide a replica's share of {self.share} samples")
        self.accumulate, self.micro = accumulate, self.share // accumulate
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
        lo = step * self.g + self.rank * self.share
        return [divmod(pos, self.n) for pos in range(lo, lo + self.share)]

    def indices_for_step(self, step: int) -> list[int]:
        return [int(self._epoch(e)[0][i]) for e, i in self._positions(step)]

    def draw(self, step: int) -> Draw:
        """This replica's items of `step` and, with lon_roll, their shifts."""
        shifts = [int(self._epoch(e)[1][i]) for e, i in self._positions(step)] if self.lon_roll else None
        return Draw(self.indices_for_step(step), shifts)

    def __iter__(self):
        """Each step's micro-batches in turn (one per step without accumulation)."""
        for step in range(self.start, self.start + self.steps):
            draw = self.draw(step)
            for a in range(0, self.share, self.micro):
                yield Draw(draw.indices[a:a + self.micro], draw.lon_shifts and draw.lon_shifts[a:a + self.micro])

    def __len__(self):
        return self.steps * self.accumulate


class Loader:
    """This replica's batches of `sampler`, (inputs, targets, forcings) as fp32 on `device`, read ahead.

    Reads run on a thread of this process (workers = 0, the default): tensorstore decodes on the store's own
    `read_threads` threads without holding the GIL, and PairDataset.read_batch writes every time step
    straight into a ring of `prefetch + 1` host buffers allocated once (page-locked on CUDA) and reused. So a
    batch's bytes are decoded once, into the memory the GPU copies from, and never cross a process. With
    `workers` > 0 the reads run in DataLoader worker processes instead: each batch then crosses into this
    process through shared memory and is copied again into pinned memory. bench/loader.py measures both
    side by side (docs/benchmarks.md); threads are the default because they were faster there.

    On CUDA the next batch's copy to the device runs on a side stream while the current step computes, and
    the reading threads' batches are normalised there, on the GPU, after the copy (PairDataset.normalise_: the
    same float32 operations, bit for bit), which leaves the host only the decoding; a host buffer is refilled
    only after its copy has finished (a CUDA event that the reading thread waits on, never the training
    thread). On the CPU the reading thread normalises, and the step reads the host buffer itself, which is
    refilled once the step has asked for the next batch: a batch is valid until then.
    """

    def __init__(self, dataset: PairDataset, sampler: ReplicaBatches, device: torch.device, prefetch: int = 2,
                 workers: int = 0):
        import queue
        import threading

        self.device, self.dataset = torch.device(device), dataset
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._held = None  # the ring slot of the batch the CPU step is using
        self._stop = threading.Event()
        if workers:
            self._thread = None
            # its own generator: a loader iterator draws its workers' base seed, which from the global generator
            # would shift the model's random stream (drop_path, dropout) by one draw after a resume. Workers start
            # by forkserver: tensorstore cannot run in a process forked from one that has used it.
            self._batches = iter(torch.utils.data.DataLoader(
                _Batches(dataset), sampler=sampler, batch_size=None, num_workers=workers, prefetch_factor=prefetch,
                pin_memory=self.stream is not None, persistent_workers=False, multiprocessing_context="forkserver",
                generator=torch.Generator()))
        else:
            pin = self.stream is not None
            # slot: [(inputs, targets), the CUDA event after which its last copy to the device has finished]
            self._ring = [[dataset.empty_batch(sampler.micro, pin, touch=True), None] for _ in range(prefetch + 1)]
            self._free, self._ready = queue.Queue(), queue.Queue()
            for slot in self._ring:
                self._free.put(slot)
            self._thread = threading.Thread(target=self._read, args=(dataset, sampler), name="jigsaw-loader",
                                            daemon=True)
            self._thread.start()
        self._ahead = self._to_device() if self.stream is not None else None

    _DONE = object()

    def _read(self, dataset: PairDataset, sampler: ReplicaBatches) -> None:
        """The reading thread: fill free ring slots in the sampler's order; its errors go to the consumer."""
        import queue

        try:
            for draw in sampler:
                while True:
                    if self._stop.is_set():
                        return
                    try:
                        slot = self._free.get(timeout=0.1)
                        break
                    except queue.Empty:
                        pass
                if slot[1] is not None:
                    slot[1].synchronize()  # its previous batch's copy to the device has finished
                self._ready.put((slot, dataset.read_batch(*draw, out=slot[0], normalise=self.stream is None)))
            self._ready.put((None, self._DONE))
        except BaseException as e:  # raised in the consumer, in order
            self._ready.put((None, e))

    def _next_host(self):
        """The next host batch (and its ring slot, None for worker batches); StopIteration at the end."""
        if self._thread is None:
            return None, next(self._batches)
        slot, batch = self._ready.get()
        if batch is self._DONE:
            raise StopIteration
        if isinstance(batch, BaseException):
            raise batch
        return slot, batch

    def _to_device(self):
        """Start the next batch's copy to the GPU on the side stream; None at the end."""
        try:
            slot, batch = self._next_host()
        except StopIteration:
            return None
        with torch.cuda.stream(self.stream):
            batch = tuple(t.to(self.device, torch.float32, non_blocking=True) for t in batch)
            if slot is not None:  # a reading thread's batch: normalised here, on the GPU
                self.dataset.normalise_(*batch[:2])
                slot[1] = torch.cuda.Event()
                slot[1].record(self.stream)
                self._free.put(slot)  # the reading thread waits for the event before refilling it
        return batch

    def __iter__(self):
        return self

    def __next__(self):
        if self.stream is None:
            if self._held is not None:  # the step that used it has asked for its successor: refill it
                self._free.put(self._held)
                self._held = None
            self._held, batch = self._next_host()
            return tuple(t.to(self.device, torch.float32) for t in batch)
        if self._ahead is None:
            raise StopIteration
        batch = self._ahead
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self.stream)  # the copy is done before the step reads it
        for t in batch:
            t.record_stream(compute)  # and its memory is not reused while the step still reads it
        self._ahead = self._to_device()
        return batch

    def close(self) -> None:
        """Stop reading ahead (the reading thread ends within 0.1 s)."""
        self._stop.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
