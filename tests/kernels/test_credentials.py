"""The server's hub token leaves the environment, the process's /proc entry and its children."""

from __future__ import annotations

import os
import subprocess
import sys

HOLD = """
import os, subprocess, sys
from oraculo.kernels import credentials
held = credentials.hold_server_token()
child = subprocess.run(["env"], capture_output=True, text=True).stdout
own = open("/proc/self/environ", "rb").read()
print(held == "hub-secret-0123", "hub-secret" in child, b"hub-secret" in own,
      "HOME" in os.environ, credentials.server_token() == held)
"""


def test_the_server_token_is_held_and_gone_from_every_environment() -> None:
    env = {
        **os.environ,
        "JUPYTERHUB_API_TOKEN": "hub-secret-0123",
        "JPY_API_TOKEN": "hub-secret-0123",
    }
    out = subprocess.run(
        [sys.executable, "-c", HOLD], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "False", "False", "True", "True"], out
