# Shared by scripts/kafka.sh and scripts/cassandra.sh: servers that run from
# Maven Central jars. Source it; the caller defines log().

DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

# maven_fetch DIR ARTIFACT TMP DEPENDENCIES: fetch DEPENDENCIES (<dependency>
# elements) and everything they need at runtime into DIR/libs through a
# throwaway pom in TMP (into DIR.partial first, so an interrupted fetch leaves
# nothing that looks installed); ARTIFACT names the pom and the log line.
maven_fetch() {
  local dir=$1 artifact=$2 tmp=$3 dependencies=$4
  command -v mvn >/dev/null || { log "mvn is not installed"; exit 1; }
  command -v java >/dev/null || { log "java (17 or newer) is not installed"; exit 1; }
  cat > "$tmp/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>weir</groupId>
  <artifactId>$artifact</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
$dependencies
  </dependencies>
</project>
POM
  rm -rf "$dir.partial"
  mkdir -p "$dir.partial"
  # Debian's mvn 3.8 prints colour resets even with -q -B: keep its output
  # and show it (plain) only when it fails.
  if ! mvn -q -B -f "$tmp/pom.xml" "$DEPENDENCY_PLUGIN:copy-dependencies" \
      -DincludeScope=runtime -DoutputDirectory="$dir.partial/libs" > "$tmp/mvn.log" 2>&1; then
    sed 's/\x1b\[[0-9;]*m//g' "$tmp/mvn.log" >&2
    log "mvn failed"; exit 1
  fi
}

# maven_commit DIR JAR: the fetch is complete when it holds JAR; then it
# replaces DIR.
maven_commit() {
  local dir=$1 jar=$2
  [ -f "$dir.partial/libs/$jar" ] || { log "$jar was not fetched"; exit 1; }
  rm -rf "$dir"
  mv "$dir.partial" "$dir"
  log "installed $(ls "$dir/libs" | wc -l) jars ($(du -sh "$dir/libs" | cut -f1)) in $dir/libs"
}

# jars_classpath LIBS: every jar in LIBS, joined by ':'.
jars_classpath() {
  local jars=("$1"/*.jar)
  local IFS=:
  echo "${jars[*]}"
}
