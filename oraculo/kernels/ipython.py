"""IPython extension loaded in every ``oraculo`` kernel.

``%gpu`` reports the GPU this kernel was given (or that it runs on CPU).
"""

from __future__ import annotations

from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

from oraculo.kernels import gpu


@magics_class
class OraculoMagics(Magics):
    """Magics of the oraculo kernel."""

    @line_magic
    def gpu(self, line: str) -> dict[str, Any] | None:
        """Print the GPU assigned to this kernel; ``%gpu -q`` returns the details instead."""
        if line.strip() == "-q":
            return gpu.gpu_info()
        print(gpu.describe())
        return None


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(OraculoMagics)
    ipython.extension_manager.load_extension("oraculo.kernels.chat_magics")  # %%chat, %memory
    ipython.extension_manager.load_extension("oraculo.kernels.git_magics")  # %git
