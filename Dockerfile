# One image with the product's binaries:
#   deduplicator  the consumer (main container)
#   restorer      the init container restoring a pod's stores from S3
#   operator      the DedupCluster controller
# Build: docker build -t kafka-deduplicator:0.1.0 .
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p deduplicator -p restorer -p operator \
 && install -D -m 0755 target/release/deduplicator target/release/restorer \
      target/release/operator -t /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 zlib1g ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# The nonroot user the operator's pod security context expects.
USER 65532:65532
ENTRYPOINT []
CMD ["deduplicator"]
