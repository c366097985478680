#!/usr/bin/env bash
# Apache Kafka for Switchyard: the one place that knows how a broker node is resolved,
# configured, formatted and started. `make up` (scripts/stack.sh), the tests (testkit) and
# the benches all start their brokers through it.
#
#   scripts/kafka.sh classpath   resolve broker/pom.xml with Maven (once per machine: the jars
#                                stay in ~/.m2, shared by every clone) and print the path of a
#                                java argument file holding the classpath
#   scripts/kafka.sh run DIR     write DIR/server.properties, format DIR/data on first use,
#                                then run the broker in the foreground (exec: same pid)
#
# Settings of `run`, from the environment (defaults: one node on 127.0.0.1:9092):
#   KAFKA_PORT (9092)              client listener
#   KAFKA_CONTROLLER_PORT (9093)   this node's KRaft controller listener
#   KAFKA_NODE_ID (1)              node id
#   KAFKA_VOTERS (1@127.0.0.1:$KAFKA_CONTROLLER_PORT)   the controller quorum, id@host:port,...
#   KAFKA_CLUSTER_ID               cluster id to format with (every node of a cluster the same);
#                                  default: a new random one on first format
#   KAFKA_REPLICATION (1)          replication factor of the internal topics and the default
#                                  for new topics; min.insync.replicas is 2 when it is 3 or more
#   KAFKA_HEAP (1g)                -Xms and -Xmx (docs/deploy.md says why 1g)
#   KAFKA_METRICS_PORT             serve Prometheus metrics (JMX exporter) on this port
#   KAFKA_LOG_LEVEL (INFO)         log4j2 root level
#   KAFKA_SASL_PORT                also listen there with SASL (PLAIN and SCRAM-SHA-256, no
#                                  TLS), for clients whose settings are tested against it
#   KAFKA_SASL_USERS               name:password,... the SASL listener accepts (SCRAM
#                                  credentials are written when the node is first formatted)
#   KAFKA_EXTRA_PROPERTIES         a file whose lines are appended to server.properties
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
POM="$ROOT/broker/pom.xml"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/switchyard"

die() { printf 'kafka.sh: %s\n' "$*" >&2; exit 1; }

# The argument file for this POM (keyed by its content), made by Maven if missing or if a jar
# it names is gone from the local repository.
classpath() {
  command -v java >/dev/null || die "java is not installed (Java 17: apt-get install openjdk-17-jre-headless)"
  command -v mvn >/dev/null || die "mvn is not installed (apt-get install maven)"
  local key args agent
  key=$(sha256sum "$POM" | cut -c1-16)
  args="$CACHE/broker-$key.args"
  agent="$CACHE/broker-$key.agent"
  if [ -s "$args" ] && [ -s "$agent" ] && jars_present "$args" && [ -f "$(cat "$agent")" ]; then
    echo "$args"
    return
  fi
  mkdir -p "$CACHE"
  local log="$CACHE/broker-$key.mvn.log"
  printf '==> maven: resolving Apache Kafka (%s) into ~/.m2 (once per machine)\n' "$POM" >&2
  if ! mvn -B -q -Dstyle.color=never -f "$POM" dependency:build-classpath \
      -DexcludeArtifactIds=jmx_prometheus_javaagent -Dmdep.outputFile="$args.$$.cp" >"$log" 2>&1 \
    || ! mvn -B -q -Dstyle.color=never -f "$POM" dependency:build-classpath \
      -DincludeArtifactIds=jmx_prometheus_javaagent -Dmdep.outputFile="$agent.$$.tmp" >>"$log" 2>&1; then
    die "maven could not resolve the broker's jars; see $log:"$'\n'"$(tail -n 20 "$log")"
  fi
  { printf -- '-cp\n'; cat "$args.$$.cp"; printf '\n'; } >"$args.$$.tmp"
  mv "$args.$$.tmp" "$args"
  mv "$agent.$$.tmp" "$agent"
  rm -f "$args.$$.cp"
  echo "$args"
}

jars_present() {
  local jar
  for jar in $(sed -n 2p "$1" | tr ':' ' '); do [ -f "$jar" ] || return 1; done
}

# A Kafka cluster id: 16 random bytes, base64url without padding (what `kafka-storage.sh
# random-uuid` prints), made here to spare a JVM start. Never one starting with '-', which
# the storage tool would take for an option (Kafka's own Uuid.randomUuid skips those too).
random_cluster_id() {
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [ "${id:0:1}" != "-" ] && break
  done
  echo "$id"
}

