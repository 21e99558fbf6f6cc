"""A user's server offers only sandboxed kernels.

Jupyter lists every kernelspec it finds, the plain "Python 3 (ipykernel)" among them, and starts
whichever a notebook names: a kernel without limits and with no narrow credential, one click
away, and what any notebook saved with it (``"name": "python3"``) opens on. Here:

- :class:`SandboxKernelSpecManager` lists only the kernelspecs that the ``oraculo-sandbox``
  provisioner launches (so JupyterLab's launcher shows only those), and answers any other name
  with the sandboxed default (``oraculo``): whatever looks a kernelspec up by name gets a
  sandboxed one, and it fails closed if the default is not sandboxed either.
- :class:`SandboxMappingKernelManager`, the server's kernel manager, starts a kernel asked for
  by another name (a notebook's ``python3``, the kernels API) as that sandboxed kernel, under its
  own name, so the notebook, the session and the kernel all say ``oraculo``.

Other languages can come later as kernelspecs of their own launched by the same provisioner.
Both classes are set in ``jupyter-config/jupyter_server_config.d/zz-oraculo.json``.
"""

from __future__ import annotations

import os
from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from jupyter_core.paths import jupyter_path
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from jupyter_server.utils import ApiPath
from traitlets import Bool, Unicode

#: The provisioner that launches sandboxed kernels (entry point in pyproject.toml).
SANDBOX_PROVISIONER = "oraculo-sandbox"


def is_sandboxed(spec: KernelSpec) -> bool:
    """Whether the kernelspec's kernels are launched by the sandbox provisioner."""
    provisioner = (spec.metadata or {}).get("kernel_provisioner") or {}
    return bool(provisioner.get("provisioner_name") == SANDBOX_PROVISIONER)


class SandboxKernelSpecManager(KernelSpecManager):
    """Lists only sandboxed kernelspecs; maps any other name to :attr:`fallback_kernel`."""

    fallback_kernel = Unicode(
        "oraculo",
        help="""The sandboxed kernelspec a kernel asked for by any other name gets (a notebook
        saved with `python3`, say).""",
    ).tag(config=True)

    ensure_native_kernel = Bool(
        False,
        help="""Whether to add the Python environment's own ipykernel spec. It is not sandboxed,
        so it would never be offered; looking for it imports ipykernel into the server.""",
    ).tag(config=True)

    def _kernel_dirs_default(self) -> list[str]:
        # As jupyter_client's, which imports IPython into the server (3 MB) to learn where
        # ~/.ipython is: $IPYTHONDIR, else ~/.ipython.
        ipython_dir = os.path.expanduser(os.environ.get("IPYTHONDIR") or "~/.ipython")
        return [*jupyter_path("kernels"), os.path.join(ipython_dir, "kernels")]

    def find_kernel_specs(self) -> dict[str, str]:
        found = super().find_kernel_specs()
        out = {}
        for name, resource_dir in found.items():
            try:
                # Its kernel.json (``_get_kernel_spec_by_name`` would import ipykernel into the
                # server for a spec named python3, which is not sandboxed anyway).
                spec = self.kernel_spec_class.from_resource_dir(resource_dir)
            except Exception:  # not loadable: not offered either
                continue
            if is_sandboxed(spec):
                out[name] = resource_dir
        return out

    def sandboxed_name(self, name: str | None) -> str:
        """``name`` if it is a sandboxed kernelspec here, else :attr:`fallback_kernel`."""
        if name and name.lower() in self.find_kernel_specs():
            return name.lower()
        return self.fallback_kernel

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        spec = super().get_kernel_spec(self.sandboxed_name(kernel_name))
        if not is_sandboxed(spec):  # a fallback_kernel that is not sandboxed: nothing starts
            raise NoSuchKernel(kernel_name)
        return spec


class SandboxMappingKernelManager(AsyncMappingKernelManager):
    """The server's kernel manager: every kernel it starts is a sandboxed kernelspec's."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.default_kernel_name = self._sandboxed(self.default_kernel_name)

    def _sandboxed(self, name: str | None) -> str:
        ksm = self.kernel_spec_manager
        if isinstance(ksm, SandboxKernelSpecManager):
            return ksm.sandboxed_name(name)
        return name or self.default_kernel_name

    async def start_kernel(  # type: ignore[override]
        self, *, kernel_id: str | None = None, path: ApiPath | None = None, **kwargs: Any
    ) -> str:
        asked = kwargs.get("kernel_name") or self.default_kernel_name
        kwargs["kernel_name"] = self._sandboxed(asked)
        if kwargs["kernel_name"] != asked and (kernel_id is None or kernel_id not in self):
            self.log.info("Kernel %r asked for: starting %r", asked, kwargs["kernel_name"])
        kernel_id = await super().start_kernel(kernel_id=kernel_id, path=path, **kwargs)
        return str(kernel_id)
