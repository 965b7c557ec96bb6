# lfsb: backup server for LiteFS. Build: docker build -t lfsb .   Run: docker run -p 2200:2200 -v lfsb:/data lfsb
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LFSB_DATA_PATH=/data \
    LFSB_BIND=:2200 \
    LFSB_AUTH=tokens

RUN groupadd --system lfsb && useradd --system --gid lfsb --home-dir /data --shell /usr/sbin/nologin lfsb \
    && mkdir -p /data && chown lfsb:lfsb /data

WORKDIR /src
COPY pyproject.toml README.md ./
COPY lfsb ./lfsb
COPY migrations ./migrations
RUN pip install . && rm -rf /src

USER lfsb
WORKDIR /data
VOLUME ["/data"]
EXPOSE 2200

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:2200/healthz', timeout=4).status != 200)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["lfsb-server"]
