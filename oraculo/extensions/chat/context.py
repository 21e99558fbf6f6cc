"""Context assembly: what is sent to the model with a chat request, and how it is fitted.

Order of the prompt: one system message (the configured system prompt, the client's own system
messages, then the context sections: kernel variables, notebook cells, memories, workspace
passages), then the conversation history, then the new turn.

Budget (see :meth:`ContextService.assemble`): the model's context window minus the reply's
tokens and a safety margin. The system prompt and the new turn always go (a new turn that does
not fit is a 400); context sections get at most ``context_share`` of what is left, filled in
priority order (kernel variables, newest notebook cells, best-ranked memories, best-ranked
passages), each item whole or not at all; the history gets the rest, newest turns first, and
the oldest turns are dropped.

Tokens are estimated, not counted (loading the model's tokenizer into every user's server would
cost seconds and hundreds of MB, and models are configuration): a word with its leading space
counts ``ceil(letters / 4)``, a run of white space 1, every digit, punctuation mark or other ASCII
character 1, every non-ASCII character 2, plus 4 per message. On SmolLM2's tokenizer that is 1.0
to 1.7 times the real count for English and Spanish prose, Python, JSON, numbers, CJK and this
repository's sources; it undercounts only text like random letter strings. For those, the chat
service re-fits the prompt once when the model service answers ``context_length_exceeded``,
scaling the estimate by the real count that answer states.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import math
import re
import textwrap
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from traitlets import Bool, Float, Int, Unicode
from traitlets.config import LoggingConfigurable

from oraculo.extensions.base.errors import BadRequest, NotFound
from oraculo.extensions.chat.mentions import (
    Mention,
    describe_expression,
    file_text,
    find_mentions,
    first_lines,
    is_identifier,
    read_expression_result,
    render,
)
from oraculo.kernels.namespace import render_variables, summarize_namespace

DEFAULT_SYSTEM_PROMPT = (
    "You are Oráculo, an assistant inside the user's Jupyter notebook workspace. Answer "
    "concisely. When you write code, write Python that runs in the user's kernel. When the "
    "workspace passages below answer the question, use them and cite them as [1], [2]."
)


_PIECES = re.compile(r" ?[A-Za-z]+|\s+|.", re.S)


def estimate_tokens(text: str) -> int:
    """An estimate of the model's token count for ``text`` (see the module docstring)."""
    n = 0
    for match in _PIECES.finditer(text):
        piece = match.group()
        last = piece[-1]
        if last.isascii() and last.isalpha():
            n += math.ceil(len(piece.lstrip()) / 4)
        elif not last.isascii() and not last.isspace():
            n += 2
        else:
            n += 1
    return n


def message_tokens(message: dict[str, Any]) -> int:
    """Estimated tokens of one chat message, with its role and template markers."""
    calls = message.get("tool_calls")
    extra = estimate_tokens(json.dumps(calls)) if calls else 0
    return estimate_tokens(str(message.get("content") or "")) + 4 + extra


@dataclass
class Assembled:
    """The messages to send, and what went into them."""

    messages: list[dict[str, Any]]
    citations: list[dict[str, Any]] = field(default_factory=list)
    memories: list[dict[str, Any]] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    prompt_tokens_estimate: int = 0
    history_dropped: int = 0


MemoryGetter = Callable[[], Any]
KernelSummary = Callable[..., Awaitable[dict[str, Any]]]


