# syntax=docker/dockerfile:1
# Build from the repository root: docker build -f deploy/docker/flux-agent.Dockerfile .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p flux-agent

# ssh for ssh:// repositories (gix runs the ssh client); CA certificates for https://.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates openssh-client \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin flux
COPY --from=build /src/target/release/flux-agent /usr/local/bin/flux-agent
# The same labels, user, entrypoint and binaries as `cargo xtask image` (which checks this file).
LABEL org.opencontainers.image.title="flux-agent" \
      org.opencontainers.image.description="flux-helm's flux-agent: applies release configuration from git" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
EXPOSE 3030
ENTRYPOINT ["/usr/local/bin/flux-agent"]
