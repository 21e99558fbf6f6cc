"""The single-user launcher's own pieces (the launcher as a whole runs in every e2e test)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from oraculo.singleuser import private_folder


def test_our_folder_is_made_private_or_tightened(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh" / ".oraculo"
    private_folder(str(fresh))
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700

    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    os.chmod(old, 0o755)  # as os.makedirs left it under the usual umask
    private_folder(str(old))
    assert stat.S_IMODE(old.stat().st_mode) == 0o700
