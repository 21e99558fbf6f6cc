"""Locust users for ``benchmarks/load.py``: each signs in through the hub's form, starts its
server, then chats, writes and searches memories, runs code and lists agents, as one person
working would (a few seconds between actions).

Accounts and tokens come from the file in ``LOAD_USERS`` (made by ``load.py``); every
acknowledged memory write and stored conversation is appended to ``LOAD_ACKS`` so that
``load.py`` can check afterwards that none was lost.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
import time
import uuid

from locust import HttpUser, between, task

_USERS = json.loads(open(os.environ["LOAD_USERS"]).read())
_NEXT = itertools.count()
_ACKS_LOCK = threading.Lock()
PASSWORD = os.environ["LOAD_PASSWORD"]


def _ack(kind: str, user: str, value: str) -> None:
    with _ACKS_LOCK, open(os.environ["LOAD_ACKS"], "a") as f:
        f.write(json.dumps({"kind": kind, "user": user, "value": value}) + "\n")


class Person(HttpUser):
    wait_time = between(2, 6)

    def on_start(self) -> None:
        account = _USERS[next(_NEXT) % len(_USERS)]
        self.name, token = account["name"], account["token"]
        self.auth = {"Authorization": f"token {token}"}
        self.base = f"/user/{self.name}/api/v1"
        page = self.client.get("/hub/login", name="sign in: form")
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
        self.client.post(
            "/hub/login",
            data={
                "username": self.name,
                "password": PASSWORD,
                "_xsrf": xsrf.group(1) if xsrf else "",
            },
            name="sign in: post",
            allow_redirects=False,
        )
        start = time.perf_counter()
        self.client.post(f"/hub/api/users/{self.name}/server", headers=self.auth, name="spawn")
        while time.perf_counter() - start < 300:
            r = self.client.get(
                f"/hub/api/users/{self.name}", headers=self.auth, name="spawn: poll"
            )
            if r.ok and (r.json().get("servers", {}).get("") or {}).get("ready"):
                break
            time.sleep(0.5)
        self.environment.events.request.fire(
            request_type="SPAWN",
            name="spawn → ready",
            response_time=(time.perf_counter() - start) * 1000,
            response_length=0,
            exception=None if time.perf_counter() - start < 300 else TimeoutError("spawn"),
            context={},
        )

    @task(2)
    def chat(self) -> None:
        body = {
            "messages": [
                {"role": "user", "content": f"Name one prime number ({uuid.uuid4().hex[:6]})."}
            ],
            "max_tokens": 8,
            "temperature": 0,
            "store": True,
        }
        with self.client.post(
            f"{self.base}/chat", json=body, headers=self.auth, name="chat", catch_response=True
        ) as r:
            if r.status_code == 200 and r.json().get("oraculo", {}).get("conversation_id"):
                _ack("conversation", self.name, r.json()["oraculo"]["conversation_id"])
                r.success()
            else:
                r.failure(f"{r.status_code}")

    @task(2)
    def remember(self) -> None:
        key = f"fact-{uuid.uuid4().hex[:10]}"
        with self.client.post(
            f"{self.base}/memory",
            json={"key": key, "value": "the report is due on Friday"},
            headers=self.auth,
            name="memory: add",
            catch_response=True,
        ) as r:
            if r.status_code in (200, 201):
                _ack("memory", self.name, key)
                r.success()
            else:
                r.failure(f"{r.status_code}")

    @task(2)
    def recall(self) -> None:
        self.client.get(
            f"{self.base}/memory",
            params={"q": "when is the report due?"},
            headers=self.auth,
            name="memory: search",
        )

    @task(3)
    def execute(self) -> None:
        self.client.post(
            f"{self.base}/execute",
            json={"code": "sum(i * i for i in range(1000))"},
            headers=self.auth,
            name="execute",
        )

    @task(1)
    def agents(self) -> None:
        self.client.get(f"{self.base}/agents", headers=self.auth, name="agents: list")
