"""BPBreID (Somers et al., WACV 2023), the official recipe (VlSomers/bpbreid
``configs/bpbreid/bpbreid_occ_duke_train.yaml`` over ``torchreid/scripts/default_config.py``;
details on the BPBreID page of the docs folder).

Occluded-Duke by default: HRNet-W32 (ImageNet init ``hrnetv2_w32_imagenet_pretrained.pth``), K = 8
parts ('eight' grouping of the PifPaf label files), embeddings of 512; the ``part_based`` loss:
CE with label smoothing 0.1 on the global, foreground and concatenated-parts logits, the
part-averaged batch-hard triplet (margin 0.3) on the part embeddings, the pixel-to-part CE with
label smoothing 0.1 weighted 0.35. 384x128, no flip, pad 10 + random crop, CoarseDropout
(p 0.5, one hole of 15-65 % of H and W, ImageNet-mean fill, mask fill 0); P16 x K4
(``RandomIdentitySampler``, batch 64); Adam 3.5e-4, coupled weight decay 5e-4, warmup 10 epochs
linear from 0.01, x0.1 at epochs 40 and 70, 120 epochs, the scheduler stepped at epoch end
(torchreid's ``Engine.train`` calls ``update_lr`` after each epoch). Test: ``bn_foreg`` and the K
part embeddings, each L2-normalised, Euclidean (not squared) distance per part, mean over the
parts visible in both images.

Usage: --config=configs/bpbreid.py[:ARGS] with ARGS a dataset (occluded_duke (default),
market1501, dukemtmc_reid, p_dukemtmc_reid, occluded_reid, synthetic) and/or key=value items:
dataset=NAME, backbone=hrnet32|resnet50. The per-dataset differences are the official yamls':
Market-1501 and DukeMTMC-reID use the 'five_v' grouping (K = 5) and add a foreground triplet;
``occluded_reid`` trains on Market-1501 with the 'eight' grouping, flip, a foreground triplet and
pixel weight 0.7, to be tested on Occluded-REID
(``--mode=eval --config.input.dataset=occluded_reid``).
"""

import ml_collections

from reid_jax import config_lib
from reid_jax.data import parts as parts_lib

DATASETS = ('occluded_duke', 'market1501', 'dukemtmc_reid', 'p_dukemtmc_reid', 'occluded_reid',
            'synthetic')
BACKBONES = ('hrnet32', 'resnet50')


def loss_weights(foreground_triplet: bool = False) -> dict:
  """The GiLt weights: CE on global, foreground, concatenated parts; triplet on the parts."""
  return {'globl': {'id': 1.0, 'tr': 0.0},
          'foreg': {'id': 1.0, 'tr': 1.0 if foreground_triplet else 0.0},
          'conct': {'id': 1.0, 'tr': 0.0},
          'parts': {'id': 0.0, 'tr': 1.0}}


def get_config(arg=None):
  args = config_lib.parse_arg(arg, dataset='occluded_duke', backbone='hrnet32')
  for key, known in (('dataset', DATASETS), ('backbone', BACKBONES)):
    if args[key] not in known:
      raise ValueError(f'configs/bpbreid.py: {key} must be one of {known}, got {args[key]!r}')
  config = config_lib.base_config()
  config.model = config_lib.model_config('bpbreid')
  m = config.model
  if args.backbone == 'hrnet32':
    m.backbone = 'hrnet'
    # The official run loads hrnetv2_w32_imagenet_pretrained.pth (HRNet-Image-Classification's
    # HRNet-W32-C); pass it as --config.model.pretrained=FILE (README, ImageNet initialisation).
  else:
    m.backbone = 'resnet'    # torchreid's resnet50 with last stride 1, its ReLU'd stem
    m.depth, m.last_stride, m.stem_relu = 50, 1, True
    # torchvision's resnet50-19c8e357.pth: --config.model.pretrained=FILE.
  m.hrnet_width = 32
  m.hrnet_stage_modules = (1, 4, 3)
  m.hrnet_blocks = 4
  m.hrnet_stem_width = 64
  m.dim = 512
  m.test_embeddings = ('bn_foreg', 'parts')
  m.binary_visibility_train = True
  m.binary_visibility_test = True

  grouping = 'five_v' if args.dataset in ('market1501', 'dukemtmc_reid') else 'eight'
  config.input.dataset = 'market1501' if args.dataset == 'occluded_reid' else args.dataset
  config.input.parts = grouping
  m.parts = parts_lib.get_grouping(grouping).num_parts   # K
  config.input.size = (384, 128)
  config.input.flip_prob = 0.5 if args.dataset == 'occluded_reid' else 0.0
  config.input.crop = 'pad'
  config.input.pad = 10
  # 're' is albumentations' CoarseDropout: p 0.5, one hole of 15-65 % of H and W, filled with
  # the ImageNet mean on the normalised image (mask fill 0).
  config.input.erasing = 'coarse_dropout'
  config.input.erasing_prob = 0.5
  config.input.coarse_dropout_size = (0.15, 0.65)
  config.input.erasing_fill = config_lib.IMAGENET_MEAN
  config.input.sampler = 'pk'
  config.input.p, config.input.k = 16, 4
  config.input.eval_batch_size = 64

  foreground_triplet = args.dataset in ('market1501', 'dukemtmc_reid', 'occluded_reid')
  config.loss = ml_collections.ConfigDict(dict(
      ce_epsilon=0.1,
      triplet_margin=0.3,
      weights=loss_weights(foreground_triplet),
      pixel_weight=0.7 if args.dataset == 'occluded_reid' else 0.35,
      pixel_epsilon=0.1,
      visibility_in_training=False,   # official mask_filtering_training
  ))

  config.optim.update(name='adam', lr=3.5e-4, weight_decay=5e-4, weight_decay_bias=5e-4,
                      bias_lr_factor=1.0, betas=(0.9, 0.999), schedule='warmup_multistep',
                      warmup_epochs=10, warmup_factor=0.01, milestones=(40, 70), gamma=0.1,
                      step_at='epoch_end')
  config.num_epochs = 120

  config.eval.update(flip='none', normalize=True, metric='euclidean', every_epochs=0)
  config.eval.part_combine = 'mean'   # dist_combine_strat

  if args.dataset == 'synthetic':
    config_lib.synthetic_demo(config)
    config.input.dataset = 'synthetic_reid/occluded'
    # The demo preset of the other methods (a narrow ResNet-18 trained from scratch at 128 x 64,
    # P8 x K4, Adam 1e-3 with a 2-epoch warm-up, x0.1 at 20 and 26, 30 epochs, evaluation every
    # 10); BPBreID's head, losses, part masks and test feature are kept, 64-wide embeddings.
    m.pretrained = None
    m.backbone = 'resnet'
    m.update(depth=18, width=16, last_stride=1, stem_relu=True)
    m.dim = 64
    config.optim.step_at = 'epoch_end'   # the preset's 30 epochs, stepped as torchreid does
  return config
