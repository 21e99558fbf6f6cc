"""A conversation bound to the notebook the user works in: the server lists the open notebooks,
keeps the binding with the conversation, takes the context from that notebook and its live
kernel, and the notebook, chat "Run" (``/api/v1/execute`` with ``session``) and an agent run
share that one kernel's state. Through the real hub, kernels and the bundled model.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_server.services.contents.filemanager import FileContentsManager
from nbformat import v4

from oraculo.extensions.chat.context import ContextService
from oraculo.extensions.chat.mentions import find_mentions
from oraculo.kernels.namespace import render_variables, summarize_namespace
from tests.extensions.chat.test_chat import ask, assert_envelope, url
from tests.harness import HubClient, HubProcess, User, new_user

NOTEBOOK = "work/sales.ipynb"
SHARER = v4.new_notebook(
    cells=[
        v4.new_markdown_cell("You note labels with the note tool, then say what you noted."),
        v4.new_code_cell(
            '''def note(label: "Literal['alpha']") -> str:
    """Note a label in the kernel, and read what the notebook and the chat set there.

    Args:
        label: the label to note
    """
    global from_agent
    from_agent = label
    seen = [globals().get("from_notebook"), globals().get("from_chat")]
    return f"noted {label}; saw {seen}"'''
        ),
    ],
    metadata={
        "oraculo": {"agent": {"name": "sharer", "max_steps": 2, "require_tool": True}},
    },
)


@pytest.fixture(scope="module")
async def nina(models_hub: HubProcess) -> AsyncIterator[User]:
    client = HubClient(models_hub)
    user = await new_user(client, "nina")
    await user.spawn()
    yield user
    await user.client.aclose()
    await client.aclose()


@pytest.fixture(scope="module")
async def kernel(nina: User) -> str:
    """``work/sales.ipynb`` open on the Oráculo kernel (a session, as JupyterLab makes)."""
    nb = v4.new_notebook(
        cells=[
            v4.new_markdown_cell("# Sales"),
            v4.new_code_cell("import polars as pl"),
        ]
    )
    r = await nina.api("PUT", url(nina, "api/contents/work"), json={"type": "directory"})
    assert r.status_code in (200, 201), r.text
    r = await nina.api(
        "PUT",
        url(nina, f"api/contents/{NOTEBOOK}"),
        json={"type": "notebook", "format": "json", "content": nb},
    )
    assert r.status_code in (200, 201), r.text
    r = await nina.api(
        "POST",
        url(nina, "api/sessions"),
        json={"path": NOTEBOOK, "type": "notebook", "kernel": {"name": "oraculo"}},
    )
    assert r.status_code == 201, r.text
    kernel_id = str(r.json()["kernel"]["id"])
    # Run, not saved: the kernel's history has it, the file does not.
    out = await nina.execute(
        kernel_id,
        "import polars as pl\n"
        "regions = pl.DataFrame({'region': ['north', 'south'], 'revenue_eur': [1.5, 2.5]})",
        store_history=True,
    )
    assert out["error"] is None, out
    return kernel_id


def test_variable_summaries_with_and_without_previews() -> None:
    import numpy as np
    import pandas as pd
    import polars as pl

    ns = {
        "pl_df": pl.DataFrame({"city": ["Lima", "Quito"], "km": [12.5, 3.0]}),
        "pd_df": pd.DataFrame({"a": [1, 2, 3]}),
        "big": pd.DataFrame({"a": range(200_000)}),
        "arr": np.zeros((2, 3)),
        "n": 3,
    }
    found = {v["name"]: v for v in summarize_namespace(ns, preview_rows=2)}
    assert found["pl_df"]["preview"] == "city,km\nLima,12.5\nQuito,3.0\n"
    assert found["pd_df"]["preview"] == "a\n1\n2\n"
    assert "preview" not in found["big"]  # too big to preview
    assert found["arr"]["shape"] == [2, 3] and found["n"]["value"] == "3"
    text = render_variables(list(found.values()))
    assert "first rows of pl_df (CSV):\n    city,km\n    Lima,12.5" in text
    assert all("preview" not in v for v in summarize_namespace(ns))  # off by default


async def test_open_notebooks_are_listed(nina: User, kernel: str) -> None:
    r = await nina.api("GET", url(nina, "api/v1/chat/notebooks"))
    assert r.status_code == 200, r.text
    listed = {n["path"]: n for n in r.json()["notebooks"]}
    assert listed[NOTEBOOK]["kernel_id"] == kernel
    assert listed[NOTEBOOK]["kernel_name"] == "oraculo"
    assert listed[NOTEBOOK]["state"] in ("idle", "busy", "starting")


async def test_a_bound_conversation_takes_the_live_kernel_as_context(
    nina: User, kernel: str
) -> None:
    body = ask(
        "Which columns does the regions dataframe have?",
        context={"notebook": NOTEBOOK},
        store=True,
    )
    r = await nina.api("POST", url(nina, "api/v1/chat"), json=body)
    assert r.status_code == 200, r.text
    extra = r.json()["oraculo"]
    assert extra["binding"] == {"notebook": NOTEBOOK, "kernel": kernel}
    context = extra["context"]
    assert context["notebook"] == {"path": NOTEBOOK, "cells": 2}
    assert context["variables"] >= 1 and context["previews"] >= 1, context
    assert context["kernel_inputs"] >= 1, context  # run in the kernel, not in the file
    cid = extra["conversation_id"]
    r = await nina.api("GET", url(nina, f"api/v1/chat/conversations/{cid}"))
    assert r.json()["notebook"] == NOTEBOOK  # the binding is kept with the conversation

    # The next turn names only the conversation: the binding still applies.
    r = await nina.api("POST", url(nina, "api/v1/chat"), json=ask("And rows?", conversation_id=cid))
    assert r.status_code == 200, r.text
    assert r.json()["oraculo"]["binding"]["kernel"] == kernel

    # Unbind, then bind again.
    conv = url(nina, f"api/v1/chat/conversations/{cid}")
    r = await nina.api("PATCH", conv, json={"notebook": None})
    assert r.status_code == 200 and r.json()["notebook"] is None, r.text
    r = await nina.api("POST", url(nina, "api/v1/chat"), json=ask("hi", conversation_id=cid))
    assert r.json()["oraculo"]["binding"] is None
    r = await nina.api("PATCH", conv, json={"notebook": NOTEBOOK, "title": "Sales"})
    assert r.json()["notebook"] == NOTEBOOK and r.json()["title"] == "Sales"

    # A bound notebook that is not open gives its cells but no kernel; one that is gone, none.
    r = await nina.api(
        "POST", url(nina, "api/v1/chat/conversations"), json={"notebook": "gone.ipynb"}
    )
    assert r.status_code == 201 and r.json()["notebook"] == "gone.ipynb", r.text
    gone = r.json()["id"]
    r = await nina.api("POST", url(nina, "api/v1/chat"), json=ask("hi", conversation_id=gone))
    assert r.status_code == 200, r.text
    assert r.json()["oraculo"]["binding"] == {"notebook": "gone.ipynb", "kernel": None}
    assert "notebook gone.ipynb: not found" in r.json()["oraculo"]["context"]["skipped"]


async def test_mentioned_text_is_in_the_prompt(tmp_path: Path) -> None:
    """The assembled prompt holds a short file whole and a long one's first lines."""
    (tmp_path / "notes.md").write_text("Revenue is in euros.\n")
    (tmp_path / "long.csv").write_text("".join(f"{i},{i * i}\n" for i in range(3000)))
    service = ContextService(contents_manager=FileContentsManager(root_dir=str(tmp_path)))
    turn = [{"role": "user", "content": "Read @notes.md and @long.csv."}]
    done = await service.assemble(
        [], turn, context_length=2048, max_tokens=64, workspace=False, mentions=True
    )
    system = done.messages[0]["content"]
    assert "### @notes.md (file, whole)\nRevenue is in euros." in system
    assert "### @long.csv (file, a sample)\n0,0\n1,1\n2,4" in system
    assert "2999,8994001" not in system
    assert done.prompt_tokens_estimate <= 2048 - 64


