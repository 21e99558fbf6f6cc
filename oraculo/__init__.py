"""Oráculo: a hosted, notebook-centred AI workspace built on JupyterHub."""

__version__ = "0.1.0"
