"""Shared pieces of the ``configs/<method>.py`` files.

Each method config calls ``base_config()`` and overrides what its official recipe sets. Sections:
  config.model     the network (``name`` picks the registry entry; see reid_jax.models)
  config.input     dataset and input pipeline (sampler, image size, augmentations)
  config.loss      loss weights and hyper-parameters
  config.optim     optimizer and learning-rate schedule
  config.eval      test-time feature and evaluation protocol
The config argument (``--config=configs/x.py:ARG``) selects the dataset, e.g. ``:dukemtmc_reid``
or ``:synthetic``.
"""

from __future__ import annotations

import ml_collections

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def model_config(name: str) -> ml_collections.ConfigDict:
  """Backbone fields shared by every method (reid_jax.models.resnet.ResNet)."""
  return ml_collections.ConfigDict(dict(
      name=name,
      depth=50,
      last_stride=1,
      stem_relu=True,
      maxpool_ceil_mode=False,
      ibn=False,
      width=64,            # stem channels; 64 is the real ResNet
      neck_feat='after',   # BNNeck test feature: 'after' (BN output) or 'before' (GAP)
      dtype='float32',     # compute dtype; parameters stay float32
      # PyTorch backbone checkpoint loaded into model.base at a fresh start (never on resume;
      # config.init_checkpoint wins): e.g. torchvision resnet50-19c8e357.pth. README: "ImageNet
      # initialisation".
      pretrained=ml_collections.config_dict.placeholder(str),
  ))


def input_config() -> ml_collections.ConfigDict:
  """Dataset and input pipeline (reid_jax.data; docs/input_pipeline.md)."""
  return ml_collections.ConfigDict(dict(
      dataset='market1501',  # TFDS name, 'name/config' for builder configs
      data_dir=ml_collections.config_dict.placeholder(str),  # TFDS data_dir; None = TFDS default
      size=(256, 128),       # (H, W) in pixels
      interpolation='bilinear',       # train resize: 'bilinear' or 'bicubic' (PIL)
      test_interpolation='bilinear',  # MPN tests with 'bicubic'
      sampler='pk',          # 'pk': RandomIdentitySampler (BoT); 'balanced': MPN's
                             # BalancedBatchSampler (floor((N-1)/(P*K)) batches, state carried)
      p=16,                  # identities per batch
      k=4,                   # images per identity
      flip_prob=0.5,
      crop='pad',            # 'pad' (Pad(pad) + RandomCrop), 'translate' (x1.125 then crop), 'none'
      pad=10,                # pixels of zero padding for crop='pad'
      translate_prob=0.5,    # crop='translate': probability of the x1.125 resize + crop
      erasing_prob=0.5,
      erasing_area=(0.02, 0.4),    # erased area fraction range
      erasing_aspect=0.3,          # aspect ratio range [a, 1/a]
      erasing_fill=IMAGENET_MEAN,  # per-channel fill on the normalised image
      erasing_test='>=',           # skip erasing when u >= p (BoT) or u > p ('>')
      # 'random': random erasing (Zhong et al.; erasing_area/aspect/test); 'coarse_dropout':
      # BPBreID's albumentations CoarseDropout, one hole of coarse_dropout_size of H and of W.
      erasing='random',
      coarse_dropout_size=(0.15, 0.65),  # hole side range, fractions of H and of W
      erase_parsing=True,          # erased box is background (0) in the parsing / part masks too
      mean=IMAGENET_MEAN,
      std=IMAGENET_STD,
      parsing=False,         # also yield the human-parsing mask (synthetic_reid)
      texture=False,         # also yield the identity texture in [-1, 1] (synthetic_reid, SAN)
      texture_size=ml_collections.config_dict.placeholder(int),  # resize textures; None = stored
      flip_texture=False,    # mirror the texture with the image (SAN's official loader does not)
      # Part masks (reid_jax.data.parts): a BPBreID grouping name ('eight', 'five_v', ...) adds
      # the batch field part_masks float32 [B, H/parts_scale, W/parts_scale, K+1], background
      # first, from the dataset's parsing_fields (prepare --parsing_dir) or synthetic_reid's
      # parsing map. None: no part masks.
      parts=ml_collections.config_dict.placeholder(str),
      parts_nearest='cv2',   # mask resize: 'cv2' (albumentations/OpenCV INTER_NEAREST, BPBreID)
                             # or 'pil' (pixel centres, aligned with the bilinear image resize)
      parts_scale=4,         # part_masks downsampling (BPBreID ResizeMasks mask_scale)
      parts_threshold=0.5,   # background where every part is below this
      parts_softmax_weight=15.0,  # softmax(w * [background, parts]); 0 = divide by the sum
      threads=8,             # grain read threads (per process)
      workers=0,             # grain worker processes (mp_prefetch); 0 = threads only
      eval_batch_size=128,
      eval_drop_junk=True,   # drop pid -1 images from query/gallery, as torchreid's loaders do
  ))


