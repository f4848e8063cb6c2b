"""Input pipelines (grain over prepared TFDS datasets) and the synthetic ReID generator.

Stable API (docs/input_pipeline.md):
  train_iterator(config_input, *, seed, process_index=0, process_count=1, num_epochs=None,
                 data_dir=None) -> grain iterator of dict(image [B,H,W,3] float32, label, pid,
                 camid, epoch [B] int32, + parsing [B,H,W] uint8 / texture [B,T,T,3] with
                 texture_valid [B] bool / part_masks [B,H/4,W/4,K+1] float32 on request)
  eval_batches(config_input, split, *, batch_size=None, multiple_of=1, data_dir=None)
                 -> iterator of dict(image, pid, camid, index, valid)
  dataset_info(config_input, data_dir=None) -> DatasetInfo(num_classes, num_cameras, ...)
  train_plan(config_input, *, seed, num_epochs=None, data_dir=None) -> PKPlan | BalancedPlan
                 (config_input.sampler 'pk' | 'balanced'; plan.num_batches(epoch) = iterations
                 in that epoch)
"""

from reid_jax.data.pipeline import (DatasetInfo, dataset_info, eval_batches,  # noqa: F401
                                    raw_images, train_iterator, train_plan)
from reid_jax.data.sampler import (BalancedPlan, PKPlan, PKSampler, epoch_plan,  # noqa: F401
                                   estimated_length, make_plan)
from reid_jax.data.transforms import Augment  # noqa: F401
