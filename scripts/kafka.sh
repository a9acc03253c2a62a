#!/usr/bin/env bash
# A real Apache Kafka broker (KRaft, one node that is broker and controller,
# or one node of a small cluster: see WEIR_KAFKA_NODE_ID below), from Maven
# Central jars, for the Kafka integration tests. No tarball: the jars of
# kafka_2.13 and kafka-tools are fetched once per machine with Maven.
#
#   scripts/kafka.sh install      fetch the jars, 44 MB (seconds cold, once per machine)
#   scripts/kafka.sh installed    exit status: are they there
#   scripts/kafka.sh classpath    print the classpath (jars joined by ':')
#   scripts/kafka.sh cluster-id   print a fresh cluster id, for WEIR_KAFKA_CLUSTER_ID
#   scripts/kafka.sh start DATA_DIR PORT [ADVERTISED_HOST:PORT]
#       write DATA_DIR/server.properties, format the storage (a fresh cluster
#       id unless told; a formatted DATA_DIR is kept as it is) and exec the
#       broker in the foreground: PLAINTEXT on 127.0.0.1:PORT, the controller
#       on 127.0.0.1:$WEIR_KAFKA_CONTROLLER_PORT (default PORT+1). Advertised
#       as 127.0.0.1:PORT unless told. Logs go to DATA_DIR/logs/server.log,
#       only warnings to stderr. Ready when it answers metadata (kcat -L);
#       SIGTERM stops it.
#       A cluster is one such node per DATA_DIR, all given the same
#       WEIR_KAFKA_CLUSTER_ID and WEIR_KAFKA_QUORUM: e.g. node 1 broker and
#       controller, nodes 2 and 3 WEIR_KAFKA_ROLES=broker (no controller
#       listener) with WEIR_KAFKA_QUORUM=1@127.0.0.1:<node 1's controller port>.
#   scripts/kafka.sh run MAIN [ARGS]   exec a Kafka main class on the classpath,
#       e.g. org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:PORT
#       --create --topic t --partitions 3 (ConsoleProducer, ConsoleConsumer too)
#
# Environment: KAFKA_VERSION, WEIR_KAFKA_PREFIX (cache dir), WEIR_KAFKA_CONTROLLER_PORT,
# WEIR_KAFKA_JAVA_OPTS (replaces the small-heap JVM flags), WEIR_KAFKA_PROPERTIES
# (lines appended to server.properties; a later key wins). For start, one node
# of a cluster: WEIR_KAFKA_NODE_ID (node.id, default 1), WEIR_KAFKA_ROLES
# (process.roles: broker,controller, the default, or broker),
# WEIR_KAFKA_QUORUM (controller.quorum.voters, default this node's id at
# 127.0.0.1:<controller port>; required for a broker-only node),
# WEIR_KAFKA_CLUSTER_ID (the id the storage is formatted with, default random).
#
# kafka_2.13's pom names slf4j-api but no logging backend; log4j-core and the
# slf4j 1.x binding are added here, as the Kafka tarball ships them.
# kafka-tools comes without connect-runtime (Jetty, Jersey...): the topic and
# console tools don't need it. The quorum is static (controller.quorum.voters),
# so the storage is formatted without --standalone, and a DATA_DIR can be
# restarted on other ports.
set -euo pipefail

KAFKA_VERSION=${KAFKA_VERSION:-4.4.0}
LOG4J_VERSION=2.25.3
PREFIX=${WEIR_KAFKA_PREFIX:-/usr/local/lib/weir-kafka}
DIR=$PREFIX/$KAFKA_VERSION
LIBS=$DIR/libs
JAVA_OPTS=${WEIR_KAFKA_JAVA_OPTS:--Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true}
log() { echo "kafka: $*" >&2; }
# shellcheck source=lib/maven.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/maven.sh"

