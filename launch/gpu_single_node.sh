#!/usr/bin/env bash
# Single-node multi-GPU recipe: venv + pip install -e '.[cuda]', then the main job.
USAGE_HEAD="Usage: launch/gpu_single_node.sh --config=configs/M.py[:ARG] --workdir=DIR [flags] [--config.x=y ...] [-- MAIN_FLAGS...]

Runs in the repository root (the folder above launch/), whatever the current folder:
  1. unless --skip-install: python3 -m venv VENV (if it is not there) and
     VENV/bin/pip install -e '.[cuda]' (jax[cuda12]; needs an NVIDIA driver, no CUDA toolkit);
  2. --num-processes=1 (default): one process that sees all local GPUs,
       VENV/bin/python -m reid_jax.main --config=... --workdir=... [--config.input.data_dir=...]
     --num-processes=N: N processes on this machine, process i seeing GPUs
     i*G .. i*G+G-1 (G = --gpus-per-process) through CUDA_VISIBLE_DEVICES, each with
       --coordinator_address=localhost:PORT --num_processes=N --process_id=i
     and its output in LOG_DIR/process_i.log. When one process fails the others are stopped;
     SIGTERM/SIGINT to this script are passed on (the main job saves a checkpoint on SIGTERM).
Re-running the same command resumes from the latest checkpoint in the workdir.

Example:
  launch/gpu_single_node.sh --config=configs/baseline.py:market1501 --workdir=workdir/bot_market \\
      --data-dir=\$HOME/tensorflow_datasets"
ALLOW_CONFIG_OVERRIDES=1
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

flag config CONFIG '' 'Config file[:ARG], e.g. configs/baseline.py:market1501.'
flag workdir WORKDIR '' 'Checkpoints, metrics and TensorBoard logs.'
flag data-dir DATA_DIR '' 'TFDS data_dir with the prepared datasets (default: the config'"'"'s).'
flag venv VENV .venv 'Virtual environment folder (relative to the repository root, or absolute).'
flag python PYTHON python3 'Python (3.11-3.13) that creates the venv.'
flag extras EXTRAS cuda 'pip extras to install.'
flag num-processes NUM_PROCESSES 1 'JAX processes on this machine (1: one process, all GPUs).'
flag gpus-per-process GPUS_PER_PROCESS 1 'GPUs each process sees when --num-processes > 1.'
flag port COORDINATOR_PORT 12355 'Coordinator port on localhost when --num-processes > 1.'
flag log-dir LOG_DIR logs 'Per-process logs when --num-processes > 1 (relative to the repo root).'
switch skip-install SKIP_INSTALL 'Use the venv as it is.'
switch dry-run DRY_RUN 'Print every command, one per line, and run nothing.'
parse_args "$@"
require CONFIG WORKDIR
for var in NUM_PROCESSES GPUS_PER_PROCESS COORDINATOR_PORT; do
  [[ ${!var} =~ ^[1-9][0-9]*$ ]] || die "$var must be a positive integer (got '${!var}')"
done

REPO_ROOT=$(cd "$LAUNCH_DIR/.." && pwd)
run_cmd cd "$REPO_ROOT"
if ((!SKIP_INSTALL)); then
  if [[ ! -x $VENV/bin/python ]]; then
    run_cmd "$PYTHON" -m venv "$VENV"
  fi
  run_cmd "$VENV/bin/pip" install -e ".[$EXTRAS]"
fi

job=("$VENV/bin/python" -m reid_jax.main "--config=$CONFIG" "--workdir=$WORKDIR")
if [[ -n $DATA_DIR ]]; then
  job+=("--config.input.data_dir=$DATA_DIR")
fi
job+=("${EXTRA_ARGS[@]}")

if ((NUM_PROCESSES == 1)); then
  exec_cmd "${job[@]}"
  exit 0
fi

run_cmd mkdir -p "$LOG_DIR"
for ((i = 0; i < NUM_PROCESSES; i++)); do
  gpus=$(seq -s, $((i * GPUS_PER_PROCESS)) $(((i + 1) * GPUS_PER_PROCESS - 1)))
  run_bg "$LOG_DIR/process_$i.log" env "CUDA_VISIBLE_DEVICES=$gpus" "${job[@]}" \
    "--coordinator_address=localhost:$COORDINATOR_PORT" "--num_processes=$NUM_PROCESSES" \
    "--process_id=$i"
done
if ((DRY_RUN)); then
  echo wait
  exit 0
fi

interrupted=0
forward() {
  interrupted=1
  note "passing SIG$1 on to the job processes"
  kill "-$1" "${BG_PIDS[@]}" 2>/dev/null || true
}
trap 'forward TERM' TERM
trap 'forward INT' INT
status=0
finished=0
while ((finished < NUM_PROCESSES)); do
  interrupted=0
  if wait -n; then rc=0; else rc=$?; fi
  if ((interrupted)); then
    continue # a signal cut the wait short; the processes are still running
  fi
  finished=$((finished + 1))
  if ((rc != 0 && status == 0)); then
    status=$rc
    note "a process failed (exit $rc); stopping the others (logs in $LOG_DIR/)"
    kill "${BG_PIDS[@]}" 2>/dev/null || true
  fi
done
exit "$status"
