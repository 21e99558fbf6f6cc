"""Shared folders per hub group: names, links in homes, Docker mounts, and real OS permissions.

The system-users tests run a real hub as root: the members' servers start as OS accounts of
their own and their kernels read and write the folder; a non-member's kernel is refused.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import stat
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from traitlets.config import Config

from oraculo.hub.groups import MAX_SLUG, SHARED_DIRS_ENV, GroupFolders, group_slug
from oraculo.hub.releases import replace_release
from tests.harness import SystemUsersTeam, system_users_team
from tests.hub.fakes import FakeDockerAPI, make_spawner

SLUG_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")


# --- names ------------------------------------------------------------------------------------


def test_names_that_fit_are_kept() -> None:
    for name in ("cohort", "team_a-2025", "a" * MAX_SLUG, "0day"):
        assert group_slug(name) == name


@pytest.mark.parametrize(
    "name", ["../x", "..", "/etc", "Cohort A", "-rf", "a" * 40, "", "año", "x/../../y"]
)
def test_other_names_are_mapped_inside_the_root(name: str, tmp_path: Path) -> None:
    slug = group_slug(name)
    assert set(slug) <= SLUG_CHARS and slug[0].isalnum() and 0 < len(slug) <= MAX_SLUG
    assert GroupFolders(root=str(tmp_path)).folder(name).parent == tmp_path


def test_mapped_names_do_not_collide() -> None:
    names = ["Cohort A", "cohort-a", "cohort a", "COHORT-A", "../cohort-a", "a" * 30, "a" * 31]
    assert len({group_slug(n) for n in names}) == len(names)


def test_the_user_server_reads_the_hubs_folders(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from oraculo.extensions.agents.service import AgentsService
    from oraculo.extensions.base.embeddings import EmbeddingClient
    from oraculo.extensions.base.modelclient import ModelClient
    from oraculo.extensions.memory.rag import WorkspaceIndex

    monkeypatch.setenv(SHARED_DIRS_ENV, os.pathsep.join(["/g/cohort", "/g/team"]))
    monkeypatch.setenv("ORACULO_SHARED_AGENT_DIRS", os.pathsep.join(["/agents", "/g/team"]))
    index = WorkspaceIndex(EmbeddingClient(), root=str(tmp_path), path=str(tmp_path / "store"))
    assert index.extra_paths == ["/g/cohort", "/g/team"]
    agents = AgentsService(
        root_dir=str(tmp_path), user="ana", models=ModelClient(), execute=lambda: None
    )
    assert agents.shared_dirs == ["/agents", "/g/team", "/g/cohort"]


# --- links in the user's home -------------------------------------------------------------------


def test_home_links_never_replace_the_users_own(tmp_path: Path) -> None:
    folders = GroupFolders(root=str(tmp_path / "groups"))
    made = list(folders.ensure_folders(["cohort", "team", "mine"]))
    home = tmp_path / "home"
    (home / "shared").mkdir(parents=True)
    (home / "shared" / "mine").write_text("the user's own file")
    (home / "shared" / "elsewhere").symlink_to("/tmp")
    owner = (os.getuid(), os.getgid())

    folders.link_into_home(str(home), made, owner)
    assert os.readlink(home / "shared" / "cohort") == str(tmp_path / "groups" / "cohort")
    assert os.readlink(home / "shared" / "team") == str(tmp_path / "groups" / "team")
    assert (home / "shared" / "mine").read_text() == "the user's own file"

    # Left "team": its link goes, the user's own link stays.
    folders.link_into_home(str(home), made[:1], owner)
    assert sorted(p.name for p in (home / "shared").iterdir()) == ["cohort", "elsewhere", "mine"]


def test_a_home_link_folder_that_is_a_link_is_not_followed(tmp_path: Path) -> None:
    folders = GroupFolders(root=str(tmp_path / "groups"))
    made = list(folders.ensure_folders(["cohort"]))
    home, decoy = tmp_path / "home", tmp_path / "decoy"
    home.mkdir()
    decoy.mkdir()
    (home / "shared").symlink_to(decoy)
    folders.link_into_home(str(home), made, (os.getuid(), os.getgid()))
    assert list(decoy.iterdir()) == []


# --- docker: only the user's groups are mounted ---------------------------------------------


@pytest.fixture
def group_names() -> Iterator[list[str]]:
    """Unique hub group names; their OS groups (made when running as root) go afterwards."""
    tag = uuid.uuid4().hex[:6]
    names = [f"cohort-{tag}", f"../team-{tag}"]
    yield names
    for name in names:
        subprocess.run(["groupdel", f"oraculo-{group_slug(name)}"], capture_output=True)


async def test_docker_mounts_the_users_group_folders(
    fake_docker: FakeDockerAPI, group_names: list[str], tmp_path: Path
) -> None:
    config = Config()
    config.GpuAllocator.gpu_ids = []
    config.GroupFolders.root = str(tmp_path / "groups")
    spawner = make_spawner("ada", config, groups=tuple(group_names))
    await spawner.start()
    [create] = [kw for call, _, kw in fake_docker.calls if call == "create_container"]
    paths = [str(tmp_path / "groups" / group_slug(n)) for n in sorted(group_names)]
    binds = create["host_config"]["Binds"]
    assert binds == ["oraculo-home-ada:/home/jovyan:rw", *(f"{p}:{p}:rw" for p in paths)]
    assert create["environment"][SHARED_DIRS_ENV] == os.pathsep.join(paths)
    if os.geteuid() == 0:
        gids = [str(grp.getgrnam(f"oraculo-{group_slug(n)}").gr_gid) for n in group_names]
        assert sorted(create["host_config"]["GroupAdd"]) == sorted(gids)
        assert stat.S_IMODE(os.stat(paths[0]).st_mode) == 0o3770

    # Out of both groups: the next container mounts neither and joins no group.
    await spawner.stop()
    spawner.user.groups = []
    await spawner.start()
    [_, again] = [kw for call, _, kw in fake_docker.calls if call == "create_container"]
    assert again["host_config"]["Binds"] == ["oraculo-home-ada:/home/jovyan:rw"]
    assert "GroupAdd" not in again["host_config"]
    assert SHARED_DIRS_ENV not in again["environment"]


# --- system-users: real OS accounts, real permissions -------------------------------------------


@pytest.fixture(scope="module")
async def cohort(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SystemUsersTeam]:
    async with system_users_team(tmp_path_factory.mktemp("hub-groups"), "cohort") as team:
        yield team


@pytest.mark.root
async def test_members_share_the_folder_and_others_are_refused(cohort: SystemUsersTeam) -> None:
    folder, ana = cohort.folder, cohort.ana
    st = folder.stat()
    os_group = grp.getgrnam(f"oraculo-{cohort.group}")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, os_group.gr_gid, 0o3770)

    # ana finds the folder in her home and writes there.
    kernel = await ana.start_kernel()
    code = (
        "import os, pathlib\n"
        f"p = pathlib.Path.home() / 'shared' / {cohort.group!r} / 'notes.md'\n"
        "p.write_text('week 1: lists')\n"
        "print(os.path.realpath(p))"
    )
    out = await ana.execute(kernel, code)
    assert out["error"] is None, out
    note = folder / "notes.md"
    assert out["stdout"].strip() == str(note)
    assert note.stat().st_gid == os_group.gr_gid  # setgid: the file stays the group's

    # ben, in the group too, reads it; eve, who is not, is refused.
    assert (await cohort.read(cohort.ben, note))["stdout"] == "week 1: lists"
    out = await cohort.read(cohort.eve, note)
    assert out["error"] is not None and out["error"]["name"] == "PermissionError", out
    assert "Errno 13" in str(out["error"]["value"])
    eve_home = Path(pwd.getpwnam(f"jupyter-{cohort.eve.name}").pw_dir)
    assert not (eve_home / "shared").exists()


@pytest.mark.root
async def test_the_workspace_index_lists_the_group_folder(cohort: SystemUsersTeam) -> None:
    r = await cohort.ana.api("GET", f"/user/{cohort.ana.name}/api/v1/memory/index")
    assert r.status_code == 200, r.text
    assert r.json()["extra_paths"] == [str(cohort.folder)]
    r = await cohort.eve.api("GET", f"/user/{cohort.eve.name}/api/v1/memory/index")
    assert r.json()["extra_paths"] == []


@pytest.mark.root
async def test_leaving_the_group_takes_access_away_at_the_next_start(
    cohort: SystemUsersTeam,
) -> None:
    ben = cohort.ben
    note = cohort.folder / "leaving.md"
    note.write_text("members only")
    os.chown(note, 0, grp.getgrnam(f"oraculo-{cohort.group}").gr_gid)
    os.chmod(note, 0o640)
    assert (await cohort.read(ben, note))["stdout"] == "members only"

    url = f"/hub/api/groups/{cohort.group}/users"
    r = await cohort.admin.api("DELETE", url, json={"users": [ben.name]})
    assert r.status_code == 200, r.text
    await ben.stop_server()
    await ben.spawn()

    out = await cohort.read(ben, note)
    assert out["error"] is not None and out["error"]["name"] == "PermissionError", out
    os_user = f"jupyter-{ben.name}"
    assert os_user not in grp.getgrnam(f"oraculo-{cohort.group}").gr_mem
    home = Path(pwd.getpwnam(os_user).pw_dir)
    assert not os.path.lexists(home / "shared" / cohort.group)


@pytest.mark.root
def test_a_published_folder_a_member_made_is_moved_aside_not_adopted(tmp_path: Path) -> None:
    """The hub makes ``published/`` and ``runs/`` root-owned; one a member made first (before
    group folders were sticky, a member could rename the hub's away) is never chowned to root,
    which would pass the member's files off as the team's releases: it is moved aside."""
    folders = GroupFolders(root=str(tmp_path / "groups"))
    path = folders.folder("team")
    path.mkdir(parents=True)
    theirs = path / "published"
    theirs.mkdir()
    (theirs / "inspector.ipynb").write_text("{}")
    os.chown(theirs, 65534, 65534)
    folders._ensure_published(path, 0)
    for name in ("published", "runs"):
        st = os.lstat(path / name)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o3770), name
    assert list((path / "published").iterdir()) == []
    (aside,) = path.glob("published.moved-*")
    assert (aside / "inspector.ipynb").exists() and aside.stat().st_uid == 65534


def test_members_starting_together_all_get_the_cohorts_material_folder(tmp_path: Path) -> None:
    """Members of one cohort spawning at once prepare its folders in threads of one hub at the
    same moment: each must find (or make) ``material``, none fail because another made it first
    (a spawn once failed with FileExistsError), and a ``material`` that is not a folder is moved
    aside once, whoever gets there first."""
    import threading

    folders = GroupFolders(root=str(tmp_path / "groups"))

    def prepare(cohort: str, start: threading.Barrier, errors: list[Exception]) -> None:
        start.wait()
        try:
            folders.ensure_material(cohort)
        except Exception as e:
            errors.append(e)

    for round_ in range(30):
        cohort = f"c{round_}"
        folders.folder(cohort).mkdir(parents=True)
        if round_ % 3 == 0:
            (folders.folder(cohort) / "material").write_text("a student's file")
        start, errors = threading.Barrier(8), list[Exception]()
        threads = [threading.Thread(target=prepare, args=(cohort, start, errors)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [], errors
        assert (folders.folder(cohort) / "material").is_dir()
        moved = list(folders.folder(cohort).glob("material.moved-*"))
        assert len(moved) == (1 if round_ % 3 == 0 else 0), moved


@pytest.mark.root
def test_a_material_folder_a_student_made_is_moved_aside_not_adopted(tmp_path: Path) -> None:
    """A student can write in the cohort folder and may make ``material`` before the hub does,
    with a file in it passing for course material. The hub never chowns it to itself (that would
    publish the student's file to the cohort as the instructors'): it moves it aside, with the
    student's file and ownership intact, and makes its own, empty and root-owned."""
    folders = GroupFolders(root=str(tmp_path / "groups"))
    cohort = f"mat{uuid.uuid4().hex[:6]}"
    path = folders.folder(cohort)
    theirs = path / "material"
    theirs.mkdir(parents=True)
    (theirs / "answers.ipynb").write_text("{}")
    os.chown(theirs, 65534, 65534)
    os.chown(theirs / "answers.ipynb", 65534, 65534)
    try:
        folders.ensure_material(cohort, os_groups=True)
        st = os.lstat(path / "material")
        staff = grp.getgrnam(folders.staff_os_group(cohort)).gr_gid
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, staff, 0o2775)
        assert list((path / "material").iterdir()) == []
        (aside,) = path.glob("material.moved-*")
        assert aside.stat().st_uid == 65534
        assert (aside / "answers.ipynb").stat().st_uid == 65534
    finally:
        subprocess.run(["groupdel", folders.staff_os_group(cohort)], capture_output=True)


