#!/usr/bin/env bash
# Copies prepared TFDS datasets from GCS to the local disk of every TPU worker.
USAGE_HEAD="Usage: launch/stage_data.sh --tpu=NAME --zone=ZONE --data-gcs=gs://BUCKET/tfds [flags]

On every worker: gcloud storage rsync --recursive from --data-gcs (a TFDS data_dir holding the
array_record folders written by 'python -m reid_jax.prepare ... --data_dir=DIR' and uploaded to GCS)
to --local-data-dir. rsync copies only what is missing, so re-running it (a recreated VM, a new
dataset) is cheap. Training then reads --config.input.data_dir=LOCAL_DATA_DIR (launch/run.sh passes
it). Random access to the array_record files wants local disk, not GCS.

Example:
  launch/stage_data.sh --tpu=reid-v4 --zone=us-central2-b --data-gcs=gs://my-bucket/tfds \\
      --datasets=market1501,dukemtmc_reid"
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

tpu_flags
flag bucket BUCKET '' 'GCS bucket name; --data-gcs defaults to gs://BUCKET/tfds.'
flag data-gcs DATA_GCS '' 'GCS TFDS data_dir to copy from, gs://...'
flag datasets DATASETS '' 'Comma-separated NAME or NAME/CONFIG to copy (default: all of --data-gcs).'
flag local-data-dir LOCAL_DATA_DIR /tmp/tensorflow_datasets 'Local TFDS data_dir on each worker.'
flag worker WORKER all 'Worker(s) to run on: all, or a number.'
parse_args "$@"

if [[ -z $DATA_GCS && -n $BUCKET ]]; then
  DATA_GCS="gs://$BUCKET/tfds"
fi
require TPU_NAME ZONE
[[ -n $DATA_GCS ]] ||
  die "missing required setting: --data-gcs (or env DATA_GCS), or --bucket (or env BUCKET)"
[[ $DATA_GCS == gs://* ]] || die "--data-gcs must be a gs:// path (got '$DATA_GCS')"
DATA_GCS=${DATA_GCS%/}
LOCAL_DATA_DIR=${LOCAL_DATA_DIR%/}

steps=('set -e')
if [[ -z $DATASETS ]]; then
  steps+=("mkdir -p $(q "$LOCAL_DATA_DIR")"
    "gcloud storage rsync --recursive $(q "$DATA_GCS") $(q "$LOCAL_DATA_DIR")")
else
  IFS=',' read -r -a names <<<"$DATASETS"
  for name in "${names[@]}"; do
    name=${name%/}
    [[ -n $name && $name != /* && $name != *..* ]] || die "bad dataset name '$name' in --datasets"
    steps+=("mkdir -p $(q "$LOCAL_DATA_DIR/$name")"
      "gcloud storage rsync --recursive $(q "$DATA_GCS/$name") $(q "$LOCAL_DATA_DIR/$name")")
  done
fi
steps+=("du -sh $(q "$LOCAL_DATA_DIR")")
tpu_ssh "$WORKER" "$(join_script "${steps[@]}")"
