"""Optional Stripe billing, through the official ``stripe`` library (the ``billing`` extra).

Off unless ``StripeBilling.api_key`` is set: nothing calls out otherwise. When on:

- **Metered usage**: every ``report_interval`` seconds, each mapped user's use of
  ``report_unit`` since the last report (whole UTC hours) goes to Stripe as a Billing Meter
  event (``POST /v1/billing/meter_events``: ``event_name``, ``payload.stripe_customer_id``,
  ``payload.value``), with an ``identifier`` per customer and hour, so a retry never counts
  twice. What was reported is kept in the usage store (``stripe_reports``), so a restart
  neither skips nor repeats an hour.
- **Webhooks** at ``POST v1/stripe/webhook``: verified with Stripe's signature scheme
  (``Stripe-Signature``, HMAC-SHA256 of ``timestamp.payload`` with the endpoint's secret, and a
  timestamp no older than ``webhook_tolerance``); anything else is a 400 and changes nothing.
- **A customer's state switches their budget**: ``customer.subscription.*`` events whose
  status is ``past_due``, ``unpaid`` or ``canceled`` put ``lapsed_budget`` on the user (in the
  budgets table, so it is in force at once); ``active`` or ``trialing`` takes it off again.

Users map to customers through ``customers`` (hub user name → ``cus_...``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import sqlalchemy as sa
from traitlets import Dict, Float, Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from .budgets import Budget, Budgets
from .errors import InvalidRequest, NotFound
from .metering import UsageStore, metadata, utc_day
from .usage import Prices, totals

reports_table = sa.Table(
    "stripe_reports",
    metadata,
    sa.Column("customer", sa.String(255), primary_key=True),
    sa.Column("reported_until", sa.Float, nullable=False),
)

#: Subscription states that lapse a customer's use, and those that restore it.
LAPSED = frozenset({"past_due", "unpaid", "canceled", "incomplete_expired"})
ACTIVE = frozenset({"active", "trialing"})
#: Who set a budget that a webhook put on (so that only those are taken off again).
BY = "stripe"


class StripeBilling(LoggingConfigurable):
    """Metered usage to Stripe, and Stripe's webhooks to budgets."""

    api_key = Unicode(
        config=True,
        help="Stripe secret key (sk_...). Empty: Stripe is off. Default $ORACULO_STRIPE_API_KEY.",
    )
    api_base = Unicode(
        config=True,
        help="""Stripe's API base URL (stripe.api_base), for a proxy or a test double of the
        API. Default $ORACULO_STRIPE_API_BASE, else the library's (https://api.stripe.com).""",
    )
    webhook_secret = Unicode(
        config=True,
        help="""The webhook endpoint's signing secret (whsec_...). Empty: webhooks are refused.
        Default $ORACULO_STRIPE_WEBHOOK_SECRET.""",
    )
    webhook_tolerance = Integer(
        300, config=True, help="Oldest signed timestamp (seconds) a webhook is accepted with."
    )
    customers = Dict(Unicode(), config=True, help="Hub user name → Stripe customer id (cus_...).")
    meter_event_name = Unicode(
        "oraculo_usage", config=True, help="The event_name of the Stripe meter usage goes to."
    )
    report_unit = Unicode(
        "tokens",
        config=True,
        help="What is reported: tokens, cpu_seconds, gpu_seconds, voice_seconds or cost.",
    )
    report_scale = Float(
        1.0,
        config=True,
        help="""Multiplier before rounding to a whole number (meters count integers): e.g.
        100 with report_unit = cost and prices in a currency reports cents.""",
    )
    report_interval = Integer(
        3600, config=True, help="Seconds between reports (whole hours are reported). 0: never."
    )
    lapsed_budget = Dict(
        {"period": "month", "unit": "cost", "limit": 0},
        config=True,
        help="""The budget put on a user whose subscription is past due, unpaid or canceled
        ({period, unit, limit}); removed when it is active again. The default, a monthly
        cost budget of 0, refuses chat, agents, voice and new executions.""",
    )

    @default("api_key")
    def _default_api_key(self) -> str:
        return os.environ.get("ORACULO_STRIPE_API_KEY", "")

    @default("api_base")
    def _default_api_base(self) -> str:
        return os.environ.get("ORACULO_STRIPE_API_BASE", "")

    @default("webhook_secret")
    def _default_webhook_secret(self) -> str:
        return os.environ.get("ORACULO_STRIPE_WEBHOOK_SECRET", "")

    @property
    def enabled(self) -> bool:
        return bool(self.api_key)

    def client(self) -> Any:
        import stripe

        if self.api_base:
            stripe.api_base = self.api_base
        return stripe

    # --- metered usage ------------------------------------------------------------------------

    def _reported_until(self, store: UsageStore, customer: str) -> float | None:
        t = reports_table
        with store.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.c.reported_until).where(t.c.customer == customer)
            ).first()
        return None if row is None else float(row[0])

    def _mark(self, store: UsageStore, customer: str, until: float) -> None:
        t = reports_table
        with store.engine.begin() as conn:
            if conn.execute(sa.select(t.c.customer).where(t.c.customer == customer)).first():
                conn.execute(
                    t.update().where(t.c.customer == customer).values(reported_until=until)
                )
            else:
                conn.execute(t.insert().values(customer=customer, reported_until=until))

    def report(self, store: UsageStore, prices: Prices, now: float | None = None) -> int:
        """Report every mapped user's use per whole UTC hour not yet reported; returns how many
        meter events were sent (blocking: run it in a thread)."""
        reports_table.create(store.engine, checkfirst=True)
        stripe = self.client()
        now = now or time.time()
        until = now - now % 3600
        sent = 0
        for user, customer in sorted(self.customers.items()):
            start = self._reported_until(store, customer)
            if start is None:  # first report: from the start of today
                start = utc_day(now)
            hour = start
            while hour < until:
                used = totals(store, prices, user=user, since=hour, until=hour + 3600)
                value = round(used.get(self.report_unit, 0.0) * self.report_scale)
                if value > 0:
                    stripe.billing.MeterEvent.create(
                        api_key=self.api_key,
                        event_name=self.meter_event_name,
                        payload={"stripe_customer_id": customer, "value": str(value)},
                        identifier=f"oraculo-{customer}-{int(hour)}",
                        timestamp=int(hour + 3599),
                    )
                    sent += 1
                hour += 3600
                self._mark(store, customer, hour)
        return sent

    async def run(self, store: UsageStore, prices: Prices) -> None:
        """Report every ``report_interval`` seconds until cancelled; failures are logged and
        retried at the next round (the hours stay unreported)."""
        while True:
            try:
                n = await asyncio.to_thread(self.report, store, prices)
                if n:
                    self.log.info("reported %d hours of usage to Stripe", n)
            except Exception as e:
                # the library's message, never the key
                self.log.warning("Stripe usage report failed: %s", type(e).__name__)
            await asyncio.sleep(self.report_interval)

    # --- webhooks -----------------------------------------------------------------------------

    def verify(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """The event, if Stripe's signature over it holds; else :class:`InvalidRequest`."""
        if not self.webhook_secret:
            raise NotFound("Stripe webhooks are not configured here.")
        stripe = self.client()
        try:
            stripe.Webhook.construct_event(
                payload, signature, self.webhook_secret, tolerance=self.webhook_tolerance
            )
        except stripe.SignatureVerificationError:
            raise InvalidRequest(
                "Invalid Stripe signature (wrong secret, altered payload or too old).",
                param="Stripe-Signature",
            ) from None
        except ValueError:
            raise InvalidRequest("The payload is not a Stripe event.") from None
        data: dict[str, Any] = json.loads(payload)  # verified: the bytes Stripe signed
        return data

    async def handle(self, event: dict[str, Any], budgets: Budgets) -> dict[str, Any]:
        """Switch a customer's budget by their subscription's state."""
        kind = str(event.get("type", ""))
        obj = (event.get("data") or {}).get("object") or {}
        if not kind.startswith("customer.subscription."):
            return {"received": True, "action": "ignored"}
        customer = obj.get("customer")
        status = "canceled" if kind.endswith(".deleted") else obj.get("status")
        users = [u for u, c in self.customers.items() if c == customer]
        if not users:
            return {"received": True, "action": "unknown customer"}
        action = "none"
        for user in users:
            b = Budget.model_validate({"scope": "user", "name": user, **self.lapsed_budget})
            if status in LAPSED:
                await budgets.put(b, BY)
                action = "lapsed"
            elif status in ACTIVE:
                if await budgets.set_by(b) == BY:
                    await budgets.delete(b.scope, b.name, b.period, b.unit)
                action = "active"
        self.log.info("Stripe %s for %s: %s", kind, customer, action)
        return {"received": True, "action": action, "users": users, "status": status}
