"""Sandbox limits per hub group: what each user's kernels may use.

Admins set them in ``jupyterhub_config.py``::

    c.SandboxConfig.default_limits = {"memory_mb": 4096, "processes": 256, "cpu_seconds": 0}
    c.SandboxConfig.group_limits = {
        "students": {"memory_mb": 2048, "wall_clock_seconds": 300},
        "researchers": {"memory_mb": 32768, "processes": 1024},
    }

(or as JSON in ``ORACULO_SANDBOX_CONFIG``: ``{"default": {...}, "groups": {...}}``).

A user gets the default, overridden by each of their groups; where several of their groups set
the same limit, the most generous one wins (group membership only ever adds, as roles do). The
spawner hands the result to the user's server as ``ORACULO_SANDBOX_LIMITS`` (JSON of
:class:`oraculo.kernels.limits.SandboxLimits`), and the server's kernel provisioner enforces it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from traitlets import Dict, TraitError, default, validate
from traitlets.config import LoggingConfigurable

from oraculo.kernels.limits import LIMITS_ENV, NPROC_ENV, SandboxLimits

#: A container's pids limit: this many kernels at their process limit, plus the server's share.
CONTAINER_PROCESS_FACTOR = 4
CONTAINER_PROCESS_BASE = 256


def _check(value: dict[str, Any], where: str) -> dict[str, Any]:
    try:
        SandboxLimits.model_validate(value)
    except ValueError as e:
        raise TraitError(f"{where} is not a valid set of sandbox limits: {e}") from e
    return value


class SandboxConfig(LoggingConfigurable):
    """The sandbox limits of each user's kernels, by hub group."""

    default_limits = Dict(
        help="""Limits every user gets (fields of oraculo.kernels.limits.SandboxLimits:
        memory_mb, cpu_seconds, processes, file_size_mb, open_files, wall_clock_seconds,
        default_timeout_seconds; 0 means no limit for the first five). Default: from
        ORACULO_SANDBOX_CONFIG, else the SandboxLimits defaults.""",
    ).tag(config=True)
    group_limits = Dict(
        value_trait=Dict(),
        help="""Limits by hub group name, over the default. A user in several groups gets, for
        each limit, the most generous value among them (0, no limit, is the most generous).""",
    ).tag(config=True)

    def _file(self) -> dict[str, Any]:
        raw = os.environ.get("ORACULO_SANDBOX_CONFIG", "").strip()
        return dict(json.loads(raw)) if raw else {}

    @default("default_limits")
    def _default_default_limits(self) -> dict[str, Any]:
        return dict(self._file().get("default", {}))

    @default("group_limits")
    def _default_group_limits(self) -> dict[str, Any]:
        return dict(self._file().get("groups", {}))

    @validate("default_limits")
    def _validate_default_limits(self, proposal: Any) -> dict[str, Any]:
        return _check(dict(proposal.value), "SandboxConfig.default_limits")

    @validate("group_limits")
    def _validate_group_limits(self, proposal: Any) -> dict[str, Any]:
        for name, value in proposal.value.items():
            _check({**self.default_limits, **value}, f"SandboxConfig.group_limits[{name!r}]")
        return dict(proposal.value)

    def limits_for(self, groups: Iterable[str]) -> SandboxLimits:
        """The limits of a member of ``groups``."""
        merged: dict[str, Any] = dict(self.default_limits)
        chosen: dict[str, Any] = {}
        for group in sorted(set(groups)):
            for key, value in self.group_limits.get(group, {}).items():
                chosen[key] = value if key not in chosen else _generous(key, chosen[key], value)
        merged.update(chosen)
        return SandboxLimits.model_validate(merged)

    def environment(self, groups: Iterable[str]) -> dict[str, str]:
        """What the spawner adds to the user server's environment."""
        return {LIMITS_ENV: self.limits_for(groups).model_dump_json()}


def _generous(key: str, a: Any, b: Any) -> Any:
    if key in ("wall_clock_seconds", "default_timeout_seconds"):
        return max(a, b)
    if a == 0 or b == 0:  # 0: no limit
        return 0
    return max(a, b)


def _in_container(spawner: Any) -> bool:
    try:
        from dockerspawner import DockerSpawner
    except ImportError:
        return False
    return isinstance(spawner, DockerSpawner)


def _groups(spawner: Any) -> list[str]:
    return [g.name for g in getattr(spawner.user, "groups", [])]


def sandbox_env(spawner: Any, env: dict[str, str]) -> dict[str, str]:
    """The spawner hook: add the user's sandbox limits to ``env``."""
    env.update(SandboxConfig(parent=spawner).environment(_groups(spawner)))
    if _in_container(spawner):
        # A container: its OS user's uid is shared with every other container's on the host,
        # so RLIMIT_NPROC would count their processes too. The container's pids cgroup
        # (docker_host_config) holds the process limit instead.
        env[NPROC_ENV] = "0"
    return env


def docker_host_config(spawner: Any) -> dict[str, Any]:
    """The spawner hook for containers: a pids limit for the whole container (its server,
    kernels and terminals), room for ``CONTAINER_PROCESS_FACTOR`` kernels at their limit."""
    limits = SandboxConfig(parent=spawner).limits_for(_groups(spawner))
    if not limits.processes:
        return {}
    return {"pids_limit": limits.processes * CONTAINER_PROCESS_FACTOR + CONTAINER_PROCESS_BASE}
