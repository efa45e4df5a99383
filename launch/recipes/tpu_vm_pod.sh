#!/usr/bin/env bash
# Mask²DiT training on a Cloud TPU VM pod slice (every host runs the same command; JAX finds the
# other hosts through the TPU metadata server, so no coordinator flags are needed).
#
#   launch/recipes/tpu_vm_pod.sh create   # create the slice
#   launch/recipes/tpu_vm_pod.sh setup    # copy this repo to every host and install it
#   launch/recipes/tpu_vm_pod.sh train    # start training on all hosts (resumes if WORKDIR has checkpoints)
#   launch/recipes/tpu_vm_pod.sh logs     # tail host 0's log
#   launch/recipes/tpu_vm_pod.sh stop     # SIGTERM on all hosts: checkpoint, then exit
#   launch/recipes/tpu_vm_pod.sh delete
#
# Settings come from the environment (defaults in brackets).
set -euo pipefail

TPU_NAME="${TPU_NAME:-m2dit-pod}"
ZONE="${ZONE:-us-east5-a}"
PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null)}"
ACCELERATOR="${ACCELERATOR:-v5p-64}"            # 32 chips, 8 hosts
RUNTIME="${RUNTIME:-v2-alpha-tpuv5}"
CONFIG="${CONFIG:-configs/mask2dit_5b_pretrain.py}"
WORKDIR="${WORKDIR:?set WORKDIR, e.g. /mnt/bucket/runs/5b_pretrain}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"                  # e.g. --config.init_from=... --config.data.path=...
SPOT="${SPOT:-}"                                # non-empty: a preemptible (spot) slice
REMOTE_DIR="m2dit_jax"

tpu() { gcloud compute tpus tpu-vm "$@" --zone "$ZONE" --project "$PROJECT"; }
on_all() { tpu ssh "$TPU_NAME" --worker=all --command "$1"; }

case "${1:-}" in
  create)
    tpu create "$TPU_NAME" --accelerator-type "$ACCELERATOR" --version "$RUNTIME" ${SPOT:+--spot}
    ;;
  setup)
    # Ship the working tree (no venv, no runs) and install with TPU jaxlib on every host.
    tar --exclude=.venv --exclude=runs --exclude=.git -czf /tmp/m2dit_src.tgz .
    tpu scp /tmp/m2dit_src.tgz "$TPU_NAME":/tmp/m2dit_src.tgz --worker=all
    on_all "mkdir -p $REMOTE_DIR && tar -xzf /tmp/m2dit_src.tgz -C $REMOTE_DIR && \
      cd $REMOTE_DIR && python3 -m venv .venv && \
      .venv/bin/pip install -q -e . 'jax[tpu]==0.10.2' \
        -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
    ;;
  train)
    # nohup: the run survives the ssh session; the trainer checkpoints on SIGTERM.
    on_all "cd $REMOTE_DIR && nohup .venv/bin/python -m launch.train --config $CONFIG \
      --workdir $WORKDIR $EXTRA_FLAGS > train.log 2>&1 &"
    ;;
  logs)
    tpu ssh "$TPU_NAME" --worker=0 --command "tail -f $REMOTE_DIR/train.log"
    ;;
  stop)
    on_all "pkill -TERM -f 'launch.train --config $CONFIG' || true"
    ;;
  delete)
    tpu delete "$TPU_NAME" --quiet
    ;;
  *)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
