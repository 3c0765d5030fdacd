# GPU worker image for the sightsound DAG: Prefect workers in a GPU pool run flows from this image.
# Build: docker build -t sightsound-worker .
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev ffmpeg git \
 && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies first, from the project metadata only, so code edits do not invalidate this layer.
COPY pyproject.toml README.md ./
RUN mkdir -p sightsound_core flows tasks \
 && touch sightsound_core/__init__.py flows/__init__.py tasks/__init__.py \
 && pip install "torch==2.13.0" \
 && pip install ".[vllm]" \
 && pip uninstall -y sightsound

COPY sightsound_core ./sightsound_core
COPY flows ./flows
COPY tasks ./tasks
COPY deployments ./deployments
RUN pip install --no-deps -e .

ENTRYPOINT ["prefect"]
CMD ["worker", "start", "--pool", "sightsound-gpu", "--type", "docker"]
