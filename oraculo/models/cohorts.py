"""Cohort AI policies, enforced by the model service (see :mod:`oraculo.policy`).

Under the hub the service reads every group's members and ``oraculo_policy`` property from the
hub's API with its own service token (scopes ``list:groups`` and ``read:groups``, granted by the
``oraculo-models`` role), and re-reads them every ``ttl`` seconds: an instructor's change, or a
student joining a cohort, applies within that time, with no restart. Standalone (no hub), there
are no cohorts and nothing is refused here.

Before work starts: chat completions and the audio endpoints are refused (403, code
``ai_paused``, ``voice_off``) while a student's cohort has AI off or an exam window open, a model
the cohorts do not allow is refused (403, ``model_not_allowed``), and a student over the
cohort's daily token budget gets the budgets' 429 (``budget_exceeded``), counted from the same
usage store as :mod:`.budgets`. Embeddings are never refused, so memory search keeps working.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import httpx

from oraculo.policy import CohortPolicy, EffectivePolicy, combine

from .auth import Identity
from .budgets import BudgetExceeded, Budgets
from .errors import Forbidden, Overloaded
from .usage import iso, period_end

#: The group property of a cohort's own record (oraculo.hub.cohorts): its instructors.
COHORT_PROPERTY = "oraculo_cohort"

#: The policy feature each metered endpoint belongs to.
ENDPOINT_FEATURES = {
    "chat.completions": "chat",
    "audio.transcriptions": "voice",
    "audio.speech": "voice",
}


class PolicyRefused(Forbidden):
    """A cohort policy refuses this work now."""


class CohortPolicies:
    """The hub's groups with a policy, read every ``ttl`` seconds."""

    def __init__(self, api_url: str, api_token: str, log: Any, ttl: float = 10.0) -> None:
        self.api_url = api_url.rstrip("/")
        self.api_token = api_token
        self.log = log
        self.ttl = ttl
        self._groups: dict[str, tuple[frozenset[str], CohortPolicy]] | None = None
        #: cohort -> its instructors (from the cohort's record), read with the groups
        self._instructors: dict[str, frozenset[str]] = {}
        self._read_at = -1e18
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.api_token)

    async def _fetch(self) -> dict[str, tuple[frozenset[str], CohortPolicy]]:
        out: dict[str, tuple[frozenset[str], CohortPolicy]] = {}
        teachers: dict[str, frozenset[str]] = {}
        headers = {
            "Authorization": f"token {self.api_token}",
            "Accept": "application/jupyterhub-pagination+json",
        }
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            offset = 0
            while True:
                r = await client.get(
                    f"{self.api_url}/groups",
                    params={"offset": offset, "limit": 200},
                    headers=headers,
                )
                r.raise_for_status()
                body = r.json()
                items = body["items"] if isinstance(body, dict) else body
                for g in items:
                    cohort = (g.get("properties") or {}).get(COHORT_PROPERTY)
                    if isinstance(cohort, dict):
                        teachers[g["name"]] = frozenset(cohort.get("instructors") or ())
                    policy = CohortPolicy.from_properties(g.get("properties"))
                    if policy is not None:
                        out[g["name"]] = (frozenset(g.get("users") or ()), policy)
                nxt = body.get("_pagination", {}).get("next") if isinstance(body, dict) else None
                if not nxt:
                    self._instructors = teachers
                    return out
                offset = int(nxt["offset"])

    async def groups(self) -> dict[str, tuple[frozenset[str], CohortPolicy]]:
        if not self.enabled:
            return {}
        if time.monotonic() - self._read_at < self.ttl and self._groups is not None:
            return self._groups
        async with self._lock:
            if time.monotonic() - self._read_at < self.ttl and self._groups is not None:
                return self._groups
            try:
                self._groups = await self._fetch()
                self._read_at = time.monotonic()
            except (httpx.HTTPError, ValueError, KeyError) as e:
                if self._groups is None:
                    raise Overloaded(
                        "The model service cannot read the cohort policies from the hub yet.",
                        retry_after=5,
                        code="policies_unavailable",
                    ) from e
                # keep the last policies known (never "no policy"), and try again soon
                self.log.warning("could not re-read cohort policies from the hub: %s", e)
                self._read_at = time.monotonic() - self.ttl + 2
        return self._groups

    async def teaches(self, who: Identity, group: str) -> bool:
        """Whether ``who`` is an instructor of cohort ``group`` (they read its usage)."""
        if who.kind != "user" or not self.enabled:
            return False
        await self.groups()
        return who.name in self._instructors.get(group, frozenset())

    async def effective(self, who: Identity, now: dt.datetime | None = None) -> EffectivePolicy:
        if who.kind != "user":
            return EffectivePolicy()
        groups = await self.groups()
        mine = {name: pol for name, (users, pol) in groups.items() if who.name in users}
        return combine(mine, now)

    async def check(self, who: Identity, endpoint: str, budgets: Budgets) -> None:
        """Refuse ``endpoint`` for ``who`` when their cohorts' policy says so."""
        feature = ENDPOINT_FEATURES.get(endpoint)
        if feature is None or not self.enabled:
            return
        policy = await self.effective(who)
        pause = policy.refusal(feature)  # type: ignore[arg-type]
        if pause is not None:
            code = "ai_paused" if pause.reason in ("exam", "ai_off") else pause.reason
            retry = None
            if pause.until is not None:
                retry = max(1.0, (pause.until - dt.datetime.now(dt.UTC)).total_seconds())
            raise PolicyRefused(pause.message(feature), code=code, retry_after=retry)
        if feature == "chat" and policy.tokens_per_day is not None:
            now = time.time()
            used = (await budgets.used(f"user:{who.name}", "day", now)).get("tokens", 0.0)
            if used >= policy.tokens_per_day:
                reset = period_end("day", now)
                raise BudgetExceeded(
                    f"Over budget: cohort '{policy.tokens_cohort}' allows "
                    f"{policy.tokens_per_day} tokens per student per day and {who.name} used "
                    f"{used:.0f}. It resets at {iso(reset)}.",
                    retry_after=max(1.0, reset - now),
                )

    async def check_model(self, who: Identity, names: list[str]) -> None:
        """Refuse a model that none of ``who``'s cohorts allows (``names``: its name and
        aliases)."""
        if not self.enabled:
            return
        policy = await self.effective(who)
        if not policy.allows_model(*names):
            allowed = ", ".join(sorted(policy.models or ())) or "none"
            raise PolicyRefused(
                f"Model '{names[0]}' is not allowed in your cohorts ({', '.join(policy.cohorts)})."
                f" Allowed: {allowed}.",
                param="model",
                code="model_not_allowed",
            )
