# Image for every tradeflow service in compose.yaml: agents, sink, one-shot jobs and the GPU workers.
#
# One Dockerfile, two torch builds: the default installs the CPU wheel (small, what agents and the sink need);
# the GPU workers' image is the same file built with a CUDA wheel index, e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t tradeflow-gpu:latest .
# (compose.yaml does that for the trainer and inference services). The NVIDIA driver comes from the host through
# the container toolkit (`deploy.resources.reservations.devices` in compose.yaml), not from this image.
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TRADEFLOW_WEB_HOST=0.0.0.0 \
    TRADEFLOW_METRICS_HOST=0.0.0.0

WORKDIR /app
# torch first: the largest layer, and it changes far less often than the code.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY runtime runtime
COPY agents agents
COPY topics topics
COPY models models
COPY storage storage
COPY gpu_workers gpu_workers
COPY ops ops
COPY backtest backtest
# editable: non-Python files beside the code (migrations, dashboard static files, sample data) stay where the
# code looks for them, whether or not package-data lists them
RUN pip install -e .

# Unprivileged at run time; checkpoints go to a volume owned by this user.
RUN useradd --system --uid 10001 --home-dir /app tradeflow \
 && mkdir -p /var/lib/tradeflow/models \
 && chown -R tradeflow /var/lib/tradeflow
USER tradeflow
ENV TRADEFLOW_ARTIFACTS=/var/lib/tradeflow/models

ENTRYPOINT ["tradeflow"]
CMD ["--help"]