class ContextService(LoggingConfigurable):
    """Builds the prompt of one chat request from the user's workspace, under a token budget."""

    system_prompt = Unicode(
        DEFAULT_SYSTEM_PROMPT, config=True, help="System prompt sent first with every chat."
    )
    fallback_context_length = Int(
        2048,
        config=True,
        help="Context window (tokens) assumed when the model service does not state one.",
    )
    reply_tokens = Int(
        512,
        config=True,
        help="Tokens kept free for the reply when a request sets no max_tokens.",
    )
    safety_margin = Int(32, config=True, help="Tokens left unused on top of the estimate.")
    context_share = Float(
        0.5,
        config=True,
        help="""Largest share of the budget left after the system prompt and the new turn that
        the context sections (variables, cells, memories, passages) may take; the history
        gets the rest.""",
    )
    memories_k = Int(5, config=True, help="Memories retrieved per request.")
    passages_k = Int(5, config=True, help="Workspace passages retrieved per request.")
    min_memory_similarity = Float(
        0.35,
        config=True,
        help="""A memory goes with a request only if the cosine similarity of its embedding
        and the question's reaches this (so "Hello!" carries none). -1: every memory the
        search finds (the best ``memories_k``), relevant or not.""",
    )
    min_passage_score = Float(
        0.0, config=True, help="Passages scoring below this are not sent (nor cited)."
    )
    max_item_chars = Int(
        1200, config=True, help="Longest passage, memory or cell sent, in characters."
    )
    notebook_cells = Int(8, config=True, help="Most recent notebook cells sent on request.")
    kernel_inputs = Int(
        6,
        config=True,
        help="""Most recent inputs of the kernel's history sent with a kernel's context (what
        was run there, saved in the notebook or not); 0: none.""",
    )
    variable_previews = Bool(
        True,
        config=True,
        help="""Send the first rows of small dataframes (at most 100,000 rows; 3 rows, 600
        characters) with the kernel's variables. Off: names, types, shapes and columns only.""",
    )
    mention_chars = Int(
        4000,
        config=True,
        help="""Longest text an ``@file`` or ``@variable`` mention sends (characters): a longer
        file goes as its first lines, and anything is cut further to what the window has
        room for.""",
    )
    mention_rows = Int(
        5, config=True, help="First rows of a dataframe or array sent for an ``@variable``."
    )
    retrieval_timeout = Float(
        8.0,
        config=True,
        help="Seconds memory, RAG and kernel lookups may take before chat goes on without them.",
    )

    def __init__(
        self,
        memory: MemoryGetter | None = None,
        contents_manager: Any = None,
        kernel_summary: KernelSummary | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._memory = memory or (lambda: None)
        self._contents = contents_manager
        self._kernel_summary = kernel_summary

    # --- sources ------------------------------------------------------------------------------

    async def _guard(self, what: str, aw: Awaitable[Any], skipped: list[str]) -> Any:
        """Await a source; a slow or failing one is logged, noted and skipped (chat goes on)."""
        try:
            return await asyncio.wait_for(aw, self.retrieval_timeout)
        except (NotFound, BadRequest):
            raise
        except TimeoutError:
            self.log.warning("chat context: %s took longer than %ss", what, self.retrieval_timeout)
            skipped.append(f"{what}: timed out")
        except Exception as e:
            self.log.exception("chat context: %s failed; going on without it", what)
            skipped.append(f"{what}: {type(e).__name__}")
        return None

    async def _memories(self, query: str, skipped: list[str]) -> list[dict[str, Any]]:
        feature = self._memory()
        if feature is None or not query:
            return []
        hits = await self._guard(
            "memory search", feature.memories.search(query, self.memories_k), skipped
        )
        found = [_as_dict(h) for h in hits or []]
        least = self.min_memory_similarity
        return [m for m in found if float(m.get("similarity", 1.0)) >= least]

    async def _passages(self, query: str, skipped: list[str]) -> list[dict[str, Any]]:
        feature = self._memory()
        if feature is None or not query or getattr(feature, "index", None) is None:
            return []
        status = feature.index.status()
        if status.get("state") == "idle" and status.get("chunks") == 0:
            return []  # indexed, and nothing there: no query embedding to pay for
        hits = await self._guard(
            "workspace search", feature.index.search(query, self.passages_k), skipped
        )
        passages = [_as_dict(h) for h in hits or []]
        passages = [p for p in passages if float(p.get("score") or 0) >= self.min_passage_score]
        return sorted(passages, key=lambda p: -float(p.get("score") or 0))

    async def _notebook(self, path: str) -> list[dict[str, Any]]:
        if self._contents is None:
            return []
        try:
            result = self._contents.get(path, content=True, type="notebook")
            model = await result if inspect.isawaitable(result) else result
        except Exception as e:
            if getattr(e, "status_code", None) in (400, 404):
                raise NotFound(f"No notebook at {path!r}.", reason="Unknown notebook") from None
            raise
        cells = []
        for index, cell in enumerate(model["content"].get("cells", [])):
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else source
            if not source.strip():
                continue
            cells.append(
                {
                    "index": index,
                    "type": cell.get("cell_type", "code"),
                    "source": source,
                    "output": _text_outputs(cell.get("outputs") or []),
                }
            )
        return cells[-self.notebook_cells :]

    async def _kernel(
        self, kernel_id: str, skipped: list[str], mentions: list[str] | None = None
    ) -> dict[str, Any] | None:
        """``{"variables": [...], "inputs": [...], "mentions": {...}}`` of a live kernel."""
        if self._kernel_summary is None:
            return None
        more: dict[str, Any] = {}
        if mentions:
            more = {
                "mentions": mentions,
                "mention_rows": self.mention_rows,
                "mention_chars": self.mention_chars,
            }
        found = self._kernel_summary(
            kernel_id, previews=self.variable_previews, inputs=self.kernel_inputs, **more
        )
        result: dict[str, Any] | None = await self._guard("kernel variables", found, skipped)
        return result

    async def _mentions(
        self, names: list[str], in_kernel: dict[str, Any], has_kernel: bool, skipped: list[str]
    ) -> list[Mention]:
        """Each ``@name``: the kernel's variable of that name, else the file at that path."""
        found: list[Mention] = []
        for name in names:
            if name in in_kernel:
                text, whole = in_kernel[name]
                found.append(Mention(name, "variable", text, whole))
                continue
            text = await self._file(name)
            if text is not None:
                whole = len(text) <= self.mention_chars
                cut = text if whole else first_lines(text, self.mention_chars)[0]
                found.append(Mention(name, "file", cut, whole))
                continue
            why = "no such file or variable"
            if is_identifier(name) and not has_kernel:
                why = "no such file (bind a notebook for its variables)"
            skipped.append(f"@{name}: {why}")
        return found

    async def _file(self, path: str) -> str | None:
        """A text file's or a notebook's text through the contents manager; None when there
        is none (or it is binary, a folder, hidden or outside the root)."""
        if self._contents is None:
            return None
        try:  # a notebook comes as a notebook, a file as text (400 when it is binary)
            result = self._contents.get(path, content=True, format="text")
            model = await result if inspect.isawaitable(result) else result
        except Exception:  # 404 (no file, hidden, outside the root), 400 (binary)
            return None
        return file_text(model)

    # --- assembly -----------------------------------------------------------------------------

    async def assemble(
        self,
        history: list[dict[str, Any]],
        new_turn: list[dict[str, Any]],
        *,
        context_length: int | None,
        max_tokens: int | None,
        notebook: str | None = None,
        kernel: str | None = None,
        variables: list[dict[str, Any]] | None = None,
        workspace: bool = True,
        scale: float = 1.0,
        reserved: int = 0,
        mentions: bool = False,
    ) -> Assembled:
        """Fit system prompt, context and history into the model's window (module docstring).

        ``scale`` multiplies the token estimate: more than 1 where the model service said that
        the estimate fell short for this conversation. ``reserved`` tokens always go besides
        the messages (the tools' schemas, a response format).
        """
        window = context_length or self.fallback_context_length
        reserve = min(max_tokens or self.reply_tokens, window // 2)
        budget = int((window - reserve - self.safety_margin) / max(scale, 1.0))

        client_system = [m for m in [*history, *new_turn] if m["role"] in ("system", "developer")]
        history = [m for m in history if m["role"] not in ("system", "developer")]
        new_turn = [m for m in new_turn if m["role"] not in ("system", "developer")]
        query = next(
            (str(m.get("content") or "") for m in reversed(new_turn) if m["role"] == "user"), ""
        )

        base_system = "\n\n".join(
            [self.system_prompt, *(str(m.get("content") or "") for m in client_system)]
        ).strip()
        fixed = (
            estimate_tokens(base_system) + 4 + sum(message_tokens(m) for m in new_turn) + reserved
        )
        if fixed > budget:
            raise BadRequest(
                f"The messages take about {fixed} tokens; the model's {window}-token window "
                f"leaves {budget} once {reserve} are kept for the reply.",
                reason="Context length exceeded",
            )
        left = budget - fixed

        skipped: list[str] = []
        started = time.perf_counter()
        names = find_mentions(query) if mentions else []
        memories, passages, cells, kernel_vars = await asyncio.gather(
            self._memories(query if workspace else "", skipped),
            self._passages(query if workspace else "", skipped),
            self._notebook(notebook) if notebook else _nothing(),
            self._kernel(kernel, skipped, names) if kernel else _nothing(),
        )
        live = kernel_vars or {}
        mentioned = await self._mentions(
            names, live.get("mentions") or {}, kernel is not None, skipped
        )

        context_left = int(left * self.context_share)
        sections: list[str] = []
        # how long the lookups (memories, passages, notebook, kernel) took together
        info: dict[str, Any] = {"lookup_ms": round((time.perf_counter() - started) * 1000, 1)}

        def take(text: str) -> bool:
            nonlocal context_left
            cost = estimate_tokens(text) + 1
            if cost > context_left:
                return False
            context_left -= cost
            return True

        # what the user mentioned comes first: they chose it
        kept_mentions: list[dict[str, Any]] = []
        mention_texts: list[str] = []
        for m in mentioned:
            text, whole = render(m, m.text, m.whole), m.whole
            if not take(text):  # too long for what is left: its first lines that fit
                room, fitted = 4 * context_left, False
                while room >= 64 and not fitted:
                    cut, _, _ = first_lines(m.text, room)
                    text, whole = render(m, cut, False), False
                    fitted = take(text)
                    room //= 2
                if not fitted:
                    skipped.append(f"@{m.name}: no room left in the window")
                    continue
            mention_texts.append(text)
            kept_mentions.append(m.info(whole, estimate_tokens(text) + 1))
        if mention_texts:
            sections.append("## What the user mentioned\n" + "\n\n".join(mention_texts))
            info["mentions"] = kept_mentions

        all_vars = [*(variables or []), *(live.get("variables") or [])]
        if all_vars:
            kept = [text for text in (render_variables([v]) for v in all_vars) if take(text)]
            if kept:
                sections.append("## Variables in the user's kernel\n" + "\n".join(kept))
                info["variables"] = len(kept)
                previews = sum("first rows of" in text for text in kept)
                if previews:
                    info["previews"] = previews

        saved = {c["source"].strip() for c in cells or []}
        inputs = [i for i in live.get("inputs") or [] if i.strip() and i.strip() not in saved]
        if inputs:
            kept_inputs: list[str] = []
            for source in reversed(inputs):  # newest first
                text = "```python\n" + _cut(source.strip(), self.max_item_chars) + "\n```"
                if take(text):
                    kept_inputs.append(text)
            if kept_inputs:
                sections.append(
                    "## Code run in the kernel lately (not in the saved notebook)\n"
                    + "\n".join(reversed(kept_inputs))
                )
                info["kernel_inputs"] = len(kept_inputs)

        if cells:
            kept_cells: list[str] = []
            for cell in reversed(cells):  # newest first
                text = _render_cell(cell, self.max_item_chars)
                if take(text):
                    kept_cells.append(text)
            if kept_cells:
                sections.append(
                    f"## Recent cells of the notebook {notebook}\n"
                    + "\n".join(reversed(kept_cells))
                )
                info["notebook"] = {"path": notebook, "cells": len(kept_cells)}

        used_memories = []
        for m in memories:
            text = f"- {m.get('key')}: {_cut(str(m.get('value')), self.max_item_chars)}"
            if take(text):
                used_memories.append(
                    {
                        k: m.get(k)
                        for k in ("key", "value", "scope", "score", "similarity", "updated_at")
                    }
                )
        if used_memories:
            sections.append(
                "## What the user asked you to remember\n"
                + "\n".join(
                    f"- {m['key']}: {_cut(str(m['value']), self.max_item_chars)}"
                    for m in used_memories
                )
            )

        citations: list[dict[str, Any]] = []
        passage_texts = []
        for p in passages:
            n = len(citations) + 1
            where = str(p.get("path"))
            if p.get("cell") is not None:
                where += f", cell {p['cell']}"
            text = f"[{n}] {where}:\n{_cut(str(p.get('text') or ''), self.max_item_chars)}"
            if take(text):
                passage_texts.append(text)
                citations.append(
                    {
                        "index": n,
                        **{
                            k: p.get(k) for k in ("path", "cell", "start_line", "end_line", "score")
                        },
                    }
                )
        if passage_texts:
            sections.append("## Passages from the user's workspace\n" + "\n\n".join(passage_texts))

        if skipped:
            info["skipped"] = skipped
        system = "\n\n".join([base_system, *sections])
        # how much of the window the context sections take (the status line says so)
        info["context_tokens"] = estimate_tokens(system) - estimate_tokens(base_system)
        used = estimate_tokens(system) + 4 + sum(message_tokens(m) for m in new_turn) + reserved
        history_left = budget - used
        kept_history: list[dict[str, Any]] = []
        for m in reversed(history):  # newest first; stop at the first that does not fit
            cost = message_tokens(m)
            if cost > history_left:
                break
            history_left -= cost
            kept_history.append(m)
        kept_history.reverse()
        used += sum(message_tokens(m) for m in kept_history)

        messages = [
            {"role": "system", "content": system},
            *(_wire(m) for m in kept_history),
            *(_wire(m) for m in new_turn),
        ]
        return Assembled(
            messages=messages,
            citations=citations,
            memories=used_memories,
            context=info,
            prompt_tokens_estimate=used,
            history_dropped=len(history) - len(kept_history),
        )


def _wire(m: dict[str, Any]) -> dict[str, Any]:
    out = {"role": m["role"], "content": m.get("content") or ""}
    out.update({k: m[k] for k in ("tool_calls", "tool_call_id") if m.get(k)})
    return out


async def _nothing() -> None:
    return None


def _as_dict(hit: Any) -> dict[str, Any]:
    if isinstance(hit, dict):
        return hit
    if hasattr(hit, "model_dump"):
        return dict(hit.model_dump(mode="json"))
    if hasattr(hit, "__dataclass_fields__"):
        return {k: getattr(hit, k) for k in hit.__dataclass_fields__}
    return dict(vars(hit))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text_outputs(outputs: list[dict[str, Any]]) -> str:
    parts = []
    for out in outputs:
        if out.get("output_type") == "stream":
            text = out.get("text", "")
        elif out.get("output_type") in ("execute_result", "display_data"):
            text = (out.get("data") or {}).get("text/plain", "")
        elif out.get("output_type") == "error":
            text = f"{out.get('ename')}: {out.get('evalue')}"
        else:
            continue
        parts.append("".join(text) if isinstance(text, list) else str(text))
    return "".join(parts)


def _render_cell(cell: dict[str, Any], limit: int) -> str:
    head = f"In [{cell['index']}] ({cell['type']}):"
    text = f"{head}\n{_cut(cell['source'], limit)}"
    if cell.get("output"):
        text += f"\nOut:\n{_cut(cell['output'], limit // 2)}"
    return text


# --- kernel variables ---------------------------------------------------------------------------


def summary_expression(preview_rows: int = 0) -> str:
    """A Python expression that, evaluated in a kernel's namespace, returns the summary as JSON.

    It carries the source of :func:`~oraculo.kernels.namespace.summarize_namespace`, so the
    kernel need not import oraculo (any Python kernel works).
    """
    source = textwrap.dedent(inspect.getsource(summarize_namespace))
    return (
        "(lambda g: (exec(compile(" + repr(source) + ", '<oraculo>', 'exec'), g),"
        " __import__('json').dumps(g['summarize_namespace'](globals(), preview_rows="
        + str(int(preview_rows))
        + "), default=str))[1])"
        "({'Any': object})"
    )


def inputs_expression(n: int) -> str:
    """The last ``n`` inputs of an IPython kernel's history, as JSON ([] elsewhere)."""
    return (
        "__import__('json').dumps([s for s in (getattr(get_ipython(), 'history_manager', None)"
        f" and get_ipython().history_manager.input_hist_raw or [])[-{int(n)}:] if s.strip()]"
        " if 'get_ipython' in globals() else [])"
    )


class KernelInspector:
    """Reads a running kernel's variables with a silent request (no history, no output)."""

    def __init__(self, kernel_manager: Any, timeout: float = 5.0) -> None:
        self.kernel_manager = kernel_manager
        self.timeout = timeout
        self._expressions: dict[int, str] = {}

    async def summary(
        self,
        kernel_id: str,
        previews: bool = True,
        inputs: int = 0,
        mentions: list[str] | None = None,
        mention_rows: int = 5,
        mention_chars: int = 4000,
    ) -> dict[str, Any]:
        """``{"variables": [...], "inputs": [...], "mentions": {name: (text, whole)}}``: the
        kernel's variables (with the first rows of small frames when ``previews``), its last
        ``inputs`` inputs and the description of each of ``mentions`` it has."""
        if kernel_id not in self.kernel_manager:
            raise NotFound(f"No kernel {kernel_id!r}.", reason="Unknown kernel")
        rows = 3 if previews else 0
        if rows not in self._expressions:
            self._expressions[rows] = summary_expression(rows)
        expressions = {"oraculo": self._expressions[rows]}
        if inputs > 0:
            expressions["inputs"] = inputs_expression(inputs)
        if mentions:
            expressions["mentions"] = describe_expression(mentions, mention_rows, mention_chars)
        client = self.kernel_manager.get_kernel(kernel_id).client()
        client.start_channels()
        try:
            msg_id = client.execute(
                "",
                silent=True,
                store_history=False,
                user_expressions=expressions,
            )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout
            while True:
                reply = await client.get_shell_msg(timeout=max(0.01, deadline - loop.time()))
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
        finally:
            client.stop_channels()
        found = reply["content"].get("user_expressions", {})
        result = found.get("oraculo", {})
        if result.get("status") != "ok":
            self_error = result.get("ename", "error")
            raise RuntimeError(f"the kernel could not describe its variables ({self_error})")
        out: dict[str, Any] = {
            "variables": json.loads(ast.literal_eval(result["data"]["text/plain"])),
            "inputs": [],
        }
        history = found.get("inputs") or {}
        if history.get("status") == "ok":  # a kernel without IPython's history has none
            out["inputs"] = json.loads(ast.literal_eval(history["data"]["text/plain"]))
        if mentions:
            out["mentions"] = read_expression_result(found.get("mentions") or {})
        return out
