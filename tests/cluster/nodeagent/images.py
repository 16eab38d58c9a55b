"""The agent's "image store": the few image names it knows how to run locally.

There is no container runtime here, so an image is just a recipe for a local
process: an ENTRYPOINT, a CMD, environment and a default user, as an OCI image
config would give them. Any other image name fails the way a pull failure does.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROJECT_IMAGE_DEFAULT = "timesheet-backup-operator:dev"
SHELL_IMAGE = "tsb-test/shell:1"


@dataclass
class Image:
    """What the runtime would read from an image's config."""

    name: str
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None  # USER of the image; None means root
    working_dir: str | None = None

    @property
    def image_id(self) -> str:
        digest = hashlib.sha256(self.name.encode()).hexdigest()
        return f"{normalize(self.name)}@sha256:{digest}"

    def argv(self, command: list[str] | None, args: list[str] | None) -> list[str]:
        """Combine image and container command the way Kubernetes documents it."""
        if command:
            return list(command) + list(args or [])
        if args is not None and args:
            return list(self.entrypoint) + list(args)
        return list(self.entrypoint) + list(self.cmd)


def normalize(name: str) -> str:
    """Map equivalent references to one key: docker.io/library/x, x:latest, x."""
    ref = name.strip()
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
            break
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        ref += ":latest"
    return ref


def dockerfile_user(dockerfile: Path) -> str | None:
    """The last USER of the Dockerfile, so runAsNonRoot checks match the real image."""
    try:
        text = dockerfile.read_text()
    except OSError:
        return None
    users = re.findall(r"^\s*USER\s+(\S+)", text, flags=re.MULTILINE | re.IGNORECASE)
    return users[-1] if users else None


class ImageRegistry:
    def __init__(self) -> None:
        self._images: dict[str, Image] = {}

    def add(self, image: Image) -> None:
        self._images[normalize(image.name)] = image

    def lookup(self, name: str) -> Image | None:
        return self._images.get(normalize(name))

    def names(self) -> list[str]:
        return sorted(self._images)

    @classmethod
    def default(cls, repo_root: Path, project_image: str) -> ImageRegistry:
        reg = cls()
        venv_bin = repo_root / ".venv" / "bin"
        reg.add(
            Image(
                name=project_image,
                entrypoint=[str(venv_bin / "timesheet-backup")],
                env={
                    "PATH": f"{venv_bin}:{DEFAULT_PATH}",
                    "PYTHONUNBUFFERED": "1",
                    "PYTHONDONTWRITEBYTECODE": "1",
                },
                user=dockerfile_user(repo_root / "Dockerfile"),
            )
        )
        reg.add(Image(name=SHELL_IMAGE, entrypoint=["/bin/sh"], env={"PATH": DEFAULT_PATH}))
        return reg

    def add_spec(self, name: str, spec_json: str) -> None:
        """Add ``NAME=JSON`` from the command line: a JSON list (the ENTRYPOINT) or an
        object with entrypoint/cmd/env/user/workingDir."""
        spec = json.loads(spec_json)
        if isinstance(spec, list):
            spec = {"entrypoint": spec}
        env = {"PATH": DEFAULT_PATH, **spec.get("env", {})}
        self.add(
            Image(
                name=name,
                entrypoint=list(spec.get("entrypoint", [])),
                cmd=list(spec.get("cmd", [])),
                env=env,
                user=spec.get("user"),
                working_dir=spec.get("workingDir"),
            )
        )
