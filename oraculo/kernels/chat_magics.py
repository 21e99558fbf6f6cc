"""``%%chat``, ``%explain`` and ``%memory`` in the oraculo kernel, and the summary of a
namespace's variables (:mod:`oraculo.kernels.namespace`).

The magics call the user's own Jupyter server (``/api/v1/chat``, ``/api/v1/memory``) at
``ORACULO_SERVER_URL`` with ``ORACULO_KERNEL_TOKEN``, the narrow, expiring token the kernel
provisioner gives each kernel; the kernel holds no other credential.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from oraculo.extensions.base.wire import iter_events, read_error
from oraculo.kernels import chat_inputs
from oraculo.kernels.namespace import summarize_namespace


class ServerClient:
    """The user's Jupyter server's API, as the kernel's narrow token may call it."""

    def __init__(self, url: str, token: str, timeout: float = 300.0) -> None:
        self.url = url.rstrip("/") + "/"
        self.token = token
        self.timeout = timeout

    @classmethod
    def from_environment(cls) -> ServerClient:
        url = os.environ.get("ORACULO_SERVER_URL", "")
        token = os.environ.get("ORACULO_KERNEL_TOKEN", "")
        if not url or not token:
            raise RuntimeError(
                "This kernel was not given ORACULO_SERVER_URL and ORACULO_KERNEL_TOKEN: "
                "start it from Oráculo (the oraculo kernelspec) to use %%chat and %memory."
            )
        return cls(url, token)

    def _client(self) -> Any:
        import httpx

        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"token {self.token}"},
            timeout=httpx.Timeout(self.timeout, connect=10.0),
            trust_env=False,
        )

    def request(self, method: str, path: str, **kw: Any) -> Any:
        with self._client() as c:
            r = c.request(method, path, **kw)
        if r.status_code >= 400:
            raise RuntimeError(_describe_error(r.status_code, r.content))
        return r.json() if r.content else None


def _describe_error(status: int, content: bytes) -> str:
    return f"HTTP {status}: {read_error(status, content).message}"


