"""The sandbox limits a user's cohorts set (see :mod:`oraculo.policy`), read when a kernel
starts: the provisioner asks the model service for its user's policy with the server's token,
so a change an instructor makes applies at the next kernel start, without restarting the
server."""

from __future__ import annotations

import os
from typing import Any

import httpx

from oraculo.kernels.credentials import server_token


async def cohort_sandbox(log: Any) -> dict[str, Any]:
    """The cohorts' sandbox limits for this server's user; ``{}`` without a model service or
    when it does not answer (the operator's limits still hold then)."""
    url = os.environ.get("ORACULO_MODELS_URL", "")
    token = server_token()
    if not url or not token:
        return {}
    try:
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            r = await client.get(
                url.rstrip("/") + "/v1/policy", headers={"Authorization": f"Bearer {token}"}
            )
    except httpx.HTTPError as e:
        log.warning("Could not read the cohort sandbox limits: %s", type(e).__name__)
        return {}
    if r.status_code != 200:
        log.warning("Could not read the cohort sandbox limits: HTTP %d", r.status_code)
        return {}
    sandbox = r.json().get("sandbox") or {}
    return dict(sandbox) if isinstance(sandbox, dict) else {}
