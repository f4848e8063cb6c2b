#!/usr/bin/env bash
# Shows the main job's log on TPU workers (the file that run.sh --background=nohup|tmux writes).
USAGE_HEAD="Usage: launch/logs.sh --tpu=NAME --zone=ZONE [--worker=N] [--lines=N] [--follow] [flags]

Prints the last --lines of LOG_FILE on --worker (default all, whose outputs interleave; use
--worker=N to read one worker's). --follow keeps printing (tail -f) until Ctrl-C; the job itself
keeps running. Which worker is JAX process 0 (the one that logs progress and writes metrics) is in
the log line 'JAX process 0/N'.

Example:
  launch/logs.sh --tpu=reid-v4 --zone=us-central2-b --worker=0 --follow"
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

tpu_flags
flag remote-dir REMOTE_DIR reid_jax 'Checkout folder on the workers (setup.sh --remote-dir).'
flag log-file LOG_FILE run.log 'Log file in the checkout (run.sh --log-file).'
flag lines LOG_LINES 50 'How many lines to show.'
flag worker WORKER all 'Worker(s): all, or a number.'
switch follow FOLLOW 'Keep following the log (tail -f).'
parse_args "$@"
require TPU_NAME ZONE
[[ $LOG_LINES =~ ^[0-9]+$ ]] || die "--lines must be a number (got '$LOG_LINES')"

tail_cmd=(tail -n "$LOG_LINES")
if ((FOLLOW)); then
  tail_cmd+=(-f)
fi
tpu_ssh "$WORKER" "cd $(q "$REMOTE_DIR"); $(quote_cmd "${tail_cmd[@]}" "$LOG_FILE")"
