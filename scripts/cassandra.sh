#!/usr/bin/env bash
# A real Apache Cassandra node (one node, its own seed), from Maven Central
# jars, for the Cassandra integration tests. No tarball: cassandra-all and its
# dependencies are fetched once per machine with Maven.
#
#   scripts/cassandra.sh install      fetch the jars (100 jars, 67 MB) and record
#       a class archive (53 MB) with one node start and stop: about 15 s cold,
#       once per machine; run again, it only records an archive that is missing
#   scripts/cassandra.sh installed    exit status: are the jars there
#   scripts/cassandra.sh classpath    print the classpath (jars joined by ':')
#   scripts/cassandra.sh start DATA_DIR NATIVE_PORT [--auth]
#       write DATA_DIR/cassandra.yaml and DATA_DIR/logback.xml and exec the
#       node in the foreground: CQL on 127.0.0.1:NATIVE_PORT (protocol v3 to
#       v5), internode on 127.0.0.1:$WEIR_CASSANDRA_STORAGE_PORT (default
#       NATIVE_PORT+1), no JMX port. --auth turns on PasswordAuthenticator and
#       CassandraAuthorizer (superuser cassandra/cassandra, made as the node
#       starts: retry a login that is refused in the first second). Data,
#       commit log and hints under DATA_DIR/data; a DATA_DIR can be started
#       again, on other ports too, after SIGTERM or SIGKILL. Logs go to
#       DATA_DIR/logs/system.log, only warnings to stderr (and the JVM's four
#       "WARNING: ... setSecurityManager" lines, which no flag silences on 17).
#       Ready when the native port answers a query: about 4 s on an idle
#       machine, 7 s on a busy one; about 400 MB resident. SIGTERM drains and
#       stops it in about 4 s; SIGKILL loses nothing that was written (the
#       commit log is in the page cache) and is fine for a throwaway DATA_DIR.
#
# Environment: CASSANDRA_VERSION, WEIR_CASSANDRA_PREFIX (cache dir),
# WEIR_CASSANDRA_STORAGE_PORT, WEIR_CASSANDRA_JAVA_OPTS (replaces the
# small-heap JVM flags), WEIR_CASSANDRA_YAML (lines appended to cassandra.yaml;
# a key must not be given twice).
#
# Cassandra 5.0 is the first to run on Java 17 (4.x needs 8 or 11). On 17 it
# refuses to start without some --add-opens (java.io, jdk.internal.ref and
# sun.nio.ch are the ones a start and plain CQL need); the whole JPMS block of
# its conf/jvm17-server.options is passed, as its own scripts do, so that the
# paths not tried here (jamm, Chronicle, attach) have theirs too. Cassandra
# mlockall()s the memory it has at start, so -Xms is what sets the resident
# size (-Xms512m: 830 MB); the heap still grows to -Xmx. No role_manager is
# set: AllowAllRoleManager does not exist, CassandraRoleManager is the default.
set -euo pipefail

CASSANDRA_VERSION=${CASSANDRA_VERSION:-5.0.9}
PREFIX=${WEIR_CASSANDRA_PREFIX:-/usr/local/lib/weir-cassandra}
DIR=$PREFIX/$CASSANDRA_VERSION
LIBS=$DIR/libs
CDS=$DIR/classes.jsa
JAVA_OPTS=${WEIR_CASSANDRA_JAVA_OPTS:--Xms64m -Xmx1g -Xss256k -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true}
log() { echo "cassandra: $*" >&2; }
# shellcheck source=lib/maven.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/maven.sh"

installed() { [ -f "$LIBS/cassandra-all-$CASSANDRA_VERSION.jar" ]; }

install() {
  if installed; then
    # a class archive is made with the jars; one lost or never made is made again
    if [ ! -f "$CDS" ]; then
      local tmp
      tmp=$(mktemp -d)
      # shellcheck disable=SC2064
      trap "rm -rf '$tmp'" EXIT
      class_archive "$tmp"
    fi
    return
  fi
  log "fetching Cassandra $CASSANDRA_VERSION jars from Maven Central into $LIBS (once per machine)"
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  maven_fetch "$DIR" weir-cassandra-node "$tmp" "
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$CASSANDRA_VERSION</version>
    </dependency>"
  maven_commit "$DIR" "cassandra-all-$CASSANDRA_VERSION.jar"
  class_archive "$tmp"
}

# A free port P with P+1 free too, on 127.0.0.1 (nothing answers a connect).
free_ports() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && ! (exec 3<>"/dev/tcp/127.0.0.1/$((p + 1))") 2>/dev/null; then
      echo "$p"; return
    fi
  done
  return 1
}

