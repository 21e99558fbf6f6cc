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
