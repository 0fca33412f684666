# Image for every tradeflow service in compose.yaml (agents, sink, GPU workers use a CUDA base at scale).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY agents agents
COPY topics topics
COPY models models
COPY storage storage
COPY gpu_workers gpu_workers
COPY ops ops
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir -e .
ENTRYPOINT ["tradeflow"]
