# Multi-stage: build the virtualenv with uv from the lock, then ship only the
# virtualenv on the same slim base, as a non-root user. No compiler, no uv, no
# source tree and no dev dependencies end up in the image.
# tests/test_deploy.py replays the build stage without Docker (same uv version,
# same files, same commands) and runs the result as a non-root user.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
# Compile bytecode now: the root filesystem is read-only at run time (k8s).
# Never download a Python: the venv must use the base image's, which the final
# stage has at the same path.
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first: this layer is reused until pyproject.toml or uv.lock change.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project
COPY src ./src
COPY sql ./sql
# --no-editable: the project is installed as a wheel (with sql/ inside), so the
# venv does not point back at /src. --reinstall-package: uv keys its cached
# wheel of a local project on pyproject.toml alone; without it a cache mount
# would ship the previous build's src/ and sql/.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --reinstall-package notifier

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 notifier \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin notifier
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
# Numeric, so Kubernetes' runAsNonRoot can check it (deploy/k8s runs as 10001).
USER 10001:10001
EXPOSE 8010
STOPSIGNAL SIGTERM
ENTRYPOINT ["notifier"]
CMD ["api"]
