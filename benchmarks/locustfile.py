"""Locust users for ``benchmarks/load.py``: each signs in through the hub's form, starts its
server, then chats, writes and searches memories, runs code and lists agents, as one person
working would (a few seconds between actions). With ``LOAD_PANELS=1`` (``load.py --panels``)
each also opens the chat panel once its server is up, which starts its panel server, and keeps
it (as a person with the chat panel open in a tab).

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
#: Seconds a person waits for their server before giving up.
SPAWN_BOUND = 300


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
        failure = self._wait_ready(start)
        self.environment.events.request.fire(
            request_type="SPAWN",
            name="spawn → ready",
            response_time=(time.perf_counter() - start) * 1000,
            response_length=0,
            exception=failure,
            context={},
        )
        if failure is None and os.environ.get("LOAD_PANELS") == "1":
            # The page is made on the server (a Bokeh session), so this starts the panel server
            # and the chat panel's session, as opening its tab does.
            with self.client.get(
                f"/user/{self.name}/oraculo-panels/chat",
                headers=self.auth,
                name="panel: open chat",
                catch_response=True,
            ) as r:
                # bytes: requests decodes an HTML page without a charset as Latin-1
                if r.status_code == 200 and "<title>Chat · Oráculo</title>".encode() in r.content:
                    r.success()
                else:
                    r.failure(f"{r.status_code}")

    def _wait_ready(self, start: float) -> Exception | None:
        """Follow the spawn's progress events, as JupyterHub's own spawn page does (one stream,
        not a poll: a poll's rate would depend on how fast the hub answers it)."""
        url = f"/hub/api/users/{self.name}/server/progress"
        headers = {**self.auth, "Accept": "text/event-stream"}
        with self.client.get(
            url, headers=headers, stream=True, name="spawn: progress", timeout=60,
            catch_response=True,
        ) as r:  # fmt: skip
            if not r.ok:
                r.failure(f"{r.status_code}")
                return RuntimeError(f"progress: {r.status_code}")
            try:
                for line in r.iter_lines():
                    if time.perf_counter() - start > SPAWN_BOUND:
                        break
                    if not line.startswith(b"data:"):
                        continue  # the hub's keep-alive comments
                    event = json.loads(line[5:])
                    if event.get("ready"):
                        r.success()
                        return None
                    if event.get("failed"):
                        r.success()  # the stream did its job; the spawn failed
                        return RuntimeError(f"spawn failed: {event.get('message', '')[:200]}")
            except Exception as e:  # a read timeout, a dropped stream
                r.failure(e)
                return e
            r.success()
        return TimeoutError("spawn")

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
