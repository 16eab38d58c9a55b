#!/usr/bin/env bash
# Start the local e2e cluster: etcd, kube-apiserver, kube-controller-manager, PostgreSQL,
# versitygw (S3) and a real node (kubelet, containerd + runc, CNI bridge, kube-scheduler,
# kube-proxy, CoreDNS, a hostPath provisioner) that runs the images `make image` built.
# Everything listens on loopback or on 192.0.2.1 (added to lo; pods reach it as "the host").
# State lives in <repo>/.cluster (or $TSB_CLUSTER_DIR); runtime mounts in /run/tsb-e2e; the
# image store in /var/lib/tsb-e2e. Needs root (the kubelet and containerd).
#
#   bash tests/cluster/cluster-up.sh      # then: source .cluster/env
#
# Idempotent: when everything is up and healthy it does nothing; when a
# component died it tears the whole cluster down and starts a fresh one.
# Tools come from $TOOLS_BIN, or from tests/cluster/build-tools.sh (cached).
set -euo pipefail

# The daemons started here must not inherit the caller's descriptors: under
# `flock LOCK make cluster-up` etcd, the API server, ... would hold LOCK for as long as they
# run. (255 is the one bash reads this script from.)
for fd in $(ls /proc/$$/fd); do
    if [ "$fd" -gt 2 ] && [ "$fd" -ne 255 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
done
# shellcheck source=tests/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for a in "$@"; do
    case $a in
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    *) say "unknown argument: $a (cluster-up takes none; see --help)"; exit 2 ;;
    esac
done

T0=$SECONDS
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
E2E_IMAGE=${E2E_IMAGE:-timesheet-backup-operator:dev}
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
SA_ISSUER=https://kubernetes.default.svc.cluster.local
SHELL_IMAGE=tsb-test/shell:1
CONTROLLERS=node-lifecycle-controller,job-controller,cronjob-controller,ttl-after-finished-controller,garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller,deployment-controller,replicaset-controller,persistentvolume-binder-controller,persistentvolumeclaim-protection-controller,persistentvolume-protection-controller,endpointslice-controller,pod-garbage-collector-controller

# ---- health ------------------------------------------------------------------
load_state() { [ -f "$CL/state" ] && source "$CL/state"; }

probe() { # component -> 0 when it answers
    case $1 in
    etcd) curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"' ;;
    kube-apiserver)
        curl -fsS --max-time 2 --cacert "$CL/pki/ca.crt" --cert "$CL/pki/admin.crt" \
            --key "$CL/pki/admin.key" "https://$HOST_IP:$APISERVER_PORT/readyz" >/dev/null 2>&1 ;;
    postgres) "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2 ;;
    versitygw) # any HTTP answer (unauthenticated requests get 403)
        local code
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$HOST_IP:$S3_PORT/" 2>/dev/null) || true
        [ -n "$code" ] && [ "$code" != 000 ] ;;
    containerd) "$NODE_BIN/ctr" -a "$CTRD_SOCK" version >/dev/null 2>&1 ;;
    kubelet)
        "$TOOLS_BIN/kubectl" --kubeconfig "$CL/kubeconfig" get node "$NODE_NAME" \
            -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True ;;
    *) return 0 ;;
    esac
}

healthy() { # 0 when every expected component runs and answers
    local want=$TOOLS_BIN want_node=$NODE_BIN
    load_state || return 1
    if [ "$TOOLS_BIN" != "$want" ] || [ "$NODE_BIN" != "$want_node" ]; then
        say "running tools $TOOLS_BIN $NODE_BIN, current pins are $want $want_node"
        TOOLS_BIN=$want NODE_BIN=$want_node
        return 1
    fi
    local c
    for c in "${COMPONENTS[@]}"; do
        alive "$(pid_of "$c")" || { say "$c is not running"; return 1; }
        probe "$c" || { say "$c does not answer"; return 1; }
    done
}

