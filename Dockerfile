# One image for every Cairn process (manager, node agent, engine, replica).
# No Docker engine runs on the development machines, so this is not built
# there; CI for images runs elsewhere.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/cairn ./cmd/cairn && \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/cairnctl ./cmd/cairnctl

FROM debian:bookworm-slim
# Node tools the node agent drives: filesystems, loop devices, nbd, FUSE.
RUN apt-get update && \
    apt-get install -y --no-install-recommends e2fsprogs xfsprogs util-linux nbd-client fuse3 ca-certificates && \
    rm -rf /var/lib/apt/lists/*
COPY --from=build /out/cairn /out/cairnctl /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/cairn"]
