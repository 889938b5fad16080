# ganserve on a CUDA machine: the server with the bundled models, GPU dependencies included.
# Build:  docker build -t ganserve .
# Run:    docker run --gpus all -p 8000:8000 ganserve
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Python 3.12 from Ubuntu 24.04; curl for the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ganserve ./ganserve
# PyTorch first (the CUDA build from PyPI), then the project: onnxruntime-gpu comes with it on Linux x86-64.
RUN pip install torch==2.13.0 \
    && pip install .

RUN useradd --create-home --uid 10001 ganserve
USER 10001

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8000/health"]
# The server drains in-flight requests on SIGTERM and exits with its workers.
STOPSIGNAL SIGTERM
CMD ["ganserve", "serve", "--host", "0.0.0.0", "--port", "8000"]
