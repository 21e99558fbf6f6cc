# The baseline for benchmarks/spawn.py: plain JupyterHub, SimpleLocalProcessSpawner, the
# built-in shared-password authenticator, and a single-user server with every server extension
# turned off. Ports and data directory come from the same ORACULO_* variables as ours.
import os
import sys

c = get_config()  # noqa: F821
data = os.environ["ORACULO_DATA_DIR"]
c.JupyterHub.bind_url = f"http://127.0.0.1:{os.environ['ORACULO_PORT']}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ["ORACULO_HUB_PORT"])
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ['ORACULO_PROXY_API_PORT']}"
c.ConfigurableHTTPProxy.command = [
    os.path.join(os.path.dirname(__file__), "..", "node_modules", ".bin", "configurable-http-proxy")
]
c.JupyterHub.db_url = f"sqlite:///{data}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = os.path.join(data, "cookie_secret")
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = os.environ["BASELINE_PASSWORD"]
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = os.path.join(data, "users", "{username}")
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
extensions = [
    "jupyterlab",
    "jupyter_lsp",
    "jupyter_server_proxy",
    "jupyter_server_terminals",
    "notebook_shim",
    "oraculo.extensions",
    "panel.io.jupyter_server_extension",
]
c.Spawner.args = [
    "--ServerApp.allow_root=True",
    "--ServerApp.jpserver_extensions=" + repr(dict.fromkeys(extensions, False)),
]
c.Spawner.default_url = "/api/status"
