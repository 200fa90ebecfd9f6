# syntax=docker/dockerfile:1
# Hydra serving images, one file, two targets:
#   docker build -t hydra-serve .                    # the service (default, last stage)
#   docker build -t hydra-train --target train .     # the training pipeline (torch with CUDA)
#
# Base: CUDA 13 + cuDNN 9 runtime on Ubuntu 24.04, what onnxruntime-gpu 1.31 is built for, so
# the CUDA provider works on a GPU host and ONNX Runtime falls back to the CPU elsewhere.
# Pinned by tag here (no registry is reachable where this file is built and tested);
# tools/pin_base_image.sh writes the tag's digest after it (tag@sha256:...) for production.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
# Both images run as this user, so the training container can write versions into the model
# volume that the service reads. 10001: the Ubuntu image already has uid 1000 (ubuntu).
ARG HYDRA_UID=10001

FROM ${CUDA_IMAGE} AS python-base
ARG HYDRA_UID
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:${PATH}
# Ubuntu's python3 (3.12); versions come from the pinned base image's release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid "${HYDRA_UID}" hydra \
    && useradd --uid "${HYDRA_UID}" --gid "${HYDRA_UID}" --create-home --home-dir /home/hydra \
        --shell /usr/sbin/nologin hydra \
    && mkdir -p /models \
    && chown "${HYDRA_UID}:${HYDRA_UID}" /models

# uv, pinned by hash, installs exactly uv.lock: the service's dependencies (no extra: never torch).
# Dependencies first, from pyproject.toml and uv.lock alone: source edits keep this layer.
FROM python-base AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /build
COPY tools/uv-requirements.txt ./
RUN python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install --require-hashes --no-deps -r uv-requirements.txt
COPY pyproject.toml uv.lock ./
RUN /opt/uv/bin/uv sync --locked --no-install-project --no-editable --python /usr/bin/python3

# The service's package on top (its dependencies already match the lock), and never torch.
FROM deps AS service-build
COPY README.md LICENSE ./
COPY app ./app
COPY contract ./contract
RUN /opt/uv/bin/uv sync --locked --no-editable --python /usr/bin/python3 \
    && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# Training: the lock's `train` extra with PyPI's CUDA build of torch (the `cuda` extra).
FROM deps AS train-build
RUN /opt/uv/bin/uv sync --locked --no-install-project --no-editable --python /usr/bin/python3 \
        --extra train --extra cuda
COPY README.md LICENSE ./
COPY app ./app
COPY contract ./contract
COPY training ./training
RUN /opt/uv/bin/uv sync --locked --no-editable --python /usr/bin/python3 --extra train --extra cuda

FROM python-base AS train
ARG HYDRA_UID
COPY --from=train-build /opt/venv /opt/venv
COPY configs /opt/hydra/configs
WORKDIR /opt/hydra
# Checkpoints go to runs/ under the working directory (a rerun resumes from them).
RUN mkdir -p /opt/hydra/runs \
    && chown "${HYDRA_UID}:${HYDRA_UID}" /opt/hydra/runs
ENV HOME=/home/hydra
USER ${HYDRA_UID}:${HYDRA_UID}
# Publishes a new version atomically under /models/<name>/<version>/ (the shared volume).
VOLUME ["/models", "/opt/hydra/runs"]
ENTRYPOINT ["hydra-train"]
CMD ["run", "--config", "configs/digits.toml", "--repository", "/models"]

FROM python-base AS service
ARG HYDRA_UID
COPY --from=service-build /opt/venv /opt/venv
ENV HYDRA_REPOSITORY=/models \
    HYDRA_HOST=0.0.0.0 \
    HYDRA_PORT=8000 \
    HYDRA_GRPC_PORT=8081 \
    HOME=/home/hydra
WORKDIR /opt/hydra
USER ${HYDRA_UID}:${HYDRA_UID}
# The model repository is data, not part of the image: mount it (read-only is enough).
# Ports: HTTP (V1, V2, /metrics) and gRPC (Open Inference Protocol).
VOLUME ["/models"]
EXPOSE 8000 8081
# Ready means a model is loaded and its warm-up inference passed; python, so no curl needed.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HYDRA_PORT', '8000') + '/v2/health/ready', timeout=4)"]
ENTRYPOINT ["hydra-serve"]