def test_mentions_are_found_in_a_question() -> None:
    text = "Compare @regions with @work/q1.csv. Mail me@example.org; @regions again, @_x."
    assert find_mentions(text) == ["regions", "work/q1.csv", "_x"]
    assert find_mentions("no mentions, @ alone, @.hidden") == []


async def test_file_and_variable_mentions_go_into_the_context(
    nina: User, kernel: str, models_hub: HubProcess
) -> None:
    """``@variable`` (the bound notebook's kernel) and ``@file`` (under the home): whole when
    short, their first lines when long; what is not found, hidden or outside the home is only
    noted; and the prompt's share of the window is said."""
    files = {
        "work/notes.md": "Revenue is in euros.\n",
        "work/long.csv": "n,square\n" + "".join(f"{i},{i * i}\n" for i in range(3000)),
    }
    for path, text in files.items():
        r = await nina.api(
            "PUT",
            url(nina, f"api/contents/{path}"),
            json={"type": "file", "format": "text", "content": text},
        )
        assert r.status_code in (200, 201), r.text
    # a hidden file (the contents API refuses to make one): JupyterLab does not show it
    (models_hub.data_dir / "users" / nina.name / "work" / ".secret.txt").write_text("hidden\n")
    question = (
        "Use @regions, @work/notes.md and @work/long.csv. Not @work/.secret.txt, "
        "@work/../../../etc/passwd, @nothing_here or me@example.org."
    )
    body = ask(question, context={"notebook": NOTEBOOK, "mentions": True})
    r = await nina.api("POST", url(nina, "api/v1/chat"), json=body, timeout=180)
    assert r.status_code == 200, r.text
    extra = r.json()["oraculo"]
    context = extra["context"]
    sent = {m["name"]: m for m in context["mentions"]}
    assert set(sent) == {"regions", "work/notes.md", "work/long.csv"}, context
    assert sent["regions"]["kind"] == "variable" and sent["regions"]["whole"] is True
    assert sent["work/notes.md"] == {**sent["work/notes.md"], "kind": "file", "whole": True}
    assert sent["work/long.csv"]["kind"] == "file" and sent["work/long.csv"]["whole"] is False
    skipped = "; ".join(context["skipped"])
    for name in ("work/.secret.txt", "work/../../../etc/passwd", "nothing_here"):
        assert f"@{name}: no such file or variable" in skipped, skipped
    assert "example.org" not in skipped
    # the prompt's size, and the context's part of it, against the model's window
    assert 0 < context["context_tokens"] < extra["prompt_tokens_estimate"]
    r = await nina.api("POST", url(nina, "api/v1/chat"), json=ask(question), timeout=180)
    assert "mentions" not in r.json()["oraculo"]["context"]  # only when asked
    body = ask("@regions?", context={"mentions": True})
    r = await nina.api("POST", url(nina, "api/v1/chat"), json=body, timeout=180)
    skipped = "; ".join(r.json()["oraculo"]["context"]["skipped"])
    assert "@regions: no such file (bind a notebook for its variables)" in skipped


