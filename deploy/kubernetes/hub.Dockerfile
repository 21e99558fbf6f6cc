# The hub image for Zero to JupyterHub: the chart's hub image plus our package (spawner,
# authenticators, roles), pinned like everything else. Build from the repository root:
#   docker build -f deploy/kubernetes/hub.Dockerfile -t registry.example.org/oraculo/hub:0.1.0 .
FROM quay.io/jupyterhub/k8s-hub:4.2.0
USER root
COPY pyproject.toml README.md /opt/oraculo/
COPY requirements /opt/oraculo/requirements
COPY jupyter-config /opt/oraculo/jupyter-config
COPY oraculo /opt/oraculo/oraculo
RUN pip install --no-cache-dir -c /opt/oraculo/requirements/constraints.txt \
      "/opt/oraculo[kubernetes,oauth,postgres]"
USER ${NB_USER}
