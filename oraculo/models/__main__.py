"""Run the model service: ``python -m oraculo.models [--config-file PATH] [--port N]``."""

from .app import main

if __name__ == "__main__":
    main()
