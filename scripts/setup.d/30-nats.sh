#!/usr/bin/env bash
# The NATS relay's tests (tests/test_nats_relay.py) and bench (bench/relay.py) need a NATS server with
# JetStream on 127.0.0.1:4222. Idempotent: returns at once when something listens there; otherwise installs
# Debian's nats-server if it is missing, starts it in the background and waits until it listens.
set -euo pipefail

listening() { (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; }

listening && exit 0
if [ ! -x /usr/sbin/nats-server ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y nats-server >/dev/null || { apt-get update >/dev/null && apt-get install -y nats-server >/dev/null; }
fi
mkdir -p /var/lib/nats-server
start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
  -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
for _ in $(seq 1 100); do
  listening && exit 0
  sleep 0.1
done
echo "nats-server did not start listening on 127.0.0.1:4222; see /var/log/nats-server.log" >&2
exit 1
