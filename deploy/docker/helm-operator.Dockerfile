# syntax=docker/dockerfile:1
# Build from the repository root: docker build -f deploy/docker/helm-operator.Dockerfile .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p helm-operator

# helm from the same pinned module (tools/helm/go.mod and go.sum) the tests run against,
# version-stamped as its release build is.
FROM golang:1.26-bookworm AS helm
WORKDIR /src/tools/helm
COPY tools/helm/ .
RUN HELM_VERSION=$(awk '/helm.sh\/helm\/v3 v/ {print $NF}' go.mod) \
 && GOFLAGS=-mod=readonly go build -trimpath \
      -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
      -o /out/helm helm.sh/helm/v3/cmd/helm

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates openssh-client \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin flux
COPY --from=build /src/target/release/helm-operator /usr/local/bin/helm-operator
COPY --from=helm /out/helm /usr/local/bin/helm
USER 65532:65532
EXPOSE 3030
ENTRYPOINT ["/usr/local/bin/helm-operator"]
