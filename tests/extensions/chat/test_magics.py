"""``%%chat --insert/--code``, ``{df}`` and ``--sample``, and ``%explain``, in a real Oráculo
kernel of a user's server (the provisioner's token, the real model service); the new cell is
IPython's ``set_next_input`` payload in the ``execute_reply``, which JupyterLab turns into a
cell below.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import pandas as pd
import polars as pl
import pytest
import websockets

from oraculo.kernels import chat_inputs
from tests.harness import HubClient, HubProcess, User, execute_request, new_user


@pytest.fixture(scope="module")
async def mira(models_hub: HubProcess) -> AsyncIterator[User]:
    client = HubClient(models_hub)
    user = await new_user(client, "mira")
    await user.spawn()
    yield user
    await user.client.aclose()
    await client.aclose()


async def run_cell(user: User, kernel: str, code: str, timeout: float = 180) -> dict[str, Any]:
    """Run ``code`` as JupyterLab does (in the history); stdout, stderr, error and the
    execute_reply's payloads."""
    msg_id, request = execute_request(code, store_history=True)
    out: dict[str, Any] = {"stdout": "", "stderr": "", "error": None, "payload": []}
    async with websockets.connect(
        user.kernel_ws_url(kernel), additional_headers=user.auth, max_size=None
    ) as ws:
        await ws.send(json.dumps(request))

        async def collect() -> None:
            idle = replied = False
            while not (idle and replied):
                msg = json.loads(await ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    out[content["name"]] += content["text"]
                elif kind == "error":
                    out["error"] = content["ename"]
                elif kind == "execute_reply":
                    out["payload"] = content.get("payload") or []
                    replied = True
                elif kind == "status" and content["execution_state"] == "idle":
                    idle = True

        await asyncio.wait_for(collect(), timeout)
    return out


def next_input(out: dict[str, Any]) -> str | None:
    for p in out["payload"]:
        if p.get("source") == "set_next_input" and p.get("replace") is False:
            return str(p["text"])
    return None


def test_interpolation_samples_and_code_blocks() -> None:
    ns = {
        "trips": pl.DataFrame({"city": ["Lima", "Quito", "Cusco"], "km": [12.5, 3.0, 7.25]}),
        "frame": pd.DataFrame({"a": [1, 2]}),
        "n": 41,
    }
    text, used = chat_inputs.interpolate("Mean km in {trips}? {{literal}} {missing} {n}", ns, 2)
    assert used == ["trips", "n"]
    assert (
        "trips = DataFrame with 3 rows × 2 columns; first 2 rows (CSV):\ncity,km\nLima,12.5" in text
    )
    assert "{literal}" in text and "{missing}" in text and "n = 41" in text
    sample = chat_inputs.samples(["frame"], ns, 1)
    assert (
        sample == "Sample of frame: DataFrame with 2 rows × 1 columns; first 1 rows (CSV):\na\n1\n"
    )
    with pytest.raises(KeyError):
        chat_inputs.samples(["nope"], ns)
    reply = "Try:\n```bash\nls\n```\nthen\n```python\nprint(trips['km'].mean())\n```\n"
    assert chat_inputs.first_code_block(reply) == "print(trips['km'].mean())\n"
    assert chat_inputs.first_code_block("no code here") is None
    # --code: one fenced block; the reply stops at its closing fence (or is cut short)
    assert chat_inputs.fenced_code("```python\nx = 1\nprint(x)") == "x = 1\nprint(x)\n"
    assert chat_inputs.fenced_code("Here:\n```py\nx = 1\n```\nbye") == "x = 1\n"
    assert chat_inputs.fenced_code("```bash\nls") is None
    assert chat_inputs.fenced_code("plain words") is None
    assert chat_inputs.parses("%timeit x = 1\nprint(x)") is None
    assert chat_inputs.parses("1.1.1.1") == "SyntaxError: invalid syntax (line 1)"
    assert chat_inputs.describe_mention(ns["frame"], 5)[1] is True  # 2 rows: all of it
    assert chat_inputs.describe_mention(ns["trips"], 2)[1] is False  # first 2 of 3 rows
    assert chat_inputs.describe_mention("y" * 5000)[1] is False  # shortened
    assert len(chat_inputs.describe_value("x" * 5000)) == chat_inputs.MAX_VALUE_CHARS


def test_last_error_finds_the_cell_and_the_traceback() -> None:
    saved = getattr(sys, "last_value", None)
    try:
        try:
            {"a": 1}["b"]
        except KeyError as e:
            sys.last_value = e
        error = chat_inputs.last_error(None)
        assert error is not None
        assert error["error"] == "KeyError: 'b'"
        assert "Traceback (most recent call last)" in error["traceback"]
        prompt = chat_inputs.explain_prompt(error)
        assert "KeyError: 'b'" in prompt and "```python" in prompt
    finally:
        if saved is None:
            del sys.last_value
        else:
            sys.last_value = saved


async def test_chat_inserts_code_and_explains_an_error(mira: User) -> None:
    kernel = await mira.start_kernel()  # the Oráculo kernelspec
    out = await run_cell(
        mira,
        kernel,
        "import polars as pl\ntrips = pl.DataFrame({'city': ['Lima', 'Quito'], 'km': [12.5, 3.0]})",
    )
    assert out["error"] is None, out
    # --code: one fenced block, greedy; the code goes into a new cell below, and runs.
    out = await run_cell(
        mira,
        kernel,
        "%%chat --code --new --seed 1 --max-tokens 60 --sample trips\n"
        "Write Python that prints the mean of the km column of {trips}. "
        "Reply with this code: print(trips['km'].mean())",
    )
    assert out["error"] is None and out["stderr"] == "", out
    code = next_input(out)
    assert code and code.strip() in out["stdout"], out
    assert "(inserted in a new cell below)" in out["stdout"]
    ran = await run_cell(mira, kernel, code)  # what the 135M model wrote varies; it runs
    assert ran["error"] is None, (code, ran)
    # {trips} and --sample reached the model: the stored question holds the first rows
    r = await mira.api("GET", f"/user/{mira.name}/api/v1/chat/conversations")
    cid = r.json()["conversations"][0]["id"]
    r = await mira.api("GET", f"/user/{mira.name}/api/v1/chat/conversations/{cid}")
    asked = r.json()["messages"][0]["content"]
    assert "trips = DataFrame with 2 rows × 2 columns; first 2 rows (CSV):\ncity,km\nLima,12.5" in (
        asked
    ), asked
    assert "Sample of trips: DataFrame" in asked and chat_inputs.CODE_INSTRUCTION in asked
    # --insert: the reply's first code block, when it has one; a reply without says so.
    out = await run_cell(
        mira,
        kernel,
        "%%chat --insert --seed 2 --max-tokens 80 --temperature 0\n"
        "Show a Python code block that prints the km column of trips.",
    )
    assert out["error"] is None, out
    inserted = next_input(out)
    if inserted is None:
        assert "no code block in the reply to insert" in out["stderr"], out
    else:
        assert inserted.strip() in out["stdout"]
    out = await run_cell(mira, kernel, "%%chat --sample nope\nhi")
    assert "--sample nope: no such variable" in out["stderr"]
    # %explain: the last error, with its traceback and cell, goes to the model.
    out = await run_cell(mira, kernel, "%explain")
    assert "no error in this kernel yet" in out["stdout"], out
    out = await run_cell(mira, kernel, "trips['distance']")
    assert out["error"] is not None
    out = await run_cell(mira, kernel, "%explain --max-tokens 12 --seed 3")
    assert out["error"] is None and out["stderr"] == "", out
    assert out["stdout"].startswith("Explaining ColumnNotFoundError"), out["stdout"][:200]
    assert "smollm2-135m-instruct" in out["stdout"].rpartition("\n\n— ")[2]
    r = await mira.api("GET", f"/user/{mira.name}/api/v1/chat/conversations")
    titles = [c["title"] for c in r.json()["conversations"]]
    assert any(t.startswith("Explain this error from my notebook") for t in titles), titles
