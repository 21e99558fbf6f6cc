"""MkDocs hook: the parts of the docs site that are generated, at build time, from the code.

Markers in a page's markdown are replaced:

- ``<!-- oraculo:readme "### Heading" -->``: that section of the README (up to the next heading
  of the same or a higher level), so the guides and the README never drift apart;
- ``<!-- oraculo:config-reference -->``: every ``config=True`` trait of every configurable class
  in the ``oraculo`` package, with its type, default and help text;
- ``<!-- oraculo:api-reference workspace|models -->``: the OpenAPI document of the user server's
  API or of the model service (from ``python -m oraculo.extensions.api.dump``), as tables; the
  JSON documents themselves are copied into the site under ``api/``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from traitlets.config import Configurable

REPO = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"<!-- oraculo:(\S+)(?: (.*?))? -->")
_docs: dict[str, dict[str, Any]] = {}
_dump_dir: Path | None = None


def on_pre_build(config: Any) -> None:
    global _dump_dir
    _dump_dir = Path(tempfile.mkdtemp(prefix="oraculo-openapi-"))
    subprocess.run(
        [sys.executable, "-m", "oraculo.extensions.api.dump", str(_dump_dir)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    for name in ("workspace", "models"):
        _docs[name] = json.loads((_dump_dir / f"{name}-openapi.json").read_text())


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def replace(m: re.Match[str]) -> str:
        kind, arg = m.group(1), (m.group(2) or "").strip().strip('"')
        if kind == "readme":
            return readme_section(arg)
        if kind == "config-reference":
            return config_reference()
        if kind == "api-reference":
            return api_reference(_docs[arg], arg)
        raise ValueError(f"unknown marker oraculo:{kind} in {page.file.src_path}")

    return MARKER.sub(replace, markdown)


def on_files(files: Any, config: Any) -> Any:
    """The two OpenAPI documents, as files of the site (``api/<name>-openapi.json``)."""
    from mkdocs.structure.files import File

    for name, doc in _docs.items():
        content = json.dumps(doc, indent=1, ensure_ascii=False)
        files.append(File.generated(config, f"api/{name}-openapi.json", content=content))
    if _dump_dir is not None:
        shutil.rmtree(_dump_dir, ignore_errors=True)
    return files


# --- README sections ------------------------------------------------------------------------


def readme_section(heading: str) -> str:
    lines = (REPO / "README.md").read_text().splitlines()
    level = len(heading) - len(heading.lstrip("#"))
    try:
        start = lines.index(heading) + 1
    except ValueError:
        raise ValueError(f"README.md has no heading {heading!r}") from None
    end = start
    while end < len(lines):
        m = re.match(r"^(#+) ", lines[end])
        if m and len(m.group(1)) <= level:
            break
        end += 1
    body = "\n".join(lines[start:end])
    body = body.replace("](docs/", "](")  # the README's images, from the docs folder
    # headings inside the section sit one level below the page's title
    return re.sub(r"^#(#+) ", lambda h: "#" * max(2, len(h.group(1))) + " ", body, flags=re.M)


# --- configuration reference ----------------------------------------------------------------

SKIP = ("oraculo.extensions.panels.apps", "oraculo.__main__", "oraculo.models.__main__")


def configurables() -> list[type[Configurable]]:
    import oraculo

    found: dict[str, type[Configurable]] = {}
    for mod in pkgutil.walk_packages(oraculo.__path__, "oraculo."):
        if mod.name.startswith(SKIP) or mod.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(mod.name)
        except Exception:
            continue  # an optional dependency missing: its classes are not documented here
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(cls, Configurable)
                and cls.__module__ == mod.name
                and cls.class_own_traits(config=True)
            ):
                found[f"{cls.__module__}.{cls.__name__}"] = cls
    return [found[k] for k in sorted(found, key=lambda k: k.rsplit(".", 1)[1])]


def config_reference() -> str:
    out = []
    for cls in configurables():
        doc = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        out.append(f"### {cls.__name__}\n\n`{cls.__module__}.{cls.__name__}`. {doc}\n")
        for name, trait in sorted(cls.class_own_traits(config=True).items()):
            default = trait.default_value_repr()
            if len(default) > 80:
                default = default[:77] + "..."
            help_text = inspect.cleandoc(trait.help or "(no help text)").replace("\n", " ")
            out.append(
                f"`c.{cls.__name__}.{name}` · *{type(trait).__name__}* · default "
                f"`{default}`\n: {help_text}\n"
            )
    return "\n".join(out)


# --- API reference ----------------------------------------------------------------------------


def _schema_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return f"`{schema['$ref'].rsplit('/', 1)[1]}`"
    if "anyOf" in schema:
        return " or ".join(_schema_name(s) for s in schema["anyOf"])
    return f"`{schema.get('type', 'any')}`"


def api_reference(doc: dict[str, Any], name: str) -> str:
    server = doc.get("servers", [{}])[0].get("url", "")
    out = [
        f"Served under `{server}`; the whole document: "
        f"[{name}-openapi.json](api/{name}-openapi.json) (OpenAPI {doc['openapi']}).\n",
        "| Method and path | What | Body | Answers |",
        "| --- | --- | --- | --- |",
    ]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            body = op.get("requestBody", {}).get("content", {})
            body_s = ", ".join(_schema_name(c["schema"]) for c in body.values()) or "—"
            answers = []
            for status, answer in op["responses"].items():
                content = answer.get("content", {})
                kinds = ", ".join(_schema_name(c["schema"]) for c in content.values())
                answers.append(f"{status} {kinds}".strip())
            summary = (op.get("summary") or "").replace("|", "\\|")
            path_s = path.replace("|", "\\|")
            out.append(
                f"| `{method.upper()} {path_s}` | {summary} | {body_s} | {'; '.join(answers)} |"
            )
    out.append("\n### Schemas\n")
    for schema_name, schema in doc["components"]["schemas"].items():
        props = schema.get("properties", {})
        fields = ", ".join(
            f"`{k}`{'*' if k in schema.get('required', []) else ''}" for k in props
        )
        out.append(f"- **{schema_name}**: {fields or _schema_name(schema)}")
    out.append("\n(`*`: required)")
    return "\n".join(out)
