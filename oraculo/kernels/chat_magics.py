"""``%%chat`` and ``%memory`` in the oraculo kernel, and the summary of a namespace's variables.

The magics call the user's own Jupyter server (``/api/v1/chat``, ``/api/v1/memory``) at
``ORACULO_SERVER_URL`` with ``ORACULO_KERNEL_TOKEN``, the narrow, expiring token the kernel
provisioner gives each kernel; the kernel holds no other credential.

:func:`summarize_namespace` is self-contained (standard library only, imports inside), because
the server also sends its source to a running kernel to describe that kernel's variables.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class


def summarize_namespace(ns: dict[str, Any], limit: int = 40) -> list[dict[str, Any]]:
    """Describe the user's variables: dataframes, arrays, tensors, collections and scalars.

    Names starting with ``_``, modules, functions, classes and IPython's own names are left out.
    Nothing is computed that could be slow on a big object (no ``repr`` of a dataframe).
    """
    import types

    skip = {"In", "Out", "exit", "quit", "get_ipython", "open"}
    out: list[dict[str, Any]] = []
    for name, value in list(ns.items()):
        if name.startswith("_") or name in skip:
            continue
        if isinstance(
            value, types.ModuleType | types.FunctionType | type | types.BuiltinFunctionType
        ):
            continue
        kind = type(value)
        mod = kind.__module__.split(".")[0]
        item: dict[str, Any] = {"name": name, "type": kind.__name__}
        try:
            if (
                mod in ("pandas", "polars")
                and hasattr(value, "columns")
                and hasattr(value, "shape")
            ):
                item["kind"] = "dataframe"
                item["shape"] = list(value.shape)
                dtypes = value.dtypes
                cols = [str(c) for c in list(value.columns)[:30]]
                if hasattr(dtypes, "items"):
                    item["dtypes"] = {str(k): str(v) for k, v in list(dtypes.items())[:30]}
                else:
                    item["dtypes"] = dict(zip(cols, (str(d) for d in dtypes), strict=False))
                item["columns_total"] = len(value.columns)
            elif (
                mod in ("pandas", "polars") and hasattr(value, "dtype") and hasattr(value, "shape")
            ):
                item["kind"] = "series"
                item["shape"] = list(value.shape)
                item["dtype"] = str(value.dtype)
            elif (
                hasattr(value, "shape")
                and hasattr(value, "dtype")
                and mod
                in (
                    "numpy",
                    "torch",
                    "jax",
                    "jaxlib",
                    "cupy",
                    "tensorflow",
                )
            ):
                item["kind"] = "array"
                item["shape"] = [int(d) for d in value.shape]
                item["dtype"] = str(value.dtype)
            elif isinstance(value, bool | int | float | complex):
                item["kind"] = "scalar"
                item["value"] = repr(value)
            elif isinstance(value, str | bytes):
                item["kind"] = "scalar"
                item["len"] = len(value)
                item["value"] = repr(value[:60]) + ("…" if len(value) > 60 else "")
            elif isinstance(value, list | tuple | set | frozenset | dict):
                item["kind"] = "collection"
                item["len"] = len(value)
            elif mod in ("builtins", "IPython", "ipykernel") or callable(value):
                continue
            else:
                item["kind"] = "object"
        except Exception:
            item["kind"] = "object"
        out.append(item)
        if len(out) >= limit:
            break
    return out


def render_variables(variables: list[dict[str, Any]]) -> str:
    """One line per variable, for a prompt."""
    lines = []
    for v in variables:
        kind = v.get("kind")
        head = f"- {v['name']}: {v['type']}"
        if kind == "dataframe":
            shape = "×".join(str(d) for d in v.get("shape", []))
            cols = ", ".join(f"{c} ({t})" for c, t in (v.get("dtypes") or {}).items())
            more = v.get("columns_total", 0) - len(v.get("dtypes") or {})
            lines.append(
                f"{head} {shape}; columns: {cols}" + (f" and {more} more" if more > 0 else "")
            )
        elif kind in ("array", "series"):
            shape = "×".join(str(d) for d in v.get("shape", []))
            lines.append(f"{head} shape {shape}, dtype {v.get('dtype')}")
        elif kind == "scalar":
            lines.append(f"{head} = {v.get('value')}")
        elif kind == "collection":
            lines.append(f"{head} of {v.get('len')} items")
        else:
            lines.append(head)
    return "\n".join(lines)


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
    try:
        body = json.loads(content)
        message = body.get("message") or body.get("error", {}).get("message")
    except (ValueError, AttributeError):
        message = None
    return f"HTTP {status}: {message or content[:200].decode('utf-8', 'replace')}"


@magics_class
class ChatMagics(Magics):
    """``%%chat`` (ask the assistant, with this notebook's variables) and ``%memory``."""

    conversation_id: str | None = None

    @cell_magic
    def chat(self, line: str, cell: str) -> None:
        """Ask the assistant; the reply streams into the output.

        Options: ``--model NAME``, ``--new`` (start a new conversation), ``--no-vars`` (do not
        send the variables' summary), ``--max-tokens N``, ``--temperature T``.
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
        if opts.get("new"):
            self.conversation_id = None
        body: dict[str, Any] = {"messages": [{"role": "user", "content": cell}], "stream": True}
        for key in ("model", "max_tokens", "temperature"):
            if opts.get(key) is not None:
                body[key] = opts[key]
        if self.conversation_id:
            body["conversation_id"] = self.conversation_id
        variables: list[dict[str, Any]] = []
        if not opts.get("no_vars") and self.shell is not None:
            variables = summarize_namespace(self.shell.user_ns)
            body["context"] = {"variables": variables}
        self._stream(client, body, variables)

    def _stream(self, client: ServerClient, body: dict[str, Any], variables: list[Any]) -> None:
        extra: dict[str, Any] = {}
        with client._client() as c, c.stream("POST", "api/v1/chat", json=body) as r:
            if r.status_code != 200:
                print(f"%%chat: {_describe_error(r.status_code, r.read())}", file=sys.stderr)
                return
            event = ""
            for raw in r.iter_lines():
                if raw.startswith("event:"):
                    event = raw[6:].strip()
                    continue
                if not raw.startswith("data:"):
                    continue
                data = raw[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if event == "error" or "error" in chunk:
                    err = chunk.get("error") or {}
                    print(f"\n%%chat: {err.get('message', 'error')}", file=sys.stderr)
                    return
                extra.update(chunk.get("oraculo") or {})
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
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


def _parse_options(line: str) -> dict[str, Any] | None:
    opts: dict[str, Any] = {}
    try:
        words = shlex.split(line)
        i = 0
        while i < len(words):
            w = words[i]
            if w in ("--new", "--no-vars"):
                opts[w[2:].replace("-", "_")] = True
            elif w in ("--model", "--max-tokens", "--temperature") and i + 1 < len(words):
                key = w[2:].replace("-", "_")
                value = words[i + 1]
                opts[key] = (
                    int(value)
                    if key == "max_tokens"
                    else float(value)
                    if key == "temperature"
                    else value
                )
                i += 1
            else:
                raise ValueError(f"unknown option {w!r}")
            i += 1
    except ValueError as e:
        print(f"%%chat: {e}", file=sys.stderr)
        return None
    return opts


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(ChatMagics)
