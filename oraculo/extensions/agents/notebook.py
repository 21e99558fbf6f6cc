"""Agent notebooks: an agent is a notebook, and the catalogue of the agents a user can run.

An agent notebook carries ``metadata.oraculo.agent``::

    {"name": "cleaner", "model": "smollm2", "description": "...",
     "max_steps": 6, "max_tokens": 2000, "timeout": 120, "temperature": 0.2,
     "require_tool": true, "fan_out": ["searcher", "summariser"], "handoff": "reviewer"}

``require_tool``: the agent's first step must call one of its tools; ``max_tool_calls``: after
that many tool calls it is offered only ``final_answer``; ``fan_out``: agents that
get this one's answer at once and work in parallel; ``handoff``: the agent that gets this one's
answer next (after a fan-out: the branches' answers, gathered). So a notebook declares its part
of a team's graph: here planner → (searcher ∥ summariser) → reviewer. ``mcp``: the MCP servers
the user configured whose tools the agent may call (``"mcp": ["ledger"]``).

Its markdown cells are the agent's instructions (in order); each top-level function in its code
cells whose name does not start with ``_`` is a tool: the signature's annotations and defaults
give the JSON schema of the arguments, the docstring's first paragraph the description. The
notebook is parsed with :mod:`ast` only: nothing in it runs in the server. Tool code runs in the
user's sandbox kernel when an agent calls it (see :mod:`oraculo.extensions.agents.service`).

The catalogue lists the user's own agents (``~/agents/*.ipynb`` and, more generally, notebooks
with that metadata in the configured folders) and the shared ones (each group's shared folder and
its ``published/`` releases), with owner and version from the file system: the file's owning
account and the sha256 of its bytes (:mod:`oraculo.extensions.agents.trust`), never the
notebook's metadata.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import logging
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import nbformat

from oraculo import plugins
from oraculo.extensions.agents.models import AgentSpec, ToolSpec
from oraculo.extensions.agents.trust import hub_owner, read_file
from oraculo.extensions.base.errors import BadRequest

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_JSON_TYPES = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "list": "array",
    "dict": "object",
}


def _annotation_schema(node: ast.expr | None) -> dict[str, Any]:
    """JSON schema for a (simple) annotation: builtins, list[...], Optional/``X | None``,
    ``Literal[...]``; anything else is left open."""
    if node is None:
        return {}
    if isinstance(node, ast.Name) and node.id in _JSON_TYPES:
        return {"type": _JSON_TYPES[node.id]}
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            return _annotation_schema(ast.parse(node.value, mode="eval").body)
        except SyntaxError:
            return {}
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        parts = [_annotation_schema(node.left), _annotation_schema(node.right)]
        parts = [p for p in parts if p.get("type") != "null"]
        return parts[0] if len(parts) == 1 else {"anyOf": parts}
    if isinstance(node, ast.Constant) and node.value is None:
        return {"type": "null"}
    if isinstance(node, ast.Subscript):
        base = node.value.id if isinstance(node.value, ast.Name) else ""
        if base in ("list", "List"):
            return {"type": "array", "items": _annotation_schema(node.slice)}
        if base in ("dict", "Dict"):
            return {"type": "object"}
        if base == "Optional":
            return _annotation_schema(node.slice)
        if base == "Literal":
            elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            values = [e.value for e in elts if isinstance(e, ast.Constant)]
            return {"enum": values}
    return {}


def tool_from_function(fn: ast.FunctionDef, source: str, cell: int) -> ToolSpec:
    """A tool spec from a function definition (signature + docstring → JSON schema)."""
    args = fn.args
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += list(args.defaults)
    doc = ast.get_docstring(fn) or ""
    arg_docs = _arg_docs(doc)
    properties: dict[str, Any] = {}
    required: list[str] = []
    pairs = [
        *zip(positional, defaults, strict=True),
        *zip(args.kwonlyargs, args.kw_defaults, strict=True),
    ]
    for arg, default in pairs:
        prop = _annotation_schema(arg.annotation)
        if arg.arg in arg_docs:
            prop["description"] = arg_docs[arg.arg]
        if default is None:
            required.append(arg.arg)
        elif isinstance(default, ast.Constant):
            prop["default"] = default.value
        properties[arg.arg] = prop
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    description = doc.split("\n\n")[0].strip()
    return ToolSpec(
        name=fn.name,
        description=description,
        parameters=parameters,
        source=ast.get_source_segment(source, fn) or "",
        cell=cell,
    )


def plugin_tools(log: Any = None) -> dict[str, ToolSpec]:
    """The tools of the ``oraculo.agent_tools`` entry point group, by name: each names a
    self-contained function (its imports inside it), whose source runs in the user's kernel
    when an agent calls it, as a notebook's tools do. One that fails is logged and skipped."""
    tools: dict[str, ToolSpec] = {}
    for name, fn in plugins.load(plugins.AGENT_TOOLS, log):
        try:
            source = textwrap.dedent(inspect.getsource(fn))
            node = ast.parse(source).body[0]
            if not isinstance(node, ast.FunctionDef) or node.name != name:
                raise TypeError(f"agent tool {name!r} must name a function called {name!r}")
            tools[name] = tool_from_function(node, source, -1)
        except Exception:
            (log or logging.getLogger(__name__)).exception(
                "agent tool plugin %r failed to load; going on without it", name
            )
    return tools


