#!/usr/bin/env bash
# Install what Switchyard needs and is missing. Safe to run again: each step checks first.
# (libssl-dev: librdkafka is built with OpenSSL, for TLS and SASL/SCRAM to real clusters.)
#   scripts/deps.sh            everything `make up` needs
#   scripts/deps.sh --test     and what `make test` needs on top (headless Chromium, selenium)
set -euo pipefail

APT_PACKAGES=(curl iproute2 procps util-linux python3-pip pkg-config libssl-dev pcscd libpcsclite-dev vsmartcard-vpcd)
# The broker is Apache Kafka's jars from Maven Central, run on Java 17 (scripts/kafka.sh).
command -v java >/dev/null || APT_PACKAGES+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || APT_PACKAGES+=(maven)
FOR_TESTS=false
[ "${1:-}" = "--test" ] && FOR_TESTS=true
if $FOR_TESTS; then APT_PACKAGES+=(chromium chromium-driver); fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

say() { printf '==> %s\n' "$*"; }

missing_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing_apt+=("$pkg")
done
if [ ${#missing_apt[@]} -gt 0 ]; then
  say "apt: installing ${missing_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing_apt[@]}"
fi

# Prometheus (Debian's package): `make up` runs its own instance on 127.0.0.1:9090, and the
# tests use promtool. Without recommends (no node exporter); where systemd started the
# package's own service on 9090, stop and disable it so that `make up` can take the port.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  say "apt: installing prometheus"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
  if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    say "stopping and disabling the package's prometheus service (make up runs its own on 9090)"
    $SUDO systemctl disable --now prometheus || true
  fi
fi

# The broker: Apache Kafka's jars (broker/pom.xml) into Maven's local repository, shared by
# every clone; Maven checks each download's checksum. A no-op once resolved.
"$ROOT/scripts/kafka.sh" classpath >/dev/null

# Confluent's Python client, the independent check in the integration tests.
if ! python3 -c "import confluent_kafka, fastavro" 2>/dev/null; then
  say "pip: installing Confluent's Python client"
  python3 -m pip install --quiet --disable-pip-version-check -r "$ROOT/registry/tests/python/requirements.txt"
fi

# Selenium drives chromium in the switch page's test.
if $FOR_TESTS && ! python3 -c "import selenium" 2>/dev/null; then
  say "pip: installing selenium (page test)"
  python3 -m pip install --quiet --disable-pip-version-check -r "$ROOT/api/tests/browser/requirements.txt"
fi

# vsmartcard-vpcd's reader listens on TCP 35963, inside Linux's ephemeral port range: a
# client socket that happens to get that local port makes pcscd fail to bind it ("Address
# already in use") and the SIM tests time out. Reserve the port so the kernel never hands it
# out (best effort: a container may not let us; the tests then say why they waited).
VPCD_PORT=35963
RESERVED=/proc/sys/net/ipv4/ip_local_reserved_ports
if [ -w "$RESERVED" ] && ! grep -qw "$VPCD_PORT" "$RESERVED"; then
  current=$(cat "$RESERVED")
  echo "${current:+$current,}$VPCD_PORT" > "$RESERVED" 2>/dev/null \
    && say "reserved TCP port $VPCD_PORT (vpcd) from the ephemeral range" || true
fi
