"""A cohort's AI policy, and what several cohorts' policies mean for one student.

The policy is kept in the hub, as the JupyterHub group property ``oraculo_policy`` of the
cohort's group (set through ``PUT /hub/api/cohorts/<cohort>/policy``, validated there, or the
group properties API). The model service reads every group's policy from the hub (cached for
a few seconds) and enforces it; the user's server asks the model service for its user's
effective policy (``GET /services/models/v1/policy``) before chat, voice and agents work, and
the kernel provisioner applies its sandbox limits when a kernel starts.

How the policies of a student's cohorts combine (:func:`combine`):

- *Switches* that take AI away win from any cohort: AI off in one cohort, or an exam window
  open in one cohort, pauses chat, voice, agents and ``%%chat`` (plain code still runs).
- *Allowances* take the most generous cohort: the models (the union; a cohort that names none
  allows every model), the daily token budget (the largest; a cohort with none means no
  limit), voice and agents (available if one cohort allows them) and each sandbox limit (the
  largest, 0 = none, as :mod:`oraculo.hub.sandbox` does for groups).

Only cohorts with a policy take part: a student in no such cohort is not restricted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from oraculo.kernels.limits import SandboxLimits

#: The hub group property that holds a cohort's policy.
POLICY_PROPERTY = "oraculo_policy"

#: What a policy can take away; ``execute`` is never refused by a policy.
Feature = Literal["chat", "voice", "agents"]


class ExamWindow(BaseModel):
    """A time during which the cohort's AI answers 403: local start and end in a time zone."""

    model_config = ConfigDict(extra="forbid")

    start: dt.datetime = Field(description="Local start, e.g. 2026-12-01T09:00.")
    end: dt.datetime = Field(description="Local end (after start).")
    timezone: str = Field(default="UTC", description="IANA time zone, e.g. Europe/Lisbon.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"unknown time zone {value!r}") from e
        return value

    @model_validator(mode="after")
    def _ordered(self) -> ExamWindow:
        if self.utc_end() <= self.utc_start():
            raise ValueError("an exam window must end after it starts")
        return self

    def _aware(self, t: dt.datetime) -> dt.datetime:
        zone = ZoneInfo(self.timezone)
        return t.replace(tzinfo=zone) if t.tzinfo is None else t.astimezone(zone)

    def utc_start(self) -> dt.datetime:
        return self._aware(self.start).astimezone(dt.UTC)

    def utc_end(self) -> dt.datetime:
        return self._aware(self.end).astimezone(dt.UTC)

    def is_open(self, now: dt.datetime) -> bool:
        return self.utc_start() <= now < self.utc_end()

    def local_end(self) -> str:
        """The end as people in the window's zone read it: ``2026-12-01 11:00 Europe/Lisbon``."""
        return f"{self._aware(self.end):%Y-%m-%d %H:%M} {self.timezone}"


class CohortPolicy(BaseModel):
    """One cohort's AI policy (the ``oraculo_policy`` group property)."""

    model_config = ConfigDict(extra="forbid")

    ai: bool = Field(default=True, description="AI (chat, voice, agents, %%chat) on or off.")
    models: list[str] | None = Field(
        default=None, description="Model names or aliases the cohort may use; null: every model."
    )
    exam_windows: list[ExamWindow] = Field(
        default_factory=list, description="Times during which AI answers 403; code still runs."
    )
    tokens_per_day: int | None = Field(
        default=None, ge=0, description="Model tokens per student per UTC day; null: no limit."
    )
    voice: bool = Field(default=True, description="Voice (speech in and out) available.")
    agents: bool = Field(default=True, description="Agents available.")
    sandbox: dict[str, Any] | None = Field(
        default=None,
        description="Sandbox limits (fields of SandboxLimits) applied at each kernel start.",
    )

    @field_validator("sandbox")
    @classmethod
    def _valid_limits(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            SandboxLimits.model_validate(value)  # raises on unknown fields or bad values
        return value

    @classmethod
    def from_properties(cls, properties: Mapping[str, Any] | None) -> CohortPolicy | None:
        """The policy in a group's properties, None when it has none. A policy that does not
        parse (written around the validating API) is read as AI off, never as no policy:
        falling back to "unrestricted" would loosen what an instructor set."""
        raw = (properties or {}).get(POLICY_PROPERTY)
        if raw is None:
            return None
        try:
            return cls.model_validate(raw)
        except ValueError:
            return cls(ai=False)


@dataclass
class Pause:
    """Why AI is paused for a student now, and until when (None: until the policy changes)."""

    cohort: str
    reason: Literal["exam", "ai_off", "voice_off", "agents_off"]
    until: dt.datetime | None = None
    until_local: str | None = None

    def message(self, feature: str) -> str:
        what = {"chat": "Chat", "voice": "Voice", "agents": "Agents"}.get(feature, "AI")
        if self.reason == "exam":
            return (
                f"{what} is paused for cohort '{self.cohort}' during its exam window. AI returns "
                f"at {self.until_local} ({self.until:%Y-%m-%d %H:%M} UTC). Code cells still run."
            )
        if self.reason == "ai_off":
            return (
                f"{what} is switched off for cohort '{self.cohort}' by its instructor. It returns "
                "when they switch it on again. Code cells still run."
            )
        return f"{what} is not available in cohort '{self.cohort}'."


@dataclass
class EffectivePolicy:
    """What a student's cohorts allow them now (see the module docstring)."""

    cohorts: list[str] = field(default_factory=list)
    paused: Pause | None = None
    models: set[str] | None = None
    tokens_per_day: int | None = None
    tokens_cohort: str | None = None
    voice: bool = True
    voice_cohort: str | None = None
    agents: bool = True
    agents_cohort: str | None = None
    sandbox: dict[str, Any] = field(default_factory=dict)

    def refusal(self, feature: Feature) -> Pause | None:
        """Why ``feature`` is refused now, or None."""
        if self.paused is not None:
            return self.paused
        if feature == "voice" and not self.voice:
            return Pause(self.voice_cohort or "", "voice_off")
        if feature == "agents" and not self.agents:
            return Pause(self.agents_cohort or "", "agents_off")
        return None

    def allows_model(self, *names: str) -> bool:
        return self.models is None or any(n in self.models for n in names)

    def to_json(self) -> dict[str, Any]:
        p = self.paused
        return {
            "cohorts": self.cohorts,
            "ai": {
                "available": p is None,
                "reason": p.reason if p else None,
                "cohort": p.cohort if p else None,
                "until": p.until.isoformat() if p and p.until else None,
                "until_local": p.until_local if p else None,
                "message": p.message("AI") if p else None,
            },
            "models": None if self.models is None else sorted(self.models),
            "tokens_per_day": self.tokens_per_day,
            "voice": self.voice,
            "agents": self.agents,
            "sandbox": self.sandbox,
            # what each feature would answer now: the 403's message, or None
            "refusals": {
                f: (r.message(f) if (r := self.refusal(f)) else None)
                for f in ("chat", "voice", "agents")
            },
        }


#: Limits where 0 means "no limit" (the rlimit-backed ones); the others are plain maxima.
_ZERO_IS_NONE = ("memory_mb", "cpu_seconds", "processes", "file_size_mb", "open_files")


def tighten(base: SandboxLimits, cohort: Mapping[str, Any]) -> SandboxLimits:
    """``base`` (what the operator gave the user) with the cohort's sandbox limits applied:
    a cohort may lower a limit, never raise one past the operator's."""
    values = base.model_dump()
    for key, value in cohort.items():
        if key not in values:
            continue
        current = values[key]
        if key in _ZERO_IS_NONE:
            if current == 0:
                values[key] = value
            elif value != 0:
                values[key] = min(current, value)
        else:
            values[key] = min(current, value)
    return SandboxLimits.model_validate(values)


def combine(
    policies: Mapping[str, CohortPolicy], now: dt.datetime | None = None
) -> EffectivePolicy:
    """The effective policy of a student in the cohorts ``policies`` (cohort name → policy)."""
    now = now or dt.datetime.now(dt.UTC)
    out = EffectivePolicy(cohorts=sorted(policies))
    if not policies:
        return out
    exams: list[tuple[dt.datetime, str, ExamWindow]] = []
    for name in sorted(policies):
        for w in policies[name].exam_windows:
            if w.is_open(now):
                exams.append((w.utc_end(), name, w))
    if exams:
        # the last window to close says when AI returns
        end, name, window = max(exams, key=lambda e: e[0])
        out.paused = Pause(name, "exam", end, window.local_end())
    else:
        off = [n for n in sorted(policies) if not policies[n].ai]
        if off:
            out.paused = Pause(off[0], "ai_off")
    models: set[str] | None = set()
    budgets: list[tuple[int, str]] = []
    unlimited = False
    for name in sorted(policies):
        pol = policies[name]
        if pol.models is None:
            models = None
        elif models is not None:
            models.update(pol.models)
        if pol.tokens_per_day is None:
            unlimited = True
        else:
            budgets.append((pol.tokens_per_day, name))
        for key, value in (pol.sandbox or {}).items():
            current = out.sandbox.get(key)
            if current is None:
                out.sandbox[key] = value
            elif current == 0 or value == 0:
                out.sandbox[key] = 0  # no limit is the most generous
            else:
                out.sandbox[key] = max(current, value)
    out.models = models
    if budgets and not unlimited:
        out.tokens_per_day, out.tokens_cohort = max(budgets)
    out.voice = any(p.voice for p in policies.values())
    out.voice_cohort = next((n for n in sorted(policies) if not policies[n].voice), None)
    out.agents = any(p.agents for p in policies.values())
    out.agents_cohort = next((n for n in sorted(policies) if not policies[n].agents), None)
    return out