def _arg_docs(doc: str) -> dict[str, str]:
    """``name: text`` lines of a docstring's Args/Parameters section (Google style)."""
    out: dict[str, str] = {}
    for line in doc.splitlines():
        m = re.match(r"^\s+(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def parse_agent(nb: Any, path: str = "") -> AgentSpec:
    """The agent a notebook node defines; BadRequest when it is not an agent notebook."""
    meta = (nb.get("metadata") or {}).get("oraculo", {}).get("agent")
    if not isinstance(meta, dict):
        raise BadRequest(f"{path or 'notebook'} has no metadata.oraculo.agent")
    instructions: list[str] = []
    tools: list[ToolSpec] = []
    setup: list[str] = []
    for i, cell in enumerate(nb.get("cells", [])):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        if cell.get("cell_type") == "markdown":
            instructions.append(source.strip())
        elif cell.get("cell_type") == "code":
            try:
                tree = ast.parse(source)
            except SyntaxError:
                continue  # magics and the like: not tools
            for node in tree.body:
                if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                    tools.append(tool_from_function(node, source, i))
                elif isinstance(node, ast.Import | ast.ImportFrom):
                    setup.append(ast.get_source_segment(source, node) or "")
    name = meta.get("name") or Path(path).stem
    if not NAME.match(str(name)):
        raise BadRequest(f"agent name {name!r} must match {NAME.pattern}")
    # what the file system says (owner, version, digest, where) is never taken from metadata
    trusted = {"tools", "owner", "shared", "published", "group", "version", "sha256", "mtime"}
    fields = {k: v for k, v in meta.items() if k in AgentSpec.model_fields and k not in trusted}
    return AgentSpec.model_validate(
        {
            **fields,
            "name": name,
            "instructions": "\n\n".join(s for s in instructions if s),
            "tools": tools,
            "setup": setup,
            "path": path,
        }
    )


def load_agent(
    path: Path,
    *,
    shared: bool = False,
    label: str = "",
    owner_prefix: str = "",
    published: bool = False,
    group: str = "",
) -> AgentSpec:
    """The agent in ``path``, with owner and version from the file system (see
    :mod:`oraculo.extensions.agents.trust`): what the notebook says of itself is ignored."""
    data, st = read_file(path, follow=not shared)  # a link in a group folder is not followed
    nb = nbformat.reads(data.decode("utf-8"), as_version=4)
    spec = parse_agent(nb, label or str(path))
    spec.owner = hub_owner(st.st_uid, owner_prefix)
    spec.shared = shared
    spec.published = published
    spec.group = group
    spec.sha256 = hashlib.sha256(data).hexdigest()
    spec.version = spec.sha256[:12]
    spec.mtime = st.st_mtime
    return spec


def scan(
    folder: Path,
    *,
    shared: bool,
    root: Path | None = None,
    depth: int = 3,
    owner_prefix: str = "",
    published: bool = False,
    skip: tuple[str, ...] = (),
) -> list[AgentSpec]:
    """Agent notebooks under ``folder`` (not hidden, not in ``skip`` folders at its top, at most
    ``depth`` levels down)."""
    found: list[AgentSpec] = []
    if not folder.is_dir():
        return found
    base_depth = len(folder.parts)
    group = str(folder.parent if published else folder) if shared else ""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if Path(dirpath) == folder:
            dirnames[:] = [d for d in dirnames if d not in skip]
        if len(Path(dirpath).parts) - base_depth >= depth:
            dirnames[:] = []
        for fn in filenames:
            if not fn.endswith(".ipynb") or fn.startswith("."):
                continue
            path = Path(dirpath) / fn
            try:
                if (
                    b'"agent"' not in path.read_bytes()[-65536:]
                    and b'"agent"' not in path.read_bytes()[:65536]
                ):
                    continue
                label = (
                    str(path.relative_to(root)) if root and path.is_relative_to(root) else str(path)
                )
                found.append(
                    load_agent(
                        path,
                        shared=shared,
                        label=label,
                        owner_prefix=owner_prefix,
                        published=published,
                        group=group,
                    )
                )
            except (BadRequest, OSError, ValueError, UnicodeDecodeError):
                continue  # not an agent notebook, or unreadable: not in the catalogue
    return found
