"""OpenAPI 3.1 documents generated from the routes a tornado application really serves.

Both the server extension (``<user server>/api/v1/openapi.json``) and the model service
(``/services/models/openapi.json``) describe themselves with :func:`document`: it walks the
application's routing table (so a route that is served is a route that is documented, a plugin's
included) and takes each operation's request, query and response schemas from the same pydantic
models the handlers validate with, declared next to the handler method with :func:`operation`.
A method without a declaration is still documented, with its docstring and a generic JSON body.
"""

from __future__ import annotations

import html
import inspect
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema
from tornado import routing, web, websocket

METHODS = ("get", "post", "put", "patch", "delete")
REF = "#/components/schemas/{model}"
Mode = Literal["validation", "serialization"]
#: The explorer page's script, and Swagger UI (``swagger-ui/``, copied from npm by dev.sh).
EXPLORER_DIR = Path(__file__).parent / "static" / "explorer"
#: Both APIs take a JupyterHub token as ``Authorization: Bearer`` (or ``token``).
BEARER = {"hubToken": {"type": "http", "scheme": "bearer"}}


@dataclass
class Operation:
    """What :func:`operation` records on a handler method."""

    summary: str = ""
    request: Any = None  # a pydantic model (or any type pydantic can describe): the JSON body
    query: type[BaseModel] | None = None  # its fields are the query parameters
    responses: dict[int, Any] = field(default_factory=dict)  # status -> type, None = no body
    stream: bool = False  # the 200 may also be a text/event-stream
    content_type: str = "application/json"  # of the responses
    request_type: str = "application/json"


