"""MPN (Ding et al., TPAMI 2020), the released recipe (WangKan0128/MPN ``train_mpn_no_ca.py``,
README; docs/mpn.md).

ResNet-50 (stem ReLU, last stride 1), K = 6 parts with shared MT/AT 1x1 conv blocks; plain CE per
MT and AT classifier + class-wise alignment + triplet (L2-normalised 3072-d MT concatenation,
squared distances, margin 0.4). 384x128, P6 x K8 with the official ``BalancedBatchSampler``;
resize (bilinear) + flip + random erasing 0.5 with the CIFAR-mean fill (skipped when u > p);
SGD momentum 0.9, nesterov, weight decay 5e-4, lr 0.01, x0.1 every 20 epochs, 70 epochs, the
scheduler stepped at epoch start under PyTorch 0.4 (epochs 0-19 at 1e-2, 20-39 1e-3, 40-59
1e-4, 60-69 1e-5). Test: the six MT features concatenated (3072), flip-sum, L2, cosine; bicubic
test resize; trapezoid AP as the official ``evaluate.py``.

The official training starts the backbone from an IDE snapshot (``data/1501.pth``: ResNet-50 +
fc512 + classifier trained for ID classification; not published), built on torchvision's
ResNet-50. Its backbone keys are prefixed ``model.``: ``--config.model.pretrained=1501.pth`` finds
them and loads the backbone (the rest is reported unused); torchvision's ``resnet50-19c8e357.pth``
is the ImageNet starting point when no snapshot is at hand.

Usage: --config=configs/mpn.py[:ARGS] with ARGS a dataset (market1501 (default), dukemtmc_reid,
cuhk03_np, msmt17, synthetic) and/or key=value items: dataset=NAME, prior=stripes|parsing,
ca=0|1 (channel attention, "MPN with CA"), lr_step=torch04|modern (modern PyTorch's scheduler
shift: every decay one epoch earlier). E.g. ``:synthetic,prior=parsing``.
"""

import ml_collections

from reid_jax import config_lib

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # MPN's random-erasing fill (utils/random_erasing.py)
LR_STEP = {'torch04': 'epoch_start_torch04', 'modern': 'epoch_start'}


def get_config(arg=None):
  args = config_lib.parse_arg(arg, dataset='market1501', prior='stripes', ca=0, lr_step='torch04')
  if args.prior not in ('stripes', 'parsing'):
    raise ValueError(f"configs/mpn.py: prior must be 'stripes' or 'parsing', got {args.prior!r}")
  if args.lr_step not in LR_STEP:
    raise ValueError(f'configs/mpn.py: lr_step must be one of {sorted(LR_STEP)}, '
                     f'got {args.lr_step!r}')
  config = config_lib.base_config()
  config.model = config_lib.model_config('mpn')
  config.model.stem_relu = True      # MPN's models/resnet.py keeps the stem ReLU
  config.model.parts = 6
  config.model.part_channels = 512
  config.model.prior = args.prior
  config.model.channel_attention = bool(int(args.ca))

  config.input.dataset = args.dataset
  config.input.size = (384, 128)
  config.input.sampler = 'balanced'
  config.input.p, config.input.k = 6, 8
  config.input.interpolation = 'bilinear'
  config.input.test_interpolation = 'bicubic'
  config.input.crop = 'none'
  config.input.erasing_prob = 0.5
  config.input.erasing_fill = CIFAR_MEAN
  config.input.erasing_test = '>'
  config.input.parsing = args.prior == 'parsing'

  config.loss = ml_collections.ConfigDict(dict(
      ce_epsilon=0.0,        # plain CE
      triplet_margin=0.4,
      mt_weight=1.0, at_weight=1.0, align_weight=1.0, triplet_weight=1.0))

  config.optim.update(
      name='sgd', lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4,
      weight_decay_bias=5e-4, bias_lr_factor=1.0, schedule='multistep',
      milestones=(20, 40, 60), gamma=0.1, step_at=LR_STEP[args.lr_step])
  config.num_epochs = 70

  config.eval.update(flip='sum', normalize=True, metric='cosine', ap='trapezoid',
                     every_epochs=10)

  if args.dataset == 'synthetic':
    config_lib.synthetic_demo(config)
    # 192 x 64 keeps a 12-row map (two rows per stripe); MPN's balanced sampler, loss and test
    # feature are kept, with narrower part features and a shorter schedule. The recipe's SGD at
    # 0.01 fine-tunes a pretrained IDE snapshot; the demo trains a narrow network from scratch,
    # so it uses the demo optimizer of the other methods (Adam 1e-3 with a short warm-up).
    config.input.size = (192, 64)
    config.input.p, config.input.k = 4, 8
    config.model.part_channels = 128
    config.num_epochs = 14
    config.optim.update(name='adam', lr=1e-3, weight_decay=5e-4, weight_decay_bias=5e-4,
                        schedule='warmup_multistep', warmup_epochs=2, warmup_factor=0.01,
                        milestones=(9, 12), gamma=0.1, step_at='epoch_start')
    config.eval.every_epochs = 7
  return config
