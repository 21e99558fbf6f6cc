"""The workspace as an MCP server: the user's kernels, memories, files and agents as tools.

:class:`WorkspaceMCP` builds an :class:`mcp.server.mcpserver.MCPServer` whose tools call the
services the other features hand over at connect time (execute, memory, agents) and the
server's contents manager, and runs the SDK's streamable HTTP session manager (stateless, JSON
answers) for the handler to pass requests to. Who may call it is decided before a request gets
here, by the hub (the user's hub token, ``access:servers!server=<user>/``); every tool acts as
the server's owner, in the owner's sandbox.

A tool that fails answers an MCP tool error (``isError: true``) with the service's message: a
bad path, an unknown notebook or agent, a timeout over the user's limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import nbformat
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from pydantic import Field
from traitlets import Any as AnyTrait
from traitlets import Int, Unicode
from traitlets.config import LoggingConfigurable

from oraculo.extensions.agents.models import RunRequest
from oraculo.extensions.base.errors import OraculoError
from oraculo.extensions.mcp.models import (
    ACTOR_KEY,
    AgentRun,
    CodeResult,
    FileEntry,
    MemoryFound,
    NotebookCell,
    PassageFound,
    Written,
)

Path = Annotated[str, Field(max_length=1024, description="Relative to the home folder.")]
Query = Annotated[str, Field(min_length=1, max_length=2000)]
K = Annotated[int, Field(ge=1, le=50)]


def _output_text(output: dict[str, Any]) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        text = output.get("text", "")
        return "".join(text) if isinstance(text, list) else str(text)
    if kind == "error":
        return f"{output.get('ename', '')}: {output.get('evalue', '')}"
    data = output.get("data", {}).get("text/plain", "")
    return "".join(data) if isinstance(data, list) else str(data)


def _modified(model: dict[str, Any]) -> str:
    value = model.get("last_modified")
    iso = getattr(value, "isoformat", None)
    return str(iso()) if iso is not None else str(value or "")


class WorkspaceMCP(LoggingConfigurable):
    """The per-user MCP server and its streamable HTTP session manager."""

    owner = Unicode(help="The user whose workspace this is (the tools act as this user).")
    max_file_chars = Int(
        2_000_000, help="Largest text file or notebook read_file / read_notebook answer with."
    ).tag(config=True)
    max_results = Int(20, help="Most hits a search tool answers with.").tag(config=True)
    contents = AnyTrait(help="The server's contents manager (files and notebooks).")
    # Handed over by the feature at connect time; None when that feature did not load.
    execute = AnyTrait(None, allow_none=True, help="The execute feature's service.")
    memories = AnyTrait(None, allow_none=True, help="The memory feature's store.")
    index = AnyTrait(None, allow_none=True, help="The memory feature's workspace index.")
    agents = AnyTrait(None, allow_none=True, help="The agents feature's service.")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server: MCPServer[Any] = MCPServer(
            name="oraculo",
            title="Oráculo workspace",
            instructions=(
                "The user's Oráculo workspace: run code in their sandboxed kernel, search their "
                "memories and files, read and write files and notebooks, start agents."
            ),
        )
        self._add_tools()
        self.manager = StreamableHTTPSessionManager(
            app=self.server._lowlevel_server, json_response=True, stateless=True
        )
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Run the session manager in the background (on the server's loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        async with self.manager.run():
            self._ready.set()
            await self._stopping.wait()

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        """Answer one ASGI request on the MCP endpoint."""
        self.start()
        await asyncio.wait_for(self._ready.wait(), 10)
        await self.manager.handle_request(scope, receive, send)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)

    # --- tools --------------------------------------------------------------------------------

    def _add_tools(self) -> None:
        tools: list[Callable[..., Awaitable[Any]]] = [
            self.run_code,
            self.search_memories,
            self.search_workspace,
            self.list_files,
            self.read_file,
            self.write_file,
            self.read_notebook,
            self.write_notebook,
            self.list_agents,
            self.start_agent,
        ]
        for tool in tools:
            doc = inspect.cleandoc(tool.__doc__ or "")
            self.server.add_tool(tool, name=tool.__name__, description=doc)

    def _need(self, what: Any, name: str) -> Any:
        if what is None:
            raise ToolError(f"The {name} feature is not loaded in this workspace")
        return what

    async def run_code(
        self,
        code: Annotated[str, Field(max_length=1_000_000)],
        ctx: Context,
        language: Annotated[str, Field(description="python or bash")] = "python",
        notebook: Annotated[
            str | None,
            Field(max_length=1024, description="Run in this notebook's kernel (its path)."),
        ] = None,
        timeout: Annotated[float | None, Field(gt=0, description="Seconds.")] = None,
    ) -> CodeResult:
        """Run code in the user's sandboxed kernel (or a named notebook's kernel); the kernel's
        state is kept between calls. Answers stdout, stderr, results and any error."""
        execute = self._need(self.execute, "execute")
        try:
            r = await execute.execute(
                code,
                language=language,
                timeout=timeout,
                session=notebook,
                origin="mcp",
                actor=_actor(ctx) or self.owner,
            )
        except OraculoError as e:
            raise ToolError(e.message) from e
        error = f"{r.error.name}: {r.error.value}" if r.error else None
        return CodeResult(
            execution_id=r.execution_id,
            status=r.status,
            stdout=r.stdout,
            stderr=r.stderr,
            results=[str(b.get("text/plain", "")) for b in r.results if "text/plain" in b],
            error=error,
            kernel=r.session,
        )

    async def search_memories(self, query: Query, k: K = 5) -> list[MemoryFound]:
        """Search the user's memories (what they asked the assistant to remember)."""
        memories = self._need(self.memories, "memory")
        try:
            hits = await memories.search(query, k=min(k, self.max_results))
        except OraculoError as e:
            raise ToolError(e.message) from e
        return [
            MemoryFound(key=h.key, value=h.value, scope=h.scope, similarity=h.similarity)
            for h in hits
        ]

    async def search_workspace(self, query: Query, k: K = 5) -> list[PassageFound]:
        """Search the user's files and notebooks (the workspace index): passages, best first."""
        index = self._need(self.index, "memory")
        try:
            found = await index.search(query, k=min(k, self.max_results))
        except OraculoError as e:
            raise ToolError(e.message) from e
        return [
            PassageFound(
                path=p.path,
                cell=p.cell,
                start_line=p.start_line,
                end_line=p.end_line,
                text=p.text,
                similarity=p.similarity,
            )
            for p in found
        ]

    async def _get(self, path: str, **kw: Any) -> dict[str, Any]:
        try:
            model: dict[str, Any] = await _maybe(self.contents.get(path.strip("/"), **kw))
        except Exception as e:  # the contents manager's HTTPError: 404, 400, 403
            raise ToolError(_contents_message(e, path)) from e
        return model

    async def list_files(self, path: Path = "") -> list[FileEntry]:
        """List a folder of the user's home (hidden files are not shown)."""
        model = await self._get(path, content=True)
        if model["type"] != "directory":
            raise ToolError(f"{path} is not a folder")
        return [
            FileEntry(
                name=m["name"],
                path=m["path"],
                type=m["type"],
                size=m.get("size"),
                last_modified=_modified(m),
            )
            for m in sorted(model["content"], key=lambda m: m["name"])
        ]

    async def read_file(self, path: Path) -> str:
        """Read a text file of the user's home (a notebook reads as its JSON)."""
        model = await self._get(path, content=True, type="file", format="text")
        text = str(model["content"])
        if len(text) > self.max_file_chars:
            raise ToolError(f"{path} is over {self.max_file_chars} characters")
        return text

    async def write_file(
        self, path: Path, content: Annotated[str, Field(max_length=10_000_000)]
    ) -> Written:
        """Write a text file in the user's home (made, or replaced)."""
        model = {"type": "file", "format": "text", "content": content}
        return await self._save(path, model)

    async def read_notebook(self, path: Path) -> list[NotebookCell]:
        """Read a notebook's cells: their type, source and the text of their outputs."""
        model = await self._get(path, content=True, type="notebook")
        return [
            NotebookCell(
                cell_type=c["cell_type"],
                source=c["source"] if isinstance(c["source"], str) else "".join(c["source"]),
                outputs=[_output_text(o) for o in c.get("outputs", [])],
            )
            for c in model["content"]["cells"]
        ]

    async def write_notebook(
        self, path: Path, cells: Annotated[list[NotebookCell], Field(max_length=2000)]
    ) -> Written:
        """Write a notebook (made, or replaced) from cells of source; it opens in JupyterLab
        with the user's default kernel."""
        if not path.endswith(".ipynb"):
            raise ToolError("A notebook's path ends in .ipynb")
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {
            "name": "oraculo",
            "display_name": "Oráculo",
            "language": "python",
        }
        for c in cells:
            make = {
                "code": nbformat.v4.new_code_cell,
                "markdown": nbformat.v4.new_markdown_cell,
                "raw": nbformat.v4.new_raw_cell,
            }[c.cell_type]
            nb.cells.append(make(c.source))
        return await self._save(path, {"type": "notebook", "content": nb})

    async def _save(self, path: str, model: dict[str, Any]) -> Written:
        path = path.strip("/")
        try:
            # the folders on the way are made, as a person would make them in JupyterLab
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                folder = "/".join(parts[:i])
                if not await _maybe(self.contents.dir_exists(folder)):
                    await _maybe(self.contents.save({"type": "directory"}, folder))
            saved = await _maybe(self.contents.save(model, path))
        except Exception as e:
            raise ToolError(_contents_message(e, path)) from e
        return Written(
            path=saved["path"],
            type=saved["type"],
            size=saved.get("size"),
            last_modified=_modified(saved),
        )

    async def list_agents(self) -> list[dict[str, Any]]:
        """List the agents the user can run (their own, and shared ones)."""
        agents = self._need(self.agents, "agents")
        result: list[dict[str, Any]] = await agents.list_agents()
        return result

    async def start_agent(
        self,
        goal: Annotated[str, Field(min_length=1, max_length=20_000)],
        agents: Annotated[list[str], Field(min_length=1, max_length=8)],
        ctx: Context,
        max_steps: Annotated[int | None, Field(ge=1, le=200)] = None,
        approve: Annotated[
            list[str] | None,
            Field(description="sha256 of shared agents the user approves (see list_agents)."),
        ] = None,
    ) -> AgentRun:
        """Start a run of one agent (or a chain of agents) on a goal; it goes on in the
        background and shows in the Agents panel."""
        service = self._need(self.agents, "agents")
        try:
            req = RunRequest(goal=goal, agents=agents, max_steps=max_steps, approve=approve)
            run = await service.start(req, owner=_actor(ctx) or self.owner)
        except OraculoError as e:
            raise ToolError(e.message) from e
        return AgentRun(id=run["id"], status=run.get("status", ""), summary=run)


async def _maybe(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future) else value


def _actor(ctx: Context) -> str:
    """Who called: the handler puts the hub user in the request's ASGI scope."""
    with contextlib.suppress(Exception):
        request = ctx.request_context.request
        return str(request.scope.get(ACTOR_KEY, ""))  # type: ignore[union-attr]
    return ""


def _contents_message(e: Exception, path: str) -> str:
    status = getattr(e, "status_code", None)
    if status == 404:
        return f"No such file or folder: {path}"
    message = getattr(e, "log_message", None) or str(e) or type(e).__name__
    return f"{path}: {message}"


__all__ = ["ACTOR_KEY", "WorkspaceMCP"]
