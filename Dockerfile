# syntax=docker/dockerfile:1
#
# The one image of phoneseller. Every service runs from it as `phoneseller-server <service>`
# (order, payment, promotion, store, customer); the Helm chart sets the command per Deployment.
#
#   docker build -t phoneseller:0.1.0 .
#   docker run --rm -p 50051:50051 phoneseller:0.1.0 order
#
# Stage 1 installs the contracts (gen/python, the phoneseller-api distribution) and the server
# (`pip install ./gen/python .`) into a virtual environment; stage 2 is the
# bare Python runtime plus that environment, run as a non-root user, without pip or compilers.
# The generated stubs in gen/python are committed (`make protos` refreshes them), so the build
# needs no protoc.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what `pip install .` needs; .dockerignore lists it.
COPY . .
# Wheels exist for every dependency (grpcio, asyncpg, ...), so nothing is compiled here; pip
# byte-compiles the modules, which matters on a read-only root filesystem.
RUN python -m venv /opt/phoneseller \
 && /opt/phoneseller/bin/pip install ./gen/python . \
 && /opt/phoneseller/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE}
# A fixed non-root user; the chart's securityContext uses the same ids (runAsUser/fsGroup 10001).
RUN groupadd --system --gid 10001 phoneseller \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin phoneseller \
 && python -m pip uninstall --yes pip setuptools wheel \
 && mkdir -p /var/lib/phoneseller \
 && chown 10001:10001 /var/lib/phoneseller
COPY --from=build /opt/phoneseller /opt/phoneseller
ENV PATH=/opt/phoneseller/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PHONESELLER_GRPC_HOST=0.0.0.0 \
    PHONESELLER_GRPC_PORT=50051 \
    PHONESELLER_DATA_DIR=/var/lib/phoneseller
USER 10001:10001
WORKDIR /var/lib/phoneseller
EXPOSE 50051
ENTRYPOINT ["phoneseller-server"]
