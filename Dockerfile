# Postbox MQTT broker image: a Rust build stage, then a Debian slim runtime
# with the binary, the shipped configuration under /etc/postbox, running as
# the unprivileged user `postbox`.
#
#   docker build -t postbox .
#   postbox passwd -c passwd alice && sudo chown 1883:1883 passwd
#   docker run -p 1883:1883 -v "$PWD/passwd:/etc/postbox/passwd:ro" postbox
#
# /etc/postbox/postbox.conf is etc/examples/single-node.conf (no database,
# users from /etc/postbox/passwd); mount another config over it, e.g.
# etc/examples/cluster-node.conf with backend_pgsql.conf. README.md,
# "Installing and running as a service", has the details.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
# Plain RUN (no BuildKit cache mounts), so the legacy builder works too.
RUN cargo build --release --locked -p postbox-broker --bin postbox

FROM debian:bookworm-slim
# A fixed uid/gid (1883), so files mounted from the host can be given to it
# (`postbox passwd` creates password files readable by their owner only).
RUN groupadd --system --gid 1883 postbox \
    && useradd --system --uid 1883 --gid postbox --home-dir /nonexistent \
        --no-create-home --shell /usr/sbin/nologin postbox
COPY --from=build /src/target/release/postbox /usr/bin/postbox
# The shipped files (plugin configs, ACL, an empty password file), the
# examples for reference, and the single-node example as the config read.
COPY etc/ /etc/postbox/
COPY etc/examples/single-node.conf /etc/postbox/postbox.conf
RUN chown -R root:postbox /etc/postbox && chmod -R g+rX,o-rwx /etc/postbox
USER postbox
# MQTT, MQTT over TLS (when a listener.ssl is configured), the cluster links.
EXPOSE 1883 8883 4370
# SIGTERM (docker stop) is a graceful shutdown; give it time:
#   docker stop -t 30 <container>
STOPSIGNAL SIGTERM
# /status through the management listener (127.0.0.1:8081 in the example):
# healthy once the MQTT listeners are up (and, with the PostgreSQL backend,
# the database answers).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s \
    CMD ["/usr/bin/postbox", "ctl", "--url", "http://127.0.0.1:8081", "--user", "admin", "--password", "public", "status"]
ENTRYPOINT ["/usr/bin/postbox"]
CMD ["-c", "/etc/postbox/postbox.conf"]
