# sevpipe: one image for every stage (`run`, `ingest`, `classify`, `act`, `notify`).
#
#   docker build -t sevpipe .
#   docker run -d -p 9095:9095 -e SEVPIPE_AUTH_TOKEN_FILE=/run/secrets/sevpipe-token \
#     -v /srv/sevpipe-token:/run/secrets/sevpipe-token:ro -v sevpipe-data:/var/lib/sevpipe sevpipe
#
# BASE is any image with Python 3.11+ and the venv module (the same one for both stages: the
# venv links to its interpreter). Offline, build a local one and pass --build-arg BASE=....
ARG BASE=python:3.11-slim

FROM ${BASE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY . .
RUN /opt/venv/bin/pip install --no-cache-dir . \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SEVPIPE_DATA_DIR=/var/lib/sevpipe \
    SEVPIPE_PORT=9095
# A fixed non-root uid/gid, so volumes and Kubernetes' runAsUser/fsGroup can name it.
RUN groupadd --system --gid 10001 sevpipe \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/sevpipe \
       --no-create-home --shell /usr/sbin/nologin sevpipe \
    && mkdir -p /var/lib/sevpipe \
    && chown 10001:10001 /var/lib/sevpipe \
    && chmod 0750 /var/lib/sevpipe
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
WORKDIR /var/lib/sevpipe
VOLUME ["/var/lib/sevpipe"]
EXPOSE 9095
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SEVPIPE_PORT', '9095'), timeout=4)"]
ENTRYPOINT ["sevpipe"]
# Beyond loopback sevpipe needs credentials: pass SEVPIPE_AUTH_TOKEN_FILE (or
# SEVPIPE_AUTH_TOKEN, or basic auth); without any it refuses to start and says why.
CMD ["run", "--host", "0.0.0.0"]