@magics_class
class ChatMagics(Magics):
    """``%%chat`` (ask the assistant, with this notebook's variables), ``%explain`` (the last
    error) and ``%memory``."""

    conversation_id: str | None = None

    @cell_magic
    def chat(self, line: str, cell: str) -> None:
        """Ask the assistant; the reply streams into the output.

        Options: ``--model NAME``, ``--new`` (start a new conversation), ``--no-vars`` (do not
        send the variables' summary), ``--max-tokens N``, ``--temperature T``, ``--seed N``,
        ``--sample NAME`` (add the first rows of a variable; repeatable), ``--rows N`` (rows of
        a sample or ``{name}``, default 5), ``--insert`` (put the reply's first code block in a
        new cell below), ``--code`` (ask for one code block only, and insert it; a block
        that does not parse is inserted with a warning, for the user to fix). ``{name}`` in the
        question is replaced by the variable (``{{`` and ``}}`` for literal braces).
        """
        opts = _parse_options(line)
        if opts is None:
            return
        if not cell.strip():
            print("%%chat: write a question in the cell.", file=sys.stderr)
            return
        try:
            client = ServerClient.from_environment()
        except RuntimeError as e:
            print(f"%%chat: {e}", file=sys.stderr)
            return
        ns = self.shell.user_ns if self.shell is not None else {}
        rows = int(opts.get("rows") or 5)
        question, _ = chat_inputs.interpolate(cell, ns, rows)
        if opts.get("sample"):
            try:
                question += "\n\n" + chat_inputs.samples(opts["sample"], ns, rows)
            except KeyError as e:
                print(f"%%chat: --sample {e.args[0]}: no such variable", file=sys.stderr)
                return
        if opts.get("new"):
            self.conversation_id = None
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": question}],
            "stream": True,
            "store": True,
        }
        for key in ("model", "max_tokens", "temperature", "seed"):
            if opts.get(key) is not None:
                body[key] = opts[key]
        if opts.get("code"):  # one fenced block, the reply ends at its closing fence
            body["messages"][0]["content"] += chat_inputs.CODE_INSTRUCTION
            body["stop"] = chat_inputs.CODE_STOP
            body.setdefault("temperature", 0)  # the most likely code, the same each time
        if self.conversation_id:
            body["conversation_id"] = self.conversation_id
        variables: list[dict[str, Any]] = []
        if not opts.get("no_vars") and self.shell is not None:
            variables = summarize_namespace(self.shell.user_ns)
            body["context"] = {"variables": variables}
        reply = self._stream(client, body, variables, echo=not opts.get("code"))
        if reply is None:
            return
        if opts.get("code"):
            code = chat_inputs.fenced_code(reply)
            if code is None:
                print(f"%%chat: the reply held no code block:\n{reply}", file=sys.stderr)
                return
            print(code.rstrip("\n"))
            problem = chat_inputs.parses(code)
            if problem is not None:
                print(f"%%chat: the suggested code does not parse ({problem}).", file=sys.stderr)
            self._insert(code)
        elif opts.get("insert"):
            code = chat_inputs.first_code_block(reply)
            if code is None:
                print("%%chat: no code block in the reply to insert.", file=sys.stderr)
                return
            self._insert(code)

    def _insert(self, code: str) -> None:
        """A new cell below this one holding ``code``, for the user to review and run
        (IPython's ``set_next_input`` payload, which JupyterLab and Notebook honour)."""
        if self.shell is not None:
            self.shell.set_next_input(code.rstrip("\n"), replace=False)
            print("(inserted in a new cell below)")

    @line_magic
    def explain(self, line: str) -> None:
        """Explain the last error in this kernel (its traceback and the cell that raised it).

        Options as ``%%chat`` (``--model``, ``--max-tokens``, ``--temperature``, ``--seed``,
        ``--insert`` to put the fixed code in a new cell below).
        """
        opts = _parse_options(line, "%explain")
        if opts is None:
            return
        error = chat_inputs.last_error(self.shell)
        if error is None:
            print("%explain: no error in this kernel yet.")
            return
        try:
            client = ServerClient.from_environment()
        except RuntimeError as e:
            print(f"%explain: {e}", file=sys.stderr)
            return
        print(f"Explaining {error['error']}\n")
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": chat_inputs.explain_prompt(error)}],
            "stream": True,
            "store": True,
        }
        for key in ("model", "max_tokens", "temperature", "seed"):
            if opts.get(key) is not None:
                body[key] = opts[key]
        reply = self._stream(client, body, [])
        if reply is not None and opts.get("insert"):
            code = chat_inputs.first_code_block(reply)
            if code is not None:
                self._insert(code)

    def _stream(
        self, client: ServerClient, body: dict[str, Any], variables: list[Any], echo: bool = True
    ) -> str | None:
        """Post a streamed chat, print the reply as it comes (``echo``) and a footer; return
        the reply's text (None after an error, which is printed)."""
        extra: dict[str, Any] = {}
        parts: list[str] = []
        with client._client() as c, c.stream("POST", "api/v1/chat", json=body) as r:
            if r.status_code != 200:
                print(f"%%chat: {_describe_error(r.status_code, r.read())}", file=sys.stderr)
                return None
            for event in iter_events(r.iter_lines()):
                if event.is_error:
                    print(f"\n%%chat: {read_error(502, event.data).message}", file=sys.stderr)
                    return None
                chunk = event.data if isinstance(event.data, dict) else {}
                extra.update(chunk.get("oraculo") or {})
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        parts.append(text)
                        if echo:
                            sys.stdout.write(text)
                            sys.stdout.flush()
        self.conversation_id = extra.get("conversation_id") or self.conversation_id
        notes = []
        if variables:
            notes.append("variables: " + ", ".join(v["name"] for v in variables[:12]))
        for i, cite in enumerate(extra.get("citations") or [], 1):
            where = cite["path"] + (f" cell {cite['cell']}" if cite.get("cell") is not None else "")
            notes.append(f"[{i}] {where}")
        if extra.get("memories"):
            notes.append("memories: " + ", ".join(m["key"] for m in extra["memories"]))
        print("\n\n— " + " · ".join([extra.get("model", ""), *notes]).strip(" ·"))
        return "".join(parts)

    @line_magic
    def memory(self, line: str) -> Any:
        """``%memory`` lists, ``%memory search TEXT``, ``%memory add KEY VALUE``."""
        words = line.strip().split(maxsplit=1)
        try:
            client = ServerClient.from_environment()
            if not words or words[0] == "list":
                found = client.request("GET", "api/v1/memory")
            elif words[0] == "search" and len(words) == 2:
                found = client.request("GET", "api/v1/memory", params={"q": words[1]})
            elif words[0] == "add" and len(words) == 2 and len(words[1].split(maxsplit=1)) == 2:
                key, value = words[1].split(maxsplit=1)
                client.request("POST", "api/v1/memory", json={"key": key, "value": value})
                print(f"Remembered {key}.")
                return None
            else:
                print("Usage: %memory [list] | %memory search TEXT | %memory add KEY VALUE")
                return None
        except RuntimeError as e:
            print(f"%memory: {e}", file=sys.stderr)
            return None
        items = found.get("hits", found.get("items", [])) if isinstance(found, dict) else found
        if not items:
            print("No memories.")
        for m in items or []:
            score = f"  ({m['score']:.2f})" if isinstance(m.get("score"), float) else ""
            print(f"{m.get('key')}: {m.get('value')}{score}")
        return None


_FLAGS = ("--new", "--no-vars", "--insert", "--code")
_VALUED = {
    "--model": str,
    "--max-tokens": int,
    "--temperature": float,
    "--seed": int,
    "--rows": int,
}


def _parse_options(line: str, magic: str = "%%chat") -> dict[str, Any] | None:
    opts: dict[str, Any] = {}
    try:
        words = shlex.split(line)
        i = 0
        while i < len(words):
            w = words[i]
            if w in _FLAGS:
                opts[w[2:].replace("-", "_")] = True
            elif w in _VALUED and i + 1 < len(words):
                opts[w[2:].replace("-", "_")] = _VALUED[w](words[i + 1])
                i += 1
            elif w == "--sample" and i + 1 < len(words):
                opts.setdefault("sample", []).append(words[i + 1])
                i += 1
            else:
                raise ValueError(f"unknown option {w!r}")
            i += 1
    except ValueError as e:
        print(f"{magic}: {e}", file=sys.stderr)
        return None
    return opts


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(ChatMagics)
