"""``%git`` in the oraculo kernel: commit a notebook and push it with the user's own git login.

The magic calls the user's server (``POST /api/v1/git/commits``) with the kernel's narrow token;
the server runs git with the login the user stored (``POST /api/v1/git/credentials``), so the
password never passes through the kernel.

    %git commit -m "Solve exercise 2" lesson.ipynb     commit lesson.ipynb, push its branch
    %git commit --no-push -m "WIP" lesson.ipynb         commit only
    %git logins                                        the stored logins (host and user)
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

from oraculo.kernels.chat_magics import ServerClient

USAGE = '%git commit [--no-push] -m "message" PATH  |  %git logins'


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="%git", add_help=False, exit_on_error=False)
    sub = p.add_subparsers(dest="command")
    commit = sub.add_parser("commit", add_help=False, exit_on_error=False)
    commit.add_argument("-m", "--message", required=True)
    commit.add_argument("--no-push", action="store_true")
    commit.add_argument("path")
    sub.add_parser("logins", add_help=False, exit_on_error=False)
    return p


@magics_class
class GitMagics(Magics):
    """``%git commit`` and ``%git logins``."""

    @line_magic
    def git(self, line: str) -> dict[str, Any] | None:
        """Commit a file and push it with your stored git login; see the module's docstring."""
        try:
            args = _parser().parse_args(shlex.split(line))
        except (argparse.ArgumentError, SystemExit, ValueError):
            print(f"usage: {USAGE}", file=sys.stderr)
            return None
        if args.command is None:
            print(f"usage: {USAGE}", file=sys.stderr)
            return None
        try:
            client = ServerClient.from_environment()
            if args.command == "logins":
                logins = client.request("GET", "api/v1/git/credentials")["credentials"]
                for login in logins:
                    print(f"{login['protocol']}://{login['username']}@{login['host']}")
                return None
            body = {
                "path": os.path.abspath(args.path),
                "message": args.message,
                "push": not args.no_push,
            }
            result: dict[str, Any] = client.request("POST", "api/v1/git/commits", json=body)
        except RuntimeError as e:
            print(f"%git: {e}", file=sys.stderr)
            return None
        where = f"pushed to {result['remote']}" if result["pushed"] else "not pushed"
        print(f"[{result['branch']} {result['commit'][:12]}] {args.message} ({where})")
        return None


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(GitMagics)
