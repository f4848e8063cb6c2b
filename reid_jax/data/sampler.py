"""Identity-balanced P x K sampling: PyTorch's ``RandomIdentitySampler`` and MPN's
``BalancedBatchSampler``, both as pure, resumable functions of ``(labels, p, k, seed)``.

``config.input.sampler`` picks one (``make_plan``). In both a batch is P contiguous groups of K
record indices of one identity, the P identities distinct.

``'pk'`` (``epoch_plan``, ``PKPlan``; BoT, APNet, SAN): each epoch is a pure function of
``(labels, p, k, seed, epoch)`` (``RandomIdentitySampler`` of BoT's
``data/samplers/triplet_sampler.py``, michuanhaohao/reid-strong-baseline):
  1. each identity's image list is shuffled, or drawn with replacement up to K when it has fewer
     than K images, and cut into chunks of K (a remainder shorter than K is dropped);
  2. while at least P identities still have chunks, P of them are drawn without replacement and
     the next chunk of each is emitted.
The number of batches per epoch is therefore random, as in the official sampler (the loop stops
when fewer than P identities have chunks left), and ``num_batches(epoch)`` gives it exactly.

``'balanced'`` (``BalancedPlan``; MPN, ``BalancedBatchSampler`` of WangKan0128/MPN
``utils/batch_sample_old_adjust.py``, used by ``train_mpn_no_ca.py`` with P = ``n_classes`` = 6,
K = ``n_images`` = 8). The official sampler is one stateful object that lives for the whole
training run:
  * at construction every identity's index list is shuffled once (identities in sorted order)
    and its "used" counter set to 0;
  * every epoch emits exactly ``floor((N - 1) / (P*K))`` batches (N = train images: the official
    loop runs while ``count + P*K < N``); for each batch, P identities are drawn uniformly
    without replacement from *all* identities, and for each of them, in the drawn order:
    if ``used + K > n`` (only possible when the identity has n < K images) K of its images are
    drawn with replacement, else the next K of its list are taken; then ``used += K``, and when
    ``used + K > n`` the list is reshuffled and ``used`` reset to 0 (the remainder is skipped);
  * lists and counters carry over from one epoch to the next (nothing is reset at epoch start).
Here one ``np.random.Generator`` stream seeded by ``seed`` makes every draw in that order;
``BalancedPlan`` simulates the stream epoch by epoch and keeps the state (lists, counters,
generator) at every epoch boundary, so epoch ``e`` is recomputed exactly from the state at the
end of epoch ``e - 1``, and a resumed run gets the identical batches.

``PKSampler`` lays the epochs of either plan end to end as a ``grain.MapDataset`` of example
positions, so the grain iterator state is one integer, and splits each global batch between
processes by whole identities.
"""

from __future__ import annotations

import bisect
import sys
import threading

import grain
import numpy as np


