# Shared by cluster-up.sh and cluster-down.sh (sourced, not executed).
# shellcheck shell=bash

CLUSTER_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CLUSTER_HERE/../.." && pwd)"
CL="${TSB_CLUSTER_DIR:-$REPO_ROOT/.cluster}"
mkdir -p "$CL"
CL="$(cd "$CL" && pwd)"
case "$CL" in
/ | "$HOME" | "$REPO_ROOT" | /tmp | /work) echo "cluster: refusing to use $CL as the cluster dir" >&2; exit 1 ;;
esac

# cluster-up and cluster-down serialise on a lock outside the cluster dir (which
# they delete). Started daemons must not inherit it: see start_proc (fd 200).
lock_cluster() {
    local f="${TMPDIR:-/tmp}/tsb-cluster-$(printf %s "$CL" | sha256sum | cut -c1-12).lock"
    exec 200>"$f"
    if ! flock -n 200; then
        say "another cluster-up/cluster-down is running on $CL; waiting"
        flock 200
    fi
}

# Start order; stopped in reverse.
COMPONENTS=(etcd postgres versitygw kube-apiserver kube-controller-manager kube-scheduler containerd
            kubelet kube-proxy kube-router coredns provisioner)

say() { echo "cluster: $*" >&2; }

pid_of() { # component -> pid from its pid file, or nothing
    local f="$CL/pids/$1.pid"
    [ -s "$f" ] && head -n1 "$f" || true
}

alive() { # pid -> 0 if the process exists and is not a zombie
    local pid=$1 state
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Z]).*/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
    [ "$state" != Z ] && [ "$state" != X ]
}

descendants() { # pid -> all descendant pids, deepest last
    local p c
    for p in "$@"; do
        for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do
            echo "$c"
            descendants "$c"
        done
    done
}

ancestors() { # this shell and its ancestors (never to be killed)
    local p=$BASHPID
    while [ -n "$p" ] && [ "$p" -gt 1 ] 2>/dev/null; do
        echo "$p"
        p=$(awk '/^PPid:/ {print $2}' "/proc/$p/status" 2>/dev/null)
    done
    echo "$$"
}

stray_pids() { # live processes that mention the cluster dir in argv or run inside it
    local p cwd skip
    skip=" $(ancestors | tr '\n' ' ') "
    {
        pgrep -f -- "$CL" 2>/dev/null || true
        find /proc/[0-9]*/cwd -maxdepth 0 \( -lname "$CL" -o -lname "$CL/*" \) -printf '%h\n' 2>/dev/null |
            cut -d/ -f3
    } | sort -un | while read -r p; do
        case "$skip" in *" $p "*) continue ;; esac
        alive "$p" && echo "$p"
    done
}

kill_wait() { # timeout-seconds pids... : TERM, wait, then KILL
    local t=$1; shift
    local pids=() p
    for p in "$@"; do alive "$p" && pids+=("$p"); done
    [ ${#pids[@]} -eq 0 ] && return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    local deadline=$((SECONDS + t))
    while [ $SECONDS -lt $deadline ]; do
        local left=()
        for p in "${pids[@]}"; do alive "$p" && left+=("$p"); done
        [ ${#left[@]} -eq 0 ] && return 0
        sleep 0.2
    done
    for p in "${pids[@]}"; do
        if alive "$p"; then
            say "pid $p did not stop on TERM, sending KILL"
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    sleep 0.2
}

stop_component() { # component
    local name=$1 pid kids
    pid=$(pid_of "$name")
    if [ -n "$pid" ] && alive "$pid"; then
        # Collect the tree first: children (pod processes, postgres backends)
        # may outlive a killed parent.
        kids=$(descendants "$pid" | tac)
        if [ "$name" = postgres ]; then
            kill -INT "$pid" 2>/dev/null || true   # fast shutdown
        fi
        local t=$SECONDS
        kill_wait 15 "$pid"
        [ $((SECONDS - t)) -lt 2 ] || say "$name took $((SECONDS - t))s to stop"
        # shellcheck disable=SC2086
        [ -n "$kids" ] && kill_wait 5 $kids
    fi
    rm -f "$CL/pids/$name.pid"
}

stop_all() {
    local i
    [ -f "$CL/state" ] && NODE_BIN=$(sed -n 's/^NODE_BIN=//p' "$CL/state")
    for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
        # The kubelet is stopped by now: remove the pods while their runtime still runs.
        [ "${COMPONENTS[$i]}" = containerd ] && node_remove_pods
        stop_component "${COMPONENTS[$i]}"
    done
    local stray
    stray=$(stray_pids)
    if [ -n "$stray" ]; then
        say "stopping leftover processes: $(echo $stray)"
        # shellcheck disable=SC2086
        kill_wait 5 $stray
    fi
    stray=$(stray_pids)
    if [ -n "$stray" ]; then
        say "processes still running under $CL:"
        # shellcheck disable=SC2086
        ps -o pid,ppid,stat,args -p "$(echo $stray | tr ' ' ,)" >&2 || true
        return 1
    fi
    node_cleanup
}

# shellcheck source=tests/cluster/node.sh
source "$CLUSTER_HERE/node.sh"
