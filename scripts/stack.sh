#!/usr/bin/env bash
# Run the Switchyard stack on this machine, no Docker: `stack.sh up|down|status|logs`.
# Everything lives under .run/ in the repository (SWITCHYARD_RUN_DIR elsewhere): data/,
# logs/, pids/ (each service's current pid), supervisors/, exits/. Ports can be moved with
# SWITCHYARD_*_PORT and SWITCHYARD_METRICS_BASE (the metrics ports from there); the system
# test runs a second stack that way.
#
# Each service runs under a supervisor (`stack.sh supervise`, as compose's `restart:` would):
# when it dies it is started again after a backoff (1 s, doubling to 60 s, back to 1 s after
# a minute of running), and how it died (exit code or signal, and when) goes to exits/NAME,
# which `make status` shows.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN="${SWITCHYARD_RUN_DIR:-$ROOT/.run}"
LOGS="$RUN/logs"
PIDS="$RUN/pids"
DATA="$RUN/data"
BIN="${SWITCHYARD_BIN:-$ROOT/target/release}"  # `make up` builds these
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

BROKER_HOST=127.0.0.1
BROKER_PORT=${SWITCHYARD_BROKER_PORT:-9092}
CONTROLLER_PORT=${SWITCHYARD_CONTROLLER_PORT:-9093}
REGISTRY_PORT=${SWITCHYARD_REGISTRY_PORT:-8081}
# SWITCHYARD_EXTERNAL_KAFKA=host:port,...: use that cluster (with the SWITCHYARD_KAFKA_*
# security settings of docs/deploy.md) and start no broker here.
EXTERNAL_KAFKA=${SWITCHYARD_EXTERNAL_KAFKA:-}
export SWITCHYARD_BOOTSTRAP_SERVERS="${EXTERNAL_KAFKA:-$BROKER_HOST:$BROKER_PORT}"
export SWITCHYARD_REGISTRY_URL="http://$BROKER_HOST:$REGISTRY_PORT"

# Services in start order. Processors: name=metrics port (serving /metrics and /health).
SERVICES=(registry gateway)
[ -n "$EXTERNAL_KAFKA" ] || SERVICES=(kafka "${SERVICES[@]}")
FLEET=${SWITCHYARD_FLEET:-3}
GATEWAY_UDP=${SWITCHYARD_GATEWAY_PORT:-6001}
GATEWAY_BUFFER=${SWITCHYARD_GATEWAY_BUFFER:-400000}
METRICS_BASE=${SWITCHYARD_METRICS_BASE:-9100}
GATEWAY_METRICS=$((METRICS_BASE + 4))
PROCESSORS=(reading-counter=$METRICS_BASE grafana-projector=$((METRICS_BASE + 1))
  carrier-state=$((METRICS_BASE + 2)) anomaly-detector=$((METRICS_BASE + 3)))
