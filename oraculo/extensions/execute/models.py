"""The execute feature's pydantic models: the request, its result, and the files it made."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

#: What a conversation's or a run's id looks like (the chat and agents features make them).
SOURCE_ID = r"^[A-Za-z0-9_-]{1,64}$"


class FileInfo(BaseModel):
    """A file an execution created or changed (or an image it displayed, saved by us)."""

    path: str  # relative to the server's root directory, as the contents API wants it
    size: int
    type: str  # MIME type, guessed from the name
    change: str  # "created", "modified" or "output" (an image result saved as a file)
    url: str  # the contents API model of the file
    download_url: str  # the file's bytes


class ExecuteRequest(BaseModel):
    """Body of ``POST /api/v1/execute``."""

    model_config = {"extra": "forbid"}

    code: str = Field(max_length=1_000_000)
    language: str = "python"
    timeout: float | None = Field(None, gt=0, description="Seconds; default: the user's default.")
    session: str | None = Field(None, min_length=1, max_length=1024)
    detach: bool = False
    #: Who the execution is on behalf of, for the audit: a plain API call (the default), or
    #: "Run" under a reply of the chat conversation ``conversation_id``.
    origin: Literal["api", "chat"] = "api"
    conversation_id: str | None = Field(None, pattern=SOURCE_ID)

    @model_validator(mode="after")
    def _conversation_with_chat(self) -> ExecuteRequest:
        if (self.origin == "chat") != (self.conversation_id is not None):
            raise ValueError("conversation_id goes with origin 'chat', and only with it")
        return self


class ExecutionError(BaseModel):
    name: str
    value: str
    traceback: list[str] = []
    #: The sandbox limit that ended the code, when one did: memory, file_size, processes,
    #: cpu_time, timeout.
    limit: str | None = None


class TimeoutInfo(BaseModel):
    seconds: float
    action: Literal["interrupted", "restarted"]


class ExecutionResult(BaseModel):
    """What ``POST /api/v1/execute`` and ``GET /api/v1/execute/{id}`` answer."""

    execution_id: str
    status: Literal["running", "ok", "error", "timeout", "cancelled"]
    language: str
    session: str  # the kernel id
    origin: str
    actor: str
    conversation_id: str | None = None  # origin "chat": the conversation the code came from
    run_id: str | None = None  # origin "agent:...": the agent run
    started_at: str
    finished_at: str | None = None
    duration_seconds: float | None = None
    # the kernel's CPU seconds over the execution ("kernel": its process tree's CPU time
    # after less before), or its wall time where that is not knowable ("wall")
    cpu_seconds: float | None = None
    cpu_source: Literal["kernel", "wall"] | None = None
    output: str = ""  # stdout and stderr together, in the order they came
    stdout: str = ""
    stderr: str = ""
    results: list[dict[str, Any]] = []  # mime bundles
    files: list[FileInfo] = []
    error: ExecutionError | None = None
    timeout: TimeoutInfo | None = None
    truncated: bool = False


class WaitQuery(BaseModel):
    """The query of ``GET /api/v1/execute/{id}``."""

    wait: float = Field(0, ge=0, description="Seconds to wait for the end (at most 60).")


class AuditQuery(BaseModel):
    """The query of ``GET /api/v1/execute/audit``."""

    limit: int = Field(1000, description="Most recent records to return.")
    execution_id: str | None = Field(None, description="Only this execution's records.")
    format: Literal["json", "jsonl"] = Field("json", description="jsonl: a download.")


class AuditRecords(BaseModel):
    """``GET /api/v1/execute/audit``."""

    records: list[dict[str, Any]]
