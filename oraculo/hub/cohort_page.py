"""``/hub/cohorts``: the instructor's page in the hub, for the cohorts they teach.

Each cohort shows its invitation link, the sign-ups waiting for approval (Approve / Decline
buttons: form posts with the hub's XSRF token, checked like the API's writes: an instructor's
``custom:oraculo:cohorts:manage!group=`` or an admin) and the members with their servers.
Admins see every cohort. The Cohort panel in JupyterLab is a client of the API
(:mod:`.cohort_handlers`); this page needs no server of one's own.
"""

from __future__ import annotations

from typing import Any

from jupyterhub import orm
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.scopes import has_scope
from tornado import web

from oraculo.hub import cohorts

PAGE = """{% extends "page.html" %}
{% block main %}
<div class="container" id="oraculo-cohorts">
  <h1>Your cohorts</h1>
  {% if message %}
  <div class="alert alert-info" role="status" id="cohort-message">{{ message }}</div>
  {% endif %}
  {% if not items %}<p id="no-cohorts">You teach no cohort.</p>{% endif %}
  {% for c in items %}
  <section class="card mb-3" id="cohort-{{ c.name }}">
    <div class="card-body">
      <h2 class="card-title">{{ c.name }}</h2>
      <p>Invitation link: <code class="invite-url">{{ c.invite_url }}</code></p>
      <p class="ai-now">AI now: {{ c.ai }}</p>
      <h3>Sign-ups waiting for approval</h3>
      {% if not c.pending %}<p class="no-pending">None.</p>{% endif %}
      <ul class="pending">
      {% for name in c.pending %}
        <li data-user="{{ name }}">{{ name }}
          <form method="post" style="display:inline"
                action="{{ base_url }}cohorts/{{ c.name }}/signups/{{ name }}">
            <input type="hidden" name="_xsrf" value="{{ xsrf }}"/>
            <button class="btn btn-sm btn-primary approve" name="action"
                    value="approve">Approve</button>
            <button class="btn btn-sm btn-secondary decline" name="action"
                    value="decline">Decline</button>
          </form>
        </li>
      {% endfor %}
      </ul>
      <h3>Members</h3>
      <table class="table members"><tbody>
      {% for m in c.members %}
        <tr data-user="{{ m.name }}"><td>{{ m.name }}</td><td>{{ m.server }}</td></tr>
      {% endfor %}
      </tbody></table>
    </div>
  </section>
  {% endfor %}
</div>
{% endblock %}
"""


class CohortsPageHandler(BaseHandler):
    """The cohorts the signed-in user may manage, with their sign-ups and members."""

    def _may(self, scope: str, cohort: str) -> bool:
        return bool(has_scope(f"{scope}!group={cohort}", self.parsed_scopes, db=self.db))

    def _may_manage(self, cohort: str) -> bool:
        return cohorts.may_manage(self.parsed_scopes, self.db, cohort)

    @web.authenticated
    async def get(self) -> None:
        items = []
        for group in self.db.query(orm.Group).order_by(orm.Group.name):
            if not cohorts.is_cohort(group) or not self._may("read:groups", group.name):
                continue
            rec = cohorts.record(group)
            policy = cohorts.policy_of(group)
            now = cohorts.combine_one(group.name, policy)
            items.append(
                {
                    "name": group.name,
                    "invite_url": f"{self.hub.base_url}signup?invite={rec.get('invite_code')}",
                    "pending": list(rec.get("pending", [])),
                    "members": [
                        {"name": u.name, "server": _server_state(self.users[u])}
                        for u in sorted(group.users, key=lambda u: u.name)
                    ],
                    "ai": now,
                }
            )
        template = self.settings["jinja2_env"].from_string(PAGE)
        ns = {**self.template_namespace, "items": items, "message": self.get_argument("m", "")}
        self.finish(await template.render_async(**ns))

    @web.authenticated
    async def post(self, group_name: str, pending_name: str) -> None:
        if not self._may_manage(group_name):
            raise web.HTTPError(403, "You do not teach this cohort.")
        try:
            group = cohorts.find(self.db, group_name)
            if self.get_body_argument("action", "approve") == "decline":
                cohorts.remove_pending(self.db, group, pending_name)
                message = f"Declined {pending_name}."
            else:
                cohorts.approve(self, group, pending_name)
                message = f"Approved {pending_name}: they can sign in now."
        except cohorts.CohortError as e:
            message = e.message
        self.redirect(f"{self.hub.base_url}cohorts?m={web.escape.url_escape(message)}")


def _server_state(user: Any) -> str:
    spawner = user.spawners.get("")
    if spawner is not None and spawner.ready:
        return "running"
    if spawner is not None and spawner.pending:
        return "starting"
    return "stopped"


def page_handlers() -> list[tuple[str, Any]]:
    return [
        (r"/cohorts", CohortsPageHandler),
        (r"/cohorts/(?P<group_name>[^/]+)/signups/(?P<pending_name>[^/]+)", CohortsPageHandler),
    ]
