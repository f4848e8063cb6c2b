"""SAN (Jin et al., AAAI 2020), the released recipe (microsoft/Semantics-Aligned-Representation-
Learning-for-Person-Re-identification ``main.py``, ``args.py``, ``torchreid/models/resnet.py``,
``torchreid/dataset_loader.py``; docs/san.md).

SA-Enc ``resnet50_fc512`` (ResNet-50 with stem ReLU, last stride 1, GAP -> fc 512 + BN + ReLU ->
classifier) and SA-Dec (training only) predicting each identity's 256x256 texture. Losses: ReID =
CE with label smoothing 0.1 + batch-hard triplet 0.3 on ``v``; decoder = L1 to the texture + the
decoder-map triplet (margin 0.3). Optimizers: 20 warm-up epochs with Adam 8e-6 (coupled weight
decay 5e-4, x1.259 per epoch, ExponentialLR), then AMSGrad 8e-4 (coupled weight decay 5e-4) with
fresh moments, x0.5 at epochs 40, 80, ..., 280 of its 300 (320 epochs in all); the decoder loss
descends the backbone and the decoder with two Adams (lr 1e-5, betas (0.5, 0.999), no weight
decay) in both phases. P16 x K4 at 256x128, Random2DTranslation (p 0.5, x1.125), flip, random
erasing 0.5 (ImageNet-mean fill); the texture is not flipped with the image (official).
Test: ``v`` (512, after the ReLU), not normalised, squared Euclidean, no flip.

The official code closes ``fc`` and ``classifier`` (``close_specified_layers``) for the decoder
step of every batch and reopens them at the batch end: ``close_head=decoder_step`` (default; every
layer trained by the ReID loss every step). ``close_head=rest_of_epoch`` keeps them closed from
each epoch's second batch to the epoch end (stepped with zero gradients, as PyTorch 1.x did).

Usage: --config=configs/san.py[:ARGS] with ARGS a dataset (cuhk03_np/labeled (default, as the
released code), market1501, dukemtmc_reid, msmt17, synthetic) and/or key=value items:
dataset=NAME, close_head=decoder_step|rest_of_epoch, flip_texture=0|1,
missing_texture=error|skip. Real datasets need a texture per image
(``prepare NAME --texture_dir=DIR``); ``missing_texture=skip`` trains the decoder only on the
images that have one. ``synthetic`` (synthetic_reid/demo, narrow network, 18 epochs) trains on 2
CPU cores in 8-9 minutes, with three demo-only deviations (docs/san.md, "Demo").
"""

import ml_collections

from reid_jax import config_lib
from reid_jax.models.san import CLOSE_HEAD, DECODER_CHANNELS, MISSING_TEXTURE

WARMUP_EPOCHS = 20
MAIN_EPOCHS = 300


