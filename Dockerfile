# The standalone exporter (`hirefire-exporter serve`) with every backend's extra (rq, celery, huey, hotqueue, queues).
#
#   docker build -t hirefire-exporter .
#   docker run -p 9180:9180 -e REDIS_URL=redis://... -v "$PWD/hirefire.toml:/etc/hirefire-exporter/hirefire.toml:ro" \
#     hirefire-exporter serve --config /etc/hirefire-exporter/hirefire.toml
#
# It listens on $PORT (9180 unless set). Python procs (`--procs myapp.procs.WorkerProc`) are imported from the working
# directory /app: build `FROM hirefire-exporter` and COPY your module there. docs/kubernetes.md runs it on Kubernetes.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=9180

WORKDIR /app
COPY pyproject.toml README.md /tmp/build/
COPY hirefire_exporter /tmp/build/hirefire_exporter
RUN pip install --no-cache-dir "/tmp/build[all]" \
    && rm -rf /tmp/build \
    && groupadd --system --gid 10001 exporter \
    && useradd --system --uid 10001 --gid exporter --no-create-home --shell /usr/sbin/nologin exporter

# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 9180

# /healthz answers without touching a broker; python's urllib, since the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '9180'), timeout=3)"

ENTRYPOINT ["hirefire-exporter"]
CMD ["serve"]
