"""Losses against the PyTorch formulas of the official code (BoT's ``layers/triplet_loss.py`` and
``layers/center_loss.py``, michuanhaohao/reid-strong-baseline) and hand
computed values."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reid_jax import losses
from tests.tolerances import assert_close_scaled


def torch_ce_label_smooth(logits, labels, epsilon, num_classes):
  # reid-strong-baseline CrossEntropyLabelSmooth: targets (1-e)*onehot + e/K, mean over batch.
  log_probs = F.log_softmax(logits, dim=1)
  targets = torch.zeros_like(log_probs).scatter_(1, labels.unsqueeze(1), 1)
  targets = (1 - epsilon) * targets + epsilon / num_classes
  return (-targets * log_probs).mean(0).sum()


def torch_batch_hard(feats, labels, margin):
  n = feats.shape[0]
  xx = feats.pow(2).sum(1, keepdim=True).expand(n, n)
  dist = xx + xx.t() - 2 * feats @ feats.t()
  dist = dist.clamp(min=1e-12).sqrt()
  same = labels[:, None] == labels[None, :]
  dist_ap = torch.stack([dist[i][same[i]].max() for i in range(n)])
  dist_an = torch.stack([dist[i][~same[i]].min() for i in range(n)])
  y = torch.ones_like(dist_an)
  if margin is None:
    return F.soft_margin_loss(dist_an - dist_ap, y)
  return F.margin_ranking_loss(dist_an, dist_ap, y, margin=margin)


def torch_center_loss(feats, labels, centers):
  b, c = feats.shape[0], centers.shape[0]
  distmat = (feats.pow(2).sum(1, keepdim=True).expand(b, c)
             + centers.pow(2).sum(1, keepdim=True).expand(c, b).t()
             - 2 * feats @ centers.t())
  mask = labels[:, None] == torch.arange(c)[None, :]
  return (distmat * mask.float()).clamp(min=1e-12, max=1e12).sum() / b


@pytest.fixture
def batch():
  rng = np.random.RandomState(0)
  feats = rng.randn(16, 32).astype(np.float64)
  labels = np.repeat(np.arange(4), 4)
  logits = 3 * rng.randn(16, 10)
  return feats, labels, logits


@pytest.mark.parametrize('epsilon,k', [(0.1, None), (0.0, None), (0.1, 751)])
def test_label_smooth_ce_matches_torch(batch, epsilon, k):
  _, labels, logits = batch
  got = losses.cross_entropy_label_smooth(logits.astype(np.float32), labels, epsilon, k)
  ref = torch_ce_label_smooth(torch.tensor(logits), torch.tensor(labels), epsilon,
                              k or logits.shape[1])
  # float32 against float64: B*C terms t_c * (logsumexp - x_c), partial sums <= max |x| + log C
  # (the targets sum to 1). Smoothing over the wrong class count or epsilon moves it by ~0.1.
  assert_close_scaled(float(got), float(ref), terms=logits.size,
                      scale=np.abs(logits).max() + math.log(k or logits.shape[1]))


def test_label_smooth_ce_hand_value():
  # Two classes, equal logits: log_softmax = log(1/2) for both, targets sum to 1 -> log 2.
  got = losses.cross_entropy_label_smooth(np.zeros((1, 2), np.float32), np.array([0]), 0.1)
  assert float(got) == pytest.approx(math.log(2), rel=1e-6)


@pytest.mark.parametrize('margin', [0.3, 1.0, None])
def test_batch_hard_triplet_matches_torch(batch, margin):
  feats, labels, _ = batch
  got = losses.triplet_loss_batch_hard(feats.astype(np.float32), labels, margin)
  ref = torch_batch_hard(torch.tensor(feats), torch.tensor(labels), margin)
  # Each distance is sqrt(|a|^2 + |b|^2 - 2 a.b): 3D terms, partial sums <= max |f|^2, whose error
  # the sqrt divides by 2d (d >= the smallest distance); the loss adds two distances per anchor.
  # A wrong hardest positive/negative or margin moves it by >= 1e-2.
  sq = (feats ** 2).sum(1)
  d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * feats @ feats.T, 0))
  assert_close_scaled(float(got), float(ref), terms=3 * feats.shape[1],
                      scale=sq.max() / d[~np.eye(len(d), dtype=bool)].min())


def test_batch_hard_triplet_hand_value():
  # 1-D points: id0 at 0 and 1, id1 at 3 and 5. Hardest positive/negative per anchor:
  # a=0: ap 1, an 3; a=1: ap 1, an 2; a=3: ap 2, an 2; a=5: ap 2, an 4.
  # hinge(ap - an + 1): 0, 0, 1, 0 -> mean 0.25.
  feats = np.array([[0.], [1.], [3.], [5.]], np.float32)
  labels = np.array([0, 0, 1, 1])
  assert float(losses.triplet_loss_batch_hard(feats, labels, 1.0)) == pytest.approx(0.25, abs=1e-5)


def test_center_loss_matches_torch(batch):
  feats, labels, _ = batch
  centers = np.random.RandomState(1).randn(6, 32)
  got = losses.center_loss(feats.astype(np.float32), labels, centers.astype(np.float32))
  ref = torch_center_loss(torch.tensor(feats), torch.tensor(labels), torch.tensor(centers))
  # |f|^2 + |c|^2 - 2 f.c per row: 3D terms, partial sums <= max |f|^2 + max |c|^2, then the
  # mean over the batch (its rows' errors average). A missing 1/B or wrong centre is >= 1e-1.
  assert_close_scaled(float(got), float(ref), terms=3 * feats.shape[1],
                      scale=(feats ** 2).sum(1).max() + (centers ** 2).sum(1).max())


def test_center_loss_hand_value():
  feats = np.array([[1., 2.], [0., 0.]], np.float32)
  centers = np.array([[0., 0.], [3., 4.]], np.float32)
  # |(1,2)-(0,0)|² = 5, |(0,0)-(3,4)|² = 25 -> mean 15 (+ (C-1)*1e-12).
  assert float(losses.center_loss(feats, np.array([0, 1]), centers)) == pytest.approx(15.0)
