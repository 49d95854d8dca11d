# A scan worker: the engine on the CUDA runtime, onnxruntime-gpu for the GoodNet checks.
# One container per GPU (docker compose up --scale worker=N); the same image runs the cpu queue.
# Build from the repository root: docker build -f docker/worker.Dockerfile .
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# PyPI's Linux torch wheel is the CUDA build; pin it as on the project's machines (see README).
RUN pip install "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY service ./service
COPY worker ./worker
COPY cli ./cli
RUN pip install ".[gpu]" && useradd --create-home --uid 10001 bdscreen && mkdir /data && chown bdscreen /data

USER bdscreen
ENV BDSCREEN_STORAGE=/data
CMD ["bdscreen", "worker", "--queues", "gpu"]
