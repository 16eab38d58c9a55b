"""One worker thread per pod bound to this node: the kubelet's pod lifecycle.

The worker is level-triggered: every wake-up (a pod update from the watch, or a
half-second tick) it compares the pod spec with its processes, starts, restarts
or stops containers, and patches the pod status when it changed. Statuses follow
what the kubelet reports, since the Job, ReplicaSet and Deployment controllers
(and the tests) read them: phase, conditions, container states with exit codes,
restart counts and the termination message.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shlex
import shutil
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .env import ConfigError, build_env, expand
from .images import Image
from .kube import ApiError
from .node import now_iso
from .runtime import LaunchSpec, Process
from .volumes import MountError, PodVolumes

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger("nodeagent.pods")

Obj = dict[str, Any]
TICK = 0.5
KUBELET_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready",
                      "PodScheduled")
MAX_MESSAGE = 4096


def pod_dir_name(pod: Obj) -> str:
    meta = pod["metadata"]
    return f"{meta['namespace']}_{meta['name']}_{meta['uid']}"


@dataclass
class Probe:
    spec: Obj | None
    next_at: float = 0.0
    successes: int = 0
    failures: int = 0
    ready: bool = False
    warned: bool = False


@dataclass
class Run:
    """A container (or init container) of the pod, across its restarts."""

    spec: Obj
    init: bool = False
    restart_count: int = 0
    process: Process | None = None
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    started_at: str | None = None
    started_mono: float = 0.0
    next_start: float = 0.0
    backoff: float = 0.0
    container_id: str = ""
    image_id: str = ""
    probe: Probe = field(default_factory=lambda: Probe(None))
    pull_failures: int = 0
    log_starts: list[int] = field(default_factory=list)  # log file offset of each start

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def sidecar(self) -> bool:
        return self.init and self.spec.get("restartPolicy") == "Always"

    @property
    def running(self) -> bool:
        return self.process is not None

    @property
    def exit_code(self) -> int | None:
        term = self.state.get("terminated")
        return None if term is None else int(term["exitCode"])

    @property
    def ever_ran(self) -> bool:
        return bool(self.container_id)


class PodWorker:
    def __init__(self, agent: Agent, pod: Obj) -> None:
        self.agent = agent
        self.pod = pod
        self.uid = pod["metadata"]["uid"]
        self.ns = pod["metadata"]["namespace"]
        self.name = pod["metadata"]["name"]
        self.dir = agent.state_dir / "pods" / pod_dir_name(pod)
        self.wake = threading.Event()
        self.api_deleted = False
        self.finished = False  # stopped for good; thread exits
        spec = pod["spec"]
        self.runs_init = [Run(c, init=True) for c in spec.get("initContainers") or []]
        self.runs = [Run(c) for c in spec.get("containers") or []]
        if self.runs_init:
            for run in self.runs:
                run.state = {"waiting": {"reason": "PodInitializing"}}
        phase = pod.get("status", {}).get("phase")
        self.terminal_phase: str | None = phase if phase in ("Succeeded", "Failed") else None
        # A pod that ended before this agent (re)started: its status is history; keep it.
        self.adopted_terminal = self.terminal_phase is not None
        self.terminal_reason: tuple[str, str] | None = None
        self.stopping_deadline: float | None = None  # set while killing everything
        self.stop_reason: tuple[str, str] | None = None
        self.delete_sent = False
        self.volumes: PodVolumes | None = None
        self.volumes_ready = False
        self.mount_error: str | None = None
        self.start_time = pod.get("status", {}).get("startTime") or now_iso()
        self.last_status: str = ""
        self.events_sent: set[tuple[str, str]] = set()
        self.hosts_path = self.dir / "etc-hosts"
        self._thread = threading.Thread(target=self._loop, name=f"pod:{self.ns}/{self.name}",
                                        daemon=True)

    # ---- plumbing ----------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def update(self, pod: Obj) -> None:
        self.pod = pod
        self.wake.set()

    def deleted(self) -> None:
        self.api_deleted = True
        self.wake.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self.finished:
            try:
                self.sync()
            except Exception:
                log.exception("pod %s/%s: sync failed", self.ns, self.name)
            idle = self.terminal_phase is not None and not any(r.running for r in self.all_runs)
            self.wake.wait(5.0 if idle else TICK)
            self.wake.clear()

    @property
    def all_runs(self) -> list[Run]:
        return self.runs_init + self.runs

    def _path(self, suffix: str = "") -> str:
        return f"/api/v1/namespaces/{self.ns}/pods/{self.name}{suffix}"

    def event(self, reason: str, message: str, etype: str = "Normal", once: bool = True) -> None:
        """Post a kubelet-style Event (deduplicated), for ``kubectl describe`` users."""
        if once and (reason, message) in self.events_sent:
            return
        self.events_sent.add((reason, message))
        log.info("pod %s/%s: %s: %s", self.ns, self.name, reason, message)
        try:
            self.agent.kube.post(f"/api/v1/namespaces/{self.ns}/events", {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": f"{self.name}.", "namespace": self.ns},
                "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": self.name,
                                   "namespace": self.ns, "uid": self.uid},
                "reason": reason, "message": message, "type": etype,
                "source": {"component": "kubelet", "host": self.agent.node_name},
                "firstTimestamp": now_iso(), "lastTimestamp": now_iso(), "count": 1,
            })
        except Exception as exc:
            log.debug("event not recorded: %s", exc)

    # ---- the sync step -------------------------------------------------------------

    def sync(self) -> None:
        pod = self.pod
        if self.api_deleted:
            self._kill_all(grace=2.0)
            self._cleanup()
            self.finished = True
            return
        if pod["metadata"].get("deletionTimestamp"):
            self._sync_deleting()
            return
        if self.terminal_phase is not None:
            self._poll_all()  # sidecars still stopping
            self.publish()
            return
        if self.stopping_deadline is not None:
            self._sync_stopping()
            return
        deadline = pod["spec"].get("activeDeadlineSeconds")
        if deadline is not None and self._age() >= float(deadline):
            self.event("DeadlineExceeded", "Pod was active on the node longer than the "
                       "specified deadline", "Normal")
            self._begin_stop(("DeadlineExceeded",
                              "Pod was active on the node longer than the specified deadline"))
            return
        if not self._prepare():
            self.publish()
            return
        initialized = self._sync_init()
        if initialized:
            self._sync_main()
        self._probe_all()
        self.publish()

    def _age(self) -> float:
        started = datetime.strptime(self.start_time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        return (datetime.now(UTC) - started).total_seconds()

    # ---- preparation ---------------------------------------------------------------

    def _prepare(self) -> bool:
        if self.volumes_ready:
            assert self.volumes is not None
            self.volumes.refresh_tokens()
            return True
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.volumes is None:
            self.volumes = PodVolumes(
                kube=self.agent.kube, pod=self.pod, root=self.dir / "volumes",
                pv_root=self.agent.state_dir / "pvs", allocatable=self.agent.node.allocatable,
                ca_fallback=self.agent.ca_pem,
            )
        self.volumes.pod = self.pod
        try:
            self.volumes.setup()
        except MountError as exc:
            if self.mount_error != str(exc):
                self.mount_error = str(exc)
                self.event("FailedMount", f"MountVolume.SetUp failed: {exc}", "Warning")
            return False
        except ApiError as exc:
            log.warning("pod %s/%s: volume setup: %s", self.ns, self.name, exc)
            return False
        self.mount_error = None
        self.volumes_ready = True
        self.write_hosts()
        return True

    def write_hosts(self) -> None:
        """(Re)write the pod's /etc/hosts in place; bind mounts keep seeing the file."""
        if not self.dir.exists():
            return
        spec = self.pod["spec"]
        hostname = (spec.get("hostname") or self.name)[:63]
        fqdn = hostname
        if spec.get("subdomain"):
            fqdn = f"{hostname}.{spec['subdomain']}.{self.ns}.svc.cluster.local {hostname}"
        text = (
            "# Kubernetes-managed hosts file (tsb node agent).\n"
            "127.0.0.1\tlocalhost\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"127.0.0.1\t{fqdn}\n"
            + "".join(f"{h['ip']}\t{' '.join(h.get('hostnames', []))}\n"
                      for h in spec.get("hostAliases") or [])
            + self.agent.services.hosts_entries(self.ns)
        )
        with open(self.hosts_path, "w") as fh:  # same inode: truncate and rewrite
            fh.write(text)
        os.chmod(self.hosts_path, 0o644)

    # ---- containers ----------------------------------------------------------------

    def _sync_init(self) -> bool:
        """Run init containers in order; True once all are done (sidecars started)."""
        policy = self.pod["spec"].get("restartPolicy", "Always")
        for run in self.runs_init:
            self._poll(run)
            if run.sidecar:  # restartPolicy: Always init container: started, not awaited
                if not run.running:
                    self._maybe_restart(run, "Always")
                    self._start_when_due(run)
                if not run.running:
                    return False
                continue
            if run.exit_code == 0:
                continue
            if run.running:
                return False
            if run.exit_code is not None:
                if policy == "Never":
                    self._finish("Failed")
                    return False
                self._maybe_restart(run, "OnFailure")
            self._start_when_due(run)
            return False
        return True

    def _sync_main(self) -> None:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        for run in self.runs:
            self._poll(run)
            if not run.running:
                self._maybe_restart(run, policy)
                self._start_when_due(run)
        if all(r.exit_code is not None and not self._will_restart(r, policy) for r in self.runs):
            ok = all(r.exit_code == 0 for r in self.runs)
            self._finish("Succeeded" if ok else "Failed")

    def _start_when_due(self, run: Run) -> None:
        """Start a container that waits (first start, back-off over, config error retry)."""
        if run.exit_code is None and not run.running and time.monotonic() >= run.next_start:
            self._start(run)

    @staticmethod
    def _will_restart(run: Run, policy: str) -> bool:
        code = run.exit_code
        return policy == "Always" or (policy == "OnFailure" and code not in (None, 0))

    def _maybe_restart(self, run: Run, policy: str) -> None:
        """A container just exited: if the policy restarts it, wait out the back-off
        (CrashLoopBackOff, doubling up to the maximum) before ``_start_when_due``."""
        if "terminated" not in run.state or not self._will_restart(run, policy):
            return
        now = time.monotonic()
        cfg = self.agent.config
        if now - run.started_mono > cfg.backoff_reset:
            run.backoff = 0.0
        run.backoff = (cfg.backoff_initial if run.backoff == 0.0
                       else min(run.backoff * 2, cfg.backoff_max))
        run.next_start = now + run.backoff
        run.last_state = {"terminated": run.state["terminated"]}
        run.state = {"waiting": {
            "reason": "CrashLoopBackOff",
            "message": (f"back-off {run.backoff:g}s restarting failed container="
                        f"{run.name} pod={self.name}_{self.ns}({self.uid})"),
        }}
        self.event("BackOff", "Back-off restarting failed container "
                   f"{run.name} in pod {self.name}_{self.ns}({self.uid})", "Warning")

    def _poll(self, run: Run) -> None:
        if run.process is None:
            return
        code = run.process.poll()
        if code is None:
            return
        proc, run.process = run.process, None
        start_error = proc.start_error()
        message = self._termination_message(run, proc, code)
        term: Obj = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": run.started_at,
            "finishedAt": now_iso(),
            "containerID": run.container_id,
        }
        if start_error:
            term["reason"] = "StartError"
            message = start_error
        if message:
            term["message"] = message
        run.state = {"terminated": term}
        run.probe = Probe(run.spec.get("readinessProbe"))
        log.info("pod %s/%s: container %s exited with %d", self.ns, self.name, run.name, code)

    def _poll_all(self) -> None:
        for run in self.all_runs:
            self._poll(run)

    def _termination_message(self, run: Run, proc: Process, code: int) -> str:
        path = self._run_dir(run) / "termination-log"
        try:
            message = path.read_bytes()[:MAX_MESSAGE].decode(errors="replace")
        except OSError:
            message = ""
        policy = run.spec.get("terminationMessagePolicy", "File")
        if not message.strip() and policy == "FallbackToLogsOnError" and code != 0:
            message = proc.output_tail()
        return message

    def _run_dir(self, run: Run) -> Path:
        # container names are unique across init and app containers
        return self.dir / "containers" / run.name

    def _start(self, run: Run) -> None:
        """Start one container, or leave it waiting with the kubelet's reason."""
        now = time.monotonic()
        image = self.agent.images.lookup(run.spec.get("image", ""))
        if image is None:
            self._image_missing(run)
            return
        try:
            launch = self._launch_spec(run, image)
        except ConfigError as exc:
            run.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
            run.next_start = now + 1.0
            self.event("Failed", f"Error: {exc}", "Warning")
            return
        except ApiError as exc:
            log.warning("pod %s/%s: %s", self.ns, self.name, exc)
            run.next_start = now + 1.0
            return
        run_dir = self._run_dir(run)
        run_dir.mkdir(parents=True, exist_ok=True)
        term_log = run_dir / "termination-log"
        term_log.write_bytes(b"")
        os.chmod(term_log, 0o666)
        launch.mounts.append({"source": str(term_log), "target": run.spec.get(
            "terminationMessagePath", "/dev/termination-log")})
        self.event("Pulled", f'Container image "{run.spec["image"]}" already present on machine')
        log_path = self.dir / f"{run.name}.log"
        run.process = Process(self.agent.spawner, launch, run_dir, log_path)
        if run.ever_ran:
            run.restart_count += 1
        run.log_starts.append(run.process.log_offset)
        self.agent.track(run.process)
        run.started_at = now_iso()
        run.started_mono = now
        run.next_start = 0.0
        run.container_id = f"tsb://{self.uid}-{run.name}-{run.restart_count}"
        run.image_id = image.image_id
        run.state = {"running": {"startedAt": run.started_at}}
        run.probe = Probe(run.spec.get("readinessProbe"),
                          next_at=now + float((run.spec.get("readinessProbe") or {}).get(
                              "initialDelaySeconds", 0)))
        command = shlex.join(launch.argv).replace("\n", "\\n")
        log.info("pod %s/%s: started container %s (pid %d, uid %d): %s", self.ns, self.name,
                 run.name, run.process.pid, launch.uid,
                 command if len(command) < 160 else command[:157] + "...")
        self.event("Started", f"Started container {run.name}", once=False)

    def _image_missing(self, run: Run) -> None:
        image = run.spec.get("image", "")
        run.pull_failures += 1
        reason = "ErrImagePull" if run.pull_failures <= 4 else "ImagePullBackOff"
        known = ", ".join(self.agent.images.names())
        detail = (f'failed to pull and unpack image "{image}": image is not known to the '
                  f"tsb node agent (known images: {known})")
        message = (detail if reason == "ErrImagePull"
                   else f'Back-off pulling image "{image}": {detail}')
        run.state = {"waiting": {"reason": reason, "message": message}}
        self.event("Failed", f"Failed to pull image \"{image}\": {detail}", "Warning")

    def _security(self, run: Run, image: Image) -> tuple[int, int, list[int]]:
        psc = self.pod["spec"].get("securityContext") or {}
        csc = run.spec.get("securityContext") or {}

        def pick(key: str) -> Any:
            return csc[key] if csc.get(key) is not None else psc.get(key)

        who = f'pod: "{self.name}_{self.ns}({self.uid})", container: {run.name}'
        uid, gid = pick("runAsUser"), pick("runAsGroup")
        image_gid = None
        if uid is None and image.user:
            user, _, group = image.user.partition(":")
            if user.isdigit():
                uid = int(user)
            elif pick("runAsNonRoot"):
                raise ConfigError(f"container has runAsNonRoot and image has non-numeric user "
                                  f"({user}), cannot verify user is non-root ({who})")
            else:
                try:
                    entry = pwd.getpwnam(user)
                except KeyError as exc:
                    raise ConfigError(f"unable to find user {user}: no matching entries in "
                                      "passwd file") from exc
                uid, image_gid = entry.pw_uid, entry.pw_gid
            if group.isdigit():
                image_gid = int(group)
        if pick("runAsNonRoot") and (uid is None or int(uid) == 0):
            if pick("runAsUser") is not None:
                raise ConfigError(f"container's runAsUser breaks non-root policy ({who})")
            raise ConfigError(f"container has runAsNonRoot and image will run as root ({who})")
        uid = int(uid or 0)
        gid = int(gid if gid is not None else (image_gid or 0))
        groups: list[int] = []
        for g in list(psc.get("supplementalGroups") or []) + (
                [psc["fsGroup"]] if psc.get("fsGroup") is not None else []):
            if int(g) not in groups:
                groups.append(int(g))
        return uid, gid, groups

    def _launch_spec(self, run: Run, image: Image) -> LaunchSpec:
        container = run.spec
        uid, gid, groups = self._security(run, image)
        api_host, api_port = self.agent.apiserver
        base: dict[str, str] = {}
        if self.pod["spec"].get("enableServiceLinks", True):
            base.update(self.agent.services.service_env(self.ns))
        base.update({
            "KUBERNETES_SERVICE_HOST": api_host,
            "KUBERNETES_SERVICE_PORT": str(api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(api_port),
            "KUBERNETES_PORT": f"tcp://{api_host}:{api_port}",
            "KUBERNETES_PORT_443_TCP": f"tcp://{api_host}:{api_port}",
            "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
            "KUBERNETES_PORT_443_TCP_PORT": str(api_port),
            "KUBERNETES_PORT_443_TCP_ADDR": api_host,
        })

        def fetch(kind: str, name: str) -> Obj | None:
            return self.agent.kube.get_or_none(f"/api/v1/namespaces/{self.ns}/{kind}/{name}")

        env = build_env(self.pod, container, base, fetch, self.agent.node.allocatable)
        hostname = (self.pod["spec"].get("hostname") or self.name)[:63]
        final_env = {**image.env, "HOSTNAME": hostname,
                     "HOME": "/root" if uid == 0 else "/", **env}
        command = [expand(c, env) for c in container.get("command") or []]
        args = [expand(a, env) for a in container.get("args") or []]
        argv = image.argv(command or None, args or None)
        if not argv:
            raise ConfigError("no command specified")
        mounts: list[Obj] = []
        assert self.volumes is not None
        for vm in container.get("volumeMounts") or []:
            vol = self.volumes.volumes.get(vm["name"])
            if vol is None:
                raise ConfigError(f"volume {vm['name']!r} not found in pod spec")
            source = vol.path
            sub = vm.get("subPath") or (expand(vm["subPathExpr"], env)
                                        if vm.get("subPathExpr") else "")
            if sub:
                if sub.startswith("/") or ".." in Path(sub).parts:
                    raise ConfigError(f"invalid subPath {sub!r}")
                source = vol.path / sub
                if not source.exists():
                    source.mkdir(parents=True)
                    if vol.kind in ("emptyDir", "pvc"):
                        source.chmod(0o777 if vol.kind == "emptyDir" else 0o755)
            read_only = bool(vm.get("readOnly")) or vol.read_only
            mounts.append({"source": str(source), "target": vm["mountPath"],
                           "readOnly": read_only})
        mounts.append({"source": str(self.hosts_path), "target": "/etc/hosts"})
        csc = container.get("securityContext") or {}
        return LaunchSpec(
            argv=argv,
            env=final_env,
            cwd=container.get("workingDir") or image.working_dir or "/",
            uid=uid,
            gid=gid,
            groups=groups,
            mounts=mounts,
            read_only_root=bool(csc.get("readOnlyRootFilesystem")),
            hostname=hostname,
            reachable=self.agent.reachable,
        )

    # ---- probes --------------------------------------------------------------------

    def _probe_all(self) -> None:
        for run in self.all_runs:
            probe = run.probe
            spec = probe.spec
            if not run.running or spec is None:
                continue
            now = time.monotonic()
            if now < probe.next_at:
                continue
            probe.next_at = now + float(spec.get("periodSeconds", 10))
            ok = self._probe_once(run, spec)
            if ok:
                probe.successes += 1
                probe.failures = 0
                if probe.successes >= int(spec.get("successThreshold", 1)):
                    probe.ready = True
            else:
                probe.failures += 1
                probe.successes = 0
                if probe.failures >= int(spec.get("failureThreshold", 3)):
                    probe.ready = False

    def _probe_once(self, run: Run, spec: Obj) -> bool:
        timeout = float(spec.get("timeoutSeconds", 1))
        ports = {p.get("name"): p["containerPort"] for p in run.spec.get("ports") or []}

        def port_of(value: Any) -> int:
            return int(value) if str(value).isdigit() else int(ports.get(value, 0))

        if "httpGet" in spec:
            get = spec["httpGet"]
            scheme = get.get("scheme", "HTTP").lower()
            url = (f"{scheme}://{get.get('host') or '127.0.0.1'}:{port_of(get['port'])}"
                   f"{get.get('path', '/')}")
            request = urllib.request.Request(url, headers={
                h["name"]: h["value"] for h in get.get("httpHeaders") or []})
            context = ssl._create_unverified_context() if scheme == "https" else None
            try:
                with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
                    return 200 <= resp.status < 400
            except urllib.error.HTTPError as exc:
                return 200 <= exc.code < 400
            except (OSError, ValueError):
                return False
        if "tcpSocket" in spec:
            sock = spec["tcpSocket"]
            try:
                with socket.create_connection(
                        (sock.get("host") or "127.0.0.1", port_of(sock["port"])), timeout):
                    return True
            except OSError:
                return False
        if not run.probe.warned:
            run.probe.warned = True
            log.info("pod %s/%s: %s probe of %s not supported; treated as passing", self.ns,
                     self.name, "/".join(k for k in spec if k in ("exec", "grpc")), run.name)
        return True

    def _ready(self, run: Run) -> bool:
        if run.init and not run.sidecar:
            return run.exit_code == 0
        if not run.running:
            return False
        return run.probe.spec is None or run.probe.ready

    # ---- stopping ------------------------------------------------------------------

    def _grace(self) -> float:
        meta_grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if meta_grace is not None:
            return float(meta_grace)
        return float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))

    def _begin_stop(self, reason: tuple[str, str] | None, grace: float | None = None) -> None:
        self.stop_reason = reason
        grace = self._grace() if grace is None else grace
        self.stopping_deadline = time.monotonic() + grace
        for run in self.all_runs:
            if run.running:
                assert run.process is not None
                self.event("Killing", f"Stopping container {run.name}", once=False)
                run.process.terminate()
        self._sync_stopping()

    def _sync_stopping(self) -> None:
        assert self.stopping_deadline is not None
        self._poll_all()
        running = [r for r in self.all_runs if r.running]
        if running and time.monotonic() >= self.stopping_deadline:
            for run in running:
                assert run.process is not None
                run.process.kill()
            time.sleep(0.1)
            self._poll_all()
            running = [r for r in self.all_runs if r.running]
        if running:
            self.publish()
            return
        for run in self.all_runs:
            if run.exit_code is None and not self.adopted_terminal:
                run.state = {"terminated": {
                    "exitCode": 137, "reason": "ContainerStatusUnknown",
                    "message": "The container could not be located when the pod was terminated",
                    "startedAt": None, "finishedAt": now_iso()}}
        if self.terminal_phase is None:
            ok = self.runs and all(r.exit_code == 0 for r in self.runs)
            self.terminal_phase = "Succeeded" if ok and self.stop_reason is None else "Failed"
            self.terminal_reason = self.stop_reason
        self.publish()

    def _sync_deleting(self) -> None:
        if self.delete_sent:
            return
        if self.stopping_deadline is None:
            if any(r.running for r in self.all_runs):
                self._begin_stop(None, grace=self._grace())
            else:
                self.stopping_deadline = time.monotonic()
                self._sync_stopping()
        else:
            self._sync_stopping()
        if any(r.running for r in self.all_runs):
            return
        try:
            self.agent.kube.delete(self._path(), {
                "apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid}})
            log.info("pod %s/%s: stopped; deleted with grace 0", self.ns, self.name)
        except ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("pod %s/%s: final delete failed: %s", self.ns, self.name, exc)
                return
        self.delete_sent = True

    def _finish(self, phase: str) -> None:
        self.terminal_phase = phase
        log.info("pod %s/%s: %s", self.ns, self.name, phase)
        for run in self.runs_init:
            if run.sidecar and run.running:
                assert run.process is not None
                run.process.terminate()

    def _kill_all(self, grace: float) -> None:
        """Stop every process now (pod gone, or the agent is shutting down)."""
        for run in self.all_runs:
            if run.process is not None:
                run.process.terminate()
        deadline = time.monotonic() + grace
        while any(r.process is not None and r.process.poll() is None for r in self.all_runs):
            if time.monotonic() > deadline:
                for run in self.all_runs:
                    if run.process is not None:
                        run.process.kill()
                break
            time.sleep(0.05)
        for run in self.all_runs:
            if run.process is not None:
                try:
                    run.process.proc.wait(timeout=5)
                except Exception:
                    log.warning("pod %s/%s: process %d did not exit", self.ns, self.name,
                                run.process.pid)
                run.process = None

    def shutdown(self) -> None:
        """The agent stops: kill this pod's processes, leave its API status alone."""
        self.finished = True
        self.wake.set()
        self._kill_all(grace=3.0)

    def _cleanup(self) -> None:
        """Pod gone from the API: drop secrets and volume data, keep the logs."""
        if self.volumes is not None:
            self.volumes.cleanup()
        shutil.rmtree(self.dir / "containers", ignore_errors=True)
        self.hosts_path.unlink(missing_ok=True)
        log.info("pod %s/%s: gone; cleaned up", self.ns, self.name)

    # ---- status --------------------------------------------------------------------

    def _container_status(self, run: Run) -> Obj:
        status: Obj = {
            "name": run.name,
            "state": run.state,
            "lastState": run.last_state,
            "ready": self._ready(run) if self.terminal_phase is None else False,
            "restartCount": run.restart_count,
            "image": run.spec.get("image", ""),
            "imageID": run.image_id,
            "started": run.running,
        }
        if run.container_id:
            status["containerID"] = run.container_id
        return status

    def _phase(self) -> str:
        if self.terminal_phase is not None:
            return self.terminal_phase
        if not self._initialized():
            return "Pending"
        waiting = running = stopped = 0
        for run in self.runs:
            if run.running:
                running += 1
            elif "terminated" in run.state or run.last_state.get("terminated"):
                stopped += 1
            else:
                waiting += 1
        if waiting:
            return "Pending"
        if running:
            return "Running"
        return "Running" if stopped else "Pending"

    def _initialized(self) -> bool:
        return all((r.sidecar and r.running) or r.exit_code == 0 for r in self.runs_init)

    def status(self) -> Obj:
        current = self.pod.get("status") or {}
        old = {c["type"]: c for c in current.get("conditions") or []}
        terminal = self.terminal_phase is not None

        def cond(ctype: str, ok: bool, reason: str | None = None,
                 message: str | None = None) -> Obj:
            value = "True" if ok else "False"
            prev = old.get(ctype)
            since = prev["lastTransitionTime"] if prev and prev["status"] == value else now_iso()
            out: Obj = {"type": ctype, "status": value, "lastProbeTime": None,
                        "lastTransitionTime": since}
            if reason:
                out["reason"] = reason
            if message:
                out["message"] = message
            return out

        init_names = [r.name for r in self.runs_init
                      if not ((r.sidecar and r.running) or r.exit_code == 0)]
        unready = [r.name for r in self.runs if not self._ready(r)]
        gates = [g["conditionType"] for g in self.pod["spec"].get("readinessGates") or []]
        gates_ok = all(old.get(g, {}).get("status") == "True" for g in gates)
        if terminal:
            containers_ready = cond("ContainersReady", False, "PodCompleted")
            ready = cond("Ready", False, "PodCompleted")
            initialized = cond("Initialized", True,
                               "PodCompleted" if not self.runs_init else None)
        else:
            containers_ready = cond(
                "ContainersReady", not unready, "ContainersNotReady" if unready else None,
                f"containers with unready status: [{' '.join(unready)}]" if unready else None)
            if unready:
                ready = cond("Ready", False, "ContainersNotReady",
                             f"containers with unready status: [{' '.join(unready)}]")
            elif not gates_ok:
                ready = cond("Ready", False, "ReadinessGatesNotReady",
                             "corresponding condition of pod readiness gate is not True")
            else:
                ready = cond("Ready", True)
            initialized = cond(
                "Initialized", not init_names, "ContainersNotInitialized" if init_names else None,
                f"containers with incomplete status: [{' '.join(init_names)}]"
                if init_names else None)
        conditions = [
            cond("PodReadyToStartContainers", self.volumes_ready or terminal),
            initialized, containers_ready, ready,
        ]
        conditions.append(old.get("PodScheduled") or cond("PodScheduled", True))
        conditions += [c for t, c in old.items() if t not in KUBELET_CONDITIONS]
        reason, message = (self.terminal_reason or (None, None)) if terminal else (None, None)
        status: Obj = {
            "phase": self._phase(),
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "containerStatuses": [self._container_status(r) for r in self.runs],
            "initContainerStatuses": [self._container_status(r) for r in self.runs_init] or None,
            "reason": reason,
            "message": message,
        }
        generation = self.pod["metadata"].get("generation")
        if generation is not None:
            status["observedGeneration"] = generation
        return status

    def publish(self) -> None:
        if self.api_deleted:
            return
        if self.adopted_terminal:
            return
        status = self.status()
        digest = json.dumps(status, sort_keys=True)
        if digest == self.last_status:
            return
        try:
            self.agent.kube.patch(self._path("/status"), {"status": status})
            self.last_status = digest
        except ApiError as exc:
            if exc.status == 404:
                return
            log.warning("pod %s/%s: status update failed: %s", self.ns, self.name, exc)
