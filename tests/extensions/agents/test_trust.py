"""Trust in shared agents, in process: owner and version from the file system, approvals of
exact digests, published releases in a sticky folder (the system-users journey is in
tests/e2e/test_teams.py)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nbformat
import pytest

from oraculo.extensions.agents.models import AgentSpec, RunRequest
from oraculo.extensions.agents.runs import EventLog, RunState
from oraculo.extensions.agents.service import AgentsService, _Run
from oraculo.extensions.agents.trust import ApprovalRequired, hub_owner
from oraculo.extensions.base.errors import Forbidden, NotFound
from oraculo.extensions.base.modelclient import ModelClient
from tests.extensions.agents.test_agents import WORKER, agent_notebook

TOOL = '''def shout(text: str) -> str:
    """Shout the text."""
    return text.upper()'''


def write(path: Path, nb: dict[str, object]) -> bytes:
    nbformat.write(nbformat.from_dict(nb), path)
    return path.read_bytes()


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[AgentsService]:
    home, team = tmp_path / "home", tmp_path / "groups" / "team"
    (home / "agents").mkdir(parents=True)
    team.mkdir(parents=True)
    service = AgentsService(
        root_dir=str(home),
        user="ben",
        models=ModelClient(),
        execute=lambda: None,
        shared_dirs=[str(team)],
        runs_dir=str(home / ".oraculo" / "agents" / "runs"),
        approvals_path=str(home / ".oraculo" / "agents" / "approvals.json"),
        owner_prefix="",
    )
    yield service
    for run in list(service._runs):
        await service.cancel(run, "ben")
    await service.stop()


def test_owner_maps_the_os_account_to_the_hub_user() -> None:
    root = hub_owner(0, "jupyter-")
    assert root == "root"  # no prefix: named as it is
    assert hub_owner(0, "ro") == "ot"  # an account with the prefix is the hub user after it
    assert hub_owner(0, "root") == "root"  # the prefix alone is no user


async def test_owner_and_version_come_from_the_file_not_its_metadata(
    svc: AgentsService, tmp_path: Path
) -> None:
    team = Path(svc.shared_dirs[0])
    forged = agent_notebook("shouter", "Shout.", [TOOL], owner="ana", version="9", sha256="0" * 64)
    data = write(team / "shouter.ipynb", forged)
    (agent,) = [a for a in await svc.list_agents() if a["name"] == "shouter"]
    assert agent["owner"] == hub_owner(os.getuid(), "") != "ana"
    assert agent["sha256"] == hashlib.sha256(data).hexdigest()
    assert agent["version"] == agent["sha256"][:12]
    assert agent["shared"] and agent["needs_approval"] and not agent["published"]
    assert agent["group"] == str(team)


async def test_a_shared_agent_runs_only_once_its_exact_digest_is_approved(
    svc: AgentsService,
) -> None:
    team = Path(svc.shared_dirs[0])
    data = write(team / "shouter.ipynb", agent_notebook("shouter", "Shout.", [TOOL]))
    digest = hashlib.sha256(data).hexdigest()
    req = RunRequest(goal="shout hi", agents=["shouter"])
    with pytest.raises(ApprovalRequired) as refused:
        await svc.start(req, "ben")
    body = refused.value.to_json()
    assert refused.value.status == 409 and body["type"] == "approval_required"
    assert body["digest"] == digest and body["agent"] == "shouter"
    assert body["tools"] == [{"name": "shout", "source": TOOL}]
    assert {"message", "reason", "type"} <= set(body)
    # a wrong digest is no approval
    with pytest.raises(ApprovalRequired):
        await svc.start(req.model_copy(update={"approve": "f" * 64}), "ben")
    run = await svc.start(req.model_copy(update={"approve": digest}), "ben")
    assert run["agents"] == ["shouter"]
    # kept per user, by digest, in a private file
    path = Path(svc.approvals_path)
    assert digest in json.loads(path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    await svc.start(req, "ben")  # approved once: runs without asking again
    (agent,) = [a for a in await svc.list_agents() if a["name"] == "shouter"]
    assert not agent["needs_approval"]
    # a changed tool is a new version: refused until approved again
    changed = TOOL.replace("text.upper()", "__import__('os').getcwd()")
    write(team / "shouter.ipynb", agent_notebook("shouter", "Shout.", [changed]))
    with pytest.raises(ApprovalRequired) as refused:
        await svc.start(req, "ben")
    assert refused.value.to_json()["digest"] != digest
    assert "getcwd" in refused.value.to_json()["tools"][0]["source"]


async def test_own_agents_need_no_approval_and_handoffs_are_checked(svc: AgentsService) -> None:
    home, team = svc.root, Path(svc.shared_dirs[0])
    write(home / "agents" / "recorder.ipynb", WORKER)
    await svc.start(RunRequest(goal="record alpha", agents=["recorder"]), "ben")
    # an own lead that hands over to a shared agent: the shared one still needs approval
    write(home / "agents" / "lead.ipynb", agent_notebook("lead", "Lead.", [], handoff="shouter"))
    write(team / "shouter.ipynb", agent_notebook("shouter", "Shout.", [TOOL]))
    with pytest.raises(ApprovalRequired) as refused:
        await svc.start(RunRequest(goal="go", agents=["lead"]), "ben")
    assert refused.value.to_json()["agent"] == "shouter"


async def test_publish_a_release(svc: AgentsService) -> None:
    team = Path(svc.shared_dirs[0])
    write(team / "shouter.ipynb", agent_notebook("shouter", "Shout.", [TOOL]))
    release = await svc.publish("shouter", None, "ben")
    target = team / "published" / "shouter.ipynb"
    assert release["published"] and release["path"] == str(target)
    assert release["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    st, folder = target.stat(), target.parent.stat()
    assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == os.geteuid()
    assert folder.st_mode & stat.S_ISVTX and stat.S_IMODE(folder.st_mode) & 0o070 == 0o070
    # the release is what runs by that name; editing the working copy does not change it
    write(team / "shouter.ipynb", agent_notebook("shouter", "Whisper.", [TOOL]))
    agents = {a["name"]: a for a in await svc.list_agents()}
    assert agents["shouter"]["published"] and agents["shouter"]["sha256"] == release["sha256"]
    again = await svc.publish("shouter", "team", "ben")  # a new release from the working copy
    assert again["sha256"] != release["sha256"]
    if os.geteuid() != 0:
        return
    # a teammate's release is not replaced (as root: the sticky bit is tested in test_teams)
    os.chown(target, 65534, -1)
    with pytest.raises(Forbidden):
        await svc.publish("shouter", str(team), "ben")
    with pytest.raises(Exception, match="group folder"):
        await svc.publish("shouter", "elsewhere", "ben")


async def test_a_published_folder_not_made_by_the_hub_is_not_trusted(svc: AgentsService) -> None:
    """A member who swapped ``published/`` for a folder of their own (possible before group
    folders were sticky): its files are not listed as releases and nobody publishes there."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the folder to another account")
    team = Path(svc.shared_dirs[0])
    write(team / "shouter.ipynb", agent_notebook("shouter", "Shout.", [TOOL]))
    release = await svc.publish("shouter", None, "ben")
    agents = {a["name"]: a for a in await svc.list_agents()}
    assert agents["shouter"]["published"]
    os.chown(team / "published", 65534, -1)  # now a member's (nobody's) folder, still sticky
    agents = {a["name"]: a for a in await svc.list_agents()}
    assert not agents["shouter"]["published"]  # the working copy, not the "release"
    with pytest.raises(Forbidden, match="not the team's sticky folder"):
        await svc.publish("shouter", None, "ben")
    os.chown(team / "published", 0, -1)
    (team / "published").rename(team / "elsewhere")
    (team / "published").symlink_to(team / "elsewhere")  # a link to a sticky folder: no either
    agents = {a["name"]: a for a in await svc.list_agents()}
    assert not agents["shouter"]["published"] and release["sha256"]


