"""Learning-rate tables of the official recipes (BoT's and APNet's ``solver/lr_scheduler.py`` and
``configs``) and optimizer steps
against torch.optim."""

import ml_collections
import numpy as np
import pytest
import torch

from reid_jax import config_lib, optim
from tests.tolerances import U


def bot_optim():
  return config_lib.base_config().optim  # BoT recipe defaults


def apnet_optim():
  c = config_lib.base_config().optim
  c.update(lr=4e-4, milestones=(40, 80, 120, 160), step_at='epoch_end', weight_decay=1e-3,
           weight_decay_bias=1e-3)
  return c


def test_bot_epoch_table():
  lrs = optim.epoch_learning_rates(bot_optim(), 120)
  # BoT (configs/softmax_triplet_with_center.yml, stepped at epoch start; 1-based epochs):
  # 1: 3.82e-5, 2: 7.28e-5, 9: 3.15e-4, 10-39: 3.5e-4,
  # 40-69: 3.5e-5, 70-120: 3.5e-6. lr_e = 3.5e-4 * (0.01 + 0.99 e / 10) for e < 10.
  np.testing.assert_allclose(lrs[0], 3.815e-5, rtol=1e-9)
  np.testing.assert_allclose(lrs[1], 7.28e-5, rtol=1e-9)
  np.testing.assert_allclose(lrs[8], 3.1535e-4, rtol=1e-9)
  for e in range(1, 10):
    np.testing.assert_allclose(lrs[e - 1], 3.5e-4 * (0.01 + 0.99 * e / 10), rtol=1e-12)
  np.testing.assert_allclose(lrs[9:39], 3.5e-4)
  np.testing.assert_allclose(lrs[39:69], 3.5e-5)
  np.testing.assert_allclose(lrs[69:120], 3.5e-6)


def test_apnet_epoch_table():
  lrs = optim.epoch_learning_rates(apnet_optim(), 160)
  # APNet (configs/default.yml, stepped at epoch end):
  # 1: 4e-6, 2: 4.36e-5, ..., 10: 3.6e-4, 11-40: 4e-4, 41-80: 4e-5,
  # 81-120: 4e-6, 121-160: 4e-7.
  np.testing.assert_allclose(lrs[0], 4e-6, rtol=1e-9)
  np.testing.assert_allclose(lrs[1], 4.36e-5, rtol=1e-9)
  np.testing.assert_allclose(lrs[9], 3.604e-4, rtol=1e-9)
  np.testing.assert_allclose(lrs[10:40], 4e-4)
  np.testing.assert_allclose(lrs[40:80], 4e-5)
  np.testing.assert_allclose(lrs[80:120], 4e-6)
  np.testing.assert_allclose(lrs[120:160], 4e-7)


def test_schedule_matches_torch_warmup_scheduler_driven_like_official_code():
  # An independent check: drive a LambdaLR with the WarmupMultiStepLR formula the way ignite
  # did (step at epoch start for BoT) and record the lr seen by the first iteration of each epoch.
  p = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.Adam([p], lr=3.5e-4)

  def factor(last_epoch):
    warm = 0.01 * (1 - last_epoch / 10) + last_epoch / 10 if last_epoch < 10 else 1.0
    return warm * 0.1 ** sum(last_epoch >= m for m in (40, 70))

  sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
  seen = []
  opt.step()  # (no-op; silences torch's step-order warning)
  for _ in range(120):
    sched.step()  # EPOCH_STARTED handler
    seen.append(opt.param_groups[0]['lr'])
  np.testing.assert_allclose(optim.epoch_learning_rates(bot_optim(), 120), seen, rtol=1e-12)


@pytest.mark.parametrize('name', ['adam', 'amsgrad', 'sgd'])
def test_optimizer_steps_match_torch_with_bias_groups(name):
  rng = np.random.RandomState(0)
  f32 = lambda *shape: rng.randn(*shape).astype(np.float32)
  w0, b0 = f32(4, 3), f32(3)
  grads = [(f32(4, 3), f32(3)) for _ in range(5)]
  c = ml_collections.ConfigDict(dict(
      name=name, weight_decay=5e-4, weight_decay_bias=1e-2, bias_lr_factor=2.0,
      betas=(0.9, 0.999), momentum=0.9, nesterov=True))
  lr = 0.01
  # torch: two parameter groups, as reid-strong-baseline's make_optimizer builds them.
  tw, tb = torch.nn.Parameter(torch.tensor(w0)), torch.nn.Parameter(torch.tensor(b0))
  groups = [{'params': [tw], 'lr': lr, 'weight_decay': c.weight_decay},
            {'params': [tb], 'lr': lr * c.bias_lr_factor, 'weight_decay': c.weight_decay_bias}]
  if name == 'sgd':
    topt = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
  else:
    topt = torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.999), amsgrad=name == 'amsgrad')
  params = {'layer': {'kernel': w0.copy(), 'bias': b0.copy()}}
  tx = optim.make_optimizer(c, params)
  state = tx.init(params)
  import optax
  for gw, gb in grads:
    tw.grad, tb.grad = torch.tensor(gw), torch.tensor(gb)
    topt.step()
    updates, state = tx.update({'layer': {'kernel': gw, 'bias': gb}}, state, params)
    params = optax.apply_updates(params, optim.apply_learning_rate(updates, lr))
  # Elementwise float32 on both sides, no reductions: each step's update carries ~10 roundings
  # (moments, sqrt, division; momentum, Nesterov) plus, for Adam, the bias correction
  # 1 - beta2**t (float32 in optax, float64 in torch), which cancels: its relative error is
  # U beta2**t / (1 - beta2**t) <= U / (1 - beta2), halved by the sqrt. The steps' errors add
  # (steps x the largest total update bounds the sum of the steps' updates here), and each step
  # rounds the stored parameter on each side (rtol 2U per step). Still catches a wrong group lr
  # or weight decay: dropping the kernel's decay (5e-4) exceeds it 7x (Adam), 97x (SGD).
  steps = len(grads)
  per_step = 10 + (0.5 / (1 - c.betas[1]) if name != 'sgd' else 0)
  for got, start, ref in ((params['layer']['kernel'], w0, tw), (params['layer']['bias'], b0, tb)):
    ref = ref.detach().numpy()
    np.testing.assert_allclose(got, ref, rtol=2 * U * steps,
                               atol=U * per_step * steps * np.abs(ref - start).max())
