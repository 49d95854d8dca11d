# The gateway: FastAPI on uvicorn, HTTP only. No torch: it sniffs uploads and sends tasks by name.
# Build from the repository root: docker build -f docker/gateway.Dockerfile .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Only what the gateway imports (tests/docker checks this list against a real import of service.main);
# the package itself goes in with --no-deps so that torch, a dependency of the workers, stays out.
RUN pip install "fastapi>=0.110" "uvicorn>=0.29" "python-multipart>=0.0.9" "pydantic>=2.6" "pydantic-settings>=2.2" \
        "celery[redis]>=5.4" "redis>=5" "httpx>=0.27" "numpy>=1.26" "h5py>=3.10" "sqlalchemy>=2.0" \
        "psycopg[binary]>=3.1" "fastapi-offline>=1.7" "jinja2>=3.1"
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY service ./service
COPY worker/__init__.py ./worker/__init__.py
COPY worker/core ./worker/core
COPY worker/banks ./worker/banks
COPY cli ./cli
RUN pip install --no-deps . && useradd --create-home --uid 10001 bdscreen && mkdir /data && chown bdscreen /data

USER bdscreen
ENV BDSCREEN_STORAGE=/data BDSCREEN_HOST=0.0.0.0 BDSCREEN_PORT=8000 BDSCREEN_AUTH=keys
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["bdscreen", "serve", "--no-worker"]
