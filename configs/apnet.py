"""APNet (Chen et al., TIP 2021), the official recipe (CHENGY12/APNet `configs/default.yml`, `solver/`; docs/apnet.md).

BoT network (ResNet-50, last stride 1, no stem ReLU, BNNeck) with the attention pyramid after each
of the five backbone stages: level 2 = SAMS (2 splits) -> frozen-bias BN2d -> SE. 384x192,
P=20 x K=4; CE with label smoothing 0.1 (K fixed at 751, the official quirk) + batch-hard triplet
0.3; Adam 4e-4, coupled weight decay 1e-3 on every parameter (biases too), warmup 10 epochs from
factor 0.01, x0.1 at epochs 40/80/120, 160 epochs, scheduler stepped at epoch END. Test: flip-sum
of the BNNeck feature, L2-normalised, Euclidean distance.

ImageNet initialisation: as BoT, torchvision's ResNet-50 file ``resnet50-19c8e357.pth``
(https://download.pytorch.org/models/resnet50-19c8e357.pth); pass it as
``--config.model.pretrained=FILE``.

Usage: --config=configs/apnet.py[:DATASET] with DATASET market1501 (default), dukemtmc_reid,
msmt17 (logits as the test feature, as the official msmt config) or synthetic (CPU demo); or
key=value items: dataset=NAME, level=INT, attention=channel|spatial, pyramid=official|paper,
ce751=0|1 (e.g. :dataset=dukemtmc_reid,ce751=0).
"""

from reid_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, dataset='market1501', level=2, attention='channel',
                              pyramid='official', ce751=1)
  config = config_lib.base_config()
  config.model = config_lib.model_config('apnet')
  config.model.stem_relu = False     # APNet's backbone (BoT lineage) has no ReLU after the stem BN
  config.model.level = args.level    # 0 = BoT, 1 = SE only, 2 = official, 3 needs pyramid='paper'
  config.model.attention = args.attention  # 'channel' (APNet-C) or 'spatial' (APNet-S, our design)
  config.model.pyramid = args.pyramid      # splits per level: official (L) or paper (1/2/4)
  config.model.se_hidden = 8               # SE hidden width, 8 in every official stage
  config.model.logits_as_feature = args.dataset == 'msmt17'  # official APNET.MSMT quirk

  config.input.dataset = args.dataset
  config.input.size = (384, 192)
  config.input.p, config.input.k = 20, 4
  config.input.pad = 10
  config.input.erasing_prob = 0.5

  # The official CrossEntropyLoss smooths with K = SOLVER.CLASSNUM = 751 whatever the dataset (no
  # shipped config overrides it): identical to the plain loss on Market-1501, the quirk elsewhere.
  config.loss.ce_num_classes = 751 if int(args.ce751) else None
  config.loss.ce_epsilon = 0.1
  config.loss.triplet_margin = 0.3
  config.loss.center_weight = 0.0

  config.optim.update(
      name='adam', lr=4e-4, weight_decay=1e-3, weight_decay_bias=1e-3, bias_lr_factor=1.0,
      schedule='warmup_multistep', warmup_epochs=10, warmup_factor=0.01,
      milestones=(40, 80, 120, 160), gamma=0.1, step_at='epoch_end')
  config.num_epochs = 160

  config.eval.update(flip='sum', normalize=True, metric='euclidean', rerank=False,
                     every_epochs=40)

  if args.dataset == 'synthetic':
    config_lib.synthetic_demo(config)
    # Keep APNet's pieces that fit 2 CPU cores: the level-2 pyramid on the narrow ResNet-18, its
    # loss, epoch-end schedule and test feature. The demo set has few ids: plain smoothing.
    config.loss.ce_num_classes = None
  return config
