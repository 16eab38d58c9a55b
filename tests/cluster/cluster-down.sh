#!/usr/bin/env bash
# Stop every process cluster-up.sh started and delete the cluster state
# (<repo>/.cluster or $TSB_CLUSTER_DIR). The tools cache is kept.
#
#   bash tests/cluster/cluster-down.sh [--keep-data]
#
# --keep-data (or TSB_KEEP_CLUSTER_DATA=1) keeps .cluster (logs, etcd, postgres
# and S3 data) for inspection; the next cluster-up still starts from scratch.
set -euo pipefail
# shellcheck source=tests/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

keep=${TSB_KEEP_CLUSTER_DATA:-0}
for a in "$@"; do
    case $a in
    --keep-data) keep=1 ;;
    -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
    *) say "unknown argument: $a"; exit 2 ;;
    esac
done

T0=$SECONDS
lock_cluster
if ! stop_all; then
    say "FAILED: some processes survived"
    exit 1
fi
if [ "$keep" = 1 ]; then
    rm -rf "$CL/pids"
    say "stopped in $((SECONDS - T0))s; data kept in $CL"
else
    rm -rf "$CL"
    say "stopped in $((SECONDS - T0))s; removed $CL"
fi
