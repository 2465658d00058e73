#!/usr/bin/env bash
# Install Debian's redis-server for the Redis/RQ tests (tests/test_redis.py starts its own on a loopback port).
# Idempotent; without it those tests skip with a reason.
set -euo pipefail
if command -v redis-server >/dev/null; then
    echo "redis-server already present: $(redis-server --version)"
    exit 0
fi
sudo=""
if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends redis-server
# Debian's package starts a system service where systemd runs; the tests need none: stop it if it started.
($sudo service redis-server stop >/dev/null 2>&1 || true)
redis-server --version