async def test_bad_bindings_are_400_and_other_users_are_refused(
    nina: User, models_hub: HubProcess
) -> None:
    r = await nina.api("POST", url(nina, "api/v1/chat/conversations"), json={"title": "x"})
    conv = url(nina, f"api/v1/chat/conversations/{r.json()['id']}")
    for body in (
        {},
        {"title": None},
        {"notebook": "../../etc/passwd.ipynb"},
        {"notebook": "/abs.ipynb"},
        {"notebook": "notes.txt"},
        {"notebook": 3},
    ):
        assert_envelope(await nina.api("PATCH", conv, json=body), 400, "invalid_request")
    r = await nina.api(
        "POST", url(nina, "api/v1/chat/conversations"), json={"notebook": "a/../../b.ipynb"}
    )
    assert_envelope(r, 400, "invalid_request")
    client = HubClient(models_hub)
    try:
        other = await new_user(client, "nils")
        for method, path, body in (
            ("GET", "api/v1/chat/notebooks", None),
            ("PATCH", conv.split(f"/user/{nina.name}/")[1], {"notebook": None}),
        ):
            kw: dict[str, Any] = {"json": body} if body is not None else {}
            r = await other.api(method, url(nina, path), **kw)
            assert r.status_code == 403, (path, r.status_code)
        await other.client.aclose()
    finally:
        await client.aclose()


async def test_notebook_chat_and_agent_share_one_kernel(nina: User, kernel: str) -> None:
    """A variable set from each of the three is seen by the others."""
    typed = await nina.execute(kernel, "from_notebook = 'set in the notebook'")
    assert typed["error"] is None
    # chat "Run": the execute API naming the bound notebook
    r = await nina.api(
        "POST",
        url(nina, "api/v1/execute"),
        json={"code": "from_chat = 'set by chat'\nprint(from_notebook)", "session": NOTEBOOK},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["session"] == kernel and r.json()["stdout"] == "set in the notebook\n"
    # an agent run bound to the same notebook
    r = await nina.api("PUT", url(nina, "api/contents/agents"), json={"type": "directory"})
    r = await nina.api(
        "PUT",
        url(nina, "api/contents/agents/sharer.ipynb"),
        json={"type": "notebook", "format": "json", "content": SHARER},
    )
    assert r.status_code in (200, 201), r.text
    r = await nina.api(
        "POST",
        url(nina, "api/v1/agents/runs"),
        json={"goal": "Note the label alpha.", "agents": ["sharer"], "session": NOTEBOOK},
    )
    assert r.status_code == 201, r.text
    events: list[dict[str, Any]] = []
    async with nina.client.http.stream(
        "GET",
        url(nina, f"api/v1/agents/runs/{r.json()['id']}/events"),
        headers=nina.auth,
        timeout=200,
    ) as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    result = next(e for e in events if e["type"] == "tool_result")
    assert "saw ['set in the notebook', 'set by chat']" in result["content"], result
    # ...and the notebook sees what chat and the agent set
    out = await nina.execute(kernel, "print(from_chat, from_agent)")
    assert out["stdout"] == "set by chat alpha\n", out
    nbformat.validate(nbformat.from_dict(SHARER))
