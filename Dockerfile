# DeliDev Main Server: a slim image that runs `delidev-server` as a non-root user.
#
#   docker build -t delidev-server .          (podman: add --format docker, or the OCI format
#                                             drops the HEALTHCHECK)
#   docker run -p 54871:54871 -v delidev-data:/var/lib/delidev delidev-server
#
# Dependencies are the lock file's versions, each file checked against its hash: the build
# stage takes the run-time part of requirements.lock (deploy/runtime_lock.py; the lock also
# pins the development tools, which the image does not need) and installs it with
# --require-hashes, then the project itself with --no-deps. Behind a TLS-intercepting proxy,
# hand pip its CA bundle as a build secret: --secret id=pip_cert,src=/path/to/ca.pem.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_INDEX_URL=${PIP_INDEX_URL}
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY deploy/runtime_lock.py deploy/
RUN python3 deploy/runtime_lock.py requirements.lock pyproject.toml > /tmp/runtime.lock \
 && python3 deploy/runtime_lock.py requirements.lock pyproject.toml --only setuptools > /tmp/build.lock
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
 && python3 -m venv /opt/delidev \
 && /opt/delidev/bin/pip install --require-hashes -r /tmp/runtime.lock \
 && python3 -m venv /tmp/build-backend \
 && /tmp/build-backend/bin/pip install --require-hashes -r /tmp/build.lock
COPY delidev delidev
COPY migrations migrations
RUN /tmp/build-backend/bin/pip wheel --no-deps --no-build-isolation -w /tmp/dist . \
 && /opt/delidev/bin/pip install --no-deps /tmp/dist/delidev-*.whl \
 && /opt/delidev/bin/delidev-server --help > /dev/null

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 delidev \
 && useradd --system --no-log-init --uid 10001 --gid delidev --home-dir /var/lib/delidev --create-home \
      --shell /usr/sbin/nologin delidev
COPY --from=build /opt/delidev /opt/delidev
# HOME holds the SQLite default (~/.delidev/delidev.db): the volume keeps it. With
# DATABASE_URL=postgres://... nothing is written there.
ENV PATH=/opt/delidev/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/delidev \
    DELIDEV_SERVER_HOST=0.0.0.0 \
    DELIDEV_SERVER_PORT=54871
# Every address inside the container. A single-user server still answers only requests
# addressed to localhost/127.0.0.1 (its DNS-rebinding guard): set DELIDEV_ALLOWED_HOSTS to
# the names clients use, e.g. the proxy's. /healthz and /readyz answer whatever the name.
VOLUME ["/var/lib/delidev"]
USER delidev:delidev
WORKDIR /var/lib/delidev
EXPOSE 54871
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DELIDEV_SERVER_PORT', '54871') + '/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["delidev-server"]
CMD ["serve"]