def operation(
    *,
    summary: str = "",
    request: Any = None,
    query: type[BaseModel] | None = None,
    responses: dict[int, Any] | None = None,
    stream: bool = False,
    content_type: str = "application/json",
    request_type: str = "application/json",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Describe a handler method for the OpenAPI document (it changes nothing at run time)."""

    def mark(func: Callable[..., Any]) -> Callable[..., Any]:
        func.__openapi__ = Operation(  # type: ignore[attr-defined]
            summary, request, query, dict(responses or {}), stream, content_type, request_type
        )
        return func

    return mark


def routes_of(router: Any) -> Iterator[tuple[str, type[web.RequestHandler]]]:
    """``(path regex, handler class)`` of every route a tornado application (or router) serves,
    in matching order, host rules and nested routers walked."""
    for rule in getattr(router, "rules", []):
        target = rule.target
        if isinstance(target, type) and issubclass(target, web.RequestHandler):
            if isinstance(rule.matcher, routing.PathMatches):
                yield rule.matcher.regex.pattern, target
        elif isinstance(target, routing.Router):
            yield from routes_of(target)
    if isinstance(router, web.Application):
        yield from routes_of(router.default_router)


def _template(pattern: str, names: list[str]) -> tuple[str, list[str]] | None:
    """``/a/([0-9a-f]{32})$`` → (``/a/{id}``, [``[0-9a-f]{32}``]); None for a pattern tornado
    cannot reverse (a catch-all, say)."""
    matcher = routing.PathMatches(pattern)
    path = matcher._path
    if path is None or matcher._group_count != path.count("%s"):
        return None
    groups = _groups(pattern.rstrip("$"))
    while len(names) < len(groups):
        names.append(f"arg{len(names)}")
    for name in names[: len(groups)]:
        path = path.replace("%s", "{" + name + "}", 1)
    return path, groups


def _groups(pattern: str) -> list[str]:
    """The regexes of the top-level capture groups of ``pattern``."""
    out, depth, start, i = [], 0, 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "(":
            depth += 1
            if depth == 1:
                start = i + 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                out.append(re.sub(r"^\?P<\w+>", "", pattern[start:i]))
        i += 1
    return out


def _methods(cls: type[web.RequestHandler]) -> list[str]:
    if issubclass(cls, websocket.WebSocketHandler):
        return ["get"]
    return [m for m in METHODS if getattr(cls, m) is not getattr(web.RequestHandler, m)]


def _params(func: Callable[..., Any]) -> list[str]:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in list(sig.parameters.values())[1:]
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def _markdown(text: str) -> str:
    """A docstring with its reST literals (double backquotes) as markdown ones (single)."""
    return inspect.cleandoc(text).replace("``", "`")


def _first_line(text: str | None) -> str:
    return (_markdown(text).split("\n\n")[0].replace("\n", " ") if text else "").strip()


class _Schemas:
    """Collects the JSON Schemas of many types into one ``components/schemas``."""

    def __init__(self) -> None:
        self.wanted: list[tuple[Any, Mode]] = []

    def ref(self, tp: Any, mode: Mode) -> dict[str, Any]:
        """A placeholder replaced by the type's schema in :meth:`resolve`."""
        self.wanted.append((tp, mode))
        return {"$oraculo": len(self.wanted) - 1}

    def resolve(self, tree: Any) -> tuple[Any, dict[str, Any]]:
        """``tree`` with every placeholder replaced, and the definitions they refer to."""
        inputs = [
            (i, mode, TypeAdapter(tp).core_schema) for i, (tp, mode) in enumerate(self.wanted)
        ]
        mapping, defs = GenerateJsonSchema(ref_template=REF).generate_definitions(inputs)
        schemas = {i: mapping[(i, mode)] for i, mode, _ in inputs}

        def walk(node: Any) -> Any:
            if isinstance(node, dict):
                if set(node) == {"$oraculo"}:
                    return schemas[node["$oraculo"]]
                return {k: walk(v) for k, v in node.items()}
            if isinstance(node, list | tuple):
                return [walk(v) for v in node]
            return node

        return walk(tree), {str(k): v for k, v in defs.items()}


def document(
    routes: Iterable[tuple[str, type[web.RequestHandler]]],
    *,
    title: str,
    version: str,
    description: str = "",
    prefix: str = "/",
    include: Callable[[str], bool] = lambda path: True,
    error_schema: type[BaseModel] | None = None,
    security: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` whose path (with ``prefix`` cut off, and a
    leading ``/`` kept) passes ``include``. ``error_schema`` describes every error answer."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for pattern, cls in routes:
        methods = _methods(cls)
        if not methods:
            continue
        names = _params(getattr(cls, methods[0]))
        found = _template(pattern, names)
        if found is None:
            continue
        path, groups = found
        if not path.startswith(prefix):
            continue
        path = "/" + path[len(prefix) :]
        if not include(path) or path in paths:
            continue  # tornado answers with the first match: later ones are unreachable
        item: dict[str, Any] = {}
        for method in methods:
            func = getattr(cls, method)
            op: Operation = getattr(func, "__openapi__", None) or Operation()
            item[method] = _operation(
                cls, method, func, op, path, names, groups, schemas, error_schema
            )
        paths[path] = item
    error = schemas.ref(error_schema, "serialization") if error_schema is not None else None
    (resolved, error), defs = schemas.resolve((dict(sorted(paths.items())), error))
    if error_schema is not None:
        defs.setdefault(error_schema.__name__, error)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": resolved,
        "components": {"schemas": defs},
    }
    if security:
        doc["components"]["securitySchemes"] = security
        doc["security"] = [{name: []} for name in security]
    return doc


def _operation(
    cls: type[web.RequestHandler],
    method: str,
    func: Callable[..., Any],
    op: Operation,
    path: str,
    names: list[str],
    groups: list[str],
    schemas: _Schemas,
    error_schema: type[BaseModel] | None,
) -> dict[str, Any]:
    summary = op.summary or _first_line(func.__doc__) or _first_line(cls.__doc__)
    out: dict[str, Any] = {
        "operationId": method + re.sub(r"[^A-Za-z0-9]+", "_", path).rstrip("_"),
        "summary": summary,
        "tags": [path.strip("/").split("/")[2] if path.startswith("/api/v1/") else "service"],
    }
    if cls.__doc__:
        out["description"] = _markdown(cls.__doc__)
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": g}}
        for name, g in zip(names, groups, strict=False)
    ]
    if op.query is not None:
        for name, info in op.query.model_fields.items():
            schema = schemas.ref(info.annotation, "validation")
            params.append(
                {
                    "name": info.alias or name,
                    "in": "query",
                    "required": info.is_required(),
                    "description": info.description or "",
                    "schema": schema,
                }
            )
    if params:
        out["parameters"] = params
    if op.request is not None:
        out["requestBody"] = {
            "required": True,
            "content": {op.request_type: {"schema": schemas.ref(op.request, "validation")}},
        }
    responses: dict[str, Any] = {}
    if issubclass(cls, websocket.WebSocketHandler):
        responses["101"] = {"description": "Switching to the WebSocket protocol."}
    elif not op.responses:
        responses["200"] = {
            "description": "OK",
            "content": {op.content_type: {"schema": {"type": "object"}}},
        }
    for status, tp in sorted(op.responses.items()):
        if tp is None:
            responses[str(status)] = {"description": "No content."}
            continue
        content = {op.content_type: {"schema": schemas.ref(tp, "serialization")}}
        if op.stream and status == 200:
            content["text/event-stream"] = {"schema": {"type": "string"}}
        responses[str(status)] = {"description": _reason(status), "content": content}
    if error_schema is not None:
        responses["default"] = {
            "description": "An error, in the service's error envelope.",
            "content": {
                "application/json": {"schema": {"$ref": REF.format(model=error_schema.__name__)}}
            },
        }
    out["responses"] = responses
    return out


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return str(status)


def explorer_page(*, title: str, spec_url: str, static_url: str) -> str:
    """The API explorer: Swagger UI on ``spec_url``, every asset from ``static_url``."""
    t, spec, static = (html.escape(v, quote=True) for v in (title, spec_url, static_url))
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{t}</title>
<link rel="icon" type="image/png" href="{static}/swagger-ui/favicon-32x32.png">
<link rel="stylesheet" href="{static}/swagger-ui/swagger-ui.css">
</head>
<body>
<div id="explorer" data-spec-url="{spec}"></div>
<script src="{static}/swagger-ui/swagger-ui-bundle.js"></script>
<script src="{static}/explorer.js"></script>
</body>
</html>
"""
