"""Checks a response against an OpenAPI document: its path and method are documented, its status
is (or the ``default`` error answer covers it), and a JSON body validates against the schema."""

from __future__ import annotations

import re
from typing import Any

import httpx
import jsonschema


def template_for(doc: dict[str, Any], path: str) -> str:
    """The document's path template that ``path`` (relative to the server's URL) matches."""
    for template, item in doc["paths"].items():
        regex = template
        for op in item.values():
            for p in op.get("parameters", []):
                if p["in"] == "path":
                    regex = regex.replace("{" + p["name"] + "}", f"(?:{p['schema']['pattern']})")
        if re.fullmatch(regex, path):
            return template
    raise AssertionError(f"{path} is not in the document")


def check(doc: dict[str, Any], method: str, path: str, r: httpx.Response) -> str:
    """Assert that ``r`` (to ``method path``) is what the document says; the template checked."""
    template = template_for(doc, path.split("?")[0])
    op = doc["paths"][template].get(method.lower())
    assert op is not None, f"{method} {template} is not in the document"
    answers = op["responses"]
    answer = answers.get(str(r.status_code))
    if answer is None:
        assert r.status_code >= 400 and "default" in answers, (
            f"{method} {path} answered {r.status_code}, which the document does not list"
        )
        answer = answers["default"]
    if "content" not in answer:
        assert not r.content, f"{method} {path}: {r.status_code} should have no body"
        return template
    ctype = r.headers.get("content-type", "").split(";")[0].strip()
    assert ctype in answer["content"], f"{method} {path}: {ctype} not among {answer['content']}"
    if ctype == "application/json":
        schema = {**answer["content"][ctype]["schema"], "components": doc["components"]}
        jsonschema.validate(r.json(), schema, cls=jsonschema.Draft202012Validator)
    return template


def check_recorded(
    recorded: list[tuple[str, str, httpx.Response]], docs: dict[str, dict[str, Any]]
) -> tuple[int, list[str]]:
    """Check answers the test suite received (``harness.RECORDED``) against the documents
    (``{"workspace": ..., "models": ...}``): how many were checked, and what did not hold.

    Left out: paths no document has (a plugin's route, when the documents come from a server
    without it), redirects (the hub's sign-in), and bodies that are not JSON (streams,
    downloads): the route-coverage and per-operation tests cover those.
    """
    checked, wrong = 0, []
    for method, path, r in recorded:
        if path.startswith("/services/models/"):
            doc, rel = docs["models"], path[len("/services/models") :]
        else:
            doc, rel = docs["workspace"], re.sub(r"^/user/[^/]+", "", path)
        ctype = r.headers.get("content-type", "").split(";")[0].strip()
        if 300 <= r.status_code < 400 or (r.content and ctype != "application/json"):
            continue
        try:
            template = template_for(doc, rel)
        except AssertionError:
            continue
        if method.lower() not in doc["paths"][template] and r.status_code == 405:
            continue
        try:
            check(doc, method, rel, r)
        except (AssertionError, jsonschema.ValidationError) as e:
            wrong.append(f"{method} {path} -> {r.status_code}: {str(e).splitlines()[0][:300]}")
        checked += 1
    return checked, wrong
