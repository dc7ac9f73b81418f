# syntax=docker/dockerfile:1
#
# Herald's container images: one image per binary, each a build target of
# this file, on a common base that holds nothing but the binary, the CA
# certificates (the worker's TLS to FCM, the router's and the edge's to
# Redis, Kafka and a JWKS URL) and a passwd entry for the non-root user
# 65532 the images run as. The binaries are static (CGO_ENABLED=0): no libc,
# no loader, no shell. cmd/static_test.go checks, in `make test`, that each
# one is and that it starts with an empty environment.
#
#   docker build --target router    -t registry.example.com/herald/router:v1.2.3 .
#   docker build --target sseedge   -t registry.example.com/herald/sseedge:v1.2.3 .
#   docker build --target fcmworker -t registry.example.com/herald/fcmworker:v1.2.3 .
#
# Other targets: heraldctl (operations: `docker run --rm IMAGE stats ...`),
# fcm-emulator, heraldbench, and herald, the all-in-one, for trying Herald
# out only. Name the target: without one the build makes router.
# docs/deploy.md, "Container images", says more.

ARG GO_VERSION=1.26

# Build every binary once, for the platform asked for (docker buildx
# --platform linux/amd64,linux/arm64 cross-compiles; nothing runs under
# emulation). The caches keep modules and compiled packages between builds.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
ARG TARGETOS=linux
ARG TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=${TARGETARCH:-$(go env GOARCH)} \
    go build -trimpath -ldflags='-s -w' -o /out/bin/ ./cmd/...
RUN mkdir -p /out/etc && \
    echo 'herald:x:65532:65532:herald:/nonexistent:/sbin/nologin' > /out/etc/passwd && \
    echo 'herald:x:65532:' > /out/etc/group

# The common base: no shell, no package manager, no libc.
FROM scratch AS base
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/etc/passwd /out/etc/group /etc/
USER 65532:65532

# The all-in-one, to try Herald: its listeners default to 127.0.0.1, so
# publish them with, for example,
#   docker run --rm -p 7070:7070 -p 8080:8080 IMAGE -grpc-addr :7070 -http-addr :8080
FROM base AS herald
COPY --from=build /out/bin/herald /usr/local/bin/herald
EXPOSE 7070 8080
ENTRYPOINT ["/usr/local/bin/herald"]

FROM base AS heraldctl
COPY --from=build /out/bin/heraldctl /usr/local/bin/heraldctl
ENTRYPOINT ["/usr/local/bin/heraldctl"]

FROM base AS fcm-emulator
COPY --from=build /out/bin/fcm-emulator /usr/local/bin/fcm-emulator
EXPOSE 9097
ENTRYPOINT ["/usr/local/bin/fcm-emulator"]

FROM base AS heraldbench
COPY --from=build /out/bin/heraldbench /usr/local/bin/heraldbench
ENTRYPOINT ["/usr/local/bin/heraldbench"]

FROM base AS sseedge
COPY --from=build /out/bin/sseedge /usr/local/bin/sseedge
EXPOSE 8080 9091
ENTRYPOINT ["/usr/local/bin/sseedge"]

FROM base AS fcmworker
COPY --from=build /out/bin/fcmworker /usr/local/bin/fcmworker
EXPOSE 9093
ENTRYPOINT ["/usr/local/bin/fcmworker"]

# The last target, so the one a build without --target makes.
FROM base AS router
COPY --from=build /out/bin/router /usr/local/bin/router
# gRPC API; admin listener (set -admin-addr :9090 to reach it from outside).
EXPOSE 7070 9090
ENTRYPOINT ["/usr/local/bin/router"]
