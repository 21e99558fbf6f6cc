"""The agents feature's pydantic models: an agent and its tools as a notebook defines them, a run's
request, and the typed messages of a run."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ToolSpec(BaseModel):
    """One tool: a function defined in the agent notebook."""

    name: str
    description: str = ""
    parameters: dict[str, Any]
    source: str  # the function's definition, as written
    cell: int  # index of the code cell that defines it; -1: a plugin's tool

    def openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


class AgentSpec(BaseModel):
    """An agent, as its notebook defines it."""

    name: str
    description: str = ""
    model: str | None = None
    role: str = "worker"
    max_steps: int = Field(6, ge=1, le=100)
    max_tokens: int = Field(4000, ge=1)
    timeout: float = Field(300, gt=0)
    temperature: float = Field(0.2, ge=0, le=2)
    require_tool: bool = False  # the first step must call a tool (not final_answer)
    #: after this many tool calls the agent is offered only final_answer (None: no limit)
    max_tool_calls: int | None = Field(None, ge=0, le=100)
    handoff: str | None = None  # the agent that takes over this one's answer (a declared graph)
    #: workers that get this agent's answer at once and run in parallel; their answers, gathered,
    #: go to ``handoff`` (or are the run's answer)
    fan_out: Annotated[
        list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]], Field(max_length=8)
    ] = []
    #: MCP servers the user configured (/api/v1/mcp/servers) whose tools this agent may call,
    #: as ``<server>__<tool>``; they run in the user's server, not in the kernel
    mcp: list[str] = []
    instructions: str = ""
    tools: list[ToolSpec] = []
    #: tools from plugins (the ``oraculo.agent_tools`` entry point group) this agent uses
    use_tools: list[str] = []
    setup: list[str] = []  # code cells' top-level imports, run before the first tool call
    path: str = ""
    # from the file system, never from the notebook's metadata (see agents.trust)
    owner: str = ""  # the hub user (or OS account) that owns the file
    shared: bool = False  # from a group folder: runs only once the runner approved its digest
    published: bool = False  # a release under the group folder's published/; owner = publisher
    group: str = ""  # the group folder it came from
    version: str = ""  # the digest's first 12 hex digits
    sha256: str = ""  # of the file's bytes
    mtime: float = 0.0

    def summary(self) -> dict[str, Any]:
        return self.model_dump(
            include={
                "name",
                "description",
                "model",
                "role",
                "path",
                "owner",
                "shared",
                "published",
                "group",
                "version",
                "sha256",
                "mtime",
                "max_steps",
                "max_tokens",
                "timeout",
                "handoff",
                "fan_out",
                "max_tool_calls",
            }
        ) | {"tools": [t.name for t in self.tools]}


Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class RunRequest(BaseModel):
    """Body of ``POST /api/v1/agents/runs``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    goal: Annotated[str, Field(min_length=1, max_length=20_000)]
    agents: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=64)]], Field(min_length=1, max_length=8)
    ]
    max_steps: Annotated[int, Field(ge=1, le=200)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    timeout: Annotated[float, Field(gt=0, le=24 * 3600)] | None = None
    session: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    #: the digest(s) of shared agents the runner approves (the catalogue's sha256)
    approve: Digest | Annotated[list[Digest], Field(max_length=8)] | None = None


class PublishRequest(BaseModel):
    """Body of ``POST /api/v1/agents/{name}/publish``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    #: the group folder (its path, or its name under the shared folders); default: the one the
    #: agent is in, or the user's only group folder
    group: Annotated[str, Field(min_length=1, max_length=1024)] | None = None


class ShareRequest(BaseModel):
    """Body of ``POST /api/v1/agents/runs/{id}/share``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    #: the group folder (path or name); default: the shared agent's, or the user's only one
    group: Annotated[str, Field(min_length=1, max_length=1024)] | None = None


class NoteRequest(BaseModel):
    """Body of ``POST /api/v1/agents/runs/{id}/messages``: a message to a running agent."""

    model_config = ConfigDict(extra="forbid", strict=True)

    content: Annotated[str, Field(min_length=1, max_length=4000)]
    #: the agent it is for; default: the one whose turn it is
    to: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class AgentMessage(BaseModel):
    """One typed message of a run: the goal or an answer handed over (``input``), an agent's
    reply with its tool calls (``reply``), a tool's result back to the agent (``tool``), or a
    message sent to the running agent (``note``)."""

    seq: int
    time: str
    kind: Literal["input", "reply", "tool", "note"]
    sender: str = Field(serialization_alias="from")
    to: str
    content: str | None = None
    tool_calls: list[dict[str, Any]] = []
    tool_call_id: str | None = None
    error: dict[str, Any] | None = None
