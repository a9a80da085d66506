# syntax=docker/dockerfile:1
# Build from the repository root: docker build -f deploy/docker/helm-operator.Dockerfile .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p helm-operator

# The Helm engine and the helm (v4) CLI of the --helm-engine=cli fallback, from the same pinned
# module (engine/go.mod and go.sum) the tests run against, version-stamped as Helm's release is.
FROM golang:1.26-bookworm AS engine
WORKDIR /src/engine
COPY engine/ .
RUN HELM_VERSION=$(awk '/helm.sh\/helm\/v4 v/ {print $NF}' go.mod) \
 && LDFLAGS="-s -w -X helm.sh/helm/v4/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
 && GOFLAGS=-mod=readonly go build -trimpath -ldflags "${LDFLAGS}" -o /out/fhr-helm-engine . \
 && GOFLAGS=-mod=readonly go build -trimpath -ldflags "${LDFLAGS}" -o /out/helm helm.sh/helm/v4/cmd/helm

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates openssh-client \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin flux
COPY --from=build /src/target/release/helm-operator /usr/local/bin/helm-operator
COPY --from=engine /out/fhr-helm-engine /usr/local/bin/fhr-helm-engine
COPY --from=engine /out/helm /usr/local/bin/helm
# The same labels, user, entrypoint and binaries as `cargo xtask image` (which checks this file).
LABEL org.opencontainers.image.title="helm-operator" \
      org.opencontainers.image.description="flux-helm's helm-operator: installs and upgrades Helm releases" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
EXPOSE 3030
ENTRYPOINT ["/usr/local/bin/helm-operator"]
