# ptychoscan service image. On a GPU host, run with --gpus all: torch picks CUDA when present.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# torch first (CPU or CUDA wheel depending on the index the builder points pip at),
# then the project; the source is copied last so code edits do not rebuild the deps.
ARG TORCH_SPEC="torch>=2.3"
RUN pip install "${TORCH_SPEC}"
COPY pyproject.toml README.md ./
COPY recon ./recon
COPY policy ./policy
COPY service ./service
COPY sim_microscope ./sim_microscope
COPY detector_stream ./detector_stream
COPY ptychoscan ./ptychoscan
RUN pip install .
# the compiled receive loop (detector_stream/native), built once here; the compiler leaves the image again
ENV PTYCHOSCAN_NATIVE_CACHE=/opt/ptychoscan-native
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && python -m detector_stream.native \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home ptychoscan && mkdir -p /data && chown ptychoscan /data
USER ptychoscan
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
ENTRYPOINT ["ptychoscan"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--storage", "/data"]
