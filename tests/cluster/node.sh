# The e2e node: a real kubelet with containerd, runc and the CNI plugins, kube-scheduler,
# kube-proxy (iptables), kube-router's NetworkPolicy controller, CoreDNS and a hostPath
# provisioner. Sourced by cluster-up.sh (after lib.sh); cluster-down.sh uses node_cleanup.
# Facts behind the choices: docs/test-cluster.md.
# shellcheck shell=bash

NODE_NAME=tsb-node
# "This host" as pods see it: TEST-NET-1, never routed anywhere, added to lo. PostgreSQL, the S3
# server, CoreDNS, the API server and a test's own servers listen here; pods reach it through
# their bridge's gateway, so no relay or NAT sits between a pod and the host.
HOST_IP=${TSB_HOST_ALIAS:-192.0.2.1}
POD_SUBNET=10.244.0.0/24
BRIDGE=tsb-cni0
# One node per machine: the kubelet has fixed paths (/var/lib/kubelet/device-plugins,
# /var/log/containers) and its port. Runtime state (mounts, sockets) lives in NODE_RUN; the
# image store in NODE_LIB survives cluster-down, so images are imported once per change.
NODE_RUN=/run/tsb-e2e
NODE_LIB=${TSB_NODE_LIB:-/var/lib/tsb-e2e}
CTRD_SOCK=$CL/containerd.sock
PAUSE_IMAGE=tsb-test/pause:1
# Sysctls the kubelet sets on start (it wants to protect the node); cluster-down restores them.
NODE_SYSCTLS=(vm/overcommit_memory kernel/panic kernel/panic_on_oops)

ctr_() { "$NODE_BIN/ctr" -a "$CTRD_SOCK" -n k8s.io "$@"; }
crictl_() { "$NODE_BIN/crictl" --runtime-endpoint "unix://$CTRD_SOCK" --timeout 20s "$@"; }

node_preflight() {
    [ "$(id -u)" = 0 ] || { say "the e2e node (kubelet, containerd) needs root"; exit 1; }
    local t
    for t in kubelet kube-scheduler kube-proxy kube-router containerd containerd-shim-runc-v2 ctr crictl coredns \
        cni/bridge cni/host-local cni/loopback cni/portmap cni/firewall; do
        [ -x "$NODE_BIN/$t" ] || { say "missing $NODE_BIN/$t (tests/cluster/build-node-tools.sh)"; exit 1; }
    done
    for t in runc iptables iptables-save iptables-restore ipset ip docker; do
        command -v "$t" >/dev/null || { say "$t not found (make deps)"; exit 1; }
    done
    if pgrep -x kubelet >/dev/null && ! pgrep -f -- "--root-dir $CL/kubelet" >/dev/null; then
        say "another kubelet runs on this machine (one e2e node per machine); stop it first"
        exit 1
    fi
}

# ---- host side ------------------------------------------------------------------------------
node_host_setup() {
    ip -4 addr show dev lo | grep -q " $HOST_IP/" || ip addr add "$HOST_IP/32" dev lo
    mkdir -p "$CL/node" "$NODE_RUN" "$NODE_LIB"
    local s
    for s in "${NODE_SYSCTLS[@]}"; do
        echo "$s=$(cat "/proc/sys/$s")" >>"$CL/node/sysctl.saved"
    done
    # Bridged pod-to-pod Service traffic must pass iptables (kube-proxy's DNAT); dockerd
    # usually loaded br_netfilter already.
    modprobe br_netfilter 2>/dev/null || true
    [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] && echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
    echo 1 >/proc/sys/net/ipv4/ip_forward
}