def test_examples_are_copied_once_into_a_new_users_agents(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[3] / "notebooks"
    home = tmp_path / "home"
    home.mkdir()
    service = AgentsService(
        root_dir=str(home),
        user="eve",
        models=ModelClient(),
        execute=lambda: None,
        runs_dir=str(home / ".oraculo" / "agents" / "runs"),
        examples_dir=str(examples),
    )
    copied = service.copy_examples()
    assert copied == [str(home / "agents" / "team_data_cleaner_agent.ipynb")]  # agents only
    Path(copied[0]).unlink()
    assert service.copy_examples() == []  # what the user deleted stays deleted
    assert not Path(copied[0]).exists()


def test_backstage_says_how_a_run_ended() -> None:
    from oraculo.extensions.panels.backstage import render_graph, render_outcome

    run = {
        "status": "bounded",
        "reason": "step bound of 1 reached",
        "tool_errors": 4,
        "agents": ["planner", "worker"],
        "current": None,
        "stopped_at": "worker",
        "per_agent": {"worker": {"tool_errors": 4}},
    }
    badge = render_outcome(run)
    assert 'data-outcome="bounded"' in badge
    assert "Stopped at a bound: step bound of 1 reached · 4 tool calls failed" in badge
    graph = render_graph(run)
    assert 'data-agent="planner" data-status="done"' in graph
    assert 'data-agent="worker" data-status="bounded"' in graph and "4 failed" in graph
    assert "Succeeded" in render_outcome({"status": "succeeded"})


def test_a_note_to_a_running_agent_waits_for_its_tool_results() -> None:
    """A message sent while the agent's tool call runs is read after the tool's result (an
    OpenAI transcript needs the result right after the call); otherwise at once."""
    from oraculo.extensions.agents.runs import RunState, make_event, messages

    st = RunState(id="r")
    spec = agent_notebook("worker", "Work.", [TOOL])
    from oraculo.extensions.agents.notebook import parse_agent

    agent = parse_agent(nbformat.from_dict(spec)).model_dump()
    call = {"id": "c1", "type": "function", "function": {"name": "shout", "arguments": "{}"}}
    for kind, fields in [
        ("run_started", {"owner": "ben", "goal": "g", "agents": [agent], "bounds": {}}),
        ("message", {"kind": "input", "from": "user", "to": "worker", "content": "g"}),
        ("message", {"kind": "reply", "from": "worker", "to": "tools", "tool_calls": [call]}),
        ("message", {"kind": "note", "from": "ben", "to": "worker", "content": "use beta"}),
    ]:
        st.apply(make_event(st, kind, **fields))
    assert [m["role"] for m in st.transcripts["worker"]] == ["user", "assistant"]
    st.apply(
        make_event(st, "tool_result", agent="worker", call_id="c1", tool="shout", content="HI")
    )
    roles = [m["role"] for m in st.transcripts["worker"]]
    assert roles == ["user", "assistant", "tool", "user"]
    assert st.transcripts["worker"][-1]["content"] == "Message from ben: use beta"
    st.apply(make_event(st, "message", kind="note", to="worker", content="now", **{"from": "x"}))
    assert st.transcripts["worker"][-1]["content"] == "Message from x: now"
    notes = [m for m in messages(st) if m["kind"] == "note"]
    assert [(n["from"], n["to"]) for n in notes] == [("ben", "worker"), ("x", "worker")]


async def test_a_run_shared_with_the_group_is_read_only_for_teammates(
    svc: AgentsService, tmp_path: Path
) -> None:
    team = Path(svc.shared_dirs[0])
    write(svc.root / "agents" / "recorder.ipynb", WORKER)
    run = await svc.start(RunRequest(goal="record alpha", agents=["recorder"]), "ben")
    summary = await svc.share(run["id"], "ben", None)  # the user's only group folder
    copy = team / "runs" / f"{run['id']}.jsonl"
    assert summary["shared_to"] == [str(copy)]
    assert stat.S_IMODE(copy.stat().st_mode) == 0o644 and copy.parent.stat().st_mode & stat.S_ISVTX
    # kept up to date while the run goes (it fails here, with no model service: its last events
    # come after the share), and with any event added later
    task = svc._runs[run["id"]].task
    assert task is not None
    await task
    note = await svc._runs[run["id"]].emit("resumed", step=0)
    lines = [json.loads(line) for line in copy.read_text().splitlines()]
    assert lines[-1] == note and lines == svc._runs[run["id"]].state.events
    # a teammate's server lists and reads it, with who wrote the copy as its owner
    ana = AgentsService(
        root_dir=str(tmp_path / "ana"),
        user="ana",
        models=ModelClient(),
        execute=lambda: None,
        shared_dirs=[str(team)],
        runs_dir=str(tmp_path / "ana" / ".oraculo" / "agents" / "runs"),
        owner_prefix="",
    )
    (listed,) = await ana.list_shared_runs()
    assert listed["id"] == run["id"] and listed["shared_by"] == hub_owner(os.getuid(), "")
    body = await ana.get_shared(run["id"])
    assert body["events"][-1] == note and body["owner"] == listed["shared_by"]
    with pytest.raises(NotFound):
        await ana.get_shared("0" * 32)
    with pytest.raises(NotFound):  # and it is not hers to cancel or message
        await ana.send(run["id"], "ana", "hi", None)


def _log(folder: Path, run_id: str, days_old: float, size: int, finished: bool = True) -> Path:
    """A run log of about ``size`` bytes whose last event is ``days_old`` days old."""
    events = [{"seq": 0, "type": "run_started", "pad": "x" * size}]
    if finished:
        events.append({"seq": 1, "type": "run_finished", "status": "succeeded"})
    path = folder / f"{run_id}.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    when = time.time() - days_old * 86400
    os.utime(path, (when, when))
    return path


async def test_run_logs_are_pruned_by_age_and_by_size(svc: AgentsService) -> None:
    folder = Path(svc.runs_dir)
    svc.runs_max_age_days, svc.runs_max_bytes = 7.0, 0
    old = _log(folder, "a" * 32, 10, 100)
    going = _log(folder, "b" * 32, 10, 100, finished=False)  # left going by the last server
    recent = _log(folder, "c" * 32, 1, 100)
    assert await svc.prune() == [old.stem]
    assert not old.exists() and going.exists() and recent.exists()

    # by size: the oldest finished logs go until the rest fit, whatever their age
    svc.runs_max_age_days, svc.runs_max_bytes = 0.0, 25_000
    logs = [_log(folder, c * 32, days, 10_000) for c, days in (("d", 3), ("e", 2), ("f", 0.5))]
    assert await svc.prune() == [logs[0].stem]
    assert [p.exists() for p in logs] == [False, True, True] and going.exists()
    assert sum(p.stat().st_size for p in folder.glob("*.jsonl")) <= 25_000

    # a run that finishes is pruned with the rest (at the start too: resume_all prunes first)
    write(svc.root / "agents" / "recorder.ipynb", WORKER)
    svc.runs_max_bytes = 1
    run = await svc.start(RunRequest(goal="record alpha", agents=["recorder"]), "ben")
    task = svc._runs[run["id"]].task
    assert task is not None
    await task  # no model service here: it fails at once, and its log is pruned
    assert not (folder / f"{run['id']}.jsonl").exists()
    assert run["id"] not in [r["id"] for r in svc.list_runs("ben")]
    assert going.exists()  # still never a run that is going
    assert sorted(p.stem for p in folder.glob("*.jsonl")) == [going.stem]


def test_backstage_draws_a_fan_out_and_the_tool_being_called() -> None:
    from oraculo.extensions.panels.backstage import render_event, render_graph

    run = {
        "status": "running",
        "agents": ["lead", "a", "b", "gather"],
        "stages": [["lead"], ["a", "b"], ["gather"]],
        "stage": 1,
        "current": "a",
        "working": ["a", "b"],
        "finished_agents": ["lead"],
        "calling": {"b": "tally<x>"},
        "per_agent": {},
    }
    graph = render_graph(run)
    assert 'data-testid="backstage-parallel" data-agents="a,b"' in graph
    assert graph.index('data-agent="lead"') < graph.index("in parallel") < graph.index('"gather"')
    assert 'data-agent="lead" data-status="done"' in graph
    assert 'data-agent="a" data-status="working"' in graph
    assert 'data-agent="b" data-status="calling"' in graph and "tally&lt;x&gt;" in graph
    assert 'data-agent="gather" data-status="waiting"' in graph
    fan = render_event({"type": "fan_out", "from": "lead", "to": ["a", "b"], "time": ""})
    assert 'data-type="fan_out"' in fan and "a ∥ b" in fan
    # stopped short: every branch that was going says how the run ended
    stopped = run | {"status": "cancelled", "working": [], "calling": {}, "stopped": ["a", "b"]}
    graph = render_graph(stopped)
    assert graph.count('data-status="cancelled"') == 2


async def test_a_fan_out_hands_over_to_every_branch_once(svc: AgentsService) -> None:
    """The stage after a fan-out's declarer: a ``fan_out`` event, then each branch's input
    (the goal and the answer), even to a branch that was sent a message before its turn; a
    resumed run hands over only to the branches that had nothing yet."""
    run_id = "9" * 32
    run = _Run(RunState(id=run_id), EventLog(Path(svc.runs_dir), run_id))
    specs = [AgentSpec(name=n).model_dump() for n in ("lead", "a", "b")]
    await run.emit(
        "run_started",
        owner="ben",
        goal="Count.",
        agents=specs,
        stages=[["lead"], ["a", "b"]],
        bounds={},
        session=None,
    )
    await run.emit("message", kind="input", **{"from": "user", "to": "lead"}, content="Count.")
    await run.emit("message", kind="note", **{"from": "ben", "to": "b"}, content="early")
    await run.emit("agent_finished", agent="lead", answer="two")
    await svc._hand_over(run, ["lead"], ["a", "b"])
    kinds = [(e["type"], e.get("to")) for e in run.state.events[-3:]]
    assert kinds == [("fan_out", ["a", "b"]), ("message", "a"), ("message", "b")]
    assert run.state.events[-1]["content"] == "Goal: Count.\n\nlead says:\ntwo"
    assert run.state.working == ["a", "b"] and run.state.stage == 1
    assert [m["content"] for m in run.state.transcripts["b"]] == [
        "Message from ben: early",
        "Goal: Count.\n\nlead says:\ntwo",
    ]
    before = len(run.state.events)
    await svc._hand_over(run, ["lead"], ["a", "b"])  # as a resumed run would: nothing again
    assert len(run.state.events) == before
    # the log replays to the same state
    replayed = RunState(id=run_id)
    for ev in run.log.read():
        replayed.apply(ev)
    assert replayed.summary() == run.state.summary()