def get_config(arg=None):
  args = config_lib.parse_arg(arg, dataset='cuhk03_np/labeled', close_head='decoder_step',
                              flip_texture=0, missing_texture='error')
  for key, allowed in (('close_head', CLOSE_HEAD), ('missing_texture', MISSING_TEXTURE)):
    if args[key] not in allowed:
      raise ValueError(f'configs/san.py: {key} must be one of {allowed}, got {args[key]!r}')
  if args.dataset == 'cuhk03_np':
    args.dataset = 'cuhk03_np/labeled'
  config = config_lib.base_config()
  config.model = config_lib.model_config('san')
  config.model.update(stem_relu=True, last_stride=1, feature_dim=512,
                      decoder_channels=DECODER_CHANNELS, texture_size=256,
                      close_head=args.close_head)

  config.input.dataset = args.dataset
  config.input.size = (256, 128)
  config.input.p, config.input.k = 16, 4
  config.input.crop = 'translate'          # torchreid Random2DTranslation
  config.input.translate_prob = 0.5
  config.input.flip_prob = 0.5
  config.input.erasing_prob = 0.5
  config.input.erasing_test = '>'          # torchreid RandomErasing skips when u > p
  config.input.texture = True
  config.input.texture_size = 256
  config.input.flip_texture = bool(int(args.flip_texture))
  # 'error': an image without a texture stops the input pipeline, naming it; 'skip': the pipeline
  # yields texture_valid [B] and such images take no part in the decoder loss.
  config.input.missing_texture = args.missing_texture

  config.loss = ml_collections.ConfigDict(dict(
      ce_epsilon=0.1, triplet_margin=0.3, decoder_triplet_margin=0.3, rec_weight=1.0,
      tr_weight=1.0))

  # The ReID optimizers: warm-up Adam (epochs [0, 20)), then AMSGrad (epochs [20, 320)).
  adam_common = dict(weight_decay=5e-4, weight_decay_bias=5e-4, bias_lr_factor=1.0,
                     momentum=0.9, nesterov=False, step_at='epoch_end')
  config.optim_warmup = ml_collections.ConfigDict(dict(
      name='adam', lr=8e-6, betas=(0.9, 0.999), schedule='exponential', gamma=1.259,
      start_epoch=0, end_epoch=WARMUP_EPOCHS, **adam_common))
  config.optim = ml_collections.ConfigDict(dict(
      name='amsgrad', lr=8e-4, betas=(0.9, 0.999), schedule='multistep',
      milestones=tuple(range(40, MAIN_EPOCHS, 40)), gamma=0.5, start_epoch=WARMUP_EPOCHS,
      end_epoch=WARMUP_EPOCHS + MAIN_EPOCHS, **adam_common))
  # The decoder loss: one Adam over the backbone, one over the decoder, every epoch.
  dec = dict(name='adam', lr=1e-5, betas=(0.5, 0.999), weight_decay=0.0, weight_decay_bias=0.0,
             bias_lr_factor=1.0, momentum=0.9, nesterov=False, schedule='constant',
             step_at='epoch_end')
  config.optim_encoder = ml_collections.ConfigDict(dec)
  config.optim_decoder = ml_collections.ConfigDict(dec)
  config.num_epochs = WARMUP_EPOCHS + MAIN_EPOCHS

  config.eval.update(flip='none', normalize=False, metric='sqeuclidean', every_epochs=40)

  if args.dataset == 'synthetic':
    config_lib.synthetic_demo(config)
    # Narrow ResNet-18 at 128x64, v of 128, a narrow decoder. Its output (128x64, the input's
    # size) is stretched to 128x128, as the recipe stretches 256x128 to 256x256 (the stored 64x64
    # textures are resized to it). The two phases and four optimizers are kept, compressed to
    # 2 + 16 epochs (ReID learning rates at the other demos' 1e-3; x0.5 after 10 and 14 AMSGrad
    # epochs, as the recipe's MultiStepLR counts from the phase start). Demo-only deviations,
    # measured in docs/san.md ("Demo"): from random weights (the recipe starts from ImageNet) the
    # decoder objective's backbone Adam breaks the ReID side (outlier activations swamp fc's
    # BatchNorm; R1 0.4 % at the recipe's 1/80 ratio, 24 % at 1/800, 50 % with it off), so it is
    # off; the decoder triplet (a sum of 28 hinges, 10-20x the L1) is weighted 0.01 so that the
    # decoder's own Adam follows the L1; that Adam is raised 1e-5 -> 1e-3 (~1,000 steps instead
    # of ~37k from scratch).
    config.input.texture_size = 128
    config.model.texture_size = 128
    config.model.feature_dim = 128
    config.model.decoder_channels = (64, 32, 16, 8, 8)
    config.num_epochs = 18
    config.optim_warmup.update(lr=1e-4, gamma=10 ** 0.5, end_epoch=2)
    config.optim.update(lr=1e-3, milestones=(10, 14), start_epoch=2, end_epoch=config.num_epochs)
    config.optim_encoder.lr = 0.0
    config.optim_decoder.lr = 1e-3
    config.loss.tr_weight = 0.01
    config.eval.every_epochs = 6
  return config