@pytest.mark.root
def test_the_hub_replaces_a_release_only_for_a_maintainer_and_follows_no_link(
    tmp_path: Path,
) -> None:
    """The hub's replacement (oraculo.hub.releases, as root): refused over another account's
    release unless the user is a maintainer; done as a new file of the user's, 0644, the
    folder's group; a link or a folder a member put in the release's place, or a published/
    that is not the hub's, is refused and what it points at is untouched."""
    folders = GroupFolders(root=str(tmp_path / "groups"))
    folders.ensure_folders(["team"])
    path = folders.folder("team")
    folders._ensure_published(path, 0)
    target = path / "published" / "relay.ipynb"
    target.write_text('{"v": "ana"}')
    os.chown(target, 65534, 0)  # ana's release
    with pytest.raises(PermissionError, match="maintainers"):
        replace_release(path, "relay", b'{"v": "ben"}', 65533, False)
    assert target.read_text() == '{"v": "ana"}'
    written, old = replace_release(path, "relay", b'{"v": "ben"}', 65533, True)
    st = target.stat()
    assert (written, old, st.st_uid, stat.S_IMODE(st.st_mode)) == (target, 65534, 65533, 0o644)
    assert target.read_text() == '{"v": "ben"}'
    assert sorted(p.name for p in target.parent.iterdir()) == ["relay.ipynb"]
    # a member's link in the release's place: refused, its target untouched
    secret = tmp_path / "secret"
    secret.write_text("root's")
    target.unlink()
    target.symlink_to(secret)
    os.lchown(target, 65534, 0)
    with pytest.raises(PermissionError, match="not a release"):
        replace_release(path, "relay", b"{}", 65533, True)
    assert secret.read_text() == "root's" and target.is_symlink()
    # a published/ that is not the hub's (a member's folder) is not written to
    target.unlink()
    os.chown(target.parent, 65534, -1)
    with pytest.raises(PermissionError, match="not the hub's"):
        replace_release(path, "relay", b"{}", 65533, True)
    assert list(target.parent.iterdir()) == []


