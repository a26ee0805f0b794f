#!/bin/sh
# Install Debian's Slurm (controller, node daemon, client tools) and munge for the Slurm executor
# tests (idempotent; needs root to install). tests/test_slurm.py starts a single-node cluster itself.
set -eu
if command -v sbatch >/dev/null 2>&1 && command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
    && command -v munged >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "ensure_slurm: Slurm is missing and we are not root; Slurm tests will be skipped" >&2
    exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
