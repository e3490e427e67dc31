# One image for the API, the worker and the one-shot migration (docker-compose.yml picks the command).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    SKILLKD_HOME=/data SKILLKD_STORAGE_DIR=/data/storage

RUN apt-get update && apt-get install -y --no-install-recommends libsndfile1 curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md* ./
COPY core core
COPY service service
COPY api api
COPY worker worker
COPY cli cli
COPY migrations migrations
RUN pip install . && useradd --create-home --uid 1000 skillkd && mkdir -p /data && chown skillkd /data
USER skillkd
EXPOSE 8000
CMD ["skillkd", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
