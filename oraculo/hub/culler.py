"""``python -m oraculo.hub.culler``: jupyterhub-idle-culler, stoppable by the hub.

A hub started in the background runs its services with SIGINT ignored (inherited from the
shell), and the culler never restores it, so the hub's shutdown waited for it to time out.
This entry point restores the default handler, then runs the culler unchanged.
"""

from __future__ import annotations

import signal

from jupyterhub_idle_culler import main

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
