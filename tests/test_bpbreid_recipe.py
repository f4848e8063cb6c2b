"""BPBreID's recipe (configs/bpbreid.py): the per-epoch learning rates of the official
``WarmupMultiStepLR`` as torchreid's engine steps it (after every epoch), and the config fields of
the official yamls."""

import pathlib
import runpy

import numpy as np
import pytest

from reid_jax import optim

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(arg=None):
  return runpy.run_path(str(ROOT / 'configs' / 'bpbreid.py'))['get_config'](arg)


def test_lr_table_is_warmup_multistep_stepped_at_epoch_end():
  # torchreid/optim/lr_scheduler.py::WarmupMultiStepLR(milestones [40, 70], gamma 0.1,
  # warmup_factor 0.01, warmup_iters 10, linear); Engine.train calls scheduler.step() after the
  # epoch, so epoch e (0-based) runs at last_epoch = e.
  c = load_config()
  table = optim.epoch_learning_rates(c.optim, c.num_epochs)
  base = 3.5e-4
  expected = []
  for e in range(120):
    warm = 0.01 * (1 - e / 10) + e / 10 if e < 10 else 1.0
    expected.append(base * warm * 0.1 ** ((e >= 40) + (e >= 70)))
  np.testing.assert_allclose(table, expected, rtol=1e-12)
  assert table[0] == pytest.approx(3.5e-6) and table[9] == pytest.approx(3.5e-4 * 0.901)
  assert table[10] == pytest.approx(3.5e-4) and table[39] == pytest.approx(3.5e-4)
  assert table[40] == pytest.approx(3.5e-5) and table[70] == pytest.approx(3.5e-6)


def test_config_is_the_official_occluded_duke_recipe():
  c = load_config()
  m = c.model
  assert m.name == 'bpbreid' and m.backbone == 'hrnet' and m.hrnet_width == 32
  assert tuple(m.hrnet_stage_modules) == (1, 4, 3) and m.hrnet_blocks == 4
  # As every config here: no weights file by default (a real benchmark warns), the official one
  # named for --config.model.pretrained.
  assert m.pretrained is None
  assert 'hrnetv2_w32_imagenet_pretrained.pth' in (ROOT / 'configs' / 'bpbreid.py').read_text()
  assert m.parts == 8 and m.dim == 512 and tuple(m.test_embeddings) == ('bn_foreg', 'parts')
  assert m.binary_visibility_train and m.binary_visibility_test
  i = c.input
  assert i.dataset == 'occluded_duke' and i.parts == 'eight'
  assert tuple(i.size) == (384, 128) and i.flip_prob == 0.0
  assert (i.crop, i.pad) == ('pad', 10) and i.erasing_prob == 0.5
  assert (i.sampler, i.p, i.k) == ('pk', 16, 4)
  loss = c.loss
  assert (loss.ce_epsilon, loss.triplet_margin, loss.pixel_weight, loss.pixel_epsilon) == (
      0.1, 0.3, 0.35, 0.1)
  assert not loss.visibility_in_training
  assert {k: (v.id, v.tr) for k, v in loss.weights.items()} == {
      'globl': (1.0, 0.0), 'foreg': (1.0, 0.0), 'conct': (1.0, 0.0), 'parts': (0.0, 1.0)}
  o = c.optim
  assert (o.name, o.lr, o.weight_decay, o.weight_decay_bias) == ('adam', 3.5e-4, 5e-4, 5e-4)
  assert tuple(o.betas) == (0.9, 0.999) and o.bias_lr_factor == 1.0
  assert c.num_epochs == 120
  e = c.eval
  assert (e.flip, e.normalize, e.metric, e.part_combine) == ('none', True, 'euclidean', 'mean')


def test_dataset_and_backbone_arguments():
  market = load_config('market1501')
  assert market.input.dataset == 'market1501' and market.input.parts == 'five_v'
  assert market.model.parts == 5 and market.loss.weights.foreg.tr == 1.0
  duke = load_config('dukemtmc_reid')
  assert duke.input.parts == 'five_v' and duke.loss.weights.foreg.tr == 1.0
  pduke = load_config('p_dukemtmc_reid')
  assert pduke.input.dataset == 'p_dukemtmc_reid' and pduke.model.parts == 8
  assert pduke.loss.weights.foreg.tr == 0.0
  occ = load_config('occluded_reid')
  assert occ.input.dataset == 'market1501' and occ.input.parts == 'eight'
  assert occ.input.flip_prob == 0.5 and occ.loss.pixel_weight == 0.7
  r = load_config('backbone=resnet50')
  assert r.model.backbone == 'resnet' and r.model.depth == 50 and r.model.last_stride == 1
  assert r.model.pretrained is None and 'resnet50-19c8e357.pth' in (ROOT / 'configs' / 'bpbreid.py').read_text()
  s = load_config('synthetic')
  assert s.input.dataset == 'synthetic_reid/occluded' and s.model.pretrained is None
  assert s.input.parts == 'eight' and s.model.parts == 8
  assert s.model.backbone == 'resnet' and s.num_epochs == 30 and s.optim.step_at == 'epoch_end'
  assert s.input.erasing == 'coarse_dropout' and tuple(s.input.coarse_dropout_size) == (0.15, 0.65)
  with pytest.raises(ValueError, match='dataset must be one of'):
    load_config('cuhk03')
  with pytest.raises(ValueError, match='backbone must be one of'):
    load_config('backbone=vgg')
  with pytest.raises(ValueError, match='unknown key'):
    load_config('parts=eight')
