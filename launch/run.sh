#!/usr/bin/env bash
# Runs the main job on every worker of a TPU VM (one JAX process per worker).
USAGE_HEAD="Usage: launch/run.sh --tpu=NAME --zone=ZONE --config=configs/M.py[:ARG] --workdir=gs://... [flags] [--config.x=y ...] [-- MAIN_FLAGS...]

On every worker, in the checkout made by setup.sh:
  env REID_JAX_DISTRIBUTED=1 .venv/bin/python -m reid_jax.main --config=... --workdir=...
      --config.input.data_dir=LOCAL_DATA_DIR [--config.x=y ...] [MAIN_FLAGS...]
REID_JAX_DISTRIBUTED=1 makes main.py call jax.distributed.initialize(), which reads the slice
topology from the TPU metadata. --config.x=y overrides (anywhere on the line) and everything after
-- (e.g. --mode=eval --checkpoint=DIR) are passed to the main job unchanged.

The workdir must be one folder that every worker sees (gs://...) on multi-host slices: checkpoints
are written by all processes and read back by all of them on resume. Re-running the same command
resumes from the latest checkpoint in the workdir.

--background=nohup (default) starts the job detached, appending to LOG_FILE in the checkout, so a
dropped ssh connection does not kill it; --background=tmux runs it in tmux session 'reid_jax';
--background=none keeps it in the foreground, its output streamed back by ssh.

Example:
  launch/run.sh --tpu=reid-v4 --zone=us-central2-b --config=configs/baseline.py:market1501 \\
      --workdir=gs://my-bucket/workdirs/bot_market --config.num_epochs=120"
ALLOW_CONFIG_OVERRIDES=1
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

tpu_flags
flag config CONFIG '' 'Config file[:ARG], relative to the checkout, e.g. configs/baseline.py:market1501.'
flag workdir WORKDIR '' 'Checkpoints, metrics and TensorBoard logs: gs://BUCKET/..., or a local path.'
flag local-data-dir LOCAL_DATA_DIR /tmp/tensorflow_datasets \
  'TFDS data_dir on the workers (where stage_data.sh put it); empty: the config'"'"'s.'
flag remote-dir REMOTE_DIR reid_jax 'Checkout folder on the workers (setup.sh --remote-dir).'
flag background BACKGROUND nohup 'nohup, tmux or none (see above).'
flag log-file LOG_FILE run.log 'Log file in the checkout (nohup, tmux); appended to.'
flag worker WORKER all 'Worker(s) to run on: all (needed for a multi-host job), or a number.'
parse_args "$@"
require TPU_NAME ZONE CONFIG WORKDIR
one_of BACKGROUND nohup tmux none
if [[ -n $LOCAL_DATA_DIR && $LOCAL_DATA_DIR != /* && $LOCAL_DATA_DIR != gs://* ]]; then
  die "--local-data-dir must be an absolute path (got '$LOCAL_DATA_DIR')"
fi

job=(env REID_JAX_DISTRIBUTED=1 .venv/bin/python -m reid_jax.main "--config=$CONFIG"
  "--workdir=$WORKDIR")
if [[ -n $LOCAL_DATA_DIR ]]; then
  job+=("--config.input.data_dir=$LOCAL_DATA_DIR")
fi
job+=("${EXTRA_ARGS[@]}")
job_line=$(quote_cmd "${job[@]}")
log=$(q "$LOG_FILE")
pidfile=$(q "$LOG_FILE.pid")

steps=("cd $(q "$REMOTE_DIR")")
case $BACKGROUND in
  none)
    steps+=("$job_line")
    ;;
  nohup)
    steps+=(
      "if [ -f $pidfile ] && kill -0 \"\$(cat $pidfile)\" 2>/dev/null; then echo \"reid_jax is already running (pid \$(cat $pidfile)); not starting another; delete $pidfile if it is stale\" >&2; exit 1; fi"
      "nohup $job_line >>$log 2>&1 </dev/null & echo \$! >$pidfile"
      "echo \"started on \$(hostname): pid \$(cat $pidfile), log:\" \"\$PWD\"/$log"
    )
    ;;
  tmux)
    steps+=("tmux new-session -d -s reid_jax $(q "$job_line 2>&1 | tee -a $log")"
      "echo \"started on \$(hostname) in tmux session reid_jax, log:\" \"\$PWD\"/$log")
    ;;
esac
tpu_ssh "$WORKER" "$(join_script "${steps[@]}")"
