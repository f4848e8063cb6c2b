"""DROP's recipe (configs/drop.py): BPBreID's official recipe with DROP's switches on, the two
README sizes, the synthetic preset (BPBreID's narrow ResNet, its layer1..layer4 fused by the DPU)
whose position table fits its parsing map."""

import pathlib
import runpy

import jax.numpy as jnp
import pytest
from flax import nnx

from reid_jax import models
from reid_jax.models import drop as dr

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(name, arg=None):
  return runpy.run_path(str(ROOT / 'configs' / name))['get_config'](arg)


def test_default_is_bpbreid_occluded_duke_at_256x128_with_every_drop_piece_on():
  c, b = load('drop.py'), load('bpbreid.py')
  assert c.model.name == 'drop' and c.input.dataset == 'occluded_duke'
  assert tuple(c.input.size) == (256, 128) and c.model.position_rows == 64
  assert (c.model.upsampling, c.model.position_encoding, c.model.part_pooling) == (
      'dpu', 'learned', 'gwap+gmp')
  assert c.model.parsing_channels == 128 and not c.model.detach_parsing_for_pooling
  assert c.loss.pct and c.loss.pct_weight == 1.0 and c.loss.pct_margin == 0.3
  assert (c.loss.bank, c.loss.bank_size, c.loss.bank_momentum) == ('fifo', 4096, 0.2)
  assert c.loss.pixel_targets == 'argmax'
  # Everything else is BPBreID's recipe.
  for section in ('optim', 'eval'):
    assert c[section].to_dict() == b[section].to_dict(), section
  assert c.num_epochs == b.num_epochs == 120
  assert c.loss.weights.to_dict() == b.loss.weights.to_dict()
  assert (c.loss.pixel_weight, c.loss.pixel_epsilon) == (0.35, 0.1)
  for key in ('backbone', 'hrnet_width', 'parts', 'dim', 'test_embeddings'):
    assert c.model[key] == b.model[key], key
  big = load('drop.py', 'size=384x128')
  assert tuple(big.input.size) == (384, 128) and big.model.position_rows == 96
  market = load('drop.py', 'market1501')
  assert market.input.parts == 'five_v' and market.model.parts == 5
  assert market.loss.weights.foreg.tr == 1.0
  with pytest.raises(ValueError, match='size must be one of'):
    load('drop.py', 'size=128x64')


def test_synthetic_preset_builds_and_its_bank_holds_whole_batches():
  c = load('drop.py', 'synthetic')
  assert c.input.dataset == 'synthetic_reid/occluded' and c.model.backbone == 'resnet'
  assert c.model.upsampling == 'dpu' and c.model.position_rows == c.input.size[0] // 4
  model = nnx.eval_shape(lambda: models.build_model(c.model, 10))
  h, w = c.input.size
  out = nnx.eval_shape(lambda m: m.outputs(jnp.zeros((2, h, w, 3))), model)
  assert out['pixel_scores'].shape == (2, h // 4, w // 4, c.model.parts + 1)
  bank = dr.init_bank(c, model, 10, None)
  assert bank['features'].shape == (c.loss.bank_size, c.model.parts, c.model.dim)
  assert c.loss.bank_size % (c.input.p * c.input.k) == 0
