"""Class-balanced batches: C classes x M samples per class, one epoch covering the data.

Pair- and triplet-based losses need several samples of each class in a batch, so the
standard protocol (Musgrave et al., ECCV 2020: batch 32 = 8 classes x 4 samples) draws
batches of ``C`` distinct classes with ``M`` samples each. Unlike samplers that draw
classes independently for a fixed number of iterations, an epoch here is built so that
**every sample appears at least once per epoch**:

1. Each class's items are shuffled and cut into chunks of ``M``. A class whose size
   ``n`` is not a multiple of ``M`` completes its last chunk with other items of the same
   class (so no item repeats inside a chunk). A class with ``n < M`` items gives one chunk
   of all its items plus ``M - n`` draws *with replacement* from them: such batches
   necessarily contain repeated items.
2. The number of batches is ``B = max(max_c chunks_c, ceil(total_chunks / C))``, the
   fewest that hold every chunk with no class twice in a batch.
3. Classes are put in a random order and their chunks laid end to end; the sequence is cut
   into *levels* of ``B`` chunks and every level is dealt to the ``B`` batches through its
   own random permutation (a class that straddles two levels is kept out of batches it is
   already in). Each batch thus takes at most one chunk per level, hence never a class
   twice.
4. Batches left with fewer than ``C`` chunks are completed with chunks from random other
   classes (extra samples, beyond the epoch's coverage).

With ``num_replicas > 1`` (DDP), every rank builds the same epoch from ``(seed, epoch)``
and takes every ``num_replicas``-th batch, so ranks get disjoint, equally long shares.
``drop_last=True`` drops the ``B mod num_replicas`` last batches (their chunks go
uncovered that epoch); ``drop_last=False`` repeats the first batches instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from fairdml.data.dataset import labels_to_indices


def class_balanced_batches(targets: np.ndarray, classes_per_batch: int, samples_per_class: int,
                           rng: np.random.Generator) -> np.ndarray:
    """One epoch of batches, shape ``(B, C * M)``, for contiguous ``targets`` (see module).

    Rows are batches; within a row, the ``M`` samples of each class are adjacent.
    """
    c, m = classes_per_batch, samples_per_class
    targets = np.asarray(targets, dtype=np.int64)
    counts = np.bincount(targets)
    present = np.flatnonzero(counts)
    if len(present) < c:
        raise ValueError(f"a batch of {c} distinct classes needs at least {c} classes, "
                         f"got {len(present)}")
    chunks, chunk_class = _chunks(targets, counts, m, rng)
    num_batches = _num_batches(counts, c, m)
    slots = _deal_chunks(chunk_class, num_batches, len(present), c, rng)
    batches = np.empty((num_batches, c, m), dtype=np.int64)
    filled = slots >= 0
    batches[filled] = chunks[slots[filled]]
    _fill_missing(batches, slots, chunk_class, targets, counts, present, rng)
    return batches.reshape(num_batches, c * m)


def num_batches_per_epoch(targets: np.ndarray, classes_per_batch: int,
                          samples_per_class: int) -> int:
    """``B`` of `class_balanced_batches` for these targets (before any rank split)."""
    return _num_batches(np.bincount(np.asarray(targets, dtype=np.int64)), classes_per_batch,
                        samples_per_class)


def _num_batches(counts: np.ndarray, c: int, m: int) -> int:
    chunks_per_class = -(-counts // m)
    return max(int(chunks_per_class.max()), math.ceil(int(chunks_per_class.sum()) / c))


def _chunks(targets: np.ndarray, counts: np.ndarray, m: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-class shuffled items cut into padded chunks: ``(chunks (T, M), chunk_class (T,))``."""
    shuffled = rng.permutation(len(targets))
    grouped = shuffled[np.argsort(targets[shuffled], kind="stable")]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    padded = -(-counts // m) * m
    owner = np.repeat(np.arange(len(counts)), padded)
    position = np.arange(int(padded.sum())) - np.repeat(np.cumsum(padded) - padded, padded)
    size = counts[owner]
    extra = position >= size
    # pad from the class's first items (never in its last, partial chunk) when n >= M;
    # small classes (n < M) pad with draws with replacement.
    offset = np.where(extra, position - size, position)
    small = extra & (size < m)
    offset[small] = rng.integers(0, size[small])
    items = grouped[starts[owner] + offset]
    return items.reshape(-1, m), owner[::m]


def _deal_chunks(chunk_class: np.ndarray, num_batches: int, num_classes: int, c: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Assign chunks to batches: ``slots (B, C)`` of chunk indices, ``-1`` where empty."""
    class_rank = np.empty(chunk_class.max() + 1, dtype=np.int64)
    class_rank[rng.permutation(chunk_class.max() + 1)] = np.arange(chunk_class.max() + 1)
    order = np.argsort(class_rank[chunk_class], kind="stable")
    total = len(order)
    slots = np.full((num_batches, c), -1, dtype=np.int64)
    previous_perm = None
    for level in range(math.ceil(total / num_batches)):
        segment = order[level * num_batches:(level + 1) * num_batches]
        perm = rng.permutation(num_batches)
        if previous_perm is not None:
            perm = _avoid_straddler(perm, previous_perm, order, level, num_batches, chunk_class)
        slots[perm[:len(segment)], level] = segment
        previous_perm = perm
    return slots


def _avoid_straddler(perm: np.ndarray, previous_perm: np.ndarray, order: np.ndarray,
                     level: int, num_batches: int, chunk_class: np.ndarray) -> np.ndarray:
    """Re-deal ``perm`` so the class crossing into ``level`` avoids its earlier batches."""
    start = level * num_batches
    cls = chunk_class[order[start]]
    if chunk_class[order[start - 1]] != cls:
        return perm
    head = 1  # chunks of the straddling class at the start of this level
    while start + head < len(order) and chunk_class[order[start + head]] == cls:
        head += 1
    tail = 1  # its chunks at the end of the previous level
    while chunk_class[order[start - 1 - tail]] == cls:
        tail += 1
    taken = np.zeros(num_batches, dtype=bool)
    taken[previous_perm[num_batches - tail:]] = True
    free = perm[~taken[perm]]  # random order of the batches the class is not in
    head_batches = free[:head]
    rest = perm[~np.isin(perm, head_batches)]
    return np.concatenate((head_batches, rest))


def _fill_missing(batches: np.ndarray, slots: np.ndarray, chunk_class: np.ndarray,
                  targets: np.ndarray, counts: np.ndarray, present: np.ndarray,
                  rng: np.random.Generator) -> None:
    """Complete batches with fewer than C chunks with random chunks of absent classes."""
    c, m = batches.shape[1], batches.shape[2]
    incomplete = np.flatnonzero((slots < 0).any(axis=1))
    if len(incomplete) == 0:
        return
    members = np.argsort(targets, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    for b in incomplete:
        used = set(chunk_class[slots[b][slots[b] >= 0]].tolist())
        candidates = rng.permutation(present)
        extra = [k for k in candidates[: c + len(used)].tolist() if k not in used]
        for column, cls in zip(np.flatnonzero(slots[b] < 0), extra):
            pool = members[starts[cls]:starts[cls] + counts[cls]]
            batches[b, column] = rng.choice(pool, size=m, replace=counts[cls] < m)


class ClassBalancedBatchSampler(torch.utils.data.Sampler):
    """Batch sampler of ``classes_per_batch x samples_per_class`` indices (see module).

    Pass it as ``DataLoader(dataset, batch_sampler=...)``. ``labels`` may be any class
    labels (integers or strings). Call ``set_epoch(epoch)`` before each epoch, as with
    ``DistributedSampler``: the shuffle is a deterministic function of ``(seed, epoch)``.
    ``len()`` is the number of batches per epoch on this rank.
    """

    def __init__(self, labels: Any, classes_per_batch: int, samples_per_class: int, *,
                 batch_size: int | None = None, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0, drop_last: bool = True) -> None:
        super().__init__()
        for name, value in (("classes_per_batch", classes_per_batch),
                            ("samples_per_class", samples_per_class),
                            ("num_replicas", num_replicas)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if batch_size is not None and batch_size != classes_per_batch * samples_per_class:
            raise ValueError(
                f"batch_size {batch_size} != classes_per_batch x samples_per_class = "
                f"{classes_per_batch} x {samples_per_class} = "
                f"{classes_per_batch * samples_per_class}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.targets, self.classes = labels_to_indices(labels)
        if len(self.classes) < classes_per_batch:
            raise ValueError(f"classes_per_batch={classes_per_batch} but the labels hold only "
                             f"{len(self.classes)} classes")
        self.classes_per_batch = int(classes_per_batch)
        self.samples_per_class = int(samples_per_class)
        self.seed = seed
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = drop_last
        self.epoch = 0
        self.total_batches = num_batches_per_epoch(self.targets, self.classes_per_batch,
                                                   self.samples_per_class)
        if drop_last and self.total_batches < self.num_replicas:
            raise ValueError(f"an epoch has {self.total_batches} batches, fewer than the "
                             f"{self.num_replicas} replicas; use drop_last=False or less ranks")

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.samples_per_class

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of epoch ``epoch`` (same on every rank)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.total_batches // self.num_replicas
        return -(-self.total_batches // self.num_replicas)

    def epoch_batches(self) -> np.ndarray:
        """This rank's batches of the current epoch, shape ``(len(self), C * M)``."""
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = class_balanced_batches(self.targets, self.classes_per_batch,
                                         self.samples_per_class, rng)
        wanted = len(self) * self.num_replicas
        if wanted > len(batches):
            repeats = np.arange(wanted) % len(batches)
            batches = batches[repeats]
        return batches[self.rank:wanted:self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.epoch_batches():
            yield batch.tolist()
