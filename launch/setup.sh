#!/usr/bin/env bash
# Installs reid_jax on every worker of a TPU VM: clone or update the repo, Python venv, pip install.
USAGE_HEAD="Usage: launch/setup.sh --tpu=NAME --zone=ZONE --repo=URL [flags]

On every worker (gcloud compute tpus tpu-vm ssh --worker=all): clones --repo (or, when the clone is
there already, fetches --branch and checks it out, dropping commits made on the VM), creates a
Python 3.12 venv with uv (the TPU images' system Python is too old for current JAX) and installs
the package with pip install -e '.[tpu]'. Safe to re-run.

Example:
  launch/setup.sh --tpu=reid-v4 --zone=us-central2-b --repo=https://github.com/ORG/reid_jax.git"
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

tpu_flags
flag repo REPO_URL '' 'Git URL of reid_jax that the workers can clone (https, or a mirror).'
flag branch BRANCH main 'Branch or tag to check out.'
flag remote-dir REMOTE_DIR reid_jax 'Checkout folder on the workers, relative to the home folder.'
flag python-version PYTHON_VERSION 3.12 'Python version of the venv (uv fetches it if missing).'
flag extras EXTRAS tpu 'pip extras to install: tpu, or e.g. tpu,test.'
flag worker WORKER all 'Worker(s) to run on: all, or a number.'
parse_args "$@"
require TPU_NAME ZONE REPO_URL

dir=$(q "$REMOTE_DIR")
branch=$(q "$BRANCH")
# The single-quoted steps are meant for the workers' shell, $HOME and all.
# shellcheck disable=SC2016
steps=(
  'set -e'
  "if [ -d $dir/.git ]; then git -C $dir fetch origin $branch && git -C $dir checkout -B $branch FETCH_HEAD; else git clone --branch $branch $(q "$REPO_URL") $dir; fi"
  "cd $dir"
  'export PATH="$HOME/.local/bin:$PATH"'
  'command -v uv >/dev/null || python3 -m pip install --user uv'
  "[ -x .venv/bin/python ] || uv venv --python $(q "$PYTHON_VERSION") .venv"
  "uv pip install --python .venv/bin/python -e $(q ".[$EXTRAS]")"
  ".venv/bin/python -c 'import jax, reid_jax; print(\"reid_jax installed, jax\", jax.__version__)'"
)
tpu_ssh "$WORKER" "$(join_script "${steps[@]}")"
