"""Teams share agent notebooks, in system-users mode (real OS accounts, real group folders).

Ana writes an agent notebook with two tools in the team's folder (its metadata claiming Ben
wrote it) and publishes it; Ben sees it with Ana as owner, is refused until he approves that
exact digest, and the tools run in his kernel as his OS account on his data, audited with the
digest; Ben cannot replace Ana's release; Ana edits the tools and publishes again, and Ben is
refused until he approves the new version. Eve, outside the team, sees none of it.
"""

from __future__ import annotations

import base64
import grp
import json
import os
import pwd
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nbformat import v4

from tests.harness import SystemUsersTeam, User, system_users_team, wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(900)]
ENVELOPE = {"message", "reason", "type"}

WHOAMI = '''def whoami(detail: "Literal['account']") -> str:
    """Name the OS account this tool runs as and its home.

    Args:
        detail: what to name
    """
    import os, pwd
    entry = pwd.getpwuid(os.getuid())
    return f"{entry.pw_name} in {entry.pw_dir}"'''
FILES = '''def home_files(pattern: "Literal['*.csv']") -> str:
    """List the data files in the home folder.

    Args:
        pattern: which files
    """
    import pathlib
    return ", ".join(sorted(p.name for p in pathlib.Path.home().glob(pattern)))'''


def cleaner_notebook(tools: list[str]) -> dict[str, Any]:
    cells = [v4.new_markdown_cell("You inspect the runner's workspace. Call a tool, then answer.")]
    cells += [v4.new_code_cell(src) for src in tools]
    # the metadata lies about who wrote it and its version: the catalogue must not believe it
    meta = {"name": "inspector", "max_steps": 2, "require_tool": True, "temperature": 0.0}
    meta |= {"owner": "BEN", "version": "reviewed-by-ben"}
    return dict(v4.new_notebook(cells=cells, metadata={"oraculo": {"agent": meta}}))


Team = SystemUsersTeam


@pytest.fixture(scope="module")
async def team(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Team]:
    async with system_users_team(tmp_path_factory.mktemp("hub-teams"), "team", models=True) as t:
        yield t


async def agents_api(user: User, method: str, path: str, **kw: Any) -> httpx.Response:
    return await user.api(method, f"/user/{user.name}/api/v1/agents{path}", timeout=60, **kw)


async def catalogue(user: User) -> dict[str, dict[str, Any]]:
    r = await agents_api(user, "GET", "")
    assert r.status_code == 200, r.text
    return {a["name"]: a for a in r.json()["agents"]}


async def write_as(team: Team, user: User, path: Path, nb: dict[str, Any]) -> None:
    """``user`` writes the notebook from their own kernel (so the file is their account's)."""
    out = await team.run_code(
        user, f"import pathlib; pathlib.Path({str(path)!r}).write_text({json.dumps(nb)!r})"
    )
    assert out["error"] is None, out


