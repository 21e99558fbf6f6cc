"""Run code in the user's sandbox kernel: the service behind ``/api/v1/execute``.

Other features call it in process (chat "run" blocks, agents' tool calls)::

    service = extension.feature("execute").service
    result = await service.execute(
        code,                      # str
        language="python",         # "python" | "bash" (bash runs through the kernel's %%bash)
        timeout=None,              # seconds; None: the user's default; at most their wall clock
        session=None,              # kernel id, Jupyter session id or notebook path; None: the
                                   # user's dedicated assistant kernel
        origin="chat",             # "api" | "chat" | "agent:<name>": recorded in the audit log
        actor="alice",             # who asked (a hub user name)
        conversation_id=None,      # origin "chat": the conversation (recorded in the audit)
        run_id=None,               # origin "agent:...": the agent run (recorded in the audit)
        detach=False,              # True: return at once with status "running"
    )                              # -> ExecutionResult (pydantic)
    result = service.get(execution_id)            # the result so far (NotFound if unknown)
    result = await service.wait(execution_id, 5)  # ...or once done, waiting up to 5 s
    result = await service.cancel(execution_id, actor="alice")  # stop it (status "cancelled")

Executions on one kernel run one at a time, in the order they arrive. A timeout is enforced from
the moment the kernel starts the code: the kernel is interrupted and, if it has not answered
``interrupt_grace`` seconds later, killed (with every process it started) and restarted in the
background; the answer says which happened. Cancelling stops code the same way (interrupt, then
kill) or takes it off the kernel's queue before it starts; a caller that awaits ``execute`` and
is itself cancelled (an agent run being cancelled) cancels its execution.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import inspect
import os
import queue
import re
import signal
import time
import uuid
from typing import Any, Literal

import psutil
from prometheus_client import Counter, Histogram
from traitlets import Any as AnyTrait
from traitlets import Bool, Float, Instance, Int, Unicode, default
from traitlets.config import LoggingConfigurable

from oraculo.extensions.base.errors import BadRequest, Conflict, NotFound
from oraculo.extensions.execute import files as tracking
from oraculo.extensions.execute.audit import AuditLog
from oraculo.extensions.execute.models import (
    ExecutionError,
    ExecutionResult,
    FileInfo,
    TimeoutInfo,
)
from oraculo.kernels.limits import SandboxLimits
from oraculo.kernels.provisioner import provisioner_for

LANGUAGES = ("python", "bash")

#: Execute latency and outcomes, at the server's /metrics (Prometheus).
EXECUTE_SECONDS = Histogram(
    "oraculo_execute_seconds",
    "Time from an execute request to its answer, by outcome and origin.",
    ["status", "origin"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
SANDBOX_LIMIT_HITS = Counter(
    "oraculo_sandbox_limit_hits", "Executions ended by a sandbox limit, by limit.", ["limit"]
)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _Output:
    """stdout/stderr/results of one execution, bounded."""

    def __init__(self, max_chars: int, max_result_chars: int) -> None:
        self.max_chars, self.max_result_chars = max_chars, max_result_chars
        self.output: list[str] = []
        self.streams: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.chars = self.result_chars = self.dropped = 0
        self.results: list[dict[str, Any]] = []
        self.truncated = False

    def stream(self, name: str, text: str) -> None:
        room = self.max_chars - self.chars
        if len(text) > room:
            self.dropped += len(text) - max(room, 0)
            self.truncated = True
            text = text[: max(room, 0)]
        if text:
            self.chars += len(text)
            self.output.append(text)
            self.streams.get(name, self.streams["stderr"]).append(text)

    def result(self, bundle: dict[str, Any]) -> None:
        size = sum(len(str(v)) for v in bundle.values())
        if self.result_chars + size > self.max_result_chars:
            self.truncated = True
            return
        self.result_chars += size
        self.results.append(bundle)

    def text(self, parts: list[str]) -> str:
        out = "".join(parts)
        if self.dropped and parts is self.output:
            out += f"\n[output truncated: {self.dropped} more characters]\n"
        return out


class _Kernel:
    """The execute service's view of one kernel: its queue (a lock) and its client."""

    def __init__(self, kernel_id: str) -> None:
        self.id = kernel_id
        self.lock = asyncio.Lock()
        self.client: Any = None


