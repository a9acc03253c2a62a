#!/usr/bin/env bash
# A real Apache Kafka broker (KRaft, one node that is broker and controller),
# from Maven Central jars, for the Kafka integration tests. No tarball: the
# jars of kafka_2.13 and kafka-tools are fetched once per machine with Maven.
#
#   scripts/kafka.sh install      fetch the jars, 44 MB (seconds cold, once per machine)
#   scripts/kafka.sh installed    exit status: are they there
#   scripts/kafka.sh classpath    print the classpath (jars joined by ':')
#   scripts/kafka.sh start DATA_DIR PORT [ADVERTISED_HOST:PORT]
#       write DATA_DIR/server.properties, format the storage (a fresh cluster
#       id; a formatted DATA_DIR is kept as it is) and exec the broker in the
#       foreground: PLAINTEXT on 127.0.0.1:PORT, the controller on
#       127.0.0.1:$WEIR_KAFKA_CONTROLLER_PORT (default PORT+1). Advertised as
#       127.0.0.1:PORT unless told. Logs go to DATA_DIR/logs/server.log, only
#       warnings to stderr. Ready when it answers metadata (kcat -L); SIGTERM
#       stops it.
#   scripts/kafka.sh run MAIN [ARGS]   exec a Kafka main class on the classpath,
#       e.g. org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:PORT
#       --create --topic t --partitions 3 (ConsoleProducer, ConsoleConsumer too)
#
# Environment: KAFKA_VERSION, WEIR_KAFKA_PREFIX (cache dir), WEIR_KAFKA_CONTROLLER_PORT,
# WEIR_KAFKA_JAVA_OPTS (replaces the small-heap JVM flags), WEIR_KAFKA_PROPERTIES
# (lines appended to server.properties; a later key wins).
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

start() {
  [ $# -ge 2 ] || { echo "usage: $0 start DATA_DIR PORT [ADVERTISED_HOST:PORT]" >&2; exit 2; }
  local data port cport advertised cp
  cp=$(classpath)
  mkdir -p "$1/logs" "$1/data"
  data=$(cd "$1" && pwd)
  port=$2
  cport=${WEIR_KAFKA_CONTROLLER_PORT:-$((port + 1))}
  advertised=${3:-127.0.0.1:$port}

  cat > "$data/server.properties" <<EOF
# written by scripts/kafka.sh start
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
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
    # A Kafka Uuid is 16 random bytes in unpadded base64url; one starting
    # with '-' would read as an option, so it is passed with '='.
    local id
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    "${java[@]}" kafka.tools.StorageTool format "--cluster-id=$id" \
      --config "$data/server.properties" --ignore-formatted >> "$data/logs/format.log"
  fi
  exec "${java[@]}" kafka.Kafka "$data/server.properties"
}

case "${1:-}" in
  install) install ;;
  installed) installed ;;
  classpath) classpath ;;
  start) shift; start "$@" ;;
  run) shift; [ $# -ge 1 ] || { echo "usage: $0 run MAIN [ARGS]" >&2; exit 2; }
    # shellcheck disable=SC2086
    exec java $JAVA_OPTS -cp "$(classpath)" "$@" ;;
  *) echo "usage: $0 install|installed|classpath|start DATA_DIR PORT [ADVERTISED_HOST:PORT]|run MAIN [ARGS]" >&2; exit 2 ;;
esac
