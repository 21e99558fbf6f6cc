"""``python -m oraculo.hub.dashboard``: the operator's dashboard, started by the hub."""

from oraculo.hub.dashboard.app import main

if __name__ == "__main__":
    main()
