"""The chat feature's pydantic models: an OpenAI chat-completions request (with Oráculo's extra
fields), its messages, and the bodies of the conversation routes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from oraculo.models.protocol import (
    NamedToolChoice,
    ResponseFormat,
    ToolCall,
    ToolChoice,
    ToolDefinition,
)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: Annotated[str, Field(max_length=200_000)]


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[str, Field(max_length=200_000)] | list[TextPart] | None = None
    name: str | None = None
    #: An assistant turn that called tools, and a tool turn's answer to one of those calls.
    tool_calls: Annotated[list[ToolCall], Field(max_length=128)] | None = None
    tool_call_id: Annotated[str, Field(min_length=1, max_length=200)] | None = None

    @model_validator(mode="after")
    def _tool_fields(self) -> Message:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message, and only a tool message, needs tool_call_id")
        return self

    def wire(self) -> dict[str, Any]:
        """The message as the model service takes it (text content, tool fields kept)."""
        out: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls is not None:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatContextRequest(_Strict):
    """``context`` extra field: what of the workspace to send besides memories and passages."""

    notebook: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    kernel: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    #: A variables summary the client made itself (the ``%%chat`` magic does, in the kernel).
    variables: Annotated[list[dict[str, Any]], Field(max_length=200)] | None = None
    #: Search the user's memories and workspace files (false: send neither, cite nothing).
    workspace: bool = True
    #: Send what the question's ``@name``s name: a variable of the notebook's kernel, else a
    #: file under the server's root (the Chat panel asks for this).
    mentions: bool = False


class ChatRequest(_Strict):
    """OpenAI's chat-completions request, plus ``conversation_id``, ``context`` and ``store``.

    ``tools``, ``tool_choice``, ``parallel_tool_calls`` and ``response_format`` go to the model
    service as they are (it enforces them by constrained decoding). ``store`` is false unless
    asked, as in OpenAI's API; the panels and the magics ask.
    """

    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    messages: Annotated[list[Message], Field(min_length=1, max_length=1000)]
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[ToolDefinition], Field(max_length=128)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # extra fields
    conversation_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = None
    context: ChatContextRequest | None = None
    store: bool = False

    @model_validator(mode="after")
    def _tools_consistent(self) -> ChatRequest:
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tool names must be unique")
        choice = self.tool_choice
        if choice not in (None, "none", "auto") and not self.tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice names {choice.function.name!r}, which is not a tool")
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is None:
            raise ValueError("a json_schema response_format needs json_schema")
        if fmt is not None and fmt.type != "text" and self.tools and choice != "none":
            raise ValueError("use either tools or a JSON response_format, not both")
        return self

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if v is not None and any(s == "" for s in ([v] if isinstance(v, str) else v)):
            raise ValueError("stop sequences must not be empty")
        return v

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def _notebook_path(path: str) -> str:
    if path.startswith("/") or ".." in path.split("/") or not path.endswith(".ipynb"):
        raise ValueError("a notebook path is relative, without '..', and ends in .ipynb")
    return path


NotebookPath = Annotated[str, Field(min_length=7, max_length=1024), AfterValidator(_notebook_path)]


class ConversationCreate(_Strict):
    title: Annotated[str, Field(max_length=500)] = ""
    #: Bind the conversation to this notebook (a path under the server's root).
    notebook: NotebookPath | None = None


class ConversationUpdate(_Strict):
    """A new title, a new binding (a notebook path, or null to unbind), or both."""

    title: Annotated[str, Field(min_length=1, max_length=500)] | None = None
    notebook: NotebookPath | None = None

    @model_validator(mode="after")
    def _something(self) -> ConversationUpdate:
        if not self.model_fields_set & {"title", "notebook"}:
            raise ValueError("give a title or a notebook")
        if "title" in self.model_fields_set and self.title is None:
            raise ValueError("title cannot be null")
        return self


class CellInsert(_Strict):
    """Body of ``POST /api/v1/chat/cells``: code for the open notebook ``notebook``."""

    notebook: NotebookPath
    code: Annotated[str, Field(min_length=1, max_length=100_000)]
    #: A new cell below the active one, or the active cell's source replaced.
    mode: Literal["below", "replace"] = "below"
