"""What a user server loads, which is most of what it costs in memory (benchmarks/density.py).

Each check runs in a fresh interpreter, as a server starts: the MCP SDK waits for the first MCP
request, and LanceDB comes without pandas; both still work when asked for.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def run(code: str, cwd: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_features_load_without_the_mcp_sdk_until_it_is_asked_for(tmp_path: Path) -> None:
    out = run(
        """
        import importlib, sys
        from jupyter_server.serverapp import ServerApp
        from oraculo.extensions.app import DEFAULT_FEATURES
        for spec in DEFAULT_FEATURES:
            importlib.import_module(spec.split(":")[0])
        print(sorted(m for m in ("mcp", "starlette", "uvicorn", "httpx2") if m in sys.modules))
        from oraculo.extensions.mcp.feature import MCPFeature
        from traitlets.utils.importstring import import_item
        cls = import_item(MCPFeature.service_class.default_value)
        print(cls.__name__, "mcp" in sys.modules)
        """,
        tmp_path,
    )
    assert out.splitlines() == ["[]", "WorkspaceMCP True"]


def test_lancedb_loads_without_pandas_and_pandas_still_comes_when_asked_for(
    tmp_path: Path,
) -> None:
    out = run(
        """
        import asyncio, os, sys
        import pyarrow as pa
        from oraculo.extensions.memory.store import import_lancedb

        lancedb = import_lancedb()
        print("lancedb" in sys.modules, "pandas" in sys.modules)

        async def use():
            db = await lancedb.connect_async(os.path.abspath("db"))
            table = await db.create_table("t", pa.table({"key": ["a", "b"], "n": [1, 2]}))
            rows = (await table.query().where("n > 1").to_arrow()).to_pylist()
            print(rows, "pandas" in sys.modules)
            frame = await table.query().to_pandas()  # asks for pandas: it loads now
            print(len(frame), type(frame).__name__, "pandas" in sys.modules)

        asyncio.run(use())
        print(pa.table({"x": [3]}).to_pandas()["x"][0])
        """,
        tmp_path,
    )
    assert out.splitlines() == [
        "True False",
        "[{'key': 'b', 'n': 2}] False",
        "2 DataFrame True",
        "3",
    ]


def test_with_the_store_service_the_features_never_load_lancedb_or_arrow(tmp_path: Path) -> None:
    out = run(
        """
        import importlib, os, sys
        os.environ["ORACULO_STORES_URL"] = "http://127.0.0.1:9/services/stores/"
        from oraculo.extensions.app import DEFAULT_FEATURES
        for spec in DEFAULT_FEATURES:
            importlib.import_module(spec.split(":")[0])
        from oraculo.extensions.base.embeddings import EmbeddingClient
        from oraculo.extensions.memory.rag import WorkspaceIndex
        from oraculo.extensions.memory.service import MemoryService
        stores = [MemoryService(EmbeddingClient()).store, WorkspaceIndex(EmbeddingClient()).store]
        print([type(s).__name__ for s in stores])
        print(sorted(m for m in ("lancedb", "pyarrow", "lance") if m in sys.modules))
        """,
        tmp_path,
    )
    assert out.splitlines() == ["['RemoteLanceStore', 'RemoteLanceStore']", "[]"]


def test_the_panel_server_leaves_httpx_s_command_line_tool_out(tmp_path: Path) -> None:
    out = run(
        """
        import runpy, sys
        sys.argv = ["serve", "--help"]  # panel serve's help: it parses its arguments and exits
        try:
            runpy.run_module("oraculo.extensions.panels.serve", run_name="__main__")
        except SystemExit as e:
            print("exit", e.code)
        import httpx, oraculo.extensions.panels.chat  # what the panel apps use
        print("panel.command" in sys.modules, httpx.AsyncClient.__name__)
        print(sorted(m for m in ("rich", "click", "httpx._main") if sys.modules.get(m)))
        """,
        tmp_path,
    )
    assert out.splitlines()[-3:] == ["exit 0", "True AsyncClient", "[]"]
