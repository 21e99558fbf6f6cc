"""The sandbox kernel's entry point: ipykernel's, with the debugger loaded when it is first used.

``python -m ipykernel_launcher`` imports ipykernel's debugger module at start, and it imports
debugpy and pydevd to find out whether debugging is possible: 8 MB in every kernel, a fifth of
an idle kernel's memory, for JupyterLab's debugger, which few kernels ever start. Here
(the ``oraculo`` kernelspec's ``argv``):

- ``ipykernel.debugger`` is a stand-in until something asks it for more than whether debugpy is
  installed (:class:`_DebuggerModule`);
- the kernel's debugger is :class:`LazyDebugger`, which makes ipykernel's ``Debugger`` (and with
  it imports debugpy) at the first debug request, except ``debugInfo`` while nothing has been
  debugged: JupyterLab asks that of every kernel a notebook opens on, and the answer is known
  without debugpy (not started, no breakpoints, no stopped threads).

The kernel still says it supports the debugger (``kernel_info``), and a debug session is
ipykernel's own from its first request on. Everything else is ``ipykernel_launcher``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

_DEBUGGER = "ipykernel.debugger"


class _DebuggerModule(types.ModuleType):
    """``ipykernel.debugger`` until one of its names other than ``_is_debugpy_available`` is
    asked for; then the real module is imported, replaces this one and answers."""

    def __getattr__(self, name: str) -> Any:  # only for names this module does not hold
        if name.startswith("__") and name.endswith("__"):
            # The import system's questions (``__path__``: is this a package?), which the real
            # module answers the same way: it has none of them.
            raise AttributeError(name)
        return getattr(_import_debugger_module(), name)


def _install_debugger_stand_in() -> None:
    if _DEBUGGER in sys.modules:
        return
    spec = importlib.util.find_spec(_DEBUGGER)
    if spec is None:
        return
    stand_in = _DebuggerModule(_DEBUGGER, __doc__)
    stand_in.__spec__ = spec
    # What the real module finds by importing debugpy, found without importing it. If the real
    # import fails later, the first debug request says so (LazyDebugger).
    stand_in._is_debugpy_available = importlib.util.find_spec("debugpy") is not None  # type: ignore[attr-defined]
    sys.modules[_DEBUGGER] = stand_in


def _import_debugger_module() -> types.ModuleType:
    current = sys.modules.get(_DEBUGGER)
    if current is not None and not isinstance(current, _DebuggerModule):
        return current
    real_spec = current.__spec__ if current is not None else importlib.util.find_spec(_DEBUGGER)
    assert real_spec is not None and real_spec.loader is not None
    module = importlib.util.module_from_spec(real_spec)
    sys.modules[_DEBUGGER] = module
    try:
        real_spec.loader.exec_module(module)
    except BaseException:
        if current is not None:
            sys.modules[_DEBUGGER] = current
        raise
    import ipykernel

    ipykernel.debugger = module
    return module


class LazyDebugger:
    """The kernel's debugger, made when it is first needed (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._kwargs = kwargs
        self._debugger: Any = None
        self._made: asyncio.Event | None = None
        self._made_loop: asyncio.AbstractEventLoop | None = None

    def _real(self) -> Any:
        if self._debugger is None:
            before = set(sys.modules)
            module = _import_debugger_module()
            # ipykernel hides frames of the modules the kernel had loaded when it started, the
            # debugger's among them (its stack traces show the user's code): add those now.
            kernel_modules = self._args[5] if len(self._args) > 5 else None
            if isinstance(kernel_modules, list):
                for name in set(sys.modules) - before:
                    path = getattr(sys.modules.get(name), "__file__", None)
                    if path:
                        kernel_modules.append(path)
            self._debugger = module.Debugger(*self._args, **self._kwargs)
            if self._made is not None and self._made_loop is not None:
                self._made_loop.call_soon_threadsafe(self._made.set)
        return self._debugger

    async def process_request(self, message: dict[str, Any]) -> dict[str, Any]:
        if self._debugger is None and message.get("command") == "debugInfo":
            return debug_info_before_start(message)
        try:
            debugger = self._real()
        except Exception as e:  # debugpy is installed but does not import: the reply says so
            return {
                "type": "response",
                "request_seq": message.get("seq"),
                "success": False,
                "command": message.get("command"),
                "message": f"the debugger cannot start: {e}",
            }
        return await debugger.process_request(message)

    async def handle_stopped_event(self) -> None:
        # The kernel's control thread waits on this from its start; until a debugger exists
        # nothing can stop.
        if self._debugger is None:
            self._made_loop = asyncio.get_running_loop()
            self._made = asyncio.Event()
            if self._debugger is None:
                await self._made.wait()
        await self._debugger.handle_stopped_event()

    def __getattr__(self, name: str) -> Any:  # the rest of ipykernel's Debugger, made on use
        return getattr(self._real(), name)


def debug_info_before_start(message: dict[str, Any]) -> dict[str, Any]:
    """What ipykernel's ``Debugger.debugInfo`` answers while no debug request has come."""
    from ipykernel.compiler import get_tmp_directory, get_tmp_hash_seed

    return {
        "type": "response",
        "request_seq": message.get("seq"),
        "success": True,
        "command": message.get("command"),
        "body": {
            "isStarted": False,
            "hashMethod": "Murmur2",
            "hashSeed": get_tmp_hash_seed(),
            "tmpFilePrefix": get_tmp_directory() + os.sep,
            "tmpFileSuffix": ".py",
            "breakpoints": [],
            "stoppedThreads": [],
            "richRendering": True,
            "exceptionPaths": ["Python Exceptions"],
            "copyToGlobals": True,
        },
    }


def main() -> None:
    # As ipykernel_launcher: the working directory leaves sys.path while the kernel loads, and
    # IPython puts it back (InteractiveShellApp.init_path).
    if sys.path and (sys.path[0] == "" or Path(sys.path[0]) == Path.cwd()):
        del sys.path[0]
    _install_debugger_stand_in()
    from ipykernel.ipkernel import IPythonKernel
    from ipykernel.kernelapp import IPKernelApp
    from traitlets import Type

    class Kernel(IPythonKernel):
        debugger_class = Type(LazyDebugger)

    Kernel.__module__ = "oraculo.kernels.launch"
    IPKernelApp.launch_instance(kernel_class=Kernel)


if __name__ == "__main__":
    main()
