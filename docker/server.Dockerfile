# The API and the scheduler: `neurodiff-server`, which does not link libtorch.
# Not built on these machines (no Docker engine runs here); see README "Containers".
#   docker build -f docker/server.Dockerfile -t neurodiff-server .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p neurodiff-server

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/neurodiff-server /usr/local/bin/neurodiff-server
USER 65534
EXPOSE 8080
ENTRYPOINT ["neurodiff-server"]
CMD ["api", "--bind", "0.0.0.0:8080"]
