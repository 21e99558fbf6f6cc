"""Run the store service: ``python -m oraculo.stores`` (as a hub-managed service)."""

from .app import main

if __name__ == "__main__":
    main()