# Every other crate under processors/ (e.g. one made by `switchyard new processor`) runs too,
# in name order, with metrics ports from METRICS_BASE + 10.
discover_processors() {
  local dir name next=$((METRICS_BASE + 10))
  for dir in "$ROOT"/processors/*/; do
    name=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$dir/Cargo.toml" 2>/dev/null | head -n 1)
    [ -n "$name" ] && [ -f "$dir/src/main.rs" ] || continue
    case " ${PROCESSORS[*]%%=*} " in *" $name "*) continue ;; esac
    PROCESSORS+=("$name=$next")
    next=$((next + 1))
  done
}
discover_processors
for p in "${PROCESSORS[@]}"; do SERVICES+=("${p%%=*}"); done
API_PORT=${SWITCHYARD_API_PORT:-8000}
API_METRICS=$((METRICS_BASE + 5))
BROKER_METRICS=$((METRICS_BASE + 6))   # the broker's JMX exporter
REGISTRY_METRICS=$REGISTRY_PORT        # the registry serves /metrics on its own port
TOKEN_FILE="$RUN/api-token"
PROMETHEUS_PORT=${SWITCHYARD_PROMETHEUS_PORT:-9090}
# Authentication on: one random key per simulated modem, in a file only its owner reads
# (under .run/, outside git); the gateway refuses enveloped packets without a valid tag.
# v1 packets carry no identity and no tag: they are accepted only as the one declared
# legacy modem (SWITCHYARD_LEGACY_MODEM_ID), so an original device works out of the box,
# and anyone who can reach the gateway can speak for that one modem (docs/gateway.md).
KEYS_FILE="$RUN/modem-keys"
FIRST_MODEM=${SWITCHYARD_FIRST_MODEM:-356938035643809}
LEGACY_MODEM_ID=${SWITCHYARD_LEGACY_MODEM_ID:-0}
SERVICES+=(api prometheus modems)

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

SUPERVISORS="$RUN/supervisors"
EXITS="$RUN/exits"

pid_of() { cat "$PIDS/$1.pid" 2>/dev/null || true; }
supervisor_of() { cat "$SUPERVISORS/$1.pid" 2>/dev/null || true; }
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
running() { alive "$(pid_of "$1")"; }
supervised() { alive "$(supervisor_of "$1")"; }
# (A missing file is no exit yet; `wc <missing 2>/dev/null` would still print the shell's
# own error, on every fresh `make up`.)
exits_of() { if [ -f "$EXITS/$1" ]; then wc -l <"$EXITS/$1"; else echo 0; fi; }
port_busy() { ss -Hltn "sport = :$1" | grep -q .; }

declare -A EXITS_AT_START=()

wait_for() { # name, seconds, command...
  local name=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ! supervised "$name" || [ "$(exits_of "$name")" -gt "${EXITS_AT_START[$name]:-0}" ]; then
      die "$name exited ($(tail -n 1 "$EXITS/$name" 2>/dev/null)); see $LOGS/$name.log:"$'\n'"$(tail -n 20 "$LOGS/$name.log" 2>/dev/null)"
    fi
    [ $SECONDS -lt $deadline ] || die "$name not healthy after ${seconds}s; see $LOGS/$name.log"
    sleep 0.3
  done
}

port_of() { local p; for p in "${PROCESSORS[@]}"; do if [ "${p%%=*}" = "$1" ]; then echo "${p##*=}"; fi; done; }


start() { # name, port, workdir, command...
  local name=$1 port=$2 dir=$3; shift 3
  if supervised "$name"; then
    echo "    $name already running (pid $(pid_of "$name"))"
    return
  fi
  if port_busy "$port"; then
    die "port $port is taken by another process; cannot start $name (see: ss -ltnp 'sport = :$port')"
  fi
  mkdir -p "$dir"
  EXITS_AT_START[$name]=$(exits_of "$name")
  ( cd "$dir" && exec setsid "$ROOT/scripts/stack.sh" supervise "$name" "$@" >>"$LOGS/$name.log" 2>&1 < /dev/null ) &
  echo $! >"$SUPERVISORS/$name.pid"
  local deadline=$((SECONDS + 5))
  until running "$name" || [ $SECONDS -ge $deadline ]; do sleep 0.05; done
  echo "    started $name (pid $(pid_of "$name"))"
}

# `stack.sh supervise NAME COMMAND...`: run COMMAND, and again whenever it dies, until this
# supervisor gets SIGTERM (which it passes on). Its pid file holds the current child's pid.
supervise() {
  local name=$1; shift
  local child="" stopping=false backoff=1 started status how
  trap 'stopping=true; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM INT
  mkdir -p "$EXITS" "$PIDS"
  while :; do
    started=$SECONDS
    "$@" &
    child=$!
    echo "$child" >"$PIDS/$name.pid"
    status=0
    wait "$child" || status=$?
    # A trapped signal ends `wait` early: wait for the child itself.
    while alive "$child"; do status=0; wait "$child" || status=$?; done
    $stopping && exit 0
    if [ "$status" -gt 128 ]; then
      how="killed by SIG$(kill -l $((status - 128)) 2>/dev/null || echo $((status - 128)))"
    else
      how="exited with code $status"
    fi
    echo "$(date '+%Y-%m-%d %H:%M:%S') $how" >>"$EXITS/$name"
    [ $((SECONDS - started)) -ge 60 ] && backoff=1
    printf '==> supervisor: %s %s; starting it again in %s s\n' "$name" "$how" "$backoff"
    sleep "$backoff" &
    wait $! || true
    $stopping && exit 0
    backoff=$((backoff * 2 > 60 ? 60 : backoff * 2))
  done
}

up() {
  mkdir -p "$LOGS" "$PIDS" "$DATA" "$SUPERVISORS" "$EXITS"
  for bin in switchyard switchyard-registry switchyard-gateway switchyard-modem switchyard-api "${PROCESSORS[@]%%=*}"; do
    [ -x "$BIN/$bin" ] || die "$BIN/$bin is not built (run: make build)"
  done
  command -v java >/dev/null || die "java is not installed (run: make deps)"
  command -v prometheus >/dev/null || die "prometheus is not installed (run: make deps)"

  if [ -n "$EXTERNAL_KAFKA" ]; then
    say "broker: the existing cluster at $EXTERNAL_KAFKA"
    "$BIN/switchyard" brokers --timeout-secs 30 || die "the cluster at $EXTERNAL_KAFKA does not answer"
  else
    say "broker (Apache Kafka $(kafka_version), KRaft, data in ${DATA#"$ROOT/"}/kafka)"
    "$ROOT/scripts/kafka.sh" classpath >/dev/null || die "cannot resolve the broker's jars"
    start kafka "$BROKER_PORT" "$DATA" env KAFKA_PORT="$BROKER_PORT" KAFKA_CONTROLLER_PORT="$CONTROLLER_PORT" \
      KAFKA_METRICS_PORT="$BROKER_METRICS" "$ROOT/scripts/kafka.sh" run "$DATA/kafka"
    # Ready: the broker answers a metadata request (a JVM start takes 10-20 s here).
    wait_for kafka 180 "$BIN/switchyard" brokers --timeout-secs 2
  fi

  say "schema registry"
  start registry "$REGISTRY_PORT" "$RUN" env SWITCHYARD_REGISTRY_LISTEN="$BROKER_HOST:$REGISTRY_PORT" \
    RUST_LOG="${RUST_LOG:-info,rdkafka=warn}" "$BIN/switchyard-registry"
  wait_for registry 60 curl -fsS "$SWITCHYARD_REGISTRY_URL/health"

  say "topics and schemas"
  "$BIN/switchyard" topics apply >"$LOGS/topics-apply.log" 2>&1 \
    || die "switchyard topics apply failed; see $LOGS/topics-apply.log:"$'\n'"$(tail -n 20 "$LOGS/topics-apply.log")"
  echo "    $(grep -c '^topic ' "$LOGS/topics-apply.log") topics, $(grep -c '^subject ' "$LOGS/topics-apply.log") schemas registered"

  say "gateway (UDP $BROKER_HOST:$GATEWAY_UDP)"
  if ss -Hlun "sport = :$GATEWAY_UDP" | grep -q . && ! running gateway; then
    die "UDP port $GATEWAY_UDP is taken by another process; cannot start the gateway"
  fi
  write_modem_keys
  # The producer holds up to GATEWAY_BUFFER records while the broker is slow or away
  # (make bench: burst).
  start gateway "$GATEWAY_METRICS" "$RUN" env SWITCHYARD_GATEWAY_LISTEN="$BROKER_HOST:$GATEWAY_UDP" \
    SWITCHYARD_METRICS_LISTEN="$BROKER_HOST:$GATEWAY_METRICS" SWITCHYARD_GATEWAY_BUFFER="$GATEWAY_BUFFER" \
    SWITCHYARD_MODEM_KEYS="$KEYS_FILE" SWITCHYARD_LEGACY_MODEM_ID="$LEGACY_MODEM_ID" \
    RUST_LOG="${RUST_LOG:-info,librdkafka=warn,rdkafka=warn}" "$BIN/switchyard-gateway"
  wait_for gateway 60 curl -fsS "http://$BROKER_HOST:$GATEWAY_METRICS/health"

  local name port
  for p in "${PROCESSORS[@]}"; do
    name=${p%%=*} port=${p##*=}
    say "processor $name"
    start "$name" "$port" "$RUN" env SWITCHYARD_METRICS_LISTEN="$BROKER_HOST:$port" \
      RUST_LOG="${RUST_LOG:-info,librdkafka=warn,rdkafka=warn}" "$BIN/$name"
  done
  for p in "${PROCESSORS[@]}"; do
    name=${p%%=*} port=${p##*=}
    wait_for "$name" 60 curl -fsS "http://$BROKER_HOST:$port/health"
  done

  say "switch API (http://$BROKER_HOST:$API_PORT)"
  if [ ! -s "$TOKEN_FILE" ]; then
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TOKEN_FILE")
  fi
  start api "$API_PORT" "$RUN" env SWITCHYARD_API_LISTEN="$BROKER_HOST:$API_PORT" \
    SWITCHYARD_API_TOKEN_FILE="$TOKEN_FILE" SWITCHYARD_METRICS_LISTEN="$BROKER_HOST:$API_METRICS" \
    ${SWITCHYARD_GRAFANA_URL:+SWITCHYARD_GRAFANA_URL="$SWITCHYARD_GRAFANA_URL"} \
    RUST_LOG="${RUST_LOG:-info,librdkafka=warn,rdkafka=warn}" "$BIN/switchyard-api"
  wait_for api 60 curl -fsS "http://$BROKER_HOST:$API_PORT/health"

  say "prometheus (http://$BROKER_HOST:$PROMETHEUS_PORT, alert rules from monitoring/alerts.yml)"
  write_prometheus_config
  start prometheus "$PROMETHEUS_PORT" "$DATA/prometheus" prometheus \
    --config.file="$RUN/prometheus.yml" --storage.tsdb.path="$DATA/prometheus" \
    --storage.tsdb.retention.time=7d --web.listen-address="$BROKER_HOST:$PROMETHEUS_PORT"
  wait_for prometheus 60 curl -fsS "http://$BROKER_HOST:$PROMETHEUS_PORT/-/ready"

  # The SIMs' counters live beside the keys (kept by make down, like the keys): a restarted
  # simulator resumes above every sequence number the gateway has seen.
  say "simulated modems ($FLEET, software SIMs in process)"
  start modems 0 "$RUN" env RUST_LOG="${RUST_LOG:-info}" "$BIN/switchyard-modem" --sim in-process \
    --fleet "$FLEET" --modem-id "$FIRST_MODEM" --keys "$KEYS_FILE" --sim-memory "$DATA/sims" \
    --gateway "$BROKER_HOST:$GATEWAY_UDP" --rates 1,1,0.2 --status-secs 10
  sleep 1
  running modems || die "the modem simulator exited; see $LOGS/modems.log"

  status
  local token
  token=$(cat "$TOKEN_FILE")
  cat <<EOM

Switchyard is up.
  Switch page:  http://$BROKER_HOST:$API_PORT/#token=$token
  Prometheus:   http://$BROKER_HOST:$PROMETHEUS_PORT/alerts   (rules: monitoring/alerts.yml)
  API token:    $token   (kept in ${TOKEN_FILE#"$ROOT/"})
Try:
  export PATH="$BIN:\$PATH" SWITCHYARD_API_TOKEN=$token
  switchyard modems
  switchyard switch 356938035643809 verizon --wait
  switchyard tail imu
Logs: make logs     Stop: make down
EOM
}

# A key for each simulated modem, made once (kept; added if the fleet grew). Mode 600.
write_modem_keys() {
  local out
  out=$("$BIN/switchyard" keys generate --file "$KEYS_FILE" --first "$FIRST_MODEM" --count "$FLEET") \
    || die "cannot write the modem keys file $KEYS_FILE"
  echo "    modem keys: ${out#"$ROOT/"}"
}

# Prometheus scrapes every service this stack started, on the ports it gave them.
write_prometheus_config() {
  local targets="" p
  for p in "${PROCESSORS[@]}"; do targets+="\"$BROKER_HOST:${p##*=}\", "; done
  cat >"$RUN/prometheus.yml" <<EOC
# Written by scripts/stack.sh at each \`make up\`.
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files:
  - $ROOT/monitoring/alerts.yml
scrape_configs:
  - job_name: switchyard-gateway
    static_configs: [{targets: ["$BROKER_HOST:$GATEWAY_METRICS"]}]
  - job_name: switchyard-processors
    static_configs: [{targets: [${targets%, }]}]
  - job_name: switchyard-api
    static_configs: [{targets: ["$BROKER_HOST:$API_METRICS"]}]
  - job_name: switchyard-registry
    static_configs: [{targets: ["$BROKER_HOST:$REGISTRY_METRICS"]}]
EOC
  if [ -z "$EXTERNAL_KAFKA" ]; then
    cat >>"$RUN/prometheus.yml" <<EOC
  - job_name: switchyard-kafka
    static_configs: [{targets: ["$BROKER_HOST:$BROKER_METRICS"]}]
EOC
  fi
}

status() {
  printf '\n%-18s %-9s %-40s %-44s %s\n' service pid address "last exit (restarts)" log
  local name pid addr last
  for name in "${SERVICES[@]}"; do
    case $name in
      kafka) addr="kafka://$BROKER_HOST:$BROKER_PORT (metrics :$BROKER_METRICS)" ;;
      registry) addr="$SWITCHYARD_REGISTRY_URL" ;;
      gateway) addr="udp://$BROKER_HOST:$GATEWAY_UDP" ;;
      modems) addr="$FLEET modems -> udp://$BROKER_HOST:$GATEWAY_UDP" ;;
      api) addr="http://$BROKER_HOST:$API_PORT (metrics :$API_METRICS)" ;;
      prometheus) addr="http://$BROKER_HOST:$PROMETHEUS_PORT" ;;
      *) addr="http://$BROKER_HOST:$(port_of "$name")/metrics" ;;
    esac
    pid=$(pid_of "$name")
    if ! supervised "$name"; then
      pid="down"
    elif ! running "$name"; then
      pid="restarting"
    fi
    last=$(tail -n 1 "$EXITS/$name" 2>/dev/null || true)
    [ -n "$last" ] && last="$last ($(exits_of "$name"))"
    printf '%-18s %-9s %-40s %-44s %s\n' "$name" "$pid" "$addr" "${last:--}" "${LOGS#"$ROOT/"}/$name.log"
  done
}

stop_one() {
  local name=$1 pid
  pid=$(supervisor_of "$name")
  if alive "$pid"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.2; done
    if alive "$pid"; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "    stopped $name (pid $(pid_of "$name"))"
  fi
  # A service whose supervisor was killed on its own may still run: stop it too.
  pid=$(pid_of "$name")
  if alive "$pid"; then
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDS/$name.pid" "$SUPERVISORS/$name.pid"
}

down() {
  say "stopping"
  local i
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
    stop_one "${SERVICES[$i]}"
  done
  for port in "$REGISTRY_PORT" "$BROKER_PORT" "$CONTROLLER_PORT" "$GATEWAY_METRICS" "$API_PORT" "$PROMETHEUS_PORT"; do
    if port_busy "$port"; then echo "    warning: port $port is still in use by another process"; fi
  done
}

# The Kafka version broker/pom.xml pins.
kafka_version() {
  sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/broker/pom.xml"
}

logs() {
  mkdir -p "$LOGS"
  exec tail -n 50 -F "$LOGS"/*.log
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  logs) logs ;;
  supervise) shift; supervise "$@" ;;
  *) die "usage: $0 up|down|status|logs" ;;
esac