# ---- helpers -----------------------------------------------------------------
free_ports() { # n -> n distinct free loopback ports
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

start_proc() { # name cmd... : detached, own session, log in logs/NAME.log
    local name=$1; shift
    setsid "$@" >"$CL/logs/$name.log" 2>&1 </dev/null 200>&- &
    echo $! >"$CL/pids/$name.pid"
}

PG_JOB=
fail() {
    say "FAILED: $*"
    if [ -n "$PG_JOB" ]; then wait "$PG_JOB" || true; fi
    say "logs are in $CL/logs; stopping what was started"
    stop_all || true
    exit 1
}

wait_for() { # component timeout-seconds
    local name=$1 timeout=$2 deadline=$((SECONDS + $2))
    until probe "$name"; do
        if ! alive "$(pid_of "$name")"; then
            tail -n 30 "$CL/logs/$name.log" >&2 || true
            fail "$name exited during startup"
        fi
        if [ $SECONDS -ge $deadline ]; then
            tail -n 30 "$CL/logs/$name.log" >&2 || true
            fail "$name not ready after ${timeout}s"
        fi
        sleep 0.2
    done
    say "$name ready ($((SECONDS - T0))s)"
}

kubectl() { "$TOOLS_BIN/kubectl" --kubeconfig "$CL/kubeconfig" "$@"; }

# ---- tools -------------------------------------------------------------------
if [ -z "${TOOLS_BIN:-}" ]; then
    TOOLS_BIN=$(bash "$CLUSTER_HERE/build-tools.sh" | tail -n1)
fi
TOOLS_BIN=$(cd "$TOOLS_BIN" && pwd)
if [ -z "${NODE_BIN:-}" ]; then
    NODE_BIN=$(bash "$CLUSTER_HERE/build-node-tools.sh" | tail -n1)
fi
NODE_BIN=$(cd "$NODE_BIN" && pwd)
node_preflight
for t in etcd kube-apiserver kube-controller-manager kubectl versitygw; do
    [ -x "$TOOLS_BIN/$t" ] || { say "missing $TOOLS_BIN/$t"; exit 1; }
done
[ -x "$PG_BIN/postgres" ] || { say "PostgreSQL server not found (apt-get install postgresql; or set PG_BIN)"; exit 1; }
command -v openssl >/dev/null || { say "openssl not found (apt-get install openssl)"; exit 1; }

# ---- already up? -------------------------------------------------------------
lock_cluster
if [ -d "$CL/pids" ] && [ -n "$(ls -A "$CL/pids" 2>/dev/null)" ]; then
    if healthy; then
        node_images   # a rebuilt image replaces the node's copy
        say "already up and healthy ($CL)"
        say "use: source ${CL#"$PWD"/}/env"
        exit 0
    fi
    say "restarting the cluster cleanly"
    stop_all || { say "could not stop the old cluster"; exit 1; }
fi
# No process of ours is running now: start from a clean directory.
stop_all >/dev/null 2>&1 || { say "processes are still running under $CL; run cluster-down"; exit 1; }
find "$CL" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
mkdir -p "$CL"/{pids,logs,pki,etcd,s3/data,node,postgres}
chmod 700 "$CL/etcd" "$CL/pki"
node_host_setup

# ---- ports and secrets -------------------------------------------------------
read -r ETCD_PORT ETCD_PEER_PORT APISERVER_PORT PG_PORT S3_PORT <<<"$(free_ports 5)"
PG_PASSWORD=$(openssl rand -hex 16)
# Fixed demo credentials: examples/app/secrets.yaml carries the same, so the examples apply
# unchanged here. The server listens on loopback only.
S3_ACCESS_KEY=timesheet-demo
S3_SECRET_KEY=timesheet-demo-secret-key
APISERVER_URL=https://$HOST_IP:$APISERVER_PORT
umask 077
cat >"$CL/state" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
PG_PORT=$PG_PORT
S3_PORT=$S3_PORT
TOOLS_BIN=$TOOLS_BIN
NODE_BIN=$NODE_BIN
EOF
umask 022

# ---- PostgreSQL (as the postgres OS user; it refuses to run as root) ----------
# initdb takes a few seconds: run it in the background while the rest starts.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
start_postgres() {
    local pgdata=$CL/postgres/data pgsock=$CL/postgres/run
    mkdir -p "$pgsock"
    (umask 077 && printf '%s\n' "$PG_PASSWORD" >"$CL/postgres/pwfile")
    touch "$CL/logs/postgres.log"
    if [ "$(id -u)" = 0 ]; then chown -R postgres: "$CL/postgres" "$CL/logs/postgres.log"; fi
    if ! as_pg "$PG_BIN/initdb" -D "$pgdata" -U postgres --pwfile="$CL/postgres/pwfile" \
        --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8 --no-sync >"$CL/logs/initdb.log" 2>&1; then
        cat "$CL/logs/initdb.log" >&2
        return 1
    fi
    rm -f "$CL/postgres/pwfile"
    cat >>"$pgdata/postgresql.conf" <<EOF
# timesheet-backup-operator e2e
listen_addresses = '127.0.0.1,$HOST_IP'
port = $PG_PORT
unix_socket_directories = '$pgsock'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100
EOF
    # Pods connect from their own addresses (no relay): the bridge's subnet may log in.
    echo "host all all $POD_SUBNET scram-sha-256" >>"$pgdata/pg_hba.conf"
    if ! as_pg "$PG_BIN/pg_ctl" -D "$pgdata" -l "$CL/logs/postgres.log" -w -t 60 start \
        >"$CL/logs/pg_ctl.log" 2>&1 200>&-; then
        tail -n 30 "$CL/logs/postgres.log" >&2
        return 1
    fi
    head -n1 "$pgdata/postmaster.pid" >"$CL/pids/postgres.pid"
}
start_postgres &
PG_JOB=$!

# ---- PKI ---------------------------------------------------------------------
PKI=$CL/pki
cat >"$PKI/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local, IP:127.0.0.1, IP:::1, IP:$SERVICE_IP, IP:$HOST_IP
[kubelet_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = DNS:$NODE_NAME, IP:$HOST_IP
[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
ossl() { openssl "$@" 2>>"$CL/logs/pki.log" >/dev/null || fail "openssl $1 (see logs/pki.log)"; }
ossl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -days 3650 -config "$PKI/openssl.cnf" \
    -extensions ca_ext -subj "/CN=timesheet-backup-operator-e2e-ca" -keyout "$PKI/ca.key" -out "$PKI/ca.crt"
leaf() { # name subject extensions
    ossl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -config "$PKI/openssl.cnf" -subj "$2" \
        -keyout "$PKI/$1.key" -out "$PKI/$1.csr"
    ossl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 3650 -extfile "$PKI/openssl.cnf" -extensions "$3" -out "$PKI/$1.crt"
    rm -f "$PKI/$1.csr"
}
leaf apiserver "/CN=kube-apiserver" server_ext
leaf admin "/O=system:masters/CN=admin" client_ext
leaf controller-manager "/O=system:masters/CN=system:kube-controller-manager" client_ext
ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key"
ossl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
chmod 600 "$PKI"/*.key

kubeconfig() { # file user
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tsb-e2e
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$2.crt")
    client-key-data: $(base64 -w0 "$PKI/$2.key")
contexts:
- name: tsb-e2e
  context:
    cluster: tsb-e2e
    user: $2
    namespace: default
current-context: tsb-e2e
EOF
    chmod 600 "$1"
}
kubeconfig "$CL/kubeconfig" admin
kubeconfig "$PKI/controller-manager.kubeconfig" controller-manager
node_pki
say "PKI ready ($((SECONDS - T0))s)"

# ---- etcd --------------------------------------------------------------------
start_proc etcd "$TOOLS_BIN/etcd" --name tsb-e2e --data-dir "$CL/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "tsb-e2e=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync=true --log-level warn

# ---- versitygw (S3) ----------------------------------------------------------
S3_ARGS=()
if ! python3 -c 'import os,sys; os.setxattr(sys.argv[1], "user.tsb-test", b"1")' "$CL/s3/data" 2>/dev/null; then
    say "no user xattrs on $CL/s3: versitygw keeps metadata in a sidecar directory"
    mkdir -p "$CL/s3/meta"
    S3_ARGS=(--sidecar "$CL/s3/meta")
else
    python3 -c 'import os,sys; os.removexattr(sys.argv[1], "user.tsb-test")' "$CL/s3/data"
fi
# --iam-dir: accounts besides root (tests/e2e/test_write_only.py makes a key that cannot
# delete, through the admin API on the same port); the root key is unaffected.
mkdir -p "$CL/s3/iam"
ROOT_ACCESS_KEY_ID=$S3_ACCESS_KEY ROOT_SECRET_ACCESS_KEY=$S3_SECRET_KEY \
    start_proc versitygw "$TOOLS_BIN/versitygw" --port "$HOST_IP:$S3_PORT" --region us-east-1 \
    --iam-dir "$CL/s3/iam" posix "${S3_ARGS[@]}" "$CL/s3/data"


# ---- containerd and the images (while the control plane starts) -------------------
node_start_containerd
node_images

# ---- kube-apiserver ----------------------------------------------------------
wait_for etcd 60
start_proc kube-apiserver "$TOOLS_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --secure-port "$APISERVER_PORT" --bind-address "$HOST_IP" --advertise-address "$HOST_IP" \
    --enable-admission-plugins NodeRestriction \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --cert-dir "$PKI/apiserver-generated" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --authorization-mode Node,RBAC \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --service-account-issuer "$SA_ISSUER" \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --allow-privileged=true
wait_for kube-apiserver 90

# ---- kube-controller-manager -------------------------------------------------
start_proc kube-controller-manager "$TOOLS_BIN/kube-controller-manager" \
    --kubeconfig "$PKI/controller-manager.kubeconfig" \
    --controllers "$CONTROLLERS" \
    --service-account-private-key-file "$PKI/sa.key" \
    --root-ca-file "$PKI/ca.crt" \
    --leader-elect=false --use-service-account-credentials=false --secure-port=0
deadline=$((SECONDS + 60))
until kubectl -n default get serviceaccount default >/dev/null 2>&1; do
    alive "$(pid_of kube-controller-manager)" || { tail -n 30 "$CL/logs/kube-controller-manager.log" >&2; fail "kube-controller-manager exited"; }
    [ $SECONDS -lt $deadline ] || fail "no default ServiceAccount after 60s"
    sleep 0.3
done
say "kube-controller-manager ready: default ServiceAccount exists ($((SECONDS - T0))s)"

wait "$PG_JOB" || { PG_JOB=; fail "postgres did not start"; }
PG_JOB=
wait_for postgres 30

# ---- env file ----------------------------------------------------------------
umask 077
cat >"$CL/env" <<EOF
# Generated by tests/cluster/cluster-up.sh; source it: . .cluster/env
export TSB_CLUSTER_DIR=$CL
export TSB_TOOLS_BIN=$TOOLS_BIN
export TSB_APISERVER_URL=$APISERVER_URL
export KUBECONFIG=$CL/kubeconfig
export E2E_PROVIDER=local
export E2E_IMAGE=$E2E_IMAGE
export PGHOST=127.0.0.1
export PGPORT=$PG_PORT
export PGUSER=postgres
export PGPASSWORD=$PG_PASSWORD
export S3_ENDPOINT=http://$HOST_IP:$S3_PORT
export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
export AWS_REGION=us-east-1
export TSB_NODE_BIN=$NODE_BIN
export TSB_HOST_ALIAS=$HOST_IP
export CONTAINER_RUNTIME_ENDPOINT=unix://$CTRD_SOCK
export PATH="$TOOLS_BIN:\$PATH"
EOF
umask 022

# ---- the node -----------------------------------------------------------------
node_start_kubelet
node_start_services
node_wait_ready
node_start_policy_controller

say "up in $((SECONDS - T0))s: apiserver $APISERVER_URL, postgres $HOST_IP:$PG_PORT, s3 http://$HOST_IP:$S3_PORT, node $NODE_NAME"
say "use: source ${CL#"$PWD"/}/env"
