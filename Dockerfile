# siptrio in a container: Debian slim, Debian's Python, a non-root user, the config and
# the store on volumes. README "Running in a container" has the commands.
#
#   docker build -t siptrio .
#   docker run -d --name siptrio --network host \
#       -v siptrio-etc:/etc/siptrio -v siptrio-data:/var/lib/siptrio siptrio
#   docker exec -it siptrio siptrio users add alice
#   docker kill --signal HUP siptrio          # reload the config, reopen the log

FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY siptrio /src/siptrio
COPY tui /src/tui
RUN python3 -m venv /opt/siptrio \
 && /opt/siptrio/bin/pip install --no-cache-dir /src

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/siptrio \
        --shell /usr/sbin/nologin siptrio \
 && install -d -o siptrio -g siptrio -m 0700 /var/lib/siptrio /run/siptrio \
 && install -d -o root -g siptrio -m 0750 /etc/siptrio
COPY --from=build /opt/siptrio /opt/siptrio
COPY --chown=root:siptrio --chmod=0640 examples/docker/siptrio.ini /etc/siptrio/siptrio.ini
# the store at /var/lib/siptrio/siptrio/siptrio.sqlite, the control socket at
# /run/siptrio/control.sock (where `docker exec ... siptrio clients` finds it)
ENV PATH=/opt/siptrio/bin:$PATH \
    XDG_STATE_HOME=/var/lib/siptrio \
    XDG_RUNTIME_DIR=/run \
    PYTHONUNBUFFERED=1
USER siptrio
WORKDIR /var/lib/siptrio
VOLUME ["/etc/siptrio", "/var/lib/siptrio"]
EXPOSE 5060/udp 5060/tcp 5061/tcp 8080/tcp 8443/tcp
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8088/health', timeout=3)"]
ENTRYPOINT ["siptrio"]
CMD ["serve", "--config", "/etc/siptrio/siptrio.ini"]