@pytest.mark.root
async def test_first_starts_side_by_side_make_every_account_and_membership(
    tmp_path: Path, group_names: list[str]
) -> None:
    """Spawns run useradd, groupadd and gpasswd in threads, side by side; each locks
    /etc/passwd or /etc/group while it runs, so the hub runs one at a time."""
    from jupyterhub.objects import Hub

    from oraculo.hub.spawners import SystemUserSpawner
    from tests.hub.fakes import HubGroup, HubUser

    config = Config()
    config.GroupFolders.root = str(tmp_path / "groups")
    config.SystemUserSpawner.home_base = str(tmp_path / "homes")
    (tmp_path / "homes").mkdir()
    tag = uuid.uuid4().hex[:6]
    names = [f"c{tag}{i}" for i in range(6)]
    spawners = []
    for name in names:
        user = HubUser(name, groups=[HubGroup(g) for g in group_names])
        spawners.append(
            SystemUserSpawner(
                user=user,
                hub=Hub(ip="127.0.0.1", port=8081, base_url="/hub/"),
                config=config,
                server=user.server,
            )
        )
    try:
        await asyncio.gather(*(s.prepare_account() for s in spawners))
        await asyncio.gather(*(s.make_group_folders() for s in spawners))
        for s in spawners:
            assert pwd.getpwnam(s.os_user).pw_dir == str(tmp_path / "homes" / s.os_user)
            assert len(s.group_dirs) == 2
        for group in group_names:
            members = set(grp.getgrnam(f"oraculo-{group_slug(group)}").gr_mem)
            assert members >= {s.os_user for s in spawners}
    finally:
        for s in spawners:
            subprocess.run(["userdel", "--remove", s.os_user], capture_output=True)