def eval_config() -> ml_collections.ConfigDict:
  """Test-time feature and protocol (reid_jax.evaluation)."""
  return ml_collections.ConfigDict(dict(
      flip='none',           # 'none', 'sum' or 'mean' of the features of x and fliplr(x)
      normalize=True,        # L2-normalise features before the distance
      metric='sqeuclidean',  # 'euclidean', 'sqeuclidean' or 'cosine' (part features: 'euclidean')
      part_combine='mean',   # part features: 'mean' or 'max' over the common visible parts
      ap='step',             # 'step' (torchreid/fast-reid) or 'trapezoid' (Market-1501 official/MPN)
      max_rank=50,
      rerank=False,          # False, True (k1/k2/lambda below) or a preset: 'bot', 'transreid', ...
      rerank_k1=20,
      rerank_k2=6,
      rerank_lambda=0.3,
      block_size=256,        # query rows per evaluation block (memory ~ block_size * G * 8 bytes)
      cuhk03_single_shot=False,  # classic CUHK03 single-gallery-shot CMC (10 seeded draws)
      roc=False,             # also report TPR at FPR 1e-4/1e-3/1e-2 (needs the [Q, G] matrix)
      every_epochs=40,
      at_end=True,           # evaluate once training ends
      pictures=0,            # write ranked lists of this many queries + the CMC curve (PNG)
  ))


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_config('baseline')
  config.input = input_config()
  config.loss = ml_collections.ConfigDict(dict(
      ce_epsilon=0.1,
      ce_num_classes=ml_collections.config_dict.placeholder(int),  # APNet's fixed-751 quirk
      triplet_margin=0.3,
      triplet_soft_margin=False,
      center_weight=0.0,
  ))
  config.optim = ml_collections.ConfigDict(dict(
      name='adam',
      lr=3.5e-4,
      weight_decay=5e-4,
      bias_lr_factor=1.0,
      weight_decay_bias=5e-4,
      betas=(0.9, 0.999),
      momentum=0.9,
      nesterov=False,
      schedule='warmup_multistep',
      warmup_epochs=10,
      warmup_factor=0.01,
      milestones=(40, 70),
      gamma=0.1,
      step_at='epoch_start',  # BoT steps its scheduler at epoch start, APNet at epoch end
      center_lr=0.5,
  ))
  config.num_epochs = 120
  config.eval = eval_config()
  config.mesh = (('data', -1),)
  config.log_every_steps = 50
  config.max_steps = ml_collections.config_dict.placeholder(int)  # stop early (smoke runs)
  config.grad_accum_steps = 1  # >1: average gradients over micro-batches of whole identities
  config.init_checkpoint = ml_collections.config_dict.placeholder(str)  # e.g. reid_jax.convert output
  config.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, async_save=True))
  return config


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """``'a=1,b=x'`` or a bare word (the dataset) into a ConfigDict of strings over ``defaults``."""
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for i, item in enumerate(arg.split(',')):
    if '=' in item:
      key, value = item.split('=', 1)
    elif i == 0:
      key, value = 'dataset', item
    else:
      raise ValueError(f'config argument {arg!r}: expected key=value items, got {item!r}')
    if key not in out:
      raise ValueError(f'config argument {arg!r}: unknown key {key!r}; known: {sorted(out)}')
    out[key] = type(out[key])(value) if out[key] is not None else value
  return out


def synthetic_demo(config: ml_collections.ConfigDict,
                   num_epochs: int = 30) -> ml_collections.ConfigDict:
  """The ``:synthetic`` preset: the embedded synthetic_reid demo set, sized to train and evaluate
  in minutes on 2 CPU cores (a narrow ResNet-18 at 128x64; the recipe's losses and schedule shape
  are kept, compressed in epochs).

  ``num_epochs``: 30 is the budget every method's demo shares (so their README rows compare);
  the 2-epoch warm-up stays, the x0.1 milestones sit at 2/3 and 13/15 of the run (20 and 26 of
  30) and the evaluation runs three times (every ``num_epochs / 3`` epochs, rounded up)."""
  if num_epochs < 3:
    raise ValueError(f'synthetic demo: num_epochs must be >= 3 (warm-up 2 epochs), got '
                     f'{num_epochs}')
  config.input.dataset = 'synthetic_reid/demo'
  config.input.size = (128, 64)
  config.input.pad = 5
  # Batch 32: XLA:CPU's per-image speed drops at larger batches (docs/benchmarks.md).
  config.input.p, config.input.k = 8, 4
  config.model.update(depth=18, width=16)
  config.num_epochs = num_epochs
  config.optim.update(warmup_epochs=2, lr=1e-3,
                      milestones=(round(num_epochs * 2 / 3), round(num_epochs * 13 / 15)))
  config.eval.every_epochs = -(-num_epochs // 3)
  config.log_every_steps = 20
  config.checkpoint.every_steps = 200
  return config
