"""Stripe billing through the official ``stripe`` library: metered usage sent to a local HTTP
server that plays Stripe's API (``stripe.api_base``), so the test sees the exact requests the
library makes; webhooks signed with Stripe's scheme switch a customer's budget live on a real
model service, and wrongly signed, altered or old ones are refused and change nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import stripe

from oraculo.models.metering import UsageEvent, UsageStore
from oraculo.models.stripe_billing import StripeBilling
from oraculo.models.usage import Prices
from tests.models.conftest import assert_envelope, bearer

from .conftest import CAROL, OPERATOR, WEBHOOK_SECRET

HOUR = 3600.0
NOW = 1_764_590_400.0 + 5 * HOUR + 600  # 10 minutes into an hour


class FakeStripeAPI:
    """Stripe's ``POST /v1/billing/meter_events``, answered as Stripe documents it, with every
    request kept (method, path, headers, form fields)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                form = {k: v[0] for k, v in parse_qs(body).items()}
                api.requests.append(
                    {"method": "POST", "path": self.path, "headers": dict(self.headers), **form}
                )
                if self.path != "/v1/billing/meter_events":
                    self.send_response(404)
                    self.end_headers()
                    return
                answer = json.dumps(
                    {
                        "object": "billing.meter_event",
                        "created": int(time.time()),
                        "event_name": form["event_name"],
                        "identifier": form["identifier"],
                        "livemode": False,
                        "payload": {
                            "stripe_customer_id": form["payload[stripe_customer_id]"],
                            "value": form["payload[value]"],
                        },
                        "timestamp": int(form["timestamp"]),
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeStripeAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripeAPI]:
    saved = stripe.api_base
    with FakeStripeAPI() as api:
        yield api
    stripe.api_base = saved


def test_metered_usage_is_reported_per_customer_and_hour_once(
    tmp_path: Path, fake_stripe: FakeStripeAPI
) -> None:
    store = UsageStore(f"sqlite:///{tmp_path / 'usage.sqlite'}")
    day = NOW - NOW % 86400
    store.record_many(
        [
            UsageEvent("ada", "m", "chat.completions", 200, 100, 20, ts=day + 1 * HOUR + 5),
            UsageEvent("ada", "m", "chat.completions", 200, 30, 0, ts=day + 1 * HOUR + 900),
            UsageEvent("ada", "m", "chat.completions", 200, 7, 0, ts=day + 3 * HOUR + 1),
            UsageEvent("bob", "m", "chat.completions", 200, 999, 0, ts=day + 1 * HOUR),
            # the hour still running is not reported yet
            UsageEvent("ada", "m", "chat.completions", 200, 50, 0, ts=NOW - 60),
        ]
    )
    off = StripeBilling(customers={"ada": "cus_ada"})
    assert not off.enabled  # no key: Stripe is off (the service never starts the reporter)
    billing = StripeBilling(
        api_key="sk_test_oraculo", api_base=fake_stripe.url, customers={"ada": "cus_ada"}
    )
    assert billing.report(store, Prices(), now=NOW) == 2
    sent = fake_stripe.requests
    assert [r["path"] for r in sent] == ["/v1/billing/meter_events"] * 2
    for r in sent:
        assert r["headers"]["Authorization"] == "Bearer sk_test_oraculo"
        assert r["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
        assert r["headers"].get("Stripe-Version")
    fields = [{k: v for k, v in r.items() if k not in ("headers", "method", "path")} for r in sent]
    assert fields == [
        {
            "event_name": "oraculo_usage",
            "payload[stripe_customer_id]": "cus_ada",
            "payload[value]": "150",
            "identifier": f"oraculo-cus_ada-{int(day + HOUR)}",
            "timestamp": str(int(day + 2 * HOUR - 1)),
        },
        {
            "event_name": "oraculo_usage",
            "payload[stripe_customer_id]": "cus_ada",
            "payload[value]": "7",
            "identifier": f"oraculo-cus_ada-{int(day + 3 * HOUR)}",
            "timestamp": str(int(day + 4 * HOUR - 1)),
        },
    ]
    # the same hours are never sent twice, by this process or a restarted one
    assert (
        StripeBilling(
            api_key="sk_test_oraculo", api_base=fake_stripe.url, customers={"ada": "cus_ada"}
        ).report(store, Prices(), now=NOW)
        == 0
    )
    # an hour later, the hour that was running is reported
    assert billing.report(store, Prices(), now=NOW + HOUR) == 1
    assert fake_stripe.requests[-1]["payload[value]"] == "50"
    store.close()


def sign(payload: str, secret: str = WEBHOOK_SECRET, at: float | None = None) -> str:
    """A ``Stripe-Signature`` header as Stripe makes it: HMAC-SHA256 of ``t.payload``."""
    t = int(at if at is not None else time.time())
    mac = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    assert mac == stripe.WebhookSignature._compute_signature(f"{t}.{payload}", secret)
    return f"t={t},v1={mac}"


def subscription_event(status: str, customer: str = "cus_carol") -> str:
    return json.dumps(
        {
            "id": f"evt_{status}",
            "object": "event",
            "type": "customer.subscription.updated",
            "data": {
                "object": {
                    "id": "sub_1",
                    "object": "subscription",
                    "customer": customer,
                    "status": status,
                }
            },
        }
    )


async def carol_chats(http: httpx.AsyncClient) -> httpx.Response:
    return await http.post(
        "/v1/chat/completions",
        json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers=bearer(CAROL),
    )


async def webhook(http: httpx.AsyncClient, payload: str, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return await http.post("/v1/stripe/webhook", content=payload, headers=headers)


async def test_a_past_due_customer_is_refused_until_active_and_forged_hooks_change_nothing(
    http: httpx.AsyncClient,
) -> None:
    assert (await carol_chats(http)).status_code == 200
    past_due = subscription_event("past_due")
    r = await webhook(http, past_due, sign(past_due))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "received": True,
        "action": "lapsed",
        "users": ["carol"],
        "status": "past_due",
    }
    r = await carol_chats(http)
    assert_envelope(r, 429)
    assert "monthly cost budget of user carol (0)" in r.json()["error"]["message"]
    r = await http.get("/v1/budgets", headers=bearer(OPERATOR))
    assert {
        "scope": "user",
        "name": "carol",
        "period": "month",
        "unit": "cost",
        "limit": 0.0,
    } in r.json()["data"]

    # refused: a wrong secret, an old timestamp, an altered payload, no signature at all
    active = subscription_event("active")
    old = time.time() - 3600
    for payload, signature in (
        (active, sign(active, "whsec_not_the_secret")),
        (active, sign(active, at=old)),
        (active, sign(subscription_event("past_due"))),
        (active, None),
        ("not json", sign("not json")),
    ):
        r = await webhook(http, payload, signature)
        assert_envelope(r, 400)
        assert "whsec" not in r.text
    assert (await carol_chats(http)).status_code == 429  # still lapsed

    r = await webhook(http, active, sign(active))
    assert r.status_code == 200 and r.json()["action"] == "active", r.text
    assert (await carol_chats(http)).status_code == 200
    # another customer's event, and other event types, change nothing
    other = subscription_event("past_due", customer="cus_someone_else")
    r = await webhook(http, other, sign(other))
    assert r.json()["action"] == "unknown customer"
    assert (await carol_chats(http)).status_code == 200