installed() { [ -f "$LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]; }

install() {
  if installed; then return; fi
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIBS (once per machine)"
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  maven_fetch "$DIR" weir-kafka-broker "$tmp" "
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
      <exclusions>
        <exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion>
      </exclusions>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>"
  maven_commit "$DIR" "kafka_2.13-$KAFKA_VERSION.jar"
}

classpath() {
  installed || { log "not installed: run $0 install"; exit 1; }
  jars_classpath "$LIBS"
}

# A Kafka Uuid: 16 random bytes in unpadded base64url.
cluster_id() { head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '='; }

start() {
  [ $# -ge 2 ] || {
    echo "usage: [WEIR_KAFKA_NODE_ID=N WEIR_KAFKA_ROLES=broker WEIR_KAFKA_QUORUM=1@HOST:PORT WEIR_KAFKA_CLUSTER_ID=ID]" \
      "$0 start DATA_DIR PORT [ADVERTISED_HOST:PORT]" >&2
    exit 2
  }
  local data port cport advertised cp node roles quorum listeners
  node=${WEIR_KAFKA_NODE_ID:-1}
  roles=${WEIR_KAFKA_ROLES:-broker,controller}
  port=$2
  cport=${WEIR_KAFKA_CONTROLLER_PORT:-$((port + 1))}
  advertised=${3:-127.0.0.1:$port}
  case $roles in
    broker,controller | controller,broker)
      quorum=${WEIR_KAFKA_QUORUM:-$node@127.0.0.1:$cport}
      listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport ;;
    broker)
      # a broker-only node has no controller listener of its own, but still
      # names the controllers' listener to reach the quorum over it
      quorum=${WEIR_KAFKA_QUORUM:?a broker-only node needs WEIR_KAFKA_QUORUM (the controllers, id@host:port)}
      listeners=PLAINTEXT://127.0.0.1:$port ;;
    *) log "WEIR_KAFKA_ROLES: broker,controller or broker, not $roles"; exit 2 ;;
  esac
  cp=$(classpath)
  mkdir -p "$1/logs" "$1/data"
  data=$(cd "$1" && pwd)

  cat > "$data/server.properties" <<EOF
# written by scripts/kafka.sh start
process.roles=$roles
node.id=$node
controller.quorum.voters=$quorum
listeners=$listeners
advertised.listeners=PLAINTEXT://$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$data/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
${WEIR_KAFKA_PROPERTIES:-}
EOF

  cat > "$data/log4j2.properties" <<EOF
# written by scripts/kafka.sh start: INFO and up to logs/server.log, WARN and up to stderr
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = $data/logs/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = kafka: [%d] %p %m (%c)%n
appender.err.filter.threshold.type = ThresholdFilter
appender.err.filter.threshold.level = warn
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
rootLogger.appenderRef.err.ref = err
EOF

  # shellcheck disable=SC2086
  local java=(java $JAVA_OPTS "-Dlog4j2.configurationFile=$data/log4j2.properties" -cp "$cp")
  if [ ! -f "$data/data/meta.properties" ]; then
    # An id starting with '-' would read as an option, so it is passed with
    # '='. The nodes of one cluster share theirs (WEIR_KAFKA_CLUSTER_ID);
    # with static voters every node, broker-only too, is formatted the same way.
    local id
    id=${WEIR_KAFKA_CLUSTER_ID:-$(cluster_id)}
    "${java[@]}" kafka.tools.StorageTool format "--cluster-id=$id" \
      --config "$data/server.properties" --ignore-formatted >> "$data/logs/format.log"
  fi
  exec "${java[@]}" kafka.Kafka "$data/server.properties"
}

case "${1:-}" in
  install) install ;;
  installed) installed ;;
  classpath) classpath ;;
  cluster-id) cluster_id ;;
  start) shift; start "$@" ;;
  run) shift; [ $# -ge 1 ] || { echo "usage: $0 run MAIN [ARGS]" >&2; exit 2; }
    # shellcheck disable=SC2086
    exec java $JAVA_OPTS -cp "$(classpath)" "$@" ;;
  *) echo "usage: $0 install|installed|classpath|cluster-id|start DATA_DIR PORT [ADVERTISED_HOST:PORT]|run MAIN [ARGS]" >&2; exit 2 ;;
esac
