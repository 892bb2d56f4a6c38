# One image for the API, the workers and the migration; compose picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Torch first, in its own layer: it is most of the image and changes least. The default
# PyPI wheel carries CUDA on Linux; TORCH_INDEX_URL picks another build (e.g. CPU-only).
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=""
RUN pip install "${TORCH_SPEC}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}

COPY pyproject.toml README.md alembic.ini ./
COPY gistnet ./gistnet
COPY api ./api
COPY workers ./workers
COPY service ./service
COPY tools ./tools
COPY migrations ./migrations
RUN pip install .

# The sample teacher and configs, so `gistnet demo` and relative paths work from /app.
COPY configs ./configs
COPY samples ./samples

RUN useradd --create-home --uid 1000 gistnet \
    && mkdir -p /srv/artifacts /srv/data /srv/cache /app/var \
    && chown gistnet /srv/artifacts /srv/data /srv/cache /app/var
USER gistnet
ENV GISTNET_ARTIFACT_ROOT=/srv/artifacts \
    GISTNET_DATA_ROOT=/srv/data \
    GISTNET_CACHE_DIR=/srv/cache

EXPOSE 8000
CMD ["gistnet", "serve", "--host", "0.0.0.0", "--port", "8000"]
