"""DROP (Dou et al., arXiv 2401.18032): BPBreID's recipe (configs/bpbreid.py, itself the official
VlSomers/bpbreid yamls) with DROP's task-specific parsing features and PCT loss; details, and
which parts are the paper's and which are our provisional choices, on the DROP page of the docs
folder. The authors released no code or hyper-parameters: DROP's README says its code base is
BPBreID, so everything not named by the paper is BPBreID's.

Occluded-Duke at 256x128 by default (the README's headline row, R1 76.8 / mAP 63.3 against
BPBreID's 73.9 / 62.0 at that size); ``size=384x128`` is the second row (77.3 / 63.4 against
75.1 / 62.5). HRNet-W32 (``--config.model.pretrained=hrnetv2_w32_imagenet_pretrained.pth``, the
ImageNet HRNet-W32-C file BPBreID loads).

Provisional DROP pieces and their switches (``--config.model.X`` / ``--config.loss.X``), each to
be switched off in turn for the paper's ablation; all off is BPBreID:

* ``model.upsampling``: 'dpu' (detail-preserving upsampling, C_p = ``model.parsing_channels``
  128, ``model.dpu_fuse`` 'sum' | 'concat') | 'none' (parsing reads the ReID map);
* ``model.position_encoding``: 'learned' (``model.position_rows`` = input height / 4, set here
  from the size; change it with ``--config.input.size``) | 'sinusoidal' | 'none';
* ``model.part_pooling``: 'gwap+gmp' | 'gwap';
* ``model.detach_parsing_for_pooling``: False (decoupled gradients: True);
* ``loss.pct``: True (PCT, ``pct_weight`` 1.0, ``pct_margin`` 0.3, ``pct_positive`` 'center' |
  'hardest', replacing BPBreID's part triplet) | False;
* ``loss.bank``: 'fifo' (a ring of the last ``loss.bank_size`` = 4096 part-embedding rows) |
  'id_momentum' (one row per identity, ``loss.bank_momentum`` 0.2) | 'none';
* ``loss.pixel_targets``: 'argmax' (BPBreID's label-smoothed CE) | 'soft'.

Usage: --config=configs/drop.py[:ARGS], ARGS a dataset (as configs/bpbreid.py: occluded_duke,
market1501, dukemtmc_reid, p_dukemtmc_reid, occluded_reid, synthetic) and/or key=value items:
dataset=NAME, size=256x128|384x128. ``synthetic``: BPBreID's synthetic preset on
``synthetic_reid/occluded`` (a narrow ResNet-18 at 128x64, whose layer1..layer4 the DPU fuses).
"""

import os
import runpy

SIZES = {'256x128': (256, 128), '384x128': (384, 128)}


def get_config(arg=None):
  from reid_jax import config_lib
  args = config_lib.parse_arg(arg, dataset='occluded_duke', size='256x128')
  if args.size not in SIZES:
    raise ValueError(f'configs/drop.py: size must be one of {sorted(SIZES)}, got {args.size!r}')
  bpbreid = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                        'bpbreid.py'))['get_config']
  config = bpbreid(f'dataset={args.dataset}')
  m = config.model
  m.name = 'drop'
  # ``synthetic`` keeps BPBreID's preset: a narrow ResNet-18 at 128x64, 30 epochs. The DPU then
  # fuses layer1..layer4 (parsing on layer1's 32x16 grid, the part masks averaged over 4x4 blocks
  # onto the 8x4 ReID map). A narrow HRNet is 1.3-6x slower a step on 2 CPU cores and reached
  # only R1 3 % in about 10 minutes (width 4 at 128x64 for 15 epochs; width 8 at 64x32 for 30).
  if args.dataset != 'synthetic':
    config.input.size = SIZES[args.size]
  m.upsampling = 'dpu'
  m.parsing_channels = 128 if args.dataset != 'synthetic' else 32
  m.dpu_fuse = 'sum'
  m.position_encoding = 'learned'
  # The parsing map's height: 1/4 of the input (HRNet's map; a ResNet's layer1 under the DPU).
  # With upsampling='none' on a ResNet the parsing map is the ReID map: set input height / 16.
  m.position_rows = config.input.size[0] // 4
  m.part_pooling = 'gwap+gmp'
  m.detach_parsing_for_pooling = False

  loss = config.loss
  loss.pct = True                 # replaces the parts' triplet of BPBreID's GiLt weights
  loss.pct_weight = 1.0
  loss.pct_margin = 0.3
  loss.pct_positive = 'center'
  loss.bank = 'fifo'
  loss.bank_size = 4096 if args.dataset != 'synthetic' else 256   # 64 batches of 64 (of 32)
  loss.bank_momentum = 0.2        # used by bank='id_momentum'
  loss.pixel_targets = 'argmax'
  return config
