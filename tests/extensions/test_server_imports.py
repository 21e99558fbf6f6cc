"""What a user server loads, which is most of what it costs in memory (benchmarks/density.py).

Each check runs in a fresh interpreter, as a server starts: the MCP SDK waits for the first MCP
request, and LanceDB comes without pandas; both still work when asked for.
"""

from __future__ import annotations

import json
import socket as sockets
import subprocess
import sys
import textwrap
import time
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


def test_the_panel_server_serves_without_the_commands_it_never_runs(tmp_path: Path) -> None:
    """The real command line of a user's panel server (oraculo.extensions.panels.proxy), with a
    probe app in place of ours: a page is served, through the Unix socket and prefix, and the
    process that serves it has not loaded httpx's command-line tool or Panel's other commands."""
    import httpx

    from oraculo.extensions.panels.proxy import _command, app_paths

    probe = tmp_path / "probe.py"
    probe.write_text(
        textwrap.dedent(
            """
            import json, sys
            import httpx, panel as pn
            import oraculo.extensions.panels.chat  # what our apps import
            names = ("rich", "click", "httpx._main", "requests", "urllib3", "panel.command.bundle",
                     "panel.command.convert", "panel.io.convert")
            loaded = sorted(m for m in names if sys.modules.get(m))
            with open(sys.argv[0] + ".json", "w") as f:
                json.dump({"loaded": loaded, "serve": "panel.command.serve" in sys.modules}, f)
            pn.pane.Markdown("probe answered").servable()
            """
        )
    )
    socket = str(tmp_path / "panel.sock")
    command = _command(socket, "/user/ana/")
    apps = len(app_paths())
    command = [*command[:3], str(probe), *command[3 + apps :]]
    log = tmp_path / "panel.log"
    with log.open("w") as out:
        server = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):  # until it listens on the socket
            assert server.poll() is None, log.read_text()[-3000:]
            with sockets.socket(sockets.AF_UNIX) as probe_socket:
                if probe_socket.connect_ex(socket) == 0:
                    break
            time.sleep(0.1)
        else:
            raise AssertionError("the panel server did not listen within a minute")
        with httpx.Client(transport=httpx.HTTPTransport(uds=socket), timeout=30) as client:
            page = client.get("http://panels/user/ana/oraculo-panels/probe")
        assert page.status_code == 200, page.text[:500]
        assert "<title>Panel Application</title>" in page.text  # the probe's page, rendered
        seen = json.loads((tmp_path / "probe.py.json").read_text())
        assert seen == {"loaded": [], "serve": True}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_panel_server_command_answers_bad_arguments_as_panel_serve_does(tmp_path: Path) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "oraculo.extensions.panels.serve", "--no-such-option"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "unrecognized arguments: --no-such-option" in bad.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "oraculo.extensions.panels.serve", "nowhere.py", "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 1, missing.stderr[-2000:]
    assert "nowhere.py" in missing.stderr
