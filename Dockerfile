# memstream server image. Used by docker-compose.yml (with Kafka); on its own it runs on
# the embedded file log in /data:  docker build -t memstream . && docker run -p 8000:8000 memstream
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MEMSTREAM_DATA_DIR=/data

WORKDIR /app
# Only what the package build needs (no tests, caches or .git in the image).
COPY pyproject.toml README* ./
COPY memstream/ memstream/
COPY producers/ producers/
COPY projector/ projector/
COPY query/ query/
COPY schemas/ schemas/
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app memstream \
    && mkdir -p /data && chown memstream /data

USER memstream
VOLUME ["/data"]
EXPOSE 8000
CMD ["memstream", "serve", "--host", "0.0.0.0", "--port", "8000"]
