# syntax=docker/dockerfile:1
# Audience Sync: one image for the API (`serve`), the worker and the one-shot `migrate`.
#   docker build -t audience-sync .
#   docker run --env-file .env -p 8000:8000 audience-sync
ARG PYTHON_VERSION=3.11

# --- builder: a virtualenv with the dependencies and the package -------------------------
FROM python:${PYTHON_VERSION}-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies first, from pyproject alone, so code changes do not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# The package itself, installed in place: app/migrate.py finds alembic.ini and migrations/
# next to app/, so the code must run from /app, not from a copy in site-packages.
COPY app ./app
RUN pip install --no-deps -e .

# --- runtime: slim, non-root ----------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ENVIRONMENT=production \
    LOG_FORMAT=json \
    DATA_DIR=/data \
    HOST=0.0.0.0 \
    PORT=8000

RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home app \
 && mkdir -p /data \
 && chown app:app /data

WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
COPY pyproject.toml README.md alembic.ini ./
COPY migrations ./migrations
COPY app ./app

USER app
EXPOSE 8000

# Liveness only (/healthz); readiness (/readyz) also needs the database at the migration head.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8000')}/healthz\", timeout=4)"]

CMD ["audience-sync", "serve", "--host", "0.0.0.0"]
