# A worker: the `neurodiff` binary with libtorch from the PyTorch 2.11.0 wheel (with its CUDA
# libraries), the version tch 0.24 expects, built as scripts/env.sh does it. Runs on CPU, or on
# a GPU with the NVIDIA container runtime (`docker run --gpus all ... worker --device cuda`).
# Not built on these machines (no Docker engine runs here).
#   docker build -f docker/worker.Dockerfile -t neurodiff-worker .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/torch && /opt/torch/bin/pip install --no-cache-dir torch==2.11.0
ENV PATH=/opt/torch/bin:$PATH LIBTORCH_USE_PYTORCH=1
WORKDIR /src
COPY . .
RUN cargo build --release -p neurodiff-cli

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libgomp1 && rm -rf /var/lib/apt/lists/*
# The binary's rpath points into this virtualenv's torch/lib; torch finds its CUDA libraries
# beside it.
COPY --from=build /opt/torch /opt/torch
COPY --from=build /src/target/release/neurodiff /usr/local/bin/neurodiff
ENV NEURODIFF_CACHE_DIR=/var/cache/neurodiff
RUN mkdir -p /var/cache/neurodiff && chown 65534 /var/cache/neurodiff
USER 65534
ENTRYPOINT ["neurodiff"]
CMD ["worker", "--device", "cpu"]
