# Hydrant worker image: slim, non-root, RocksDB state on a volume.
#   docker build -t hydrant .
#   docker run -e HYDRANT_BROKER=kafka://kafka:9092 -v hydrant-data:/var/lib/hydrant hydrant
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY agents ./agents
COPY tables ./tables
COPY examples ./examples
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/hydrant --create-home hydrant
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY examples /opt/hydrant/examples
ENV HYDRANT_DATA_DIR=/var/lib/hydrant \
    HYDRANT_PIPELINE=/opt/hydrant/examples/shop/pipeline.yaml \
    HYDRANT_WEB_HOST=0.0.0.0 \
    HYDRANT_BROKER_PROFILE=kafka \
    PYTHONUNBUFFERED=1
VOLUME /var/lib/hydrant
WORKDIR /var/lib/hydrant
USER 10001
EXPOSE 6066
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:6066/healthz', timeout=2)"
ENTRYPOINT ["hydrant"]
CMD ["worker"]