write_properties() { # dir
  local dir=$1 port=${KAFKA_PORT:-9092} cport=${KAFKA_CONTROLLER_PORT:-9093}
  local node=${KAFKA_NODE_ID:-1} rf=${KAFKA_REPLICATION:-1} min_isr=1
  local voters=${KAFKA_VOTERS:-$node@127.0.0.1:$cport}
  [ "$rf" -ge 3 ] && min_isr=2
  local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
  local advertised="PLAINTEXT://127.0.0.1:$port"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [ -n "${KAFKA_SASL_PORT:-}" ]; then
    listeners+=",SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT"
    advertised+=",SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT"
    protocols+=",SASL_PLAINTEXT:SASL_PLAINTEXT"
  fi
  cat >"$dir/server.properties" <<EOF
# Written by scripts/kafka.sh at each start; edit the script (or KAFKA_EXTRA_PROPERTIES).
process.roles=broker,controller
node.id=$node
controller.quorum.voters=$voters
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$protocols
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
# Topics are made by \`switchyard topics apply\` from the catalog, with its partition counts.
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$min_isr
# Internal topics sized for one machine: 50 partitions each (Kafka's default) cost seconds
# at the first group join or transaction and add nothing on one node.
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$min_isr
transaction.state.log.num.partitions=5
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$min_isr
# A first join would otherwise wait 3 s for more members.
group.initial.rebalance.delay.ms=0
EOF
  if [ "$rf" = 1 ]; then
    # An idle controller appends a no-op record to the metadata log every 500 ms (KIP-835:
    # how observers tell they are caught up); on one node nobody observes, and those
    # appends were a visible share of an idle make up's broker CPU (make bench: idle).
    echo "metadata.max.idle.interval.ms=5000" >>"$dir/server.properties"
  fi
  if [ -n "${KAFKA_SASL_PORT:-}" ]; then
    local plain_users="" pair
    for pair in $(echo "${KAFKA_SASL_USERS:-}" | tr ',' ' '); do
      plain_users+=" user_${pair%%:*}=\"${pair#*:}\""
    done
    cat >>"$dir/server.properties" <<EOF
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required$plain_users;
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF
  fi
  if [ -n "${KAFKA_EXTRA_PROPERTIES:-}" ]; then
    [ -f "$KAFKA_EXTRA_PROPERTIES" ] || die "KAFKA_EXTRA_PROPERTIES: no file $KAFKA_EXTRA_PROPERTIES"
    { echo "# From $KAFKA_EXTRA_PROPERTIES"; cat "$KAFKA_EXTRA_PROPERTIES"; } >>"$dir/server.properties"
  fi
}

run() { # dir
  local dir=${1:?usage: kafka.sh run DIR}
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local args heap=${KAFKA_HEAP:-1g}
  args=$(classpath)
  write_properties "$dir"
  local logging="-Dlog4j2.configurationFile=$ROOT/broker/log4j2.properties"
  if [ ! -f "$dir/data/meta.properties" ]; then
    local id=${KAFKA_CLUSTER_ID:-$(random_cluster_id)} scram=() pair
    for pair in $(echo "${KAFKA_SASL_USERS:-}" | tr ',' ' '); do
      scram+=(--add-scram "SCRAM-SHA-256=[name=${pair%%:*},password=${pair#*:}]")
    done
    KAFKA_LOG_LEVEL=WARN java "$logging" "@$args" kafka.tools.StorageTool format \
      --cluster-id="$id" -c "$dir/server.properties" --ignore-formatted "${scram[@]}" >/dev/null \
      || die "formatting $dir/data failed"
  fi
  local agent=()
  if [ -n "${KAFKA_METRICS_PORT:-}" ]; then
    agent=("-javaagent:$(cat "${args%.args}.agent")=127.0.0.1:$KAFKA_METRICS_PORT:$ROOT/broker/jmx-exporter.yml")
  fi
  # The JVM settings of Kafka's own kafka-run-class.sh (G1, 20 ms pause goal), with a
  # pinned heap.
  exec java -Xms"$heap" -Xmx"$heap" -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    -Djava.awt.headless=true "$logging" "${agent[@]}" "@$args" kafka.Kafka "$dir/server.properties"
}

case "${1:-}" in
  classpath) classpath ;;
  run) run "${2:-}" ;;
  *) die "usage: kafka.sh classpath | kafka.sh run DIR" ;;
esac
