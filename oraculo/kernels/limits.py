"""Sandbox limits of a kernel, and the environment it may see.

:class:`SandboxLimits` is the wire form the hub hands each user server (``ORACULO_SANDBOX_LIMITS``,
JSON, computed per hub group by :mod:`oraculo.hub.sandbox`). The provisioner
(:mod:`oraculo.kernels.provisioner`) applies them in the kernel's child process before ``exec``:

- ``memory_mb``: ``RLIMIT_DATA`` (private writable memory per process: ``malloc``, anonymous
  ``mmap``). Not ``RLIMIT_AS``, which also counts address space that CUDA and JIT runtimes
  reserve without using it. Allocations past it fail: Python raises ``MemoryError``.
- ``cpu_seconds``: ``RLIMIT_CPU`` over the kernel's life; past it the kernel gets ``SIGXCPU``
  and dies (the server restarts it).
- ``processes``: a ``pids`` cgroup per kernel where the server may create one (it counts every
  process and thread of the kernel's tree, whoever they run as), else ``RLIMIT_NPROC`` relative
  to what the kernel's OS user already runs (which does not hold for root: see the provisioner).
- ``file_size_mb``: ``RLIMIT_FSIZE``; a bigger write fails with ``EFBIG`` ("File too large").
- ``open_files``: ``RLIMIT_NOFILE``.
- ``wall_clock_seconds``: the longest timeout an execution may ask for;
  ``default_timeout_seconds`` the one it gets when it asks for none. The execute service
  enforces both (interrupt, then restart).
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterable, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: Environment variable a user server reads its limits from (JSON of :class:`SandboxLimits`).
LIMITS_ENV = "ORACULO_SANDBOX_LIMITS"
#: "0" where RLIMIT_NPROC must not stand in for a pids cgroup (containers: their uid is shared).
NPROC_ENV = "ORACULO_SANDBOX_RLIMIT_NPROC"
#: The nice value the hub gives users' kernels (``OraculoHub.kernel_nice``).
NICE_ENV = "ORACULO_KERNEL_NICE"

MIB = 1024 * 1024


class SandboxLimits(BaseModel):
    """The limits of one user's kernels. ``0`` means "no limit" for the rlimit-backed fields."""

    model_config = ConfigDict(extra="forbid")

    memory_mb: int = Field(
        default=4096, ge=0, description="Private memory per kernel process, MiB."
    )
    cpu_seconds: int = Field(default=0, ge=0, description="CPU seconds over the kernel's life.")
    processes: int = Field(
        default=256, ge=0, description="Processes and threads of the kernel's tree."
    )
    file_size_mb: int = Field(
        default=1024, ge=0, description="Largest file the kernel may write, MiB."
    )
    open_files: int = Field(default=1024, ge=0, description="Open file descriptors per process.")
    wall_clock_seconds: float = Field(
        default=3600, gt=0, description="Longest timeout one execution may ask for, seconds."
    )
    default_timeout_seconds: float = Field(
        default=60, gt=0, description="Timeout of an execution that asks for none, seconds."
    )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SandboxLimits:
        """The limits the hub set for this server, or the defaults when it set none.

        A value the hub sent that does not parse is an error: falling back to the defaults
        would silently loosen what an admin configured.
        """
        raw = (os.environ if environ is None else environ).get(LIMITS_ENV, "")
        if not raw.strip():
            return cls()
        try:
            return cls.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as e:
            raise ValueError(f"{LIMITS_ENV} is not a valid set of sandbox limits: {e}") from e

    def rlimits(self) -> dict[str, int]:
        """``resource.RLIMIT_*`` name -> value, for the limits that are set."""
        out: dict[str, int] = {}
        if self.memory_mb:
            out["RLIMIT_DATA"] = self.memory_mb * MIB
        if self.cpu_seconds:
            out["RLIMIT_CPU"] = self.cpu_seconds
        if self.file_size_mb:
            out["RLIMIT_FSIZE"] = self.file_size_mb * MIB
        if self.open_files:
            out["RLIMIT_NOFILE"] = self.open_files
        return out


# --- the kernel's environment --------------------------------------------------------------

#: Names never passed to a kernel, whatever the allowlist says: hub and server credentials.
ALWAYS_DENIED = (
    "JUPYTERHUB_API_TOKEN",
    "JPY_API_TOKEN",
    "JUPYTERHUB_CLIENT_ID",
    "JUPYTERHUB_OAUTH_*",
    "JUPYTERHUB_*_SECRET",
    "JUPYTERHUB_COOKIE_*",
    "JUPYTERHUB_CRYPT_KEY",
    "CONFIGPROXY_AUTH_TOKEN",
    "ORACULO_SERVER_TOKEN",
    "ORACULO_SANDBOX_LIMITS",
    "ORACULO_SANDBOX_RLIMIT_NPROC",
)

#: Patterns that look like credentials; dropped unless allowlisted.
SECRET_PATTERNS = ("*TOKEN*", "*SECRET*", "*KEY*", "*PASSWORD*", "*PASSWD*", "*CREDENTIAL*")

#: Credential-looking names a kernel does get: its own narrow token, set by the provisioner.
DEFAULT_ALLOW = ("ORACULO_KERNEL_TOKEN",)


def kernel_nice(environ: Mapping[str, str] = os.environ) -> int:
    """The nice value for this server's kernels (``ORACULO_KERNEL_NICE``, 0-19; 0 when unset or
    not a number)."""
    try:
        return max(0, min(19, int(environ.get(NICE_ENV, "0"))))
    except ValueError:
        return 0


def _matches(name: str, patterns: Iterable[str]) -> bool:
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, p.upper()) for p in patterns)


def sandbox_env(
    env: Mapping[str, str],
    allow: Iterable[str] = DEFAULT_ALLOW,
    deny: Iterable[str] = (),
) -> dict[str, str]:
    """``env`` without credentials.

    Dropped: :data:`ALWAYS_DENIED` (always), ``deny`` (always), and anything matching
    :data:`SECRET_PATTERNS` unless it matches ``allow``.
    """
    allow, deny = tuple(allow), (*ALWAYS_DENIED, *deny)
    out = {}
    for name, value in env.items():
        if _matches(name, deny):
            continue
        if _matches(name, SECRET_PATTERNS) and not _matches(name, allow):
            continue
        out[name] = value
    return out
