#!/usr/bin/env bash
# Deletes the TPU VM, or the queued resource together with its TPU VM.
USAGE_HEAD="Usage: launch/delete.sh --tpu=NAME --zone=ZONE [--mode=tpu-vm|queued] [--yes] [flags]

--mode=tpu-vm: gcloud compute tpus tpu-vm delete. --mode=queued: gcloud compute tpus
queued-resources delete --force, which deletes the queued resource and the TPU VM it created.
Billing stops only when the VM is gone; a workdir on GCS is kept. gcloud asks for confirmation
unless --yes.

Example:
  launch/delete.sh --tpu=reid-v4 --zone=us-central2-b"
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

tpu_flags
flag mode TPU_MODE tpu-vm 'tpu-vm or queued, as given to create.sh.'
flag queued-resource QUEUED_RESOURCE '' 'Queued-resource id for --mode=queued (default: the TPU name).'
switch yes ASSUME_YES 'Do not ask for confirmation (gcloud --quiet).'
parse_args "$@"
require TPU_NAME ZONE
one_of TPU_MODE tpu-vm queued
gcloud_loc

case $TPU_MODE in
  tpu-vm) cmd=(gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_LOC[@]}") ;;
  queued)
    cmd=(gcloud compute tpus queued-resources delete "${QUEUED_RESOURCE:-$TPU_NAME}"
      "${GCLOUD_LOC[@]}" --force)
    ;;
esac
if ((ASSUME_YES)); then
  cmd+=(--quiet)
fi
run_cmd "${cmd[@]}"
