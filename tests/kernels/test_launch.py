"""The sandbox kernel loads ipykernel's debugger (debugpy, pydevd: 8 MB) on first use, and the
debugger still works: JupyterLab's ``debugInfo`` is answered as ipykernel answers it, and a
debug session stops at a breakpoint and shows the frame."""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import count
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

TIMEOUT = 60
DEBUG_MODULES = (
    "import sys; print(sorted({m.split('.')[0] for m in sys.modules}"
    " & {'debugpy', '_pydevd_bundle', 'pydevd'}))"
)


def start(name: str) -> tuple[KernelManager, BlockingKernelClient]:
    km = KernelManager(kernel_name=name)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=TIMEOUT)
    return km, kc


@pytest.fixture
def kernel() -> Iterator[BlockingKernelClient]:
    km, kc = start("oraculo")
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.fixture
def plain_kernel() -> Iterator[BlockingKernelClient]:
    km, kc = start("python3")  # ipykernel_launcher, as JupyterLab starts it elsewhere
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def output(kc: BlockingKernelClient, code: str) -> str:
    out: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("ERROR " + msg["content"]["ename"])

    kc.execute_interactive(code, timeout=TIMEOUT, output_hook=hook)
    return "".join(out).strip()


_seq = count(1)


def debug(kc: BlockingKernelClient, command: str, arguments: dict[str, Any] | None = None) -> Any:
    msg = kc.session.msg(
        "debug_request",
        {"type": "request", "seq": next(_seq), "command": command, "arguments": arguments or {}},
    )
    kc.control_channel.send(msg)
    while True:
        reply = kc.control_channel.get_msg(timeout=TIMEOUT)
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            return reply["content"]


def kernel_info(kc: BlockingKernelClient) -> dict[str, Any]:
    msg_id = kc.kernel_info()
    while True:
        reply = kc.get_shell_msg(timeout=TIMEOUT)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]


def without_pid(info: dict[str, Any]) -> dict[str, Any]:
    body = dict(info["body"])
    # ipykernel's folder for cell files is <temp>/ipykernel_<pid>/; the temp folder is the kernel's
    body["tmpFilePrefix"] = re.sub(r"ipykernel_\d+/$", "ipykernel_PID/", body["tmpFilePrefix"])
    body["tmpFilePrefix"] = body["tmpFilePrefix"].rsplit("/", 2)[-2]
    return {**info, "body": body, "request_seq": None}


def test_the_debugger_waits_for_its_first_use_and_answers_debug_info_as_ipykernel(
    kernel: BlockingKernelClient, plain_kernel: BlockingKernelClient
) -> None:
    assert "debugger" in kernel_info(kernel).get("supported_features", [])
    assert output(kernel, DEBUG_MODULES) == "[]"
    assert output(plain_kernel, DEBUG_MODULES) != "[]"  # what the stand-in saves, there

    ours, theirs = debug(kernel, "debugInfo"), debug(plain_kernel, "debugInfo")
    assert ours["success"] and ours["body"]["isStarted"] is False
    pid = output(kernel, "import os; print(os.getpid())")
    assert ours["body"]["tmpFilePrefix"].endswith(f"/ipykernel_{pid}/")
    assert without_pid(ours) == without_pid(theirs)
    assert output(kernel, DEBUG_MODULES) == "[]"  # debugInfo loaded nothing


def test_a_debug_session_on_the_sandbox_kernel_stops_at_a_breakpoint(
    kernel: BlockingKernelClient,
) -> None:
    initialize = debug(
        kernel,
        "initialize",
        {
            "clientID": "test-client",
            "clientName": "testClient",
            "adapterID": "",
            "pathFormat": "path",
            "linesStartAt1": True,
            "columnsStartAt1": True,
            "supportsVariableType": True,
            "supportsVariablePaging": True,
            "supportsRunInTerminalRequest": True,
            "locale": "en",
        },
    )
    assert initialize["success"], initialize
    assert debug(kernel, "attach")["success"]
    assert debug(kernel, "debugInfo")["body"]["isStarted"] is True

    code = "def f(a, b):\n    c = a + b\n    return c\n\nf(2, 3)"
    source = debug(kernel, "dumpCell", {"code": code})["body"]["sourcePath"]
    breakpoints = debug(
        kernel,
        "setBreakpoints",
        {"breakpoints": [{"line": 2}], "source": {"path": source}, "sourceModified": False},
    )
    assert breakpoints["success"] and breakpoints["body"]["breakpoints"][0]["verified"]
    assert debug(kernel, "configurationDone")["success"]

    kernel.execute(code)
    while True:  # the kernel stops at line 2 and says so on IOPub
        msg = kernel.get_iopub_msg(timeout=TIMEOUT)
        if msg["msg_type"] == "debug_event" and msg["content"].get("event") == "stopped":
            thread = msg["content"]["body"]["threadId"]
            break
    frames = debug(kernel, "stackTrace", {"threadId": thread})["body"]["stackFrames"]
    assert (frames[0]["name"], frames[0]["line"], frames[0]["source"]["path"]) == ("f", 2, source)
    scopes = debug(kernel, "scopes", {"frameId": frames[0]["id"]})["body"]["scopes"]
    local = debug(kernel, "variables", {"variablesReference": scopes[0]["variablesReference"]})
    values = {v["name"]: v["value"] for v in local["body"]["variables"]}
    assert values.items() >= {("a", "2"), ("b", "3")}, values
    assert debug(kernel, "continue", {"threadId": thread})["success"]
    assert debug(kernel, "disconnect", {"restart": False, "terminateDebuggee": True})["success"]
    assert output(kernel, "print(f(4, 5))") == "9"
