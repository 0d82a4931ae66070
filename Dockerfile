# syntax=docker/dockerfile:1
# Image for both the agent (once, run) and the controller. Build with:
#   docker build -t secrets-agent:0.1.0 .
# The final stage runs as a numeric non-root user, needs no shell, and works with a read-only
# root filesystem as long as /tmp is writable (an emptyDir), which the Vault store needs for a
# CA bundle given in a store declaration.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN pip install --no-cache-dir build==1.6.1
COPY pyproject.toml README.md ./
COPY agent ./agent
RUN python -m build --wheel --outdir /dist

FROM ${PYTHON_IMAGE} AS install
COPY --from=build /dist/ /dist/
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/secrets-agent \
    && /opt/secrets-agent/bin/pip install --no-cache-dir "$(ls /dist/*.whl)[controller]" \
    && /opt/secrets-agent/bin/python -m compileall -q /opt/secrets-agent

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="secrets-agent" \
      org.opencontainers.image.description="Delivers secrets from AWS SSM, AWS Secrets Manager and Vault to files and Kubernetes Secrets" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=install /opt/secrets-agent /opt/secrets-agent
ENV PATH=/opt/secrets-agent/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
STOPSIGNAL SIGTERM
EXPOSE 8741
ENTRYPOINT ["secrets-agent"]
CMD ["run"]
