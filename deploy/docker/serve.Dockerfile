# syntax=docker/dockerfile:1.7
# The serving image, without torch: the ONNX export (models/stage-1.onnx) run by onnxruntime or OpenVINO
# (BACKEND=auto picks the faster one that agrees with the reference), FastAPI, the server and
# `greenr predict`. Non-root, health-checked, `python -m serve` on 0.0.0.0:8000 (HOST/PORT are
# serve.settings fields). About 0.5 GB of Python packages instead of the CPU torch image's gigabytes.
# Build from the repository root:
#   docker build -f deploy/docker/serve.Dockerfile -t greenr-serve .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m pip install "uv==0.13.9"
COPY pyproject.toml uv.lock README.md ./
# Only the `serve` dependency group of uv.lock (pyproject.toml lists it): what the server and the
# batch scorer import, at the locked versions and hashes. No torch, no MLflow.
RUN uv export --frozen --only-group serve --no-emit-project -o /tmp/requirements.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-hashes -r /tmp/requirements.txt
COPY greenr greenr
COPY serve serve
RUN /opt/venv/bin/pip install --no-deps .

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GREENR_ROOT=/app \
    GREENR_STATE_DIR=/tmp/greenr-state \
    HOST=0.0.0.0 \
    PORT=8000
RUN groupadd --system --gid 10001 greenr \
 && useradd --system --uid 10001 --gid greenr --home-dir /app --no-create-home --shell /usr/sbin/nologin greenr
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
# What the server reads besides the model: the pipeline definition (model hash in dvc.lock), params,
# the DVC remote's address and the evaluate metrics. The model itself is mounted at /app/models
# (compose, k8s) or pulled from the DVC remote by the server (MODEL_PULL) and by `greenr predict`.
COPY --chown=greenr:greenr dvc.yaml dvc.lock params.yaml ./
COPY --chown=greenr:greenr .dvc/config .dvc/config
COPY --chown=greenr:greenr metrics metrics
RUN mkdir -p /app/models && chown greenr:greenr /app/models
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["python", "-m", "serve"]
