# situation agent image.
#
#   docker build -t situation .
#   docker run --rm --network host \
#       -v situation-state:/var/lib/situation \
#       -v /etc/situation:/etc/situation:ro \
#       -e SITUATION_DB_FILE=/etc/situation/db situation
#
# Network discovery needs the host's network (--network host): on a bridge the
# agent only sees the container network. Keep /var/lib/situation on a volume:
# it holds the agent id, and a new id makes the agent a new agent in the database.
# No secret is baked in: give the DSN at run time (SITUATION_DB_FILE pointing at a
# mounted file or a secret, or SITUATION_DB), never as a build argument.

FROM python:3.11-slim

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="situation" \
      org.opencontainers.image.description="An agent that inventories its host and network into a shared relational database" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Only what the wheel needs (pyproject's readme and the sql/ tree it ships): the
# build context's .venv, .git and tests never reach a layer. Every dependency has
# a manylinux wheel for 3.11, so no compiler is needed; the build backend lives in
# pip's temporary build environment and is not installed.
# ieee-data: the full IEEE MAC registries (MA-L, MA-M, MA-S) for macvendor.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ieee-data \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /tmp/situation-src
COPY pyproject.toml README.md ./
COPY situation ./situation
COPY sql ./sql
RUN pip install --no-cache-dir . \
 && cd / && rm -rf /tmp/situation-src \
 && situation version
WORKDIR /

# A fixed, non-root uid: volumes and client keys (mode 0600) can be chowned to
# 10001 from outside the image. Its home and state directory is /var/lib/situation.
RUN groupadd --system --gid 10001 situation \
 && useradd --system --uid 10001 --gid situation --home-dir /var/lib/situation \
        --no-create-home --shell /usr/sbin/nologin situation \
 && install -d -m 0700 -o situation -g situation /var/lib/situation

ENV SITUATION_STATE_DIR=/var/lib/situation
VOLUME ["/var/lib/situation"]
WORKDIR /var/lib/situation
USER 10001:10001

# `situation health` exits 0 while the last collection cycle recorded in the state
# directory is recent enough; it does not touch the database. The start period
# covers the first cycle, which ends before the first record exists.
HEALTHCHECK --interval=1m --timeout=10s --start-period=10m --retries=3 \
    CMD ["situation", "health"]

ENTRYPOINT ["situation"]
CMD ["run"]
