"""Plugins: what other installed packages add to Oráculo through entry points.

=========================  =======================================================  ===========
Entry point group          What an entry point names                                Loaded by
=========================  =======================================================  ===========
``oraculo.features``       a :class:`~oraculo.extensions.base.feature.Feature`      the server
                           subclass (its services and ``/api/v1`` handlers)          extension
``oraculo.models.backends`` a model backend class, by the name a model's ``backend``  the model
                           field uses (:mod:`oraculo.models.registry`)               service
``oraculo.agent_tools``    a self-contained function: an agent tool that agent       the agents
                           notebooks opt into with ``"use_tools": [name]``           feature
``oraculo.panels``         a module that is a Panel app script, served at            the panel
                           ``oraculo-panels/<the module file's stem>``               server
=========================  =======================================================  ===========

Every group is read with :func:`importlib.metadata.entry_points` when its process starts; a
plugin that fails to load is logged once, with its traceback, and left out: the rest of the
workspace goes on without it.
"""

from __future__ import annotations

import importlib.util
import logging
from importlib.metadata import EntryPoint, entry_points
from typing import Any

FEATURES = "oraculo.features"
MODEL_BACKENDS = "oraculo.models.backends"
AGENT_TOOLS = "oraculo.agent_tools"
PANELS = "oraculo.panels"

_log = logging.getLogger("oraculo.plugins")


def _where(ep: EntryPoint) -> str:
    dist = ep.dist.name if ep.dist is not None else "?"
    return f"{ep.group} plugin {ep.name!r} = {ep.value} (from {dist})"


def load(group: str, log: Any = None) -> list[tuple[str, Any]]:
    """``(name, object)`` of every entry point of ``group`` that loads; the others are logged
    and skipped."""
    log = log or _log
    out = []
    for ep in entry_points(group=group):
        try:
            out.append((ep.name, ep.load()))
        except Exception:
            log.exception("%s failed to load; going on without it", _where(ep))
    return out


def module_files(group: str, log: Any = None) -> list[tuple[str, str]]:
    """``(name, file)`` of every entry point of ``group`` that names a module, found without
    importing it (a Panel script runs its app when imported); the others are logged and
    skipped."""
    log = log or _log
    out = []
    for ep in entry_points(group=group):
        try:
            spec = importlib.util.find_spec(ep.module)
            if spec is None or not spec.origin or not spec.origin.endswith(".py"):
                raise ImportError(f"no Python source file for module {ep.module!r}")
        except Exception:
            log.exception("%s failed to load; going on without it", _where(ep))
            continue
        out.append((ep.name, spec.origin))
    return out
