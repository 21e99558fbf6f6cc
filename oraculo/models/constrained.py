"""Constrained decoding: ``response_format`` and ``tools`` enforced on the logits.

A request that asks for JSON (``response_format`` ``json_object`` or ``json_schema``) or that offers
``tools`` gets a grammar, compiled by xgrammar against the model's vocabulary. The engine asks the
sequence's :class:`TokenConstraint` to mask each step's logits to the tokens the grammar allows, and
advances it with the token it sampled; so even a 135M model can only write JSON that parses and
validates, and tool calls whose name is one of the tools and whose arguments match its schema.

Tool calls are written as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the Hermes /
Qwen convention, which small instruct models have seen): an xgrammar structural tag lets free text
through until the trigger ``<tool_call>`` and then forces a whole call (``tool_choice`` ``auto``);
``required`` or a named function allows nothing but calls, one per line; ``none`` disables the
tools. The text is turned back into OpenAI's ``tool_calls`` shape (``finish_reason: "tool_calls"``)
by :func:`final_message`; streamed, :mod:`.toolstream` sends each call as the model writes it.

Why xgrammar: it ships CPU wheels, compiles a schema in milliseconds, and fills a 49k-token bitmask
per step in microseconds (lm-format-enforcer walks the vocabulary in Python; outlines-core builds a
full regex index per schema, seconds for a tool set).
"""

from __future__ import annotations

import importlib.util
import json
import re
import uuid
from typing import TYPE_CHECKING, Any

from .errors import InvalidRequest
from .protocol import (
    ChatCompletionRequest,
    FunctionCall,
    NamedToolChoice,
    ToolCall,
    ToolDefinition,
)

if TYPE_CHECKING:
    import torch

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


# -- what a request asks for -------------------------------------------------------------------


def active_tools(request: ChatCompletionRequest) -> list[ToolDefinition]:
    """The tools the model may call for this request (none when ``tool_choice`` is ``none``)."""
    tools = request.tools or []
    choice = request.tool_choice
    if not tools or choice == "none":
        return []
    if isinstance(choice, NamedToolChoice):
        named = [t for t in tools if t.function.name == choice.function.name]
        if not named:
            raise InvalidRequest(
                f"tool_choice names '{choice.function.name}', which is not in 'tools'.",
                param="tool_choice",
            )
        return named
    return tools


def wants_tool_calls(request: ChatCompletionRequest) -> bool:
    return bool(active_tools(request))


def validate(request: ChatCompletionRequest) -> None:
    """Checks that need more than the wire model (raise 400 before anything is queued)."""
    if request.tool_choice not in (None, "none", "auto") and not request.tools:
        raise InvalidRequest("tool_choice needs 'tools'.", param="tool_choice")
    names = [t.function.name for t in request.tools or []]
    if len(set(names)) != len(names):
        raise InvalidRequest("Tool names must be unique.", param="tools")
    active_tools(request)
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is None:
        raise InvalidRequest(
            "response_format of type json_schema needs 'json_schema'.",
            param="response_format.json_schema",
        )
    if fmt is not None and fmt.type != "text" and wants_tool_calls(request):
        raise InvalidRequest(
            "Use either tools or a JSON response_format, not both.", param="response_format"
        )


def _parameters(tool: ToolDefinition) -> dict[str, Any]:
    return tool.function.parameters or {"type": "object", "properties": {}}


def structural_tag(request: ChatCompletionRequest) -> dict[str, Any] | None:
    """The xgrammar structural tag for the request's tools, or None when it offers none."""
    tools = active_tools(request)
    if not tools:
        return None
    forced = request.tool_choice == "required" or isinstance(request.tool_choice, NamedToolChoice)
    tags = [
        {
            "type": "tag",
            "begin": f'{TOOL_OPEN}{{"name": "{t.function.name}", "arguments": ',
            "content": {"type": "json_schema", "json_schema": _parameters(t)},
            "end": f"}}{TOOL_CLOSE}",
        }
        for t in tools
    ]
    single = request.parallel_tool_calls is False or isinstance(
        request.tool_choice, NamedToolChoice
    )
    if forced:  # calls only, one per line: no free text before, between or after them
        fmt = {
            "type": "tags_with_separator",
            "separator": "\n",
            "tags": tags,
            "at_least_one": True,
            "stop_after_first": single,
        }
    else:
        fmt = {
            "type": "triggered_tags",
            "triggers": [TOOL_OPEN],
            "tags": tags,
            "at_least_one": False,
            "stop_after_first": single,
        }
    return {"type": "structural_tag", "format": fmt}


def json_schema(request: ChatCompletionRequest) -> dict[str, Any] | None:
    """The schema a JSON ``response_format`` asks for ({} for any JSON object), else None."""
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    assert fmt.json_schema is not None
    return fmt.json_schema.schema_ or {"type": "object"}


# -- prompt ------------------------------------------------------------------------------------


def tools_prompt(tools: list[ToolDefinition]) -> str:
    """System text telling the model which tools it has and how to call them."""
    lines = [
        "You can call these tools. To call one, write",
        f'{TOOL_OPEN}{{"name": <tool name>, "arguments": <JSON object>}}{TOOL_CLOSE}',
        "Tools:",
    ]
    for t in tools:
        spec = {"name": t.function.name, "parameters": _parameters(t)}
        if t.function.description:
            spec["description"] = t.function.description
        lines.append(json.dumps(spec, ensure_ascii=False))
    return "\n".join(lines)