def epoch_plan(labels: np.ndarray, p: int, k: int, seed: int, epoch: int) -> np.ndarray:
  """The epoch's batches ``[num_batches, p, k]`` of indices into ``labels``.

  Args:
    labels: ``[N]`` integer identity of each record (any integers; identities are the distinct
      values, in sorted order).
    p: identities per batch.
    k: images per identity.
    seed, epoch: the plan is a pure function of them (and of the other arguments).
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0:
    raise ValueError(f'epoch_plan: labels must be a non-empty 1-D array, got shape {labels.shape}')
  if p < 1 or k < 1:
    raise ValueError(f'epoch_plan: p and k must be >= 1, got p={p}, k={k}')
  rng = np.random.default_rng([seed, epoch])
  ids, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  # Shuffle every identity's list at once: sort by (identity, random key).
  order = np.lexsort((rng.random(labels.size), inverse))
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  chunks = []
  for i, (start, n) in enumerate(zip(starts, counts)):
    members = order[start:start + n]
    if n < k:  # too few images: draw K with replacement
      members = rng.choice(members, size=k, replace=True)
    chunks.append(members[:len(members) // k * k].reshape(-1, k))
  remaining = np.array([len(c) for c in chunks])
  taken = np.zeros(len(ids), np.int64)
  available = np.arange(len(ids))
  batches = []
  while available.size >= p:
    chosen = rng.choice(available, size=p, replace=False)
    batches.append(np.stack([chunks[i][taken[i]] for i in chosen]))
    taken[chosen] += 1
    done = chosen[taken[chosen] == remaining[chosen]]
    if done.size:
      available = np.setdiff1d(available, done, assume_unique=True)
  if not batches:
    return np.zeros((0, p, k), np.int64)
  return np.stack(batches).astype(np.int64)


def estimated_length(labels: np.ndarray, k: int) -> int:
  """The official sampler's ``__len__`` before iteration: sum over ids of max(n, K) rounded down
  to a multiple of K. The images of an epoch never exceed it (the epoch can be shorter)."""
  counts = np.unique(np.asarray(labels), return_counts=True)[1]
  counts = np.maximum(counts, k)
  return int(np.sum(counts - counts % k))


SAMPLERS = ('pk', 'balanced')  # config.input.sampler values


class _EpochPlans:
  """Epochs of batches ``[num_batches, p, k]`` computed on demand (``_compute``), the last few
  cached; thread-safe (grain reads elements from several threads) and picklable for grain worker
  processes (no lock, no cache)."""

  def __init__(self, labels: np.ndarray, p: int, k: int, seed: int, num_epochs: int | None):
    self.labels = np.asarray(labels)
    self.p, self.k, self.seed, self.num_epochs = p, k, seed, num_epochs
    self._cache: dict[int, np.ndarray] = {}
    self._lock = threading.RLock()

  def __getstate__(self):
    state = dict(self.__dict__)
    del state['_lock'], state['_cache']
    return state

  def __setstate__(self, state):
    self.__dict__.update(state, _lock=threading.RLock(), _cache={})

  def _compute(self, epoch: int) -> np.ndarray:
    raise NotImplementedError

  def epoch(self, epoch: int) -> np.ndarray:
    """Batches ``[num_batches(epoch), p, k]`` of record indices."""
    with self._lock:
      if epoch not in self._cache:
        if len(self._cache) >= 2:
          self._cache.pop(min(self._cache))
        self._cache[epoch] = self._compute(epoch)
      return self._cache[epoch]

  def num_batches(self, epoch: int) -> int:
    raise NotImplementedError

  def total_batches(self) -> int | None:
    """All batches of ``num_epochs`` epochs; None for an endless stream."""
    if self.num_epochs is None:
      return None
    return sum(self.num_batches(e) for e in range(self.num_epochs))


class PKPlan(_EpochPlans):
  """``epoch_plan`` epochs laid end to end: global batch ``b`` -> (epoch, batch in epoch).

  Epoch lengths are cached for good (one integer per epoch), so locating a batch after a restore
  computes each earlier plan once.
  """

  def __init__(self, labels: np.ndarray, p: int, k: int, seed: int,
               num_epochs: int | None = None):
    super().__init__(labels, p, k, seed, num_epochs)
    self._ends: list[int] = []  # cumulative batch counts: epoch e ends at global batch _ends[e]
    if self.epoch(0).shape[0] == 0:
      ids = np.unique(self.labels).size
      raise ValueError(f'P x K sampler: {ids} identities cannot fill a batch of p={p} '
                       f'identities; lower config.input.p')

  def _compute(self, epoch: int) -> np.ndarray:
    return epoch_plan(self.labels, self.p, self.k, self.seed, epoch)

  def num_batches(self, epoch: int) -> int:
    """Batches in epoch ``epoch`` (0-based)."""
    self._extend(lambda: len(self._ends) > epoch)
    return self._ends[epoch] - (self._ends[epoch - 1] if epoch else 0)

  def _extend(self, done):
    with self._lock:
      while not done():
        n = self.epoch(len(self._ends)).shape[0]
        self._ends.append(n + (self._ends[-1] if self._ends else 0))

  def locate(self, batch: int) -> tuple[int, int]:
    """``(epoch, batch within the epoch)`` of global batch ``batch``."""
    self._extend(lambda: self._ends and self._ends[-1] > batch)
    epoch = bisect.bisect_right(self._ends, batch)
    return epoch, batch - (self._ends[epoch - 1] if epoch else 0)


class BalancedPlan(_EpochPlans):
  """MPN's ``BalancedBatchSampler`` (module docstring) as a resumable plan: every epoch has
  ``floor((N - 1) / (P*K))`` batches; lists, counters and the generator carry over between
  epochs.

  ``_states[e]`` is the sampler state at the start of epoch ``e``: each identity's current list
  (``order[starts[c]:starts[c] + counts[c]]``, identities in sorted order), its ``used`` counter
  and the generator's state. Computing epoch ``e`` runs the sampler from ``_states[e]`` (after
  simulating the earlier epochs once) and stores ``_states[e + 1]``; about 4 bytes per image per
  epoch.
  """

  def __init__(self, labels: np.ndarray, p: int, k: int, seed: int,
               num_epochs: int | None = None):
    super().__init__(labels, p, k, seed, num_epochs)
    if self.labels.ndim != 1 or self.labels.size == 0:
      raise ValueError(f'balanced sampler: labels must be a non-empty 1-D array, got shape '
                       f'{self.labels.shape}')
    if p < 1 or k < 1:
      raise ValueError(f'balanced sampler: p and k must be >= 1, got p={p}, k={k}')
    _, inverse, self._counts = np.unique(self.labels, return_inverse=True, return_counts=True)
    if self._counts.size < p:
      raise ValueError(f'balanced sampler: {self._counts.size} identities cannot fill a batch of '
                       f'p={p} identities; lower config.input.p')
    self._batches = (self.labels.size - 1) // (p * k)
    if self._batches == 0:
      raise ValueError(f'balanced sampler: {self.labels.size} images give no batch of p*k='
                       f'{p * k} (an epoch has floor((N - 1) / (p*k)) batches); lower '
                       f'config.input.p or config.input.k')
    self._starts = np.concatenate([[0], np.cumsum(self._counts)[:-1]])
    # Each identity's records in record order (np.where in the official code), then shuffled.
    order = np.argsort(inverse, kind='stable').astype(np.int32)
    rng = np.random.default_rng(seed)
    for start, n in zip(self._starts, self._counts):
      rng.shuffle(order[start:start + n])
    self._states = [(order, np.zeros(self._counts.size, np.int64), rng.bit_generator.state)]

  def num_batches(self, epoch: int) -> int:
    """Batches in epoch ``epoch`` (0-based): ``floor((N - 1) / (P*K))``, the same every epoch."""
    del epoch
    return self._batches

  def locate(self, batch: int) -> tuple[int, int]:
    """``(epoch, batch within the epoch)`` of global batch ``batch``."""
    return divmod(batch, self._batches)

  def _compute(self, epoch: int) -> np.ndarray:
    while len(self._states) <= epoch:  # simulate (and keep the states of) earlier epochs once
      self._run(len(self._states) - 1)
    return self._run(epoch)

  def _run(self, epoch: int) -> np.ndarray:
    """Runs the sampler over epoch ``epoch`` from its start state; records the end state."""
    order, used, rng_state = self._states[epoch]
    order, used = order.copy(), used.tolist()  # Python ints: the loop is scalar work
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = rng_state
    p, k, counts, starts = self.p, self.k, self._counts.tolist(), self._starts.tolist()
    out = np.empty((self._batches, p, k), np.int64)
    for b in range(self._batches):
      for j, c in enumerate(rng.choice(len(counts), p, replace=False).tolist()):
        n, u = counts[c], used[c]
        members = order[starts[c]:starts[c] + n]  # a view: shuffled in place
        if u + k > n:  # fewer than K images: K drawn with replacement
          out[b, j] = rng.choice(members, k, replace=True)
        else:
          out[b, j] = members[u:u + k]
        used[c] = u = u + k
        if u + k > n:  # not enough left for another group: reshuffle, start over
          rng.shuffle(members)
          used[c] = 0
    if len(self._states) == epoch + 1:
      self._states.append((order, np.array(used, np.int64), rng.bit_generator.state))
    return out


def make_plan(sampler: str, labels: np.ndarray, p: int, k: int, seed: int,
              num_epochs: int | None = None) -> PKPlan | BalancedPlan:
  """The plan ``config.input.sampler`` names: ``'pk'`` (``PKPlan``) or ``'balanced'``
  (``BalancedPlan``)."""
  plan = {'pk': PKPlan, 'balanced': BalancedPlan}[check_sampler(sampler)]
  return plan(labels, p, k, seed, num_epochs)


def check_sampler(sampler: str) -> str:
  """``sampler`` if it is a known ``config.input.sampler`` value, else a ``ValueError``."""
  if sampler not in SAMPLERS:
    raise ValueError(f'config.input.sampler must be one of {SAMPLERS}, got {sampler!r}')
  return sampler


class PKSampler(grain.MapDataset):
  """``MapDataset`` of this process's examples of a plan (``PKPlan`` or ``BalancedPlan``):
  element ``i`` is ``{'record': int, 'epoch': int, 'position': int}``, ``position`` being the
  example's position in the global stream (batch * P*K + row), the same on every process count.

  Process ``process_index`` of ``process_count`` gets rows
  ``[process_index * L, (process_index + 1) * L)`` of each global batch, ``L = P*K/process_count``,
  i.e. whole identities; consecutive groups of ``L`` elements form its slice of one global batch.
  """

  def __init__(self, plan: PKPlan | BalancedPlan, *, process_index: int = 0,
               process_count: int = 1):
    super().__init__()
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(f'PKSampler: process_index={process_index} must be in '
                       f'[0, process_count={process_count})')
    if plan.p % process_count:
      raise ValueError(
          f'P x K sampler: each process must get whole identities, but p={plan.p} identities per '
          f'batch do not split over process_count={process_count} processes (P*K/process_count = '
          f'{plan.p * plan.k / process_count:g} is not a multiple of k={plan.k}); make '
          f'config.input.p a multiple of the process count')
    self._plan = plan
    self._index, self._count = process_index, process_count
    self.local_batch = plan.p * plan.k // process_count
    total = plan.total_batches()
    self._num_batches = (sys.maxsize // (plan.p * plan.k)) if total is None else total

  def __len__(self) -> int:
    return self._num_batches * self.local_batch

  def __str__(self) -> str:
    return (f'PKSampler(p={self._plan.p}, k={self._plan.k}, process={self._index}/'
            f'{self._count})')

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    if not 0 <= index < len(self):
      raise IndexError(f'PKSampler index {index} out of range [0, {len(self)})')
    batch, row = divmod(index, self.local_batch)
    epoch, b = self._plan.locate(batch)
    row += self._index * self.local_batch
    record = self._plan.epoch(epoch)[b].reshape(-1)[row]
    return {'record': int(record), 'epoch': epoch, 'position': batch * self._plan.p *
            self._plan.k + row}
