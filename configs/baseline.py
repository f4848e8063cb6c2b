"""BoT strong baseline (Luo et al. 2019), the official recipe (michuanhaohao/reid-strong-baseline `configs/softmax_triplet_with_center.yml`).

ResNet-50, last stride 1, no stem ReLU, BNNeck; CE with label smoothing 0.1 + batch-hard triplet
0.3 (+ center loss 5e-4 with ``:center=1``). Adam 3.5e-4, wd 5e-4 coupled, warmup 10 epochs from
factor 0.01, x0.1 at epochs 40 and 70, 120 epochs, scheduler stepped at epoch start. P=16 x K=4
at 256x128. Test: BNNeck feature, L2-normalised, squared Euclidean.

ImageNet initialisation: the official code loads torchvision's ResNet-50 file
``resnet50-19c8e357.pth`` (https://download.pytorch.org/models/resnet50-19c8e357.pth; config
``MODEL.PRETRAIN_PATH``); pass it as ``--config.model.pretrained=FILE``.

Usage: --config=configs/baseline.py[:DATASET] with DATASET one of market1501 (default),
dukemtmc_reid, msmt17, cuhk03_np, synthetic; or :dataset=NAME,center=1.

``:synthetic`` is the README's demo: 48 epochs of the narrow demo network, about 6 minutes on 2
CPU cores including the dataset build (docs/benchmarks.md). Every other
method's demo trains 30 epochs; ``:synthetic,epochs=30`` gives BoT that shared budget, the BoT
rows the other methods' demos are compared with.
"""

from reid_jax import config_lib

# The BoT demo's epochs: its step is the cheapest of the methods', so it gets a longer run, sized to
# train, evaluate and build the dataset in about 6 minutes on 2 idle CPU cores (under 7 with margin).
DEMO_EPOCHS = 48


def get_config(arg=None):
  args = config_lib.parse_arg(arg, dataset='market1501', center=0, epochs=0)
  config = config_lib.base_config()
  config.model = config_lib.model_config('baseline')
  config.model.stem_relu = False  # BoT's backbone has no ReLU after the stem BN
  config.input.dataset = args.dataset
  if int(args.center):
    config.loss.center_weight = 5e-4
  if args.dataset == 'synthetic':
    config_lib.synthetic_demo(config, int(args.epochs) or DEMO_EPOCHS)
  elif int(args.epochs):
    raise ValueError(f'config argument {arg!r}: epochs= sets the synthetic demo\'s length; for '
                     f'{args.dataset} pass --config.num_epochs (and its schedule) instead')
  return config