async def finished(user: User, run_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        r = await agents_api(user, "GET", f"/runs/{run_id}")
        body: dict[str, Any] = r.json()
        return body if body["status"] != "running" else None

    return await wait_for(done, 240, "the agent run to finish", 0.5)


async def test_a_teammate_runs_a_published_agent_only_once_approved(team: Team) -> None:
    ana, ben, eve = team.ana, team.ben, team.eve
    draft = team.folder / "inspector.ipynb"
    await write_as(team, ana, draft, cleaner_notebook([WHOAMI, FILES]))
    await team.run_code(
        ben, "import pathlib; (pathlib.Path.home() / 'ben_sales.csv').write_text('a')"
    )

    # Ana publishes: a copy owned by her, 0644, in the team's sticky published/ folder
    r = await agents_api(ana, "POST", "/inspector/publish", json={})
    assert r.status_code == 201, r.text
    release = r.json()
    target = team.folder / "published" / "inspector.ipynb"
    assert release["published"] and release["path"] == str(target) and release["owner"] == ana.name
    st, folder = target.stat(), target.parent.stat()
    assert st.st_uid == pwd.getpwnam(f"jupyter-{ana.name}").pw_uid
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert folder.st_uid == 0 and stat.S_IMODE(folder.st_mode) == 0o3770  # made by the hub
    assert (
        folder.st_mode & stat.S_ISVTX
        and folder.st_gid == grp.getgrnam(f"oraculo-{team.group}").gr_gid
    )

    # Ben sees it with Ana as owner and the file's digest as version, whatever its metadata says
    agent = (await catalogue(ben))["inspector"]
    assert agent["owner"] == ana.name and agent["published"] and agent["needs_approval"]
    assert agent["sha256"] == release["sha256"] and agent["version"] == release["sha256"][:12]
    assert "inspector" not in await catalogue(eve)  # not in the team

    # Ben's first run is refused until he approves that exact version, shown its code
    body = {"goal": "Who runs you, and which data files are there?", "agents": ["inspector"]}
    r = await agents_api(ben, "POST", "/runs", json=body)
    assert r.status_code == 409, r.text
    refusal = r.json()
    assert ENVELOPE <= set(refusal) and refusal["type"] == "approval_required"
    assert refusal["digest"] == release["sha256"] and refusal["owner"] == ana.name
    assert [t["source"] for t in refusal["tools"]] == [WHOAMI, FILES]
    r = await agents_api(ben, "POST", "/runs", json={**body, "approve": "0" * 64})
    assert r.status_code == 409, r.text
    # another user's token approves nothing on Ben's server
    r = await eve.api(
        "POST", f"/user/{ben.name}/api/v1/agents/runs", json={**body, "approve": refusal["digest"]}
    )
    assert r.status_code in (403, 404), r.text
    r = await agents_api(ben, "POST", "/runs", json={**body, "approve": refusal["digest"]})
    assert r.status_code == 201, r.text
    run = await finished(ben, r.json()["id"])

    # the tools ran in Ben's kernel, as his OS account, on his data, audited with the digest
    results = [e for e in run["events"] if e["type"] == "tool_result"]
    assert results, run["events"]
    first = results[0]
    assert first["error"] is None, first
    assert f"jupyter-{ben.name}" in first["content"] or "ben_sales.csv" in first["content"], first
    r = await ben.api(
        "GET", f"/user/{ben.name}/api/v1/execute/audit?execution_id={first['execution_id']}"
    )
    origins = {rec["origin"] for rec in r.json()["records"]}
    assert origins == {f"agent:inspector@{release['sha256']}"}, origins
    approvals = Path(pwd.getpwnam(f"jupyter-{ben.name}").pw_dir) / ".oraculo"
    path = approvals / "agents" / "approvals.json"
    assert release["sha256"] in json.loads(path.read_text())
    assert (
        stat.S_IMODE(path.stat().st_mode) == 0o600
        and stat.S_IMODE(approvals.stat().st_mode) == 0o700
    )
    assert path.stat().st_uid == pwd.getpwnam(f"jupyter-{ben.name}").pw_uid

    # Ben shares the run with the team: Ana reads it (read-only), Eve cannot, nobody replaces it
    r = await agents_api(ben, "POST", f"/runs/{run['id']}/share", json={})
    assert r.status_code == 200, r.text
    copy = team.folder / "runs" / f"{run['id']}.jsonl"
    assert r.json()["shared_to"] == [str(copy)]
    assert copy.stat().st_uid == pwd.getpwnam(f"jupyter-{ben.name}").pw_uid
    r = await agents_api(ana, "GET", "/shared-runs")
    (listed,) = [x for x in r.json()["runs"] if x["id"] == run["id"]]
    assert listed["shared_by"] == ben.name and listed["owner"] == ben.name
    r = await agents_api(ana, "GET", f"/shared-runs/{run['id']}")
    assert r.status_code == 200, r.text
    seen = [e for e in r.json()["events"] if e["type"] == "tool_result"]
    assert seen[0]["content"] == first["content"]
    r = await agents_api(ana, "POST", f"/runs/{run['id']}/cancel")
    assert r.status_code == 404  # read-only: not hers to cancel
    r = await agents_api(eve, "GET", f"/shared-runs/{run['id']}")
    assert r.status_code == 404 and set(r.json()) == ENVELOPE
    r = await eve.api("GET", f"/user/{ana.name}/api/v1/agents/shared-runs")
    assert r.status_code in (403, 404), r.text
    out = await team.run_code(
        ana,
        f"import os\ntry:\n    os.unlink({str(copy)!r}); print('done')\n"
        "except PermissionError:\n    print('refused')",
    )
    assert out["stdout"].strip() == "refused", out
    out = await team.run_code(eve, f"print(open({str(copy)!r}).read())")
    assert out["error"] is not None and out["error"]["name"] == "PermissionError", out

    # approved once: the next run of the same release needs no approval
    r = await agents_api(ben, "POST", "/runs", json=body)
    assert r.status_code == 201, r.text
    await agents_api(ben, "POST", f"/runs/{r.json()['id']}/cancel")

    # Ben cannot replace Ana's release: not from his kernel, not through the API
    attack = (
        "import os, pathlib\n"
        f"t = pathlib.Path({str(target)!r})\n"
        "fake = t.with_name('evil.ipynb'); fake.write_text('{}')\n"
        "outcome = []\n"
        "for how in (lambda: os.replace(fake, t), lambda: t.unlink(), lambda: t.write_text('x')):\n"
        "    try:\n"
        "        how(); outcome.append('done')\n"
        "    except PermissionError:\n"
        "        outcome.append('refused')\n"
        "fake.unlink(); print(outcome)"
    )
    out = await team.run_code(ben, attack)
    assert out["stdout"].strip() == "['refused', 'refused', 'refused']", out
    r = await agents_api(ben, "POST", "/inspector/publish", json={})
    assert r.status_code == 403 and set(r.json()) == ENVELOPE, r.text
    assert target.stat().st_uid == pwd.getpwnam(f"jupyter-{ana.name}").pw_uid
    # nor swap the team's published/ or runs/ folder for one of his own: the group folder is
    # sticky, so in it he renames and removes only what he made; his own files he still does
    folder = team.folder.stat()
    assert (folder.st_uid, stat.S_IMODE(folder.st_mode)) == (0, 0o3770)
    swap = (
        "import os, pathlib\n"
        f"g = pathlib.Path({str(team.folder)!r})\n"
        "outcome = []\n"
        "def attempt(how):\n"
        "    try:\n"
        "        how(); outcome.append('done')\n"
        "    except PermissionError:\n"
        "        outcome.append('refused')\n"
        "for name in ('published', 'runs'):\n"
        "    attempt(lambda: os.rename(g / name, g / (name + '-old')))\n"
        "attempt(lambda: os.rename(g / 'inspector.ipynb', g / 'ana-was-here.ipynb'))\n"
        "(g / 'ben-notes.md').write_text('mine')\n"
        "attempt(lambda: os.rename(g / 'ben-notes.md', g / 'ben-notes-2.md'))\n"
        "attempt(lambda: os.unlink(g / 'ben-notes-2.md'))\n"
        "print(outcome)"
    )
    out = await team.run_code(ben, swap)
    assert out["stdout"].strip() == "['refused', 'refused', 'refused', 'done', 'done']", out
    assert target.stat().st_uid == pwd.getpwnam(f"jupyter-{ana.name}").pw_uid
    assert (await catalogue(ben))["inspector"]["published"]

    # Ana edits the tools and publishes again: Ben is refused until he approves the new version
    changed = WHOAMI.replace("in {entry.pw_dir}", "with uid {entry.pw_uid}")
    await write_as(team, ana, draft, cleaner_notebook([changed, FILES]))
    r = await agents_api(ana, "POST", "/inspector/publish", json={})
    assert r.status_code == 201, r.text
    second = r.json()["sha256"]
    assert second != release["sha256"]
    r = await agents_api(ben, "POST", "/runs", json=body)
    assert r.status_code == 409 and r.json()["digest"] == second, r.text
    assert "pw_uid" in r.json()["tools"][0]["source"]
    r = await agents_api(ben, "POST", "/runs", json={**body, "approve": second})
    assert r.status_code == 201, r.text
    await agents_api(ben, "POST", f"/runs/{r.json()['id']}/cancel")
    assert os.path.exists(target)


BREAKER = '''def explode(reason: "Literal['now']") -> str:
    """Always fails.

    Args:
        reason: why
    """
    raise ValueError("boom: " + reason)'''


def own_notebook(name: str, tools: list[str], **more: Any) -> dict[str, Any]:
    cells = [v4.new_markdown_cell("Call your tool.")] + [v4.new_code_cell(t) for t in tools]
    meta = {"name": name, "max_steps": 3, "require_tool": True, "temperature": 0.0, **more}
    return dict(v4.new_notebook(cells=cells, metadata={"oraculo": {"agent": meta}}))


SURVEY = '''def survey(area: "Literal['home']") -> str:
    """Survey an area of the workspace (slowly: ten seconds).

    Args:
        area: where to look
    """
    import time
    time.sleep(10)
    return "surveyed " + area'''


def splitter_notebook() -> dict[str, Any]:
    """Ben's own agent whose metadata declares a graph: its answer fans out to his scout and
    Ana's inspector, in parallel."""
    cells = [v4.new_markdown_cell("You split the work. Say in one short sentence what to check.")]
    meta = {"name": "splitter", "max_steps": 2, "temperature": 0.0}
    meta |= {"fan_out": ["scout", "inspector"]}
    return dict(v4.new_notebook(cells=cells, metadata={"oraculo": {"agent": meta}}))


@pytest.mark.browser
async def test_backstage_for_a_new_user_and_a_teammate(team: Team, artifacts: Path) -> None:
    """Eve: the examples in ~/agents at her first start, the empty hint, a new notebook that
    appears by itself. Ben: approving Ana's new release from the panel (its code and digest
    shown); a run whose graph fans out to his scout and Ana's inspector in parallel, the
    branches and the tool being called shown live, and a message he sends the scout from the
    panel while its tool runs, which it reads at its next step; a bounded run said in words and
    colour, Cancel on a finished run. Ana: Ben's shared run, read-only (no Cancel, Send,
    Share)."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout
    from playwright.async_api import expect

    from tests.harness import signed_in_panel

    eve, ben, ana = team.eve, team.ben, team.ana
    eve_home = Path(pwd.getpwnam(f"jupyter-{eve.name}").pw_dir)
    example = eve_home / "agents" / "team_data_cleaner_agent.ipynb"
    assert example.stat().st_uid == pwd.getpwnam(f"jupyter-{eve.name}").pw_uid
    out = await team.run_code(eve, f"import os; os.remove({str(example)!r})")
    assert out["error"] is None, out
    viewport = {"width": 1300, "height": 1000}
    async with signed_in_panel(eve, "backstage", viewport) as panel:
        page = panel.page
        hint = page.get_by_test_id("backstage-empty")
        await expect(hint).to_be_visible(timeout=90_000)
        await expect(hint).to_contain_text("~/agents")
        await page.screenshot(path=str(artifacts / "teams-1-empty-backstage.png"), full_page=True)
        # a notebook added to ~/agents appears without reopening the panel
        await write_as(
            team, eve, eve_home / "agents" / "shouter.ipynb", own_notebook("s", [WHOAMI])
        )
        await expect(hint).to_have_count(0, timeout=30_000)
        await page.screenshot(path=str(artifacts / "teams-2-agent-appeared.png"), full_page=True)
    assert not panel.offsite(), panel.offsite()

    # Ana edits the tools and publishes a new release; Ben approves it from the panel
    changed = WHOAMI.replace("in {entry.pw_dir}", "(release 3)")
    await write_as(team, ana, team.folder / "inspector.ipynb", cleaner_notebook([changed, FILES]))
    r = await agents_api(ana, "POST", "/inspector/publish", json={})
    assert r.status_code == 201, r.text
    digest = r.json()["sha256"]
    ben_home = Path(pwd.getpwnam(f"jupyter-{ben.name}").pw_dir)
    await write_as(
        team, ben, ben_home / "agents" / "breaker.ipynb", own_notebook("breaker", [BREAKER])
    )
    scout_nb = own_notebook("scout", [SURVEY], max_tool_calls=1)  # one survey, then its answer
    await write_as(team, ben, ben_home / "agents" / "scout.ipynb", scout_nb)
    await write_as(team, ben, ben_home / "agents" / "splitter.ipynb", splitter_notebook())
    async with signed_in_panel(ben, "backstage", viewport) as panel:
        page = panel.page
        root = page.get_by_test_id("oraculo-backstage")
        await expect(root).to_be_visible(timeout=90_000)
        await page.locator(".oraculo-backstage-goal input").fill("Who runs you?")
        option = page.locator(".choices__list--dropdown .choices__item", has_text="inspector")
        chosen = page.locator(".choices__list--multiple .choices__item", has_text="inspector")
        for attempt in range(5):  # on a loaded machine the dropdown may close before the click
            await page.locator(".oraculo-backstage-agents input[type=search]").click()
            await expect(option).to_contain_text(f"published by {ana.name}")
            await expect(option).to_contain_text("needs your approval")
            try:
                await option.click(timeout=5_000)
                break
            except PlaywrightTimeout:
                if attempt == 4:
                    raise
        await page.keyboard.press("Escape")
        await expect(chosen.first).to_be_attached()
        await page.locator(".oraculo-backstage-start button").click()
        approval = page.get_by_test_id("backstage-approval")
        await expect(approval).to_be_visible(timeout=30_000)
        await expect(approval).to_contain_text("(release 3)")  # the new tool's source
        await expect(approval).to_contain_text(ana.name)
        agent = page.get_by_test_id("backstage-approval-agent")
        await expect(agent).to_have_attribute("data-digest", digest)
        await page.screenshot(path=str(artifacts / "teams-3-approve.png"), full_page=True)
        before = await root.get_attribute("data-run")
        await page.locator(".oraculo-backstage-approve button").click()
        await expect(approval).to_have_count(0, timeout=30_000)

        async def new_run() -> str | None:
            shown = await root.get_attribute("data-run")
            return shown if shown and shown != before else None

        run_id = await wait_for(new_run, 30, "the approved run to be shown", 0.1)
        await finished(ben, run_id)
        outcome = page.get_by_test_id("backstage-outcome").first
        await expect(outcome).not_to_have_attribute("data-outcome", "running", timeout=30_000)
        await page.screenshot(path=str(artifacts / "teams-4-approved-run.png"), full_page=True)
        # Ben shares this run with the team from the panel
        await page.locator(".oraculo-backstage-share button").click()
        await expect(page.get_by_test_id("backstage-note")).to_contain_text(
            "Shared with the team", timeout=30_000
        )

        # Ben's splitter fans out to his scout and Ana's inspector (approved): in parallel
        goal = {"goal": "Look at the home folder.", "agents": ["splitter"]}
        r = await agents_api(ben, "POST", "/runs", json=goal)
        assert r.status_code == 201, r.text
        fan = r.json()
        assert fan["stages"] == [["splitter"], ["scout", "inspector"]], fan
        await expect(root).to_have_attribute("data-run", fan["id"], timeout=30_000)
        branches = page.get_by_test_id("backstage-parallel")
        await expect(branches).to_have_attribute("data-agents", "scout,inspector", timeout=30_000)
        await expect(branches).to_contain_text("in parallel")
        scout = page.locator("[data-testid=backstage-node][data-agent=scout]")
        await expect(scout).to_have_attribute("data-status", "calling", timeout=180_000)
        await expect(scout.get_by_test_id("backstage-calling")).to_have_text("survey")
        call = page.locator("[data-testid=backstage-event][data-type=tool_call]", has_text="survey")
        await expect(call.first).to_contain_text("scout calls survey")  # streamed as it started
        await page.screenshot(path=str(artifacts / "teams-5-parallel-branches.png"), full_page=True)
        # while its tool runs, Ben sends the scout a message: it reads it at its next step
        await page.locator(".oraculo-backstage-say input").fill("Also say how many csv files.")
        await page.locator(".oraculo-backstage-send button").click()
        note = page.locator("[data-testid=backstage-event][data-kind=note]")
        await expect(note).to_contain_text("Also say how many csv files.", timeout=30_000)
        await expect(note).to_contain_text(f"{ben.name} → scout")
        await page.screenshot(path=str(artifacts / "teams-6-message.png"), full_page=True)
        done = await finished(ben, fan["id"])
        events = done["events"]
        (sent,) = [e for e in events if e.get("kind") == "note"]
        survey = next(e for e in events if e["type"] == "tool_call" and e["agent"] == "scout")
        results = [e for e in events if e["type"] == "tool_result"]
        result = next(e for e in results if e["call_id"] == survey["call_id"])
        assert survey["seq"] < sent["seq"] < result["seq"], (survey, sent, result)
        after = [
            e
            for e in events
            if e["type"] == "step_started" and e["agent"] == "scout" and e["seq"] > result["seq"]
        ]
        assert after and after[0]["step"] == 2, [(e["seq"], e["type"]) for e in events]
        starts: dict[str, int] = {}
        for e in events:
            if e["type"] == "step_started":
                starts.setdefault(e["agent"], e["seq"])
        replies = [e["seq"] for e in events if e.get("kind") == "reply"]
        first_branch_reply = min(s for s in replies if s > starts["scout"])
        assert starts["inspector"] < first_branch_reply  # both branches' model calls in flight
        await expect(scout).not_to_have_attribute("data-status", "calling", timeout=30_000)
        await page.screenshot(path=str(artifacts / "teams-7-parallel-done.png"), full_page=True)

        # a run that stops at its step bound with a failed tool says so, in words and colour
        r = await agents_api(
            ben, "POST", "/runs", json={"goal": "Explode.", "agents": ["breaker"], "max_steps": 1}
        )
        assert r.status_code == 201, r.text
        bounded = await finished(ben, r.json()["id"])
        assert bounded["status"] == "bounded" and bounded["tool_errors"] == 1, bounded
        await expect(root).to_have_attribute("data-run", bounded["id"], timeout=30_000)
        badge = page.locator("[data-testid=backstage-outcome][data-outcome=bounded]").first
        await expect(badge).to_be_visible(timeout=30_000)
        await expect(badge).to_contain_text("Stopped at a bound: step bound of 1 reached")
        await expect(badge).to_contain_text("1 tool call failed")
        color = await badge.evaluate("e => getComputedStyle(e).backgroundColor")
        assert color == "rgb(230, 119, 0)", color  # amber, not a green "done"
        node = page.get_by_test_id("backstage-node").first
        await expect(node).to_have_attribute("data-status", "bounded")
        await page.screenshot(path=str(artifacts / "teams-8-bounded.png"), full_page=True)
        # Cancel on a finished run says so
        await page.locator(".oraculo-backstage-cancel button").click()
        note = page.get_by_test_id("backstage-note")
        await expect(note).to_contain_text("already finished (stopped at a bound)")
        await page.screenshot(path=str(artifacts / "teams-9-cancel-finished.png"), full_page=True)
    assert not panel.offsite(), panel.offsite()
    assert not [b for b in panel.bad if "/api/v1/agents/runs" not in b], panel.bad

    # Ana reads Ben's shared run in her Backstage: its timeline and tool calls, read-only
    async with signed_in_panel(ana, "backstage", viewport) as panel:
        page = panel.page
        root = page.get_by_test_id("oraculo-backstage")
        await expect(root).to_be_visible(timeout=90_000)
        option = page.locator(".oraculo-backstage-runs option", has_text=run_id[:8])
        await expect(option).to_contain_text(f"shared by {ben.name}", timeout=30_000)
        label = await option.text_content()
        await page.locator(".oraculo-backstage-runs select").select_option(label=label)
        await expect(root).to_have_attribute("data-run", run_id, timeout=30_000)
        await expect(page.get_by_test_id("backstage-shared-by")).to_contain_text(ben.name)
        calls = page.locator("[data-testid=backstage-event][data-type=tool_call]")
        await expect(calls.first).to_contain_text("def ", timeout=30_000)
        # read-only: only Ben, who ran it, can cancel it, message it or share it
        for control in ("cancel", "send", "share"):
            await expect(page.locator(f".oraculo-backstage-{control} button")).to_be_hidden()
        await expect(page.locator(".oraculo-backstage-say input")).to_be_hidden()
        await page.screenshot(path=str(artifacts / "teams-10-shared-run.png"), full_page=True)
    assert not panel.offsite(), panel.offsite()


RELAY = '''def relay(note: "Literal['ping']") -> str:
    """Pass a note on.

    Args:
        note: the note
    """
    return "VERSION"'''


def relay_notebook(version: str) -> dict[str, Any]:
    cells = [v4.new_code_cell(RELAY.replace("VERSION", version))]
    meta = {"name": "relay", "max_steps": 1, "temperature": 0.0}
    return dict(v4.new_notebook(cells=cells, metadata={"oraculo": {"agent": meta}}))


async def test_only_the_publisher_or_a_maintainer_replaces_a_release(team: Team) -> None:
    """A release is replaced by its publisher or one of the team's maintainers (named by an
    admin in the hub group's properties), the latter through the hub (root), never a looser
    mode; a member who is neither is refused through the API, from his kernel, and calling the
    hub himself; a kernel's token cannot use its maintainer's right; the teammates approve the
    new release's digest again."""
    ana, ben, eve, admin = team.ana, team.ben, team.eve, team.admin
    hub_path = f"/hub/api/oraculo/users/{ben.name}/releases/{team.group}/relay"
    props = f"/hub/api/groups/{team.group}/properties"
    target = team.folder / "published" / "relay.ipynb"
    ana_uid = pwd.getpwnam(f"jupyter-{ana.name}").pw_uid
    ben_uid = pwd.getpwnam(f"jupyter-{ben.name}").pw_uid
    await write_as(team, ana, team.folder / "relay.ipynb", relay_notebook("ana's"))
    r = await agents_api(ana, "POST", "/relay/publish", json={})
    assert r.status_code == 201, r.text
    first = r.json()["sha256"]
    # Ana approves her release (a run that needs it starts)
    body = {"goal": "Pass the note on.", "agents": ["relay"]}
    r = await agents_api(ana, "POST", "/runs", json={**body, "approve": first})
    assert r.status_code == 201, r.text
    await finished(ana, r.json()["id"])
    assert not (await catalogue(ana))["relay"]["needs_approval"]

    # Ben has a version of his own in ~/agents
    ben_home = Path(pwd.getpwnam(f"jupyter-{ben.name}").pw_dir)
    await write_as(team, ben, ben_home / "agents" / "relay.ipynb", relay_notebook("ben's"))
    notebook = base64.b64encode(json.dumps(relay_notebook("ben's")).encode()).decode()

    # not a maintainer: refused through his server's API, calling the hub, and from his kernel
    r = await agents_api(ben, "POST", "/relay/publish", json={})
    assert r.status_code == 403 and set(r.json()) == ENVELOPE, r.text
    assert "maintainers" in r.json()["message"]
    r = await ben.api("POST", hub_path, json={"notebook": notebook})
    assert r.status_code == 403, r.text
    attack = (
        "import os, pathlib, tempfile\n"
        f"t = pathlib.Path({str(target)!r})\n"
        "fd, fake = tempfile.mkstemp(dir=t.parent); os.close(fd)\n"
        "outcome = []\n"
        "for how in (lambda: os.replace(fake, t), lambda: t.unlink(), lambda: t.write_text('x')):\n"
        "    try:\n"
        "        how(); outcome.append('done')\n"
        "    except PermissionError:\n"
        "        outcome.append('refused')\n"
        "os.unlink(fake); print(outcome)"
    )
    out = await team.run_code(ben, attack)
    assert out["stdout"].strip() == "['refused', 'refused', 'refused']", out
    assert target.stat().st_uid == ana_uid and (await catalogue(ana))["relay"]["sha256"] == first

    # only an admin names the maintainers; another user's token is refused on the hub's route
    r = await ana.api("PUT", props, json={"maintainers": [ana.name]})
    assert r.status_code == 403, r.text
    r = await admin.api("PUT", props, json={"maintainers": [ben.name]})
    assert r.status_code == 200, r.text
    r = await eve.api("POST", hub_path, json={"notebook": notebook})
    assert r.status_code in (403, 404), r.text  # the hub's answer to another user's resource
    eve_path = f"/hub/api/oraculo/users/{eve.name}/releases/{team.group}/relay"
    r = await eve.api("POST", eve_path, json={"notebook": notebook})
    assert r.status_code == 403 and "not a member" in r.json()["message"], r.text
    # code in the maintainer's kernel (a teammate's agent tool, say) holds only the kernel's
    # token, which lacks users:activity: the hub refuses it
    steal = (
        "import os, json, urllib.request\n"
        f"req = urllib.request.Request({team.hub.url + hub_path!r},\n"
        f"    data=json.dumps({{'notebook': {notebook!r}}}).encode(), method='POST',\n"
        "    headers={'Authorization': 'token ' + os.environ['ORACULO_KERNEL_TOKEN'],\n"
        "             'Content-Type': 'application/json'})\n"
        "try:\n"
        "    print(urllib.request.urlopen(req).status)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code)"
    )
    out = await team.run_code(ben, steal)
    assert out["stdout"].strip() == "403", out
    assert target.stat().st_uid == ana_uid
    # bad input: a clear 400, the release untouched
    r = await ben.api("POST", hub_path, json={"notebook": "not base64!"})
    assert r.status_code == 400, r.text
    assert target.stat().st_uid == ana_uid

    # the maintainer's publish replaces it: a file of his account, 0644, the group's
    r = await agents_api(ben, "POST", "/relay/publish", json={})
    assert r.status_code == 201, r.text
    second = r.json()
    assert second["owner"] == ben.name and second["sha256"] != first
    st = target.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (ben_uid, 0o644)
    assert st.st_gid == grp.getgrnam(f"oraculo-{team.group}").gr_gid
    folder = target.parent.stat()
    assert folder.st_uid == 0 and stat.S_IMODE(folder.st_mode) == 0o3770  # no mode loosened
    assert "ben's" in target.read_text() and not list(target.parent.glob(".relay-*"))

    # Ana sees Ben as the release's publisher and must approve the new digest
    agent = (await catalogue(ana))["relay"]
    assert agent["owner"] == ben.name and agent["sha256"] == second["sha256"]
    assert agent["needs_approval"]
    r = await agents_api(ana, "POST", "/runs", json=body)
    assert r.status_code == 409 and r.json()["digest"] == second["sha256"], r.text
    # and Ana, now neither its publisher nor a maintainer, cannot put hers back
    r = await agents_api(ana, "POST", "/relay/publish", json={})
    assert r.status_code == 403, r.text
    r = await admin.api("PUT", props, json={})
    assert r.status_code == 200, r.text
