"""``/hub/cohorts``: the instructor's page in the hub, for the cohorts they teach.

Admins and members of the operator's ``instructors`` group see a form that makes a cohort
(a form post with the hub's XSRF token, through :func:`.cohorts.create_by`, the cohort API's own
path; a bad name or a taken one is said in the page, nothing made) and then shows its
invitation link and code to copy. Each cohort shows its invitation link, the sign-ups waiting
for approval (Approve / Decline buttons: form posts with the hub's XSRF token, checked like the
API's writes: an instructor's ``custom:oraculo:cohorts:manage!group=`` or an admin) and the
members with their servers.
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
from oraculo.hub.cohort_live import apply_instructors

PAGE = """{% extends "page.html" %}
{% block main %}
<div class="container" id="oraculo-cohorts">
  <h1>Your cohorts</h1>
  {% if message %}
  <div class="alert alert-info" role="status" id="cohort-message">{{ message }}</div>
  {% endif %}
  {% if error %}
  <div class="alert alert-danger" role="alert" id="cohort-error"
       data-status="{{ error.status }}" data-type="{{ error.type }}">{{ error.message }}</div>
  {% endif %}
  {% if can_create %}
  <section class="card mb-3" id="new-cohort">
    <div class="card-body">
      <h2 class="card-title">New cohort</h2>
      <form method="post" action="{{ base_url }}cohorts" class="row g-2 align-items-end">
        <input type="hidden" name="_xsrf" value="{{ xsrf }}"/>
        <div class="col-auto">
          <label for="cohort_name_input" class="form-label">Name</label>
          <input id="cohort_name_input" name="name" class="form-control" required
                 maxlength="64" placeholder="bio-101" value="{{ typed.name }}"/>
        </div>
        {% if is_admin %}
        <div class="col-auto">
          <label for="cohort_instructors_input" class="form-label">Instructors
            (comma-separated)</label>
          <input id="cohort_instructors_input" name="instructors" class="form-control"
                 value="{{ typed.instructors }}"/>
        </div>
        {% endif %}
        <div class="col-auto">
          <button id="cohort_create_submit" type="submit" class="btn btn-primary">
            Create cohort</button>
        </div>
      </form>
      <p class="form-text">Letters, digits, '.', '_' and '-'.
        {% if not is_admin %}You will be its instructor.{% endif %}</p>
    </div>
  </section>
  {% endif %}
  {% if not items %}<p id="no-cohorts">You teach no cohort.</p>{% endif %}
  {% for c in items %}
  <section class="card mb-3{% if c.name == created %} border-success{% endif %}"
           id="cohort-{{ c.name }}">
    <div class="card-body">
      <h2 class="card-title">{{ c.name }}</h2>
      {% if c.name == created %}
      <p class="created text-success">Created. Send your students this invitation link: whoever
        signs up with it is in the cohort at once.</p>
      {% endif %}
      <div class="invitation mb-2">
        <label class="form-label" for="invite-{{ c.name }}">Invitation link</label>
        <input id="invite-{{ c.name }}" class="form-control invite-link" readonly
               value="{{ c.invite_link }}" onfocus="this.select()"/>
        <p>Code: <code class="invite-code">{{ c.invite_code }}</code>
          (signed-in users join with it)</p>
      </div>
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
    """The cohorts the signed-in user may manage, with their sign-ups and members; the form
    that makes one."""

    def _may(self, scope: str, cohort: str) -> bool:
        return bool(has_scope(f"{scope}!group={cohort}", self.parsed_scopes, db=self.db))

    def _may_manage(self, cohort: str) -> bool:
        return cohorts.may_manage(self.parsed_scopes, self.db, cohort)

    async def _render(
        self,
        message: str = "",
        created: str = "",
        error: cohorts.CohortError | None = None,
        typed: dict[str, str] | None = None,
    ) -> None:
        items = []
        origin = f"{self.request.protocol}://{self.request.host}"
        for group in self.db.query(orm.Group).order_by(orm.Group.name):
            if not cohorts.is_cohort(group) or not self._may("read:groups", group.name):
                continue
            rec = cohorts.record(group)
            policy = cohorts.policy_of(group)
            now = cohorts.combine_one(group.name, policy)
            url = f"{self.hub.base_url}signup?invite={rec.get('invite_code')}"
            items.append(
                {
                    "name": group.name,
                    "invite_code": rec.get("invite_code"),
                    "invite_url": url,
                    "invite_link": origin + url,
                    "pending": list(rec.get("pending", [])),
                    "members": [
                        {"name": u.name, "server": _server_state(self.users[u])}
                        for u in sorted(group.users, key=lambda u: u.name)
                    ],
                    "ai": now,
                }
            )
        if error is not None:
            self.set_status(error.status)
        template = self.settings["jinja2_env"].from_string(PAGE)
        ns = {
            **self.template_namespace,
            "items": items,
            "message": message,
            "created": created,
            "error": error,
            "typed": typed or {"name": "", "instructors": ""},
            "can_create": cohorts.may_create(self.parsed_scopes, self.db),
            "is_admin": bool(has_scope("admin:groups", self.parsed_scopes, db=self.db)),
        }
        self.finish(await template.render_async(**ns))

    @web.authenticated
    async def get(self) -> None:
        await self._render(self.get_argument("m", ""), self.get_argument("created", ""))

    @web.authenticated
    async def post(self, group_name: str = "", pending_name: str = "") -> None:
        if not group_name:
            await self._create()
            return
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

    async def _create(self) -> None:
        """The form's post: the cohort API's path (:func:`.cohorts.create_by`); a refusal is
        shown in the page with its status, the name kept in the field."""
        name = self.get_body_argument("name", "").strip()
        listed = self.get_body_argument("instructors", "")
        typed = {"name": name, "instructors": listed}
        instructors = [n.strip() for n in listed.split(",") if n.strip()]
        if not instructors and self.current_user is not None:
            instructors = [self.current_user.name]
        try:
            group = cohorts.create_by(self, name, instructors, None)
        except cohorts.CohortError as e:
            await self._render(error=e, typed=typed)
            return
        await apply_instructors(self, group)
        query = web.escape.url_escape(group.name)
        self.redirect(f"{self.hub.base_url}cohorts?created={query}#cohort-{query}")


def _server_state(user: Any) -> str:
    spawner = user.spawners.get("")
    if spawner is not None and spawner.ready:
        return "running"
    if spawner is not None and spawner.pending:
        return "starting"
    return "stopped"


def page_handlers() -> list[tuple[str, Any]]:
    return [
        (r"/cohorts", CohortsPageHandler),  # GET: the page; POST: the form that makes one
        (r"/cohorts/(?P<group_name>[^/]+)/signups/(?P<pending_name>[^/]+)", CohortsPageHandler),
    ]
