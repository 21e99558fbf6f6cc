# Oráculo's JupyterHub configuration. Declarative: choices go in c.OraculoHub (or the ORACULO_*
# environment variables); oraculo.hub.config turns them into JupyterHub settings.
#
# Examples (uncomment before the last line):
#   c.OraculoHub.spawner = "system-users"      # process | system-users | docker
#   c.OraculoHub.authenticator = "github"      # native | any JupyterHub authenticator
#   c.OraculoHub.admin_users = {"alice"}
#   c.GpuAllocator.max_servers_per_gpu = 1
#   c.DockerSpawner.image = "registry.example.org/oraculo/singleuser:0.1.0"
from oraculo.hub.config import OraculoHub

c = get_config()  # noqa: F821
OraculoHub(config=c).apply(c)
