#!/bin/bash
# A Cloud TPU VM slice (e.g. v5p-32: 4 hosts): set up every host, then start the
# same command on all of them. jax.distributed.initialize() reads the TPU
# environment (TPU_WORKER_HOSTNAMES), so no coordinator flags are needed.
#
#   TPU_NAME=my-v5p-32 ZONE=us-east5-a bash examples/launch/tpu_vm.sh setup
#   TPU_NAME=my-v5p-32 ZONE=us-east5-a bash examples/launch/tpu_vm.sh train \
#       --config configs/llama3.py:8b --workdir /mnt/runs/llama3-8b
#
# The workdir must be storage every host sees (a Filestore / GCS FUSE mount).
# Several slices (multi-slice): add --config.mesh.dcn_data=<slices> and start the
# same command on each slice's hosts.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO=${REPO:-https://github.com/your-org/jaxfrontier.git}

case "${1:-}" in
  setup)
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
      git clone $REPO jaxfrontier || git -C jaxfrontier pull
      cd jaxfrontier && python3 -m venv .venv && .venv/bin/pip install -e '.[tpu]'"
    ;;
  train)
    shift
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
      cd jaxfrontier && .venv/bin/python scripts/train.py $*"
    ;;
  *)
    echo "usage: $0 setup | train --config ... --workdir ..." >&2
    exit 2
    ;;
esac