node_pki() { # after cluster-up's PKI: certificates of the node's components
    leaf node "/O=system:nodes/CN=system:node:$NODE_NAME" client_ext
    leaf kubelet-serving "/CN=$NODE_NAME" kubelet_ext
    leaf apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" client_ext
    leaf scheduler "/CN=system:kube-scheduler" client_ext
    leaf kube-proxy "/CN=system:kube-proxy" client_ext
    chmod 600 "$PKI"/*.key
    kubeconfig "$PKI/node.kubeconfig" node
    kubeconfig "$PKI/scheduler.kubeconfig" scheduler
    kubeconfig "$PKI/kube-proxy.kubeconfig" kube-proxy
}

# ---- images ---------------------------------------------------------------------------------
# Images come from `make image` (Docker) and are imported into containerd's store, which
# keeps them across clusters: an image is imported again only when Docker's ID changed.
ref() { # an image name as containerd stores it
    case $1 in */*) echo "docker.io/$1" ;; *) echo "docker.io/library/$1" ;; esac
}

node_images() {
    local d=$NODE_LIB/pause-image inputs
    inputs=$(sha256sum <"$NODE_BIN/pause" | cut -c1-16)
    if ! docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1 ||
        [ "$(docker image inspect -f '{{index .Config.Labels "tsb.inputs"}}' "$PAUSE_IMAGE")" != "$inputs" ]; then
        rm -rf "$d" && mkdir -p "$d" && cp "$NODE_BIN/pause" "$d/pause"
        tar -C "$d" -c pause | docker import --change 'ENTRYPOINT ["/pause"]' --change 'USER 65535:65535' \
            --change "LABEL tsb.inputs=$inputs" - "$PAUSE_IMAGE" >/dev/null
    fi
    local image id want=()
    for image in "$E2E_IMAGE" "$SHELL_IMAGE" "$PAUSE_IMAGE"; do
        id=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null) ||
            fail "image $image is not in Docker: run \`make image\` first"
        if [ "$(cat "$NODE_LIB/imported/${image//[\/:]/_}" 2>/dev/null)" != "$id" ] ||
            ! ctr_ images check "name==$(ref "$image")" 2>/dev/null | grep -q complete; then
            want+=("$image")
        fi
    done
    if [ ${#want[@]} -gt 0 ]; then
        docker save "${want[@]}" | ctr_ images import --no-unpack=false - >"$CL/logs/image-import.log" 2>&1 ||
            { cat "$CL/logs/image-import.log" >&2; fail "importing ${want[*]} into containerd"; }
        mkdir -p "$NODE_LIB/imported"
        for image in "${want[@]}"; do
            docker image inspect -f '{{.Id}}' "$image" >"$NODE_LIB/imported/${image//[\/:]/_}"
        done
        say "imported ${want[*]} into containerd ($((SECONDS - T0))s)"
    fi
}

# ---- processes ------------------------------------------------------------------------------
node_start_containerd() {
    mkdir -p "$CL/cni/net.d" "$NODE_RUN"
    cat >"$CL/cni/net.d/10-tsb.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "tsb",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$CL/cni/ipam",
              "ranges": [[{"subnet": "$POD_SUBNET"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "firewall", "backend": "iptables"}
  ]
}
EOF
    # restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE, so runc cannot lower a
    # container's oom_score_adj below the containerd's own. The firewall plugin above accepts pod
    # traffic that dockerd's FORWARD policy (DROP) would otherwise drop.
    cat >"$CL/containerd.toml" <<EOF
version = 4
root = '$NODE_LIB/containerd'
state = '$NODE_RUN/state'
imports = []

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = '$(ref "$PAUSE_IMAGE")'

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    BinaryName = '$(command -v runc)'
    Root = '$NODE_RUN/runc'
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['$NODE_BIN/cni']
    conf_dir = '$CL/cni/net.d'

[plugins.'io.containerd.server.v1.grpc']
  address = '$CTRD_SOCK'
[plugins.'io.containerd.server.v1.ttrpc']
  address = '$CTRD_SOCK.ttrpc'
[plugins.'io.containerd.shim.v1.manager']
  socket_dir = '$NODE_RUN/s'
EOF
    PATH="$NODE_BIN:$PATH" start_proc containerd "$NODE_BIN/containerd" --config "$CL/containerd.toml"
    wait_for containerd 60
}

node_start_kubelet() {
    : >"$CL/node/resolv.conf"   # pods get the cluster DNS and nothing of the host's
    cat >"$CL/node/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This host mounts cgroup v1 (no systemd as init): say so instead of failing.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$CTRD_SOCK
address: $HOST_IP
readOnlyPort: 0
healthzPort: 0
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
clusterDNS: [$HOST_IP]
clusterDomain: cluster.local
resolvConf: $CL/node/resolv.conf
podLogsDir: $CL/pod-logs
staticPodPath: ""
maxPods: 250
serializeImagePulls: false
# Images are imported, never pulled: never collect them; evict only when truly out of room.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 200Mi, nodefs.available: 2%, nodefs.inodesFree: 2%, imagefs.available: 2%}
shutdownGracePeriod: 0s
# The fault tests kill containers ~20 times in a row; the default back-off (10 s doubling to
# 5 min) would make that an hour. Restarts still happen exactly as in production, sooner.
crashLoopBackOff: {maxContainerRestartPeriod: 4s}
EOF
    PATH="$NODE_BIN:$PATH" start_proc kubelet "$NODE_BIN/kubelet" --config "$CL/node/kubelet.yaml" \
        --kubeconfig "$PKI/node.kubeconfig" --hostname-override "$NODE_NAME" --node-ip "$HOST_IP" \
        --root-dir "$CL/kubelet" --cert-dir "$CL/kubelet/pki" --v 1
}

node_start_services() {
    start_proc kube-scheduler "$NODE_BIN/kube-scheduler" --kubeconfig "$PKI/scheduler.kubeconfig" \
        --authentication-kubeconfig "$PKI/scheduler.kubeconfig" \
        --authorization-kubeconfig "$PKI/scheduler.kubeconfig" \
        --leader-elect=false --secure-port 0
    cat >"$CL/node/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $PKI/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_SUBNET
bindAddress: $HOST_IP
healthzBindAddress: ""
metricsBindAddress: 127.0.0.1:10249
# Leave the machine's conntrack table size alone.
conntrack: {maxPerCore: 0}
iptables: {localhostNodePorts: false}
EOF
    start_proc kube-proxy "$NODE_BIN/kube-proxy" --config "$CL/node/kube-proxy.yaml"
    # CoreDNS answers for the cluster only: no forward plugin, so no lookup leaves the machine.
    cat >"$CL/node/Corefile" <<EOF
.:53 {
    bind $HOST_IP
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $CL/kubeconfig
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
    start_proc coredns "$NODE_BIN/coredns" -conf "$CL/node/Corefile"
    local py=$REPO_ROOT/.venv/bin/python
    [ -x "$py" ] || py=python3
    (cd "$REPO_ROOT" && start_proc provisioner "$py" -m tests.cluster.provisioner \
        --kubeconfig "$CL/kubeconfig" --root "$CL/pvs" --node-name "$NODE_NAME")
}

node_wait_ready() {
    local deadline=$((SECONDS + 90))
    until kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True; do
        local c
        for c in containerd kubelet kube-scheduler kube-proxy coredns provisioner; do
            alive "$(pid_of "$c")" || { tail -n 30 "$CL/logs/$c.log" >&2; fail "$c exited"; }
        done
        [ $SECONDS -lt $deadline ] || { tail -n 30 "$CL/logs/kubelet.log" >&2; fail "node $NODE_NAME not Ready after 90s"; }
        sleep 0.3
    done
    say "node $NODE_NAME Ready ($((SECONDS - T0))s)"
}

# NetworkPolicy enforcement (the bridge plugin has none): only kube-router's firewall runs, as
# iptables chains KUBE-ROUTER-*/KUBE-POD-FW-*/KUBE-NWPLCY-* and ipsets; routing and Services
# stay with the bridge and kube-proxy. It needs the Node object (it reads the node's address),
# so it starts once the kubelet registered. No metrics or health port.
node_start_policy_controller() {
    start_proc kube-router "$NODE_BIN/kube-router" --run-firewall=true --run-router=false \
        --run-service-proxy=false --kubeconfig "$CL/kubeconfig" --hostname-override "$NODE_NAME" \
        --service-cluster-ip-range "$SERVICE_CIDR" --health-port 0 --v 1
    local deadline=$((SECONDS + 60))
    until grep -q "sync iptables took" "$CL/logs/kube-router.log" 2>/dev/null; do
        alive "$(pid_of kube-router)" || { tail -n 30 "$CL/logs/kube-router.log" >&2; fail "kube-router exited"; }
        [ $SECONDS -lt $deadline ] || fail "kube-router did not write its rules within 60s"
        sleep 0.3
    done
    say "NetworkPolicy controller (kube-router) running ($((SECONDS - T0))s)"
}

# ---- teardown -------------------------------------------------------------------------------
# Pods first, while containerd still runs (the kubelet is already stopped, so nothing restarts
# them); then whatever is left in the pods' cgroups, the mounts, the network and the sysctls.
node_remove_pods() {
    [ -S "$CTRD_SOCK" ] && [ -x "${NODE_BIN:-/nonexistent}/crictl" ] || return 0
    crictl_ rmp --all --force >/dev/null 2>&1 || true
}

node_cleanup() {
    local pids
    pids=$(cat /sys/fs/cgroup/*/kubepods*/{,*/,*/*/,*/*/*/}cgroup.procs 2>/dev/null | sort -u) || true
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill_wait 5 $pids
    local m
    for m in $(awk '{print $5}' /proc/self/mountinfo | grep -E "^($CL|$NODE_RUN|$NODE_LIB)/" | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    if awk '{print $5}' /proc/self/mountinfo | grep -qE "^($CL|$NODE_RUN)/"; then
        say "mounts left under $CL or $NODE_RUN:"; awk '{print $5}' /proc/self/mountinfo | grep -E "^($CL|$NODE_RUN)/" >&2
        return 1
    fi
    rm -rf "$NODE_RUN"
    find /var/log/containers /var/log/pods -maxdepth 1 -lname "$CL/*" -delete 2>/dev/null || true
    ip link del "$BRIDGE" 2>/dev/null || true
    ip addr del "${TSB_HOST_ALIAS:-192.0.2.1}/32" dev lo 2>/dev/null || true
    node_iptables_cleanup
    if [ -f "$CL/node/sysctl.saved" ]; then
        local line
        # The first saved values are the machine's own (a restarted cluster appends again).
        for line in $(awk -F= '!seen[$1]++' "$CL/node/sysctl.saved"); do
            echo "${line#*=}" >"/proc/sys/${line%%=*}" 2>/dev/null || true
        done
    fi
    for m in /sys/fs/cgroup/*/kubepods*; do
        [ -d "$m" ] && find "$m" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    return 0
}

# Remove what kube-proxy, the kubelet and the CNI plugins added to iptables (chains KUBE-*,
# CNI-* and the rules jumping to them), leaving everything else (dockerd's rules) as it is.
node_iptables_cleanup() {
    local v saved
    for v in iptables ip6tables; do
        command -v "$v-save" >/dev/null || continue
        saved=$("$v-save" 2>/dev/null) || continue
        grep -qE -- '(^:|-j |-A )(KUBE-|CNI-)' <<<"$saved" || continue
        grep -vE -- '^:(KUBE-|CNI-)|^-A (KUBE-|CNI-)|-j (KUBE-|CNI-)' <<<"$saved" | "$v-restore" 2>/dev/null ||
            say "warning: could not remove the node's $v chains"
    done
    if command -v nft >/dev/null; then
        local t
        for t in "ip kube-proxy" "ip6 kube-proxy" "ip kubelet" "ip6 kubelet"; do
            # shellcheck disable=SC2086
            nft delete table $t 2>/dev/null || true
        done
    fi
    # kube-router's ipsets, once no rule refers to them any more.
    if command -v ipset >/dev/null; then
        local set
        for set in $(ipset list -n 2>/dev/null | grep -E '^(KUBE-|kube-router)'); do
            ipset destroy "$set" 2>/dev/null || say "warning: could not destroy ipset $set"
        done
    fi
}