class _Execution:
    def __init__(self, result: ExecutionResult) -> None:
        self.result = result
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.size = 0  # characters held, once done
        self.started = False  # the kernel has been sent the code
        self.ended = False  # ...and is done with it: too late to cancel
        self.cancelled_by: str | None = None
        self.cpu_before: float | None = None  # the kernel's CPU seconds when it began


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


class ExecuteService(LoggingConfigurable):
    """Runs code in the user's kernels, within their sandbox limits, and remembers the results."""

    kernel_manager = AnyTrait(help="The server's MappingKernelManager.")
    session_manager = AnyTrait(help="The server's SessionManager (notebook sessions).")
    admission = AnyTrait(
        None,
        allow_none=True,
        help="""An async callable awaited before each new execution; it raises to refuse one
        (the usage feature's compute-budget check). None: every execution is admitted.""",
    )
    root_dir = Unicode(help="The server's root directory (the contents API's /).")
    base_url = Unicode("/", help="The server's base URL, for file links.")
    limits = Instance(SandboxLimits, help="This user's sandbox limits (from the hub).")
    audit = Instance(AuditLog)

    kernel_name = Unicode(
        "oraculo", help="Kernelspec of the dedicated assistant kernel (the sandboxed one)."
    ).tag(config=True)
    interrupt_grace = Float(
        0.3,
        help="""Seconds a timed-out kernel has to answer an interrupt before it is killed and
        restarted. Keep it under 0.5 so that timeouts hold within half a second.""",
    ).tag(config=True)
    max_output_chars = Int(
        1_000_000, help="stdout and stderr kept per execution; the rest is dropped and flagged."
    ).tag(config=True)
    max_result_chars = Int(
        20_000_000, help="Size of the rich results (mime bundles) kept per execution."
    ).tag(config=True)
    keep_results = Int(
        500, help="Finished executions remembered for GET /api/v1/execute/{id}."
    ).tag(config=True)
    keep_chars = Int(
        200_000_000,
        help="""Total size (characters of output and results) of the finished executions
        remembered; the oldest are forgotten first.""",
    ).tag(config=True)
    outputs_dir = Unicode(
        "oraculo-outputs",
        help="""Folder (relative to the server's root) where images an execution displays are
        saved, one sub-folder per execution.""",
    ).tag(config=True)
    track_files = Bool(
        True, help="Report the files an execution creates or changes in its working directory."
    ).tag(config=True)
    max_tracked_files = Int(
        5000, help="Files looked at before and after each execution (the rest is ignored)."
    ).tag(config=True)
    allow_unsandboxed_sessions = Bool(
        False,
        help="""Let `session` name a kernel that the oraculo sandbox did not launch (e.g. a
        plain python3 notebook). Off: such kernels are refused with 409.""",
    ).tag(config=True)

    @default("limits")
    def _default_limits(self) -> SandboxLimits:
        return SandboxLimits.from_environment()

    @default("audit")
    def _default_audit(self) -> AuditLog:
        return AuditLog(parent=self)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._executions: collections.OrderedDict[str, _Execution] = collections.OrderedDict()
        self._kernels: dict[str, _Kernel] = {}
        self._assistant: str | None = None
        self._assistant_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()

    # --- public API --------------------------------------------------------------------------

    async def execute(
        self,
        code: str,
        language: str = "python",
        timeout: float | None = None,
        session: str | None = None,
        origin: str = "api",
        actor: str = "",
        detach: bool = False,
        conversation_id: str | None = None,
        run_id: str | None = None,
    ) -> ExecutionResult:
        """Run ``code``; see the module docstring."""
        language = language.lower()
        if language not in LANGUAGES:
            raise BadRequest(
                f"Unsupported language {language!r}; supported: {', '.join(LANGUAGES)}"
            )
        limit = self.limits.wall_clock_seconds
        if timeout is None:
            timeout = min(self.limits.default_timeout_seconds, limit)
        elif timeout <= 0:
            raise BadRequest("timeout must be positive")
        elif timeout > limit:
            raise BadRequest(f"timeout {timeout:g} s is over this workspace's limit of {limit:g} s")
        if self.admission is not None:
            await self.admission()
        kernel_id = await self._resolve(session)
        result = ExecutionResult(
            execution_id=uuid.uuid4().hex,
            status="running",
            language=language,
            session=kernel_id,
            origin=origin,
            actor=actor,
            conversation_id=conversation_id,
            run_id=run_id,
            started_at=_now(),
        )
        execution = _Execution(result)
        self._remember(execution)
        self.audit.append(
            {
                "event": "started",
                "time": result.started_at,
                "execution_id": result.execution_id,
                "actor": actor,
                "origin": origin,
                **_source(result),
                "session": kernel_id,
                "language": language,
                "timeout": timeout,
                "code": code,
            }
        )
        execution.task = asyncio.create_task(self._run(execution, code, timeout))
        if detach:
            return result.model_copy()
        try:
            await asyncio.shield(execution.done.wait())
        except asyncio.CancelledError:  # whoever waited is gone (a cancelled agent run)
            self._request_cancel(execution, actor or origin)
            raise
        return result.model_copy()

    async def cancel(self, execution_id: str, actor: str) -> ExecutionResult:
        """Stop an execution: off the queue if it has not started, else interrupted (killed
        and restarted if it ignores the interrupt). Answers its result once it has stopped;
        a finished execution is answered as it is."""
        execution = self._executions.get(execution_id)
        if execution is None:
            raise NotFound(f"No execution {execution_id!r}")
        if not execution.done.is_set():
            self._request_cancel(execution, actor)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(execution.done.wait()), self.interrupt_grace + 5
                )
        return execution.result.model_copy()

    def _request_cancel(self, execution: _Execution, actor: str) -> None:
        if execution.done.is_set() or execution.ended or execution.cancelled_by is not None:
            return
        execution.cancelled_by = actor
        result = execution.result
        result.status = "cancelled"
        result.error = ExecutionError(name="Cancelled", value=f"Cancelled by {actor}")
        if not execution.started and execution.task is not None:
            execution.task.cancel()  # still waiting for the kernel: it never runs
        # else: the running loop sees ``cancelled_by`` within half a second and interrupts

    def get(self, execution_id: str) -> ExecutionResult:
        execution = self._executions.get(execution_id)
        if execution is None:
            raise NotFound(f"No execution {execution_id!r}")
        return execution.result.model_copy()

    async def wait(self, execution_id: str, timeout: float) -> ExecutionResult:
        """The execution's result once it is done, or as it stands after ``timeout`` seconds."""
        execution = self._executions.get(execution_id)
        if execution is None:
            raise NotFound(f"No execution {execution_id!r}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(execution.done.wait()), timeout)
        return execution.result.model_copy()

    async def stop(self) -> None:
        for execution in list(self._executions.values()):
            if execution.task is not None and not execution.task.done():
                execution.task.cancel()
        for kernel in self._kernels.values():
            if kernel.client is not None:
                kernel.client.stop_channels()

    # --- kernels -----------------------------------------------------------------------------

    async def _resolve(self, session: str | None) -> str:
        km = self.kernel_manager
        if session is None:
            async with self._assistant_lock:
                if self._assistant is None or self._assistant not in km:
                    old = self._kernels.pop(self._assistant or "", None)
                    if old is not None:
                        self._drop_client(old)
                    self._assistant = await km.start_kernel(kernel_name=self.kernel_name, path="")
                return str(self._assistant)
        kernel_id = None
        if session in km:
            kernel_id = session
        elif self.session_manager is not None:
            for s in await self.session_manager.list_sessions():
                if session in (s.get("id"), s.get("path"), s.get("name")):
                    kernel_id = s["kernel"]["id"]
                    break
        if kernel_id is None:
            raise NotFound(f"No kernel or notebook session called {session!r}")
        if not self.allow_unsandboxed_sessions and provisioner_for(kernel_id) is None:
            raise Conflict(
                f"Kernel {kernel_id} is not an Oráculo sandbox kernel; "
                "switch the notebook to the Oráculo kernel to share it"
            )
        return str(kernel_id)

    async def _client(self, kernel: _Kernel) -> Any:
        if kernel.client is None:
            client = self.kernel_manager.get_kernel(kernel.id).client()
            client.start_channels()
            await client.wait_for_ready(timeout=60)
            kernel.client = client
        return kernel.client

    def _drop_client(self, kernel: _Kernel) -> None:
        if kernel.client is not None:
            with contextlib.suppress(Exception):
                kernel.client.stop_channels()
            kernel.client = None

    def _kernel(self, kernel_id: str) -> _Kernel:
        if kernel_id not in self._kernels:
            self._kernels[kernel_id] = _Kernel(kernel_id)
        return self._kernels[kernel_id]

    def _cwd(self, kernel_id: str) -> str:
        prov = provisioner_for(kernel_id)
        cwd = getattr(prov, "cwd", None) if prov is not None else None
        return str(cwd or self.root_dir)

    # --- one execution -----------------------------------------------------------------------

    async def _run(self, execution: _Execution, code: str, timeout: float) -> None:
        result = execution.result
        kernel = self._kernel(result.session)
        out = _Output(self.max_output_chars, self.max_result_chars)
        start = time.monotonic()
        restart = False
        try:
            async with kernel.lock:
                start = time.monotonic()  # the time it waited for the kernel is not its own
                execution.cpu_before = self._kernel_cpu(kernel.id)
                cwd = self._cwd(kernel.id)
                before = await self._snapshot(cwd)
                prov = provisioner_for(kernel.id)
                hits_before = prov.process_limit_hits() if prov is not None else 0
                try:
                    restart = await self._execute(kernel, execution, code, timeout, out)
                    execution.ended = True
                except Exception as e:
                    self.log.exception("execution %s failed", result.execution_id)
                    result.status = "error"
                    result.error = ExecutionError(name=type(e).__name__, value="Execution failed")
                hits = (prov.process_limit_hits() if prov is not None else 0) - hits_before
                if hits > 0:
                    # What hit the limit may still be there, holding every slot: clear it out.
                    restart = True
                    self._process_limit(result, hits)
                result.files = await self._files(result, cwd, before, out)
                self._measure_cpu(execution)
                self._finish(result, out, start)
                execution.size = len(result.output) * 2 + out.result_chars
                execution.done.set()
                self._forget()
                if restart:
                    await self._restart(kernel)
        except asyncio.CancelledError:
            raise
        finally:
            if not execution.done.is_set():
                self._finish(result, out, start)
                execution.done.set()

    async def _execute(
        self, kernel: _Kernel, execution: _Execution, code: str, timeout: float, out: _Output
    ) -> bool:
        """Send the code and collect its messages; True when the kernel must be restarted."""
        result = execution.result
        client = await self._client(kernel)
        for channel in (client.get_iopub_msg, client.get_shell_msg):
            with contextlib.suppress(queue.Empty):
                while True:  # what came while nobody listened: others' output, old replies
                    await channel(timeout=0)
        if result.language == "bash":
            code = "%%bash\n" + code
        if execution.cancelled_by is not None:
            return False
        execution.started = True
        msg_id = client.execute(code, store_history=False, allow_stdin=False, stop_on_error=False)
        deadline: float | None = None
        queued_until = time.monotonic() + self.limits.wall_clock_seconds
        while True:
            if execution.cancelled_by is not None:
                return await self._interrupt(kernel, client, msg_id, out) == "restarted"
            now = time.monotonic()
            limit_at = deadline if deadline is not None else queued_until
            if now >= limit_at:
                if deadline is None:
                    result.status = "error"
                    result.error = ExecutionError(
                        name="KernelBusy", value="The kernel did not start the code in time"
                    )
                    return False
                return await self._time_out(kernel, client, msg_id, timeout, result, out)
            try:
                msg = await client.get_iopub_msg(timeout=min(limit_at - now, 0.5))
            except queue.Empty:
                if not await self._alive(kernel):
                    self._died(kernel, result)
                    return True
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content.get("execution_state") == "busy" and deadline is None:
                deadline = time.monotonic() + timeout
            elif kind == "status" and content.get("execution_state") == "idle":
                if result.error is None:
                    result.status = "ok"
                return False
            else:
                self._collect(kind, content, result, out)

    def _collect(
        self, kind: str, content: dict[str, Any], result: ExecutionResult, out: _Output
    ) -> None:
        if kind == "stream":
            out.stream(content.get("name", "stdout"), content.get("text", ""))
        elif kind in ("execute_result", "display_data"):
            out.result(dict(content.get("data", {})))
        elif kind == "error":
            result.status = "error"
            name, value = content.get("ename", "Error"), content.get("evalue", "")
            result.error = ExecutionError(
                name=name,
                value=value,
                traceback=[_ANSI.sub("", line) for line in content.get("traceback", [])],
                limit=_limit_of(name, value),
            )

    async def _time_out(
        self,
        kernel: _Kernel,
        client: Any,
        msg_id: str,
        timeout: float,
        result: ExecutionResult,
        out: _Output,
    ) -> bool:
        """Interrupt; if the kernel does not go idle within the grace, kill it. True: restart."""
        result.status = "timeout"
        result.error = ExecutionError(
            name="TimeoutError", value=f"Execution exceeded {timeout:g} s", limit="timeout"
        )
        action = await self._interrupt(kernel, client, msg_id, out)
        result.timeout = TimeoutInfo(seconds=timeout, action=action)
        return action == "restarted"

    async def _interrupt(
        self, kernel: _Kernel, client: Any, msg_id: str, out: _Output
    ) -> Literal["interrupted", "restarted"]:
        """Interrupt the running code; if the kernel does not go idle within the grace, kill it
        (it is restarted once the execution has answered)."""
        km = self.kernel_manager.get_kernel(kernel.id)
        with contextlib.suppress(Exception):
            done = km.interrupt_kernel()
            if inspect.isawaitable(done):
                await done
        grace_end = time.monotonic() + self.interrupt_grace
        while (left := grace_end - time.monotonic()) > 0:
            try:
                msg = await client.get_iopub_msg(timeout=left)
            except queue.Empty:
                break
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content.get("execution_state") == "idle":
                return "interrupted"
            if kind == "stream":
                out.stream(content.get("name", "stdout"), content.get("text", ""))
        # No answer: kill the kernel and everything it started, now; restart after answering.
        # The server's auto-restarter stays out of it, or it would start a second kernel.
        with contextlib.suppress(Exception):
            km.stop_restarter()
            await km.provisioner.kill()
        return "restarted"

    def _process_limit(self, result: ExecutionResult, hits: int) -> None:
        note = (
            f"{hits} process(es) refused by the limit of {self.limits.processes}; "
            "the kernel was restarted to clear the rest"
        )
        if result.timeout is not None:
            result.timeout.action = "restarted"
        if result.error is None:
            result.status = "error"
            result.error = ExecutionError(name="ProcessLimit", value=note, limit="processes")
        elif result.error.limit in (None, "timeout"):
            result.error.limit = "processes"
            result.error.value += f" ({note})"

    async def _alive(self, kernel: _Kernel) -> bool:
        try:
            return bool(await self.kernel_manager.get_kernel(kernel.id).is_alive())
        except KeyError:
            return False

    def _died(self, kernel: _Kernel, result: ExecutionResult) -> None:
        with contextlib.suppress(KeyError):
            self.kernel_manager.get_kernel(kernel.id).stop_restarter()  # ours restarts it
        prov = provisioner_for(kernel.id)
        code = prov.process.poll() if prov is not None and prov.process is not None else None
        limit = {-signal.SIGXCPU: "cpu_time", -signal.SIGXFSZ: "file_size"}.get(code or 0)
        if limit is None and prov is not None and self.limits.memory_mb and code == -signal.SIGKILL:
            limit = "memory"
        result.status = "error"
        result.error = ExecutionError(
            name="KernelDied",
            value=f"The kernel died (exit {code}); it is being restarted",
            limit=limit,
        )

    async def _restart(self, kernel: _Kernel) -> None:
        self._drop_client(kernel)
        try:
            await self.kernel_manager.restart_kernel(kernel.id, now=True)
        except Exception:
            self.log.exception("Could not restart kernel %s", kernel.id)

    # --- results -----------------------------------------------------------------------------

    async def _snapshot(self, cwd: str) -> tracking.Snapshot | None:
        if not self.track_files:
            return None
        return await asyncio.to_thread(
            tracking.snapshot, cwd, self.max_tracked_files, 6, (self.outputs_dir,)
        )

    async def _files(
        self, result: ExecutionResult, cwd: str, before: tracking.Snapshot | None, out: _Output
    ) -> list[FileInfo]:
        def collect() -> list[FileInfo]:
            found: list[FileInfo] = []
            if before is not None:
                after = tracking.snapshot(cwd, self.max_tracked_files, 6, (self.outputs_dir,))
                for rel, change, size in tracking.changes(before, after):
                    info = tracking.file_info(
                        self.root_dir, os.path.join(cwd, rel), change, size, self.base_url
                    )
                    if info is not None:
                        found.append(info)
            folder = os.path.join(self.root_dir, self.outputs_dir, result.execution_id)
            for i, bundle in enumerate(out.results):
                for mime in tracking.IMAGE_EXTENSIONS:
                    if mime in bundle:
                        saved = tracking.save_image(folder, i, mime, bundle[mime])
                        if saved is not None:
                            info = tracking.file_info(
                                self.root_dir, saved[0], "output", saved[1], self.base_url
                            )
                            if info is not None:
                                found.append(info)
            return found

        try:
            return await asyncio.to_thread(collect)
        except OSError:
            self.log.exception("Could not list the files of execution %s", result.execution_id)
            return []

    def _finish(self, result: ExecutionResult, out: _Output, start: float) -> None:
        if result.status == "running":
            result.status = "error" if result.error else "ok"
        result.output = out.text(out.output)
        result.stdout = out.text(out.streams["stdout"])
        result.stderr = out.text(out.streams["stderr"])
        result.results = out.results
        result.truncated = out.truncated
        result.finished_at = _now()
        result.duration_seconds = round(time.monotonic() - start, 4)
        if result.cpu_seconds is None:  # the kernel's CPU time is not knowable: its wall time
            result.cpu_seconds, result.cpu_source = result.duration_seconds, "wall"
        error = result.error
        origin = result.origin.split(":", 1)[0]  # agent:<name> -> agent: bounded label values
        EXECUTE_SECONDS.labels(result.status, origin).observe(result.duration_seconds)
        if error is not None and error.limit:
            SANDBOX_LIMIT_HITS.labels(error.limit).inc()
        self.audit.append(
            {
                "event": "finished",
                "time": result.finished_at,
                "execution_id": result.execution_id,
                "actor": result.actor,
                "origin": result.origin,
                **_source(result),
                "session": result.session,
                "status": result.status,
                "duration_seconds": result.duration_seconds,
                "cpu_seconds": result.cpu_seconds,
                "cpu_source": result.cpu_source,
                "error": error.name if error else None,
                "limit": error.limit if error else None,
                "timeout_action": result.timeout.action if result.timeout else None,
                "files": [f.path for f in result.files],
            }
        )

    def _kernel_cpu(self, kernel_id: str) -> float | None:
        """CPU seconds (user + system) the kernel's process tree has used so far: its own,
        its live children's and the children it reaped; None where its pid is not known."""
        try:
            prov = self.kernel_manager.get_kernel(kernel_id).provisioner
            pid = getattr(prov, "pid", None) if prov is not None else None
            if not pid:
                return None
            root = psutil.Process(int(pid))
            t = root.cpu_times()
            total = t.user + t.system + t.children_user + t.children_system
            for child in root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    c = child.cpu_times()
                    total += c.user + c.system
            return float(total)
        except (KeyError, psutil.Error):
            return None

    def _measure_cpu(self, execution: _Execution) -> None:
        """The execution's CPU seconds: the kernel's CPU time after it less before it."""
        after = self._kernel_cpu(execution.result.session)
        if execution.cpu_before is not None and after is not None and after >= execution.cpu_before:
            execution.result.cpu_seconds = round(after - execution.cpu_before, 4)
            execution.result.cpu_source = "kernel"

    def _remember(self, execution: _Execution) -> None:
        self._executions[execution.result.execution_id] = execution
        self._forget()

    def _forget(self) -> None:
        """Drop the oldest finished executions past ``keep_results`` or ``keep_chars``."""
        held = sum(e.size for e in self._executions.values())
        for eid, execution in list(self._executions.items()):
            if len(self._executions) <= self.keep_results and held <= self.keep_chars:
                break
            if execution.done.is_set():
                held -= execution.size
                del self._executions[eid]


def _source(result: ExecutionResult) -> dict[str, str]:
    """The conversation or run an execution came from, for its audit records."""
    out = {"conversation_id": result.conversation_id, "run_id": result.run_id}
    return {k: v for k, v in out.items() if v}


def _limit_of(name: str, value: str) -> str | None:
    """The sandbox limit an exception from the kernel points at, if any."""
    if name == "MemoryError":
        return "memory"
    if "File too large" in value or "Errno 27" in value:
        return "file_size"
    if "Resource temporarily unavailable" in value or "Too many open files" in value:
        return "processes" if "Resource" in value else "open_files"
    return None