def chat_messages(request: ChatCompletionRequest) -> list[dict[str, str]]:
    """The request's messages as role/content pairs for a plain chat template.

    Assistant tool calls become ``<tool_call>`` text and tool results ``tool`` turns; the tools
    and the wanted JSON schema are described in a system message (constraining the logits makes
    the output valid, telling the model makes it sensible).
    """
    out: list[dict[str, str]] = []
    for m in request.messages:
        role = "system" if m.role == "developer" else m.role
        text = m.text()
        for call in m.tool_calls or []:
            text += (
                f'{TOOL_OPEN}{{"name": "{call.function.name}", '
                f'"arguments": {call.function.arguments}}}{TOOL_CLOSE}'
            )
        out.append({"role": role, "content": text})
    extra = ""
    tools = active_tools(request)
    schema = json_schema(request)
    if tools:
        extra = tools_prompt(tools)
    elif schema is not None:
        extra = "Answer with JSON only, matching this schema: " + json.dumps(schema)
    if extra:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{extra}"}
        else:
            out.insert(0, {"role": "system", "content": extra})
    return out


# -- output ------------------------------------------------------------------------------------

_CALL = re.compile(re.escape(TOOL_OPEN) + r"(.*?)" + re.escape(TOOL_CLOSE), re.S)


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """Split generated text into its free text and its complete ``<tool_call>`` blocks."""
    calls: list[ToolCall] = []
    for match in _CALL.finditer(text):
        try:
            data = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            continue
        args = data.get("arguments", {})
        calls.append(
            ToolCall(
                id=f"call_{uuid.uuid4().hex[:24]}",
                function=FunctionCall(
                    name=data["name"], arguments=json.dumps(args, ensure_ascii=False)
                ),
            )
        )
    content = _CALL.sub("", text).strip() if calls else text
    return content, calls


def final_message(
    request: ChatCompletionRequest, text: str, finish_reason: str
) -> tuple[dict[str, Any], str]:
    """The assistant message (OpenAI shape) for a finished completion, and its finish reason."""
    if not wants_tool_calls(request):
        return {"role": "assistant", "content": text}, finish_reason
    content, calls = parse_tool_calls(text)
    if not calls:
        return {"role": "assistant", "content": text}, finish_reason
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content or None,
        "tool_calls": [c.model_dump() for c in calls],
    }
    return message, "tool_calls" if finish_reason == "stop" else finish_reason


# -- the logits side ---------------------------------------------------------------------------


class TokenConstraint:
    """One sequence's grammar state: masks its logits and follows the tokens it samples.

    Called on the engine thread only (one sequence is never stepped concurrently).
    """

    def __init__(self, compiled: Any, vocab_size: int) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.vocab_size = vocab_size
        self._backend: Any = ""  # one of xgrammar's backend names, picked at the first mask

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits of every token the grammar forbids next to -inf, in place.

        ``logits`` is one row ``[V]`` (a view into the batch's logits) on any device."""
        self.matcher.fill_next_token_bitmask(self.bitmask)
        row = logits[None, : self.vocab_size]
        if not self._backend:
            self._backend = _mask_backend(logits.device.type)
        self._xgr.apply_token_bitmask_inplace(
            row, self.bitmask.to(logits.device), backend=self._backend
        )
        if logits.shape[0] > self.vocab_size:  # padded embedding rows are never valid
            logits[self.vocab_size :] = float("-inf")

    def advance(self, token: int) -> bool:
        """Feed the sampled token; False if the grammar refuses it (a bug, never expected)."""
        return bool(self.matcher.accept_token(token))

    @property
    def finished(self) -> bool:
        return bool(self.matcher.is_terminated())


def _mask_backend(device_type: str) -> str:
    """xgrammar's kernel for a device: its C++ one on CPU; on CUDA its Triton kernel where
    Triton is installed (it comes with CUDA builds of torch), else plain torch ops."""
    if device_type == "cpu":
        return "cpu"
    if device_type == "cuda" and importlib.util.find_spec("triton") is not None:
        return "triton"
    return "torch_native"


class Grammars:
    """Compiles and caches grammars for one tokenizer (xgrammar's compiler caches by input)."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        import xgrammar as xgr

        # built at load time, before the engine thread shares the tokenizer (a fraction of a second)
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.compiler = xgr.GrammarCompiler(info)
        self.vocab_size = vocab_size

    def constraint(self, request: ChatCompletionRequest) -> TokenConstraint | None:
        """A fresh constraint for this request, or None when it asks for free text.

        Blocking (compiling takes milliseconds, more for large schemas): call it off the event
        loop."""
        tag = structural_tag(request)
        schema = json_schema(request)
        if tag is None and schema is None:
            return None
        compiler = self.compiler
        try:
            if tag is not None:
                compiled = compiler.compile_structural_tag(tag)
            else:
                compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
        except Exception as e:  # xgrammar raises RuntimeError/ValueError on schemas it rejects
            param = "tools" if tag is not None else "response_format"
            raise InvalidRequest(
                f"This schema cannot be enforced: {str(e).splitlines()[0][:300]}", param=param
            ) from None
        return TokenConstraint(compiled, self.vocab_size)
