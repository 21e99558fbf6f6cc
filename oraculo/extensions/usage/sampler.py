"""Kernel compute, measured while kernels run, and reported to the model service's usage store.

Every ``interval`` seconds the sampler reads each running kernel's CPU time (its process tree:
the kernel, what it started, and what those have already reaped) and, where the server was
given a GPU, whether the tree holds GPU memory; what changed since the last sample is posted to
``POST v1/usage/kernels`` with the server's own credential, so it counts for this server's user
(and their groups) in the same store as tokens and voice. A long cell is counted as it runs,
not when it ends. A report that fails is kept and sent with the next one (up to a bound).

What this does not see: CPU used by a process that left the kernel's tree without being reaped
by it (a daemon), and the last partial interval of a kernel that died between two samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import time
from typing import Any

import psutil
from traitlets import Any as AnyTrait
from traitlets import Float, Instance, default
from traitlets.config import LoggingConfigurable

from oraculo.extensions.base.errors import BadRequest, OraculoError, Unavailable
from oraculo.extensions.base.modelclient import ModelClient, ModelServiceError
from oraculo.kernels import gpu


class BudgetExceeded(OraculoError):
    """The model service says a budget for this work is spent (its message names it)."""

    status = 429
    type = "budget_exceeded"
    reason = "Over budget"


def tree_cpu_seconds(pid: int) -> tuple[float, list[int]]:
    """CPU seconds (user + system) of ``pid``, its live descendants and the children it reaped;
    and the pids of the tree."""
    root = psutil.Process(pid)
    with root.oneshot():
        t = root.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
    pids = [pid]
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            ct = child.cpu_times()
            total += ct.user + ct.system
            pids.append(child.pid)
    return total, pids


@dataclasses.dataclass
class _Seen:
    pid: int
    cpu: float
    at: float


class KernelSampler(LoggingConfigurable):
    """Samples the server's kernels and reports their compute; asks for admission."""

    kernel_manager = AnyTrait(help="The server's MappingKernelManager.")
    models = Instance(
        ModelClient,
        allow_none=True,
        help="""The extension's one client of the model service; its credential is the server's
        own, so reports and budget checks count for this server's user.""",
    )
    interval = Float(
        config=True,
        help="""Seconds between two samples of the kernels' CPU and GPU time. Default
        ORACULO_USAGE_SAMPLE_SECONDS or 10.""",
    )
    min_report_seconds = Float(
        0.05, config=True, help="Compute below this (per kernel) waits for the next report."
    )
    running_every = Float(
        300.0,
        config=True,
        help="""Seconds after which the list of running kernels (for the operator's dashboard)
        is sent again though it did not change (a restarted model service learns it again).""",
    )

    @default("interval")
    def _default_interval(self) -> float:
        return float(os.environ.get("ORACULO_USAGE_SAMPLE_SECONDS", "10"))

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._seen: dict[str, _Seen] = {}
        self._pending: dict[str, dict[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._running: list[dict[str, str]] = []
        self._sent_running: list[dict[str, str]] | None = None
        self._sent_at = 0.0

    @property
    def configured(self) -> bool:
        return self.models is not None and self.models.configured

    # --- sampling ----------------------------------------------------------------------------

    def _kernels(self) -> list[tuple[str, str, int]]:
        out = []
        km = self.kernel_manager
        for kernel_id in list(km.list_kernel_ids()) if km is not None else []:
            with contextlib.suppress(Exception):
                kernel = km.get_kernel(kernel_id)
                pid = getattr(kernel.provisioner, "pid", None) if kernel.provisioner else None
                if pid:
                    out.append((kernel_id, kernel.kernel_name or "kernel", int(pid)))
        return out

    def sample(self, now: float | None = None) -> None:
        """Add what each kernel used since the last sample to the pending report (blocking:
        psutil and nvidia-smi; run it in a thread)."""
        now = now or time.monotonic()
        kernels = self._kernels()
        self._running = [{"kernel_id": k, "kernel_name": name} for k, name, _ in kernels]
        gpu_pids = gpu.process_gpu_memory() if os.environ.get("CUDA_VISIBLE_DEVICES") else {}
        for kernel_id, name, pid in kernels:
            try:
                cpu, pids = tree_cpu_seconds(pid)
            except psutil.Error:
                continue
            seen = self._seen.get(kernel_id)
            if seen is None or seen.pid != pid:  # new, or restarted: count from its start
                seen = _Seen(pid, 0.0, now)
            d_cpu = max(0.0, cpu - seen.cpu)
            d_gpu = (now - seen.at) if any(gpu_pids.get(p, 0) > 0 for p in pids) else 0.0
            self._seen[kernel_id] = _Seen(pid, cpu, now)
            entry = self._pending.setdefault(
                kernel_id,
                {
                    "kernel_id": kernel_id,
                    "kernel_name": name,
                    "cpu_seconds": 0.0,
                    "gpu_seconds": 0.0,
                },
            )
            entry["cpu_seconds"] += d_cpu
            entry["gpu_seconds"] += d_gpu
        alive = {k for k, _, _ in kernels}
        for gone in set(self._seen) - alive:
            del self._seen[gone]

    async def report(self) -> int:
        """Sample now and send what is pending; returns how many kernels were reported."""
        async with self._lock:
            await asyncio.to_thread(self.sample)
            ready = [
                dict(
                    e,
                    cpu_seconds=round(e["cpu_seconds"], 3),
                    gpu_seconds=round(e["gpu_seconds"], 3),
                )
                for e in self._pending.values()
                if e["cpu_seconds"] >= self.min_report_seconds or e["gpu_seconds"] > 0
            ]
            running = list(self._running)
            now = time.monotonic()
            due = running != self._sent_running or now - self._sent_at >= self.running_every
            if not (ready or due) or self.models is None or not self.configured:
                return 0
            body = {
                "samples": ready,
                "running": running,
                "server": os.environ.get("JUPYTERHUB_SERVER_NAME", ""),
            }
            try:
                await self.models.request("POST", "v1/usage/kernels", json=body, timeout=10.0)
            except Unavailable as err:
                self.log.warning("could not report kernel usage: %s", err.message)
                return 0
            except OraculoError as err:
                self.log.warning("kernel usage report refused: HTTP %d", err.status)
                if err.status < 500:
                    self._pending.clear()  # it will never be taken: do not resend it forever
                return 0
            self._sent_running, self._sent_at = running, now
            for sent in ready:
                self._pending.pop(sent["kernel_id"], None)
            return len(ready)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.report()
            except Exception:
                self.log.exception("kernel usage sample failed")

    def start(self) -> None:
        if self._task is None and self.configured and self.interval > 0:
            self._task = asyncio.ensure_future(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.report()  # what ran since the last sample

    # --- admission ---------------------------------------------------------------------------

    async def admit(self, units: tuple[str, ...] = ("cpu_seconds", "gpu_seconds")) -> None:
        """Refuse (429, the model service's message) when a budget for ``units`` is spent.
        What the kernels used since the last sample is reported first, so the answer counts it.
        Without a model service, or when it does not answer, the work is let through."""
        if self.models is None or not self.configured:
            return
        try:
            await self.report()
        except Exception:
            self.log.exception("kernel usage sample failed")
        try:
            await self.models.request(
                "GET", "v1/budget", params={"units": ",".join(units)}, timeout=10.0
            )
        except Unavailable as e:
            self.log.warning("budget check failed (%s): letting the work through", e.message)
        except OraculoError as e:
            if e.status == 429:
                raise _refusal(e) from e
            self.log.warning("budget check answered HTTP %d: letting the work through", e.status)

    # --- what the Usage panel shows ----------------------------------------------------------

    async def _operator(self) -> str | None:
        """The operator's dashboard's address when this user may read everyone's usage: the
        model service answers its operator-only list of every budget to the server's token (whose
        usage read-all scope the hub keeps only for users who hold it themselves); else None."""
        assert self.models is not None
        try:
            await self.models.request("GET", "v1/budgets")
        except ModelServiceError as e:
            if e.status == 403:
                return None
            raise
        return os.environ.get("JUPYTERHUB_BASE_URL", "/") + DASHBOARD_PATH

    async def overview(self, period: str) -> dict[str, Any]:
        """This user's usage this ``period`` (day, week or month): totals per unit and model,
        budgets with what is used and when they reset, and the period's usage rows."""
        if period not in ("day", "week", "month"):
            raise BadRequest("period must be day, week or month")
        if self.models is None or not self.configured:
            raise Unavailable("No model service is configured for this server.")
        await self.report()
        models = self.models
        # the user's own usage, named: an operator's server token may read everyone's, and
        # without a name the model service would answer everyone's totals
        mine = {"period": period}
        if os.environ.get("JUPYTERHUB_USER"):
            mine["user"] = os.environ["JUPYTERHUB_USER"]
        try:
            summary, budget, operator = await asyncio.gather(
                models.request("GET", "v1/usage/summary", params=mine),
                models.request("GET", "v1/budget"),
                self._operator(),
            )
            since = summary.json().get("since")
            events = await models.request(
                "GET", "v1/usage/events", params={"since": _unix(since)} if since else {}
            )
        except ModelServiceError as e:
            raise _refusal(e) from e
        return {
            "period": period,
            "operator_dashboard": operator,
            "summary": summary.json(),
            "budgets": budget.json().get("data", []),
            "events": {k: events.json()[k] for k in ("columns", "rows", "truncated")},
        }


#: The operator's dashboard, under the hub's base URL (the hub service ``usage-dashboard``:
#: oraculo.hub.config.DASHBOARD).
DASHBOARD_PATH = "services/usage-dashboard/"


def _refusal(error: OraculoError) -> OraculoError:
    """A spent budget as :class:`BudgetExceeded` (its message names the budget); any other
    refusal of the model service as it came."""
    if error.status == 429 and error.type == "budget_exceeded":
        return BudgetExceeded(error.message)
    return error


def _unix(iso: str) -> float:
    return dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
