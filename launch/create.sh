#!/usr/bin/env bash
# Creates the Cloud TPU VM (or a queued resource that creates it when capacity is free).
USAGE_HEAD="Usage: launch/create.sh --tpu=NAME --zone=ZONE --accelerator-type=TYPE [flags] [-- EXTRA_GCLOUD_FLAGS...]

Creates a Cloud TPU VM with 'gcloud compute tpus tpu-vm create' (--mode=tpu-vm), or requests one
with 'gcloud compute tpus queued-resources create' (--mode=queued), which waits in a queue until
capacity is free. Arguments after -- are appended to the gcloud create command (for example
--service-account=..., --labels=..., --reserved). The runtime version defaults per generation:
v4-* tpu-ubuntu2204-base, v5litepod-* v2-alpha-tpuv5-lite, v6e-* v2-alpha-tpuv6e.

Example:
  launch/create.sh --tpu=reid-v4 --zone=us-central2-b --accelerator-type=v4-32 --dry-run"
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

tpu_flags
flag accelerator-type ACCELERATOR_TYPE '' 'Slice type: v4-8, v4-32, v5litepod-16, v6e-16, ...'
flag runtime-version RUNTIME_VERSION '' 'TPU software version (default: per generation, above).'
flag mode TPU_MODE tpu-vm 'tpu-vm (create now) or queued (queued resource).'
flag queued-resource QUEUED_RESOURCE '' 'Queued-resource id for --mode=queued (default: the TPU name).'
switch spot SPOT 'Spot capacity: cheaper, can be preempted at any time.'
parse_args "$@"

require TPU_NAME ZONE ACCELERATOR_TYPE
one_of TPU_MODE tpu-vm queued
if [[ -z $RUNTIME_VERSION ]]; then
  RUNTIME_VERSION=$(default_runtime "$ACCELERATOR_TYPE")
fi
gcloud_loc

# One function per way of creating the VM; a Compute Engine or GKE variant is one more function
# and one more --mode value.
create_tpu_vm() {
  local cmd=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_LOC[@]}"
    "--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION")
  if ((SPOT)); then cmd+=(--spot); fi
  run_cmd "${cmd[@]}" "${EXTRA_ARGS[@]}"
}

create_queued() {
  local cmd=(gcloud compute tpus queued-resources create "${QUEUED_RESOURCE:-$TPU_NAME}"
    "--node-id=$TPU_NAME" "${GCLOUD_LOC[@]}" "--accelerator-type=$ACCELERATOR_TYPE"
    "--runtime-version=$RUNTIME_VERSION")
  if ((SPOT)); then cmd+=(--spot); fi
  run_cmd "${cmd[@]}" "${EXTRA_ARGS[@]}"
  if ((!DRY_RUN)); then
    note "queued; it is ready when this says ACTIVE:" \
      "gcloud compute tpus queued-resources describe $(q "${QUEUED_RESOURCE:-$TPU_NAME}")" \
      "$(quote_cmd "${GCLOUD_LOC[@]}") --format='value(state.state)'"
  fi
}

case $TPU_MODE in
  tpu-vm) create_tpu_vm ;;
  queued) create_queued ;;
esac
