"""Kubernetes: KubeSpawner with the hooks every Oráculo spawner has, and the hub settings that
Zero to JupyterHub's chart does not set itself.

``deploy/kubernetes/values.yaml`` runs, in the chart's ``hub.extraConfig``::

    from oraculo.hub.kube import configure_kubernetes
    configure_kubernetes(c)

which picks :class:`OraculoKubeSpawner` and sets our scopes, roles, server token scopes and the
users' model-service URL, leaving the chart's own settings (hub address, proxy, database,
storage, image, resources) alone. Each user pod then gets, as a local server would:

- the sandbox limits of the user's groups (``ORACULO_SANDBOX_LIMITS``; the pod's memory and CPU
  come from the chart's ``singleuser.memory``/``singleuser.cpu``);
- the shared folders of the user's hub groups, each mounted from its own ``subPath`` of one
  shared volume (``groups_volume``, a ReadWriteMany claim or NFS) at the same path as on one
  machine, and only those;
- a GPU as a resource request (``gpus_per_server``, e.g. in a profile's
  ``kubespawner_override``), the device plugin choosing the card and showing only it;
- the hub token the server needs in a Secret of its own, referenced from the pod's environment,
  so that reading the pod spec (``kubectl get pod -o yaml``) shows no credential. The kernel's
  narrow token is minted inside the pod, as on one machine.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client.models import V1ObjectMeta, V1Secret
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from traitlets import Dict, Int, Unicode, default
from traitlets.config import Config

from oraculo.hub.config import AUTHENTICATORS, CUSTOM_SCOPES, SERVER_TOKEN_SCOPES, OraculoHub
from oraculo.hub.groups import GroupFolders
from oraculo.hub.spawners import OraculoSpawnerMixin
from oraculo.kernels.limits import NPROC_ENV

#: Environment variables that carry the server's hub token.
TOKEN_ENV = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN")
#: The key of the token in the server's Secret.
TOKEN_KEY = "api-token"
GPU_RESOURCE = "nvidia.com/gpu"
#: KubeSpawner settings each start adds to (group folders, a GPU).
_PER_START = ("volumes", "volume_mounts", "extra_resource_limits", "extra_resource_guarantees")


class OraculoKubeSpawner(OraculoSpawnerMixin, KubeSpawner):
    """One pod per user server, carrying the same hooks as the local spawners."""

    groups_volume = Dict(
        config=True,
        help="""Kubernetes volume source holding every group folder, e.g.
        {"persistentVolumeClaim": {"claimName": "oraculo-groups"}} (ReadWriteMany) or
        {"nfs": {"server": ..., "path": ...}}. Each of the user's groups is mounted from its own
        subPath at <GroupFolders.root>/<group>; no other group's folder is in the pod. Empty:
        no group folders in pods.""",
    )
    gpus_per_server = Int(
        0,
        config=True,
        help="""nvidia.com/gpu requested (and limited) per server; set it in a profile's
        kubespawner_override for users who should get a GPU. The NVIDIA device plugin picks
        the card and exposes only it to the pod.""",
    )
    token_secret_template = Unicode(
        "{pod}-token",
        config=True,
        help="Name of the Secret holding a server's hub token; {pod} is the pod's name.",
    )

    _configured: dict[str, Any] | None = None

    @default("image")
    def _default_image(self) -> str:
        return "oraculo/singleuser:latest"

    @property
    def token_secret_name(self) -> str:
        return self.token_secret_template.format(pod=self.pod_name)

    # --- hooks ------------------------------------------------------------------------------

    def prepare_group_folders(self, folders: GroupFolders, groups: list[str]) -> list[str]:
        # Nothing is made on the hub's disk: the kubelet makes a missing subPath.
        if not self.groups_volume:
            return []
        return [str(folders.folder(g)) for g in groups]

    async def assign_gpu(self) -> str | None:
        # The scheduler and the device plugin choose the card; the hub only asks for one.
        self.gpu_id = GPU_RESOURCE if self.gpus_per_server > 0 else None
        return self.gpu_id

    def release_gpu(self) -> None:
        self.gpu_id = None

    def gpu_env(self, env: dict[str, str]) -> dict[str, str]:
        if self.gpu_id is None:
            env["CUDA_VISIBLE_DEVICES"] = ""  # hide any card of a shared node
        env["ORACULO_GPU"] = f"{GPU_RESOURCE}={self.gpus_per_server}" if self.gpu_id else ""
        return env

    def get_env(self) -> dict[str, Any]:
        env: dict[str, Any] = super().get_env()
        # Pods of one node share the image's uid: RLIMIT_NPROC would count them all.
        env[NPROC_ENV] = "0"
        for name in TOKEN_ENV:
            if name in env:
                env[name] = {
                    "valueFrom": {
                        "secretKeyRef": {"name": self.token_secret_name, "key": TOKEN_KEY}
                    }
                }
        return env

    def token_secret(self) -> V1Secret:
        """The Secret the pod's token variables point at."""
        return V1Secret(
            metadata=V1ObjectMeta(
                name=self.token_secret_name,
                labels={**self._build_common_labels({}), "component": "singleuser-token"},
            ),
            type="Opaque",
            string_data={TOKEN_KEY: self.api_token},
        )

    async def get_pod_manifest(self) -> Any:
        if self._configured is None:
            # What the operator configured, kept apart from what each start adds, so a later
            # start drops a group or a GPU the user no longer has.
            self._configured = {name: copy.copy(getattr(self, name)) for name in _PER_START}
        volumes = list(self._configured["volumes"])
        mounts = list(self._configured["volume_mounts"])
        if self.group_dirs:
            volumes.append({"name": "oraculo-groups", **self.groups_volume})
            mounts += [
                {"name": "oraculo-groups", "mountPath": path, "subPath": Path(path).name}
                for path in self.group_dirs
            ]
        limits = dict(self._configured["extra_resource_limits"])
        guarantees = dict(self._configured["extra_resource_guarantees"])
        if self.gpu_id is not None:
            limits[GPU_RESOURCE] = guarantees[GPU_RESOURCE] = str(self.gpus_per_server)
        for name, value in zip(_PER_START, (volumes, mounts, limits, guarantees), strict=True):
            setattr(self, name, value)
        return await super().get_pod_manifest()

    async def start(self) -> Any:
        await self._replace_token_secret()
        return await super().start()

    async def stop(self, now: bool = False) -> None:
        try:
            await super().stop(now=now)
        finally:
            await self._delete_token_secret()

    async def _replace_token_secret(self) -> None:
        await self._delete_token_secret()
        await self.api.create_namespaced_secret(self.namespace, self.token_secret())

    async def _delete_token_secret(self) -> None:
        try:
            await self.api.delete_namespaced_secret(self.token_secret_name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise


def configure_kubernetes(
    c: Config, models_url: str = "http://proxy-public/services/models/"
) -> Config:
    """Our hub settings inside Zero to JupyterHub (``hub.extraConfig``): the spawner, scopes,
    roles and the users' model-service URL (through the chart's public proxy). The chart keeps
    the hub's address, proxy, database, image, storage and resources."""
    hub = OraculoHub(config=c)
    c.JupyterHub.spawner_class = "oraculo-kubernetes"
    if hub.authenticator in AUTHENTICATORS:
        c.JupyterHub.authenticator_class = AUTHENTICATORS[hub.authenticator]
    c.JupyterHub.custom_scopes = CUSTOM_SCOPES
    c.JupyterHub.load_roles = [r for r in hub.roles() if r["name"] != "idle-culler"]
    c.Spawner.server_token_scopes = SERVER_TOKEN_SCOPES
    c.Spawner.default_url = "/lab"
    # The image's command (deploy/docker), named: KubeSpawner drops the arguments otherwise.
    c.KubeSpawner.cmd = ["python", "-m", "oraculo.singleuser"]
    c.Spawner.args = [
        "--LabApp.extension_manager=readonly",
        *hub.kernel_culling_args(),
        *hub.singleuser_extra_args,
    ]
    c.Spawner.environment = {"ORACULO_MODELS_URL": models_url, **hub.extra_environment}
    c.GroupFolders.enabled = hub.group_folders
    if "root" not in c.GroupFolders:
        c.GroupFolders.root = "/srv/oraculo/groups"
    return c
