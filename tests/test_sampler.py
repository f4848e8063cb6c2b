"""P x K sampler: official RandomIdentitySampler semantics, determinism, process slices."""

import collections
import pickle
import random

import numpy as np
import pytest

from reid_jax.data import sampler


def _labels(seed=0, num_ids=30, max_images=11):
  """Identities with 1..max_images images each (some below K), in shuffled record order."""
  rng = np.random.default_rng(seed)
  counts = rng.integers(1, max_images + 1, num_ids)
  labels = np.repeat(np.arange(num_ids) * 3 + 5, counts)  # non-contiguous ids on purpose
  return rng.permutation(labels)


def _chunks_per_id(labels, k):
  """Official chunk count per id: max(n, K) // K (with replacement up to K when n < K)."""
  counts = collections.Counter(labels.tolist())
  return {i: max(n, k) // k for i, n in counts.items()}


def test_batches_are_p_contiguous_groups_of_k_distinct_ids():
  labels = _labels()
  p, k = 4, 4
  plan = sampler.epoch_plan(labels, p, k, seed=1, epoch=0)
  assert plan.ndim == 3 and plan.shape[1:] == (p, k) and plan.shape[0] > 0
  for batch in plan:
    ids = labels[batch]                      # [p, k]
    assert (ids == ids[:, :1]).all()         # each group of K is one id
    assert len(set(ids[:, 0].tolist())) == p  # ids distinct within the batch


def test_plan_replays_as_a_run_of_the_official_algorithm():
  """Every batch draws P ids that still have chunks; the epoch stops when fewer than P have."""
  labels = _labels(seed=3)
  p, k = 5, 4
  remaining = _chunks_per_id(labels, k)
  counts = collections.Counter(labels.tolist())
  used = collections.defaultdict(list)
  plan = sampler.epoch_plan(labels, p, k, seed=7, epoch=2)
  for batch in plan:
    assert sum(1 for c in remaining.values() if c > 0) >= p
    for group in batch:
      pid = int(labels[group[0]])
      assert remaining[pid] > 0
      remaining[pid] -= 1
      used[pid].extend(group.tolist())
  assert sum(1 for c in remaining.values() if c > 0) < p  # termination rule
  for pid, idx in used.items():
    assert all(labels[i] == pid for i in idx)
    if counts[pid] >= k:  # shuffled without replacement
      assert len(set(idx)) == len(idx)
    else:                 # drawn with replacement: only the id's own images, K per chunk
      assert len(idx) == k and set(idx) <= set(np.flatnonzero(labels == pid).tolist())
  small = [pid for pid, n in counts.items() if n < k]
  assert small, 'the fixture must contain ids with fewer than K images'


@pytest.mark.parametrize('seed', [0, 1])
def test_epoch_length_where_the_official_count_is_deterministic(seed):
  labels = _labels(seed)
  chunks = _chunks_per_id(labels, 4)
  # P = 1: every chunk becomes a batch.
  assert sampler.epoch_plan(labels, 1, 4, seed, 0).shape[0] == sum(chunks.values())
  # P = number of ids: all ids every batch, until the first id runs out.
  assert sampler.epoch_plan(labels, len(chunks), 4, seed, 0).shape[0] == min(chunks.values())


def _official_num_batches(labels, p, k, rnd):
  """Pure-Python re-statement of RandomIdentitySampler.__iter__, returning batches per epoch."""
  index = collections.defaultdict(list)
  for i, pid in enumerate(labels.tolist()):
    index[pid].append(i)
  chunks = {}
  for pid, idxs in index.items():
    idxs = list(idxs)
    if len(idxs) < k:
      idxs = [rnd.choice(idxs) for _ in range(k)]
    rnd.shuffle(idxs)
    chunks[pid] = [idxs[j:j + k] for j in range(0, len(idxs) - k + 1, k)]
  avail, n = list(index), 0
  while len(avail) >= p:
    for pid in rnd.sample(avail, p):
      chunks[pid].pop(0)
      if not chunks[pid]:
        avail.remove(pid)
    n += 1
  return n


def test_epoch_length_distribution_matches_the_official_sampler():
  # A few ids with many chunks and many with one: the epoch length depends on the draws.
  counts = [40, 33, 28, 4, 4, 5, 6, 7, 2, 3, 4, 4, 9, 4]
  labels = np.random.default_rng(0).permutation(np.repeat(np.arange(len(counts)), counts))
  p, k, runs = 3, 4, 300
  rnd = random.Random(0)
  official = np.array([_official_num_batches(labels, p, k, rnd) for _ in range(runs)])
  ours = np.array([sampler.epoch_plan(labels, p, k, 0, e).shape[0] for e in range(runs)])
  assert official.std() > 0  # the case is not trivially deterministic
  assert abs(official.mean() - ours.mean()) < 0.25 * max(official.std(), ours.std()) + 0.1
  assert ours.min() >= official.min() - 1 and ours.max() <= official.max() + 1


def test_estimated_length_is_the_official_len():
  labels = _labels(seed=2)
  k = 4
  expected = sum((max(n, k) // k) * k for n in collections.Counter(labels.tolist()).values())
  assert sampler.estimated_length(labels, k) == expected
  assert sampler.epoch_plan(labels, 4, k, 0, 0).size <= expected


def test_plan_is_a_pure_function_of_seed_and_epoch():
  labels = _labels()
  a = sampler.epoch_plan(labels, 4, 4, seed=3, epoch=1)
  np.testing.assert_array_equal(a, sampler.epoch_plan(labels, 4, 4, seed=3, epoch=1))
  assert not np.array_equal(a[:3], sampler.epoch_plan(labels, 4, 4, seed=3, epoch=2)[:3])
  assert not np.array_equal(a[:3], sampler.epoch_plan(labels, 4, 4, seed=4, epoch=1)[:3])


def test_stream_lays_epochs_end_to_end():
  labels = _labels()
  plan = sampler.PKPlan(labels, 4, 4, seed=0, num_epochs=3)
  lengths = [sampler.epoch_plan(labels, 4, 4, 0, e).shape[0] for e in range(3)]
  assert plan.total_batches() == sum(lengths)
  ds = sampler.PKSampler(plan)
  assert len(ds) == sum(lengths) * 16
  b = lengths[0] + 2  # third batch of epoch 1
  assert plan.locate(b) == (1, 2)
  rows = [ds[b * 16 + j] for j in range(16)]
  assert all(r['epoch'] == 1 for r in rows)
  np.testing.assert_array_equal([r['record'] for r in rows],
                                sampler.epoch_plan(labels, 4, 4, 0, 1)[2].reshape(-1))
  clone = pickle.loads(pickle.dumps(plan))  # grain worker processes receive a pickled copy
  assert clone.locate(b) == (1, 2)


def test_process_slices_are_whole_ids_and_cover_the_global_batch():
  labels = _labels()
  p, k, count = 4, 4, 2
  plan = sampler.PKPlan(labels, p, k, seed=0)
  whole = sampler.PKSampler(plan)
  parts = [sampler.PKSampler(plan, process_index=i, process_count=count) for i in range(count)]
  local = p * k // count
  for batch in range(3):
    glob = [whole[batch * p * k + j]['record'] for j in range(p * k)]
    pieces = [[part[batch * local + j]['record'] for j in range(local)] for part in parts]
    assert sum(pieces, []) == glob
    for piece in pieces:
      ids = labels[np.array(piece)].reshape(-1, k)
      assert (ids == ids[:, :1]).all()
      assert len(set(ids[:, 0].tolist())) == local // k


def test_bad_arguments_are_explained():
  labels = _labels()
  with pytest.raises(ValueError, match='process_count=2'):
    sampler.PKSampler(sampler.PKPlan(labels, 3, 4, seed=0), process_index=0, process_count=2)
  with pytest.raises(ValueError, match='config.input.p'):
    sampler.PKPlan(np.array([0, 0, 1, 1]), 3, 2, seed=0)


# MPN's BalancedBatchSampler (WangKan0128/MPN utils/batch_sample_old_adjust.py).


class _OfficialBalanced:
  """Re-statement of MPN's stateful ``BalancedBatchSampler`` (one object for the whole run), with
  a ``np.random.Generator`` in place of NumPy's global generator: the same draws in the same
  order (shuffle every id's list at construction, then per batch ``choice`` of the ids, per id a
  ``choice`` with replacement or a slice, then a reshuffle when the list cannot give K more)."""

  def __init__(self, labels, n_classes, n_samples, seed):
    self.rng = np.random.default_rng(seed)
    self.n = len(labels)
    self.labels_set = sorted(set(labels.tolist()))
    self.label_to_indices = {c: np.where(labels == c)[0] for c in self.labels_set}
    for c in self.labels_set:
      self.rng.shuffle(self.label_to_indices[c])
    self.used = {c: 0 for c in self.labels_set}
    self.n_classes, self.n_samples = n_classes, n_samples
    self.batch_size = n_classes * n_samples

  def epoch(self):
    """One ``__iter__``: the list of indices, in order."""
    count, indices = 0, []
    while count + self.batch_size < self.n:
      for c in self.rng.choice(self.labels_set, self.n_classes, replace=False):
        lst = self.label_to_indices[c]
        if self.used[c] + self.n_samples > len(lst):
          indices.extend(self.rng.choice(list(lst), self.n_samples, replace=True))
        else:
          indices.extend(lst[self.used[c]:self.used[c] + self.n_samples])
        self.used[c] += self.n_samples
        if self.used[c] + self.n_samples > len(lst):
          self.rng.shuffle(lst)
          self.used[c] = 0
      count += self.batch_size
    return [int(i) for i in indices]

  def snapshot(self):
    return ({c: v.tolist() for c, v in self.label_to_indices.items()}, dict(self.used))


def _balanced_labels():
  """Ids with 1..11 images (K = 4: some ids below K, some with a remainder) and one with 40."""
  labels = _labels(seed=5, num_ids=12)
  return np.random.default_rng(1).permutation(np.concatenate([labels, np.full(40, 1000)]))


def test_balanced_plan_replays_the_official_sampler_over_epochs():
  labels = _balanced_labels()
  p, k, seed = 3, 4, 11
  official = _OfficialBalanced(labels, p, k, seed)
  plan = sampler.BalancedPlan(labels, p, k, seed)
  for e in range(6):  # lists and counters carry over: later epochs depend on earlier ones
    np.testing.assert_array_equal(plan.epoch(e).reshape(-1), official.epoch(), err_msg=f'{e}')
  counts = collections.Counter(labels.tolist())
  assert min(counts.values()) < k  # with-replacement branch exercised


@pytest.mark.parametrize('n,p,k', [(97, 3, 4), (96, 3, 4), (97, 6, 8), (49, 6, 8), (48, 2, 4)])
def test_balanced_epoch_length_is_floor_n_minus_1_over_pk(n, p, k):
  labels = np.arange(n) % 7
  plan = sampler.BalancedPlan(labels, p, k, seed=0, num_epochs=3)
  expected = sum(1 for m in range(n) if (m + 1) * p * k < n)  # while count + P*K < N
  assert expected == (n - 1) // (p * k)
  assert all(plan.epoch(e).shape == (expected, p, k) for e in range(3))
  assert [plan.num_batches(e) for e in range(3)] == [expected] * 3
  assert plan.total_batches() == 3 * expected


def test_balanced_batches_are_p_contiguous_groups_of_k_distinct_ids():
  labels = _balanced_labels()
  p, k = 4, 4
  plan = sampler.BalancedPlan(labels, p, k, seed=2)
  counts = collections.Counter(labels.tolist())
  for e in range(3):
    for batch in plan.epoch(e):
      ids = labels[batch]
      assert (ids == ids[:, :1]).all()
      assert len(set(ids[:, 0].tolist())) == p
      for group in batch:
        if counts[int(labels[group[0]])] >= k:  # a slice of a shuffled list: no repeats
          assert len(set(group.tolist())) == k


def test_balanced_id_with_fewer_than_k_images_draws_with_replacement():
  labels = np.array([0] * 2 + [1] * 9 + [2] * 9 + [3] * 9)
  p, k = 4, 4  # every batch holds every id, so id 0 (2 images) is in each
  plan = sampler.BalancedPlan(labels, p, k, seed=0)
  groups = [g for e in range(200) for batch in plan.epoch(e) for g in batch if labels[g[0]] == 0]
  assert len(groups) == 200 * ((labels.size - 1) // (p * k))
  assert all(set(g.tolist()) <= {0, 1} for g in groups)
  # K draws with replacement from 2 images: all four the same with probability 2 * 2**-4.
  same = np.mean([len(set(g.tolist())) == 1 for g in groups])
  assert 0.06 < same < 0.2


def test_balanced_state_carries_over_between_epochs():
  """The lists and counters at the start of epoch 1 are those left at the end of epoch 0 (not a
  fresh shuffle, no counter reset)."""
  labels = _balanced_labels()
  p, k, seed = 3, 4, 4
  official = _OfficialBalanced(labels, p, k, seed)
  plan = sampler.BalancedPlan(labels, p, k, seed)
  official.epoch()
  after_0 = official.snapshot()
  plan.epoch(0)
  order, used, _ = plan._states[1]  # pylint: disable=protected-access
  ids = sorted(after_0[0])
  np.testing.assert_array_equal(order, np.concatenate([after_0[0][c] for c in ids]))
  np.testing.assert_array_equal(used, [after_0[1][c] for c in ids])
  assert any(after_0[1].values())  # some counters are mid-list at the epoch boundary
  # The 40-image id gives all its images in every run of 10 groups (K = 4) between reshuffles,
  # also across epoch boundaries (a reset at epoch start would break the runs).
  groups = [g.tolist() for e in range(12) for b in plan.epoch(e) for g in b
            if labels[g[0]] == 1000]
  assert len(groups) >= 20 and len(groups) > 4 * plan.num_batches(0) * p / 13  # ~2.5 per epoch
  for start in range(0, len(groups) - 9, 10):
    seen = sum(groups[start:start + 10], [])
    assert len(set(seen)) == 40


def test_balanced_resume_from_any_batch_is_identical():
  labels = _balanced_labels()
  p, k = 3, 4
  first = sampler.BalancedPlan(labels, p, k, seed=9, num_epochs=5)
  whole = sampler.PKSampler(first)
  stream = [whole[i]['record'] for i in range(len(whole))]
  n = first.num_batches(0)
  for batch in (0, n - 1, n, 2 * n + 3, 5 * n - 1):
    resumed = sampler.PKSampler(sampler.BalancedPlan(labels, p, k, seed=9, num_epochs=5))
    got = [resumed[i]['record'] for i in range(batch * p * k, len(resumed))]
    assert got == stream[batch * p * k:]
    assert resumed[batch * p * k]['epoch'] == batch // n
  # A pickled copy (grain worker processes) continues the same stream from its carried states.
  clone = pickle.loads(pickle.dumps(first))
  np.testing.assert_array_equal(clone.epoch(4), first.epoch(4))
  np.testing.assert_array_equal(clone.epoch(2), first.epoch(2))
  assert not np.array_equal(first.epoch(0), sampler.BalancedPlan(labels, p, k, seed=8).epoch(0))


def test_make_plan_picks_the_sampler_and_names_the_field():
  labels = _balanced_labels()
  assert isinstance(sampler.make_plan('pk', labels, 3, 4, 0), sampler.PKPlan)
  assert isinstance(sampler.make_plan('balanced', labels, 3, 4, 0), sampler.BalancedPlan)
  with pytest.raises(ValueError, match=r"config.input.sampler.*'pk', 'balanced'.*'mpn'"):
    sampler.make_plan('mpn', labels, 3, 4, 0)
  with pytest.raises(ValueError, match='config.input.p'):
    sampler.BalancedPlan(np.repeat(np.arange(3), 10), 4, 2, seed=0)
  with pytest.raises(ValueError, match='config.input.k'):
    sampler.BalancedPlan(np.repeat(np.arange(4), 2), 4, 2, seed=0)  # N = 8 = P*K: no batch