# Class data sharing: one node started and stopped here records the classes
# it loads in $CDS, and every later start maps them instead of loading them
# (about 1 s of the 5 s of CPU a start takes). Without it (it failed, or the
# JDK changed: then java says once that it can't use it), a start only takes
# longer.
class_archive() {
  local tmp=$1 port pid
  port=$(free_ports) || { log "no free port for the class archive: skipped"; return 0; }
  log "recording a class archive (one node start and stop, about 15 s)"
  rm -f "$CDS.partial"
  ( JAVA_OPTS="$JAVA_OPTS -XX:ArchiveClassesAtExit=$CDS.partial"
    WEIR_CASSANDRA_STORAGE_PORT=$((port + 1)) start "$tmp/node" "$port" ) > "$tmp/node.log" 2>&1 &
  pid=$!
  for _ in $(seq 240); do
    grep -qs 'Startup complete' "$tmp/node/logs/system.log" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" || true
  if [ -s "$CDS.partial" ] && grep -qs 'Startup complete' "$tmp/node/logs/system.log"; then
    mv "$CDS.partial" "$CDS"
    log "class archive in $CDS ($(du -sh "$CDS" | cut -f1))"
  else
    rm -f "$CDS.partial"
    log "the class archive could not be recorded (starts are slower without it):"
    tail -20 "$tmp/node.log" >&2
  fi
}

classpath() {
  installed || { log "not installed: run $0 install"; exit 1; }
  jars_classpath "$LIBS"
}

start() {
  [ $# -ge 2 ] || { echo "usage: $0 start DATA_DIR NATIVE_PORT [--auth]" >&2; exit 2; }
  local data port sport cp auth=no
  if [ "${3:-}" = --auth ]; then auth=yes; elif [ -n "${3:-}" ]; then
    echo "usage: $0 start DATA_DIR NATIVE_PORT [--auth]" >&2; exit 2
  fi
  cp=$(classpath)
  mkdir -p "$1/logs" "$1/data/triggers"
  data=$(cd "$1" && pwd)
  port=$2
  sport=${WEIR_CASSANDRA_STORAGE_PORT:-$((port + 1))}

  local authn=AllowAllAuthenticator authz=AllowAllAuthorizer
  if [ $auth = yes ]; then authn=PasswordAuthenticator authz=CassandraAuthorizer; fi

  cat > "$data/cassandra.yaml" <<EOF
# written by scripts/cassandra.sh start
cluster_name: weir-test
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$sport"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $sport
start_native_transport: true
native_transport_port: $port
data_file_directories:
  - $data/data/data
commitlog_directory: $data/data/commitlog
hints_directory: $data/data/hints
saved_caches_directory: $data/data/saved_caches
cdc_raw_directory: $data/data/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
authenticator: $authn
authorizer: $authz
auto_snapshot: false
hinted_handoff_enabled: false
dynamic_snitch: false
concurrent_compactors: 1
${WEIR_CASSANDRA_YAML:-}
EOF

  cat > "$data/logback.xml" <<EOF
<!-- written by scripts/cassandra.sh start: INFO and up to logs/system.log, WARN and up to stderr -->
<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$data/logs/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <appender name="STDERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <filter class="ch.qos.logback.classic.filter.ThresholdFilter"><level>WARN</level></filter>
    <encoder><pattern>cassandra: %-5level %date{ISO8601} %msg \(%logger{0}\)%n</pattern></encoder>
  </appender>
  <!-- host tuning advice (read-ahead, vm.max_map_count, jemalloc, JMX) is not for a test node -->
  <logger name="org.apache.cassandra.service.StartupChecks" level="ERROR"/>
  <root level="INFO">
    <appender-ref ref="FILE"/>
    <appender-ref ref="STDERR"/>
  </root>
</configuration>
EOF

  # The Java 17 module flags of conf/jvm17-server.options (5.0).
  local jpms=(
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    -Dio.netty.tryReflectionSetAccessible=true
  )
  local props=(
    "-Dcassandra.config=file://$data/cassandra.yaml"
    "-Dlogback.configurationFile=file://$data/logback.xml"
    "-Dcassandra.logdir=$data/logs"
    "-Dcassandra.storagedir=$data/data"
    "-Dcassandra.triggers_dir=$data/data/triggers"
    -Dcassandra-foreground=yes
    -Djava.net.preferIPv4Stack=true
    # no wait for gossip to settle (5 s or more; on 127.0.0.1 itself 5.0 skips it anyway)
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    # --auth: make the superuser at once, not 10 s after the start
    -Dcassandra.superuser_setup_delay_ms=0
    # SIGTERM: no 2 s pause after telling the (absent) peers
    -Dcassandra.shutdown_announce_in_ms=0
  )
  local cds=()
  if [ -f "$CDS" ]; then cds=("-XX:SharedArchiveFile=$CDS"); fi
  # shellcheck disable=SC2086
  exec java $JAVA_OPTS "${cds[@]}" "${jpms[@]}" "${props[@]}" -cp "$cp" org.apache.cassandra.service.CassandraDaemon
}

case "${1:-}" in
  install) install ;;
  installed) installed ;;
  classpath) classpath ;;
  start) shift; start "$@" ;;
  *) echo "usage: $0 install|installed|classpath|start DATA_DIR NATIVE_PORT [--auth]" >&2; exit 2 ;;
esac
