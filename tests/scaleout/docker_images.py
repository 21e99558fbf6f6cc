"""Images for the DockerSpawner test, made here: no registry is reachable from these machines.

The base is Debian bookworm from ``debootstrap --variant=minbase`` turned into an image with
``docker import``; the user image is ``deploy/docker/Dockerfile.hostenv`` on top of it, run with
the host's Python, virtual environment and package mounted read-only (``host_mounts``). Both are
made once per machine and reused (their tags carry a version).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.harness import REPO

BASE = "oraculo/bookworm-minbase:1"
#: The user image's name; its tag names what it was built for (see :func:`user_image`).
USER_IMAGE = "oraculo/singleuser"
#: What the host's Python packages need at run time, beyond minbase.
PACKAGES = [
    "tini", "ca-certificates", "libssl3", "libffi8", "libsqlite3-0", "zlib1g", "libbz2-1.0",
    "liblzma5", "libreadline8", "libncursesw6", "libstdc++6", "libgcc-s1", "libgomp1",
    "libuuid1", "procps",
]  # fmt: skip


def docker(*args: str, timeout: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=True, **kw
    )


def daemon_running() -> bool:
    try:
        docker("info", timeout=20)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def has_image(name: str) -> bool:
    try:
        docker("image", "inspect", name, timeout=20)
        return True
    except subprocess.CalledProcessError:
        return False


def ensure_base() -> str:
    if has_image(BASE):
        return BASE
    with tempfile.TemporaryDirectory(prefix="oraculo-rootfs-") as root:
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "bookworm",
             root, "http://deb.debian.org/debian"],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        with subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE) as tar:
            docker("import", "-", BASE, stdin=tar.stdout)
        if tar.returncode:
            raise RuntimeError(f"tar of the base image's root failed ({tar.returncode})")
    return BASE


def host_paths() -> dict[str, str]:
    """The host paths the container mounts read-only: Python, the venv, our package."""
    venv = Path(sys.prefix)
    python_home = Path(os.path.realpath(sys.executable)).parents[1]
    return {
        "python": str(python_home),
        "venv": str(venv),
        "package": str(REPO / "oraculo"),
    }


def user_image() -> str:
    """The user image for this checkout: the venv's path is built into it (its PATH), so a
    checkout elsewhere on the same machine (CI's fresh clone) gets an image of its own instead
    of one whose interpreter is not mounted."""
    dockerfile = REPO / "deploy" / "docker" / "Dockerfile.hostenv"
    key = f"{host_paths()['venv']}\0{BASE}\0".encode() + dockerfile.read_bytes()
    return f"{USER_IMAGE}:hostenv-{hashlib.sha256(key).hexdigest()[:12]}"


def ensure_user_image() -> str:
    ensure_base()
    image = user_image()
    if not has_image(image):
        docker(
            "build", "-f", str(REPO / "deploy" / "docker" / "Dockerfile.hostenv"),
            "--build-arg", f"BASE={BASE}", "--build-arg", f"VENV={host_paths()['venv']}",
            "-t", image, str(REPO / "deploy" / "docker"),
        )  # fmt: skip
    return image


def host_mounts() -> dict[str, dict[str, str]]:
    """DockerSpawner ``volumes`` entries for the host environment, read-only."""
    return {path: {"bind": path, "mode": "ro"} for path in host_paths().values()}
