# One image for the three services; the command names the service:
#   docker run IMAGE registry | trainer | sampler      (ENTRYPOINT is `sgde serve`)
# Configured only by environment variables (README, "Configuration"); nothing is read from files baked in here.

# -- builder: a virtual environment with SGDE and its dependencies (wheels only; pip never reaches the final image)
FROM python:3.11.11-slim-bookworm AS builder
# Extras installed with SGDE: postgres (the registry's PostgreSQL driver); add cuda for the GPU trainers' image.
ARG SGDE_EXTRAS=postgres
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/sgde
COPY pyproject.toml README.md /src/
COPY libsgde /src/libsgde
COPY services /src/services
# SGDE becomes a wheel first; then --only-binary: every dependency must come as a wheel, so no compiler is ever
# needed (nor installed). pip compiles the bytecode as it installs (the final root filesystem is read-only).
RUN /opt/sgde/bin/pip wheel --no-deps --wheel-dir /wheels /src \
 && /opt/sgde/bin/pip install --only-binary=:all: "$(ls /wheels/sgde-*.whl)[${SGDE_EXTRAS}]" \
 && /opt/sgde/bin/pip uninstall --yes pip

# -- final: the interpreter, the venv, and a fixed non-root user (numeric, so the kubelet can check runAsNonRoot)
FROM python:3.11.11-slim-bookworm
# The base image's own pip goes too: nothing is installed at run time.
RUN python -m pip uninstall --yes --quiet pip \
 && groupadd --system --gid 10001 sgde \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/sgde --no-create-home --shell /usr/sbin/nologin sgde \
 && mkdir -p /var/lib/sgde /var/cache/sgde /etc/sgde/pki \
 && chown 10001:10001 /var/lib/sgde /var/cache/sgde
COPY --from=builder /opt/sgde /opt/sgde
# The root filesystem is read-only in the cluster: everything written goes to mounted volumes
# (/var/lib/sgde: state; /var/cache/sgde: compiled XLA programs; /tmp: scratch), and bytecode is precompiled above.
ENV PATH=/opt/sgde/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/sgde \
    SGDE_HOME=/var/lib/sgde \
    SGDE_PKI_DIR=/etc/sgde/pki \
    JAX_COMPILATION_CACHE_DIR=/var/cache/sgde/jax \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache
USER 10001:10001
WORKDIR /var/lib/sgde
# grpc (mutual TLS): registry 50051, trainer 50052, sampler 50053; plaintext health for probes 8081; metrics 9451-9453
EXPOSE 50051 50052 50053 8081 9451 9452 9453
ENTRYPOINT ["sgde", "serve"]
CMD ["registry"]
