#!/usr/bin/env bash
# Throwaway single-node Apache Kafka (KRaft) broker in a git-ignored project folder, no Docker.
#   deploy/local/kafka.sh start|stop|status
# Env: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (KAFKA_PORT+1), KAFKA_DIR (<repo>/.local/kafka),
#      KAFKA_HEAP_OPTS (-Xms256m -Xmx1g: a long-lived broker gathers thousands of test topics), KAFKA_START_TIMEOUT (90 s), KAFKA_STOP_TIMEOUT (30 s),
#      KAFKA_JVM_OPTS (-XX:TieredStopAtLevel=1; empty: the JVM's default JIT, see set_java),
#      OPSLEDGER_CACHE (~/.cache/opsledger: broker jars, shared by every checkout),
#      PYTHON (readiness check interpreter; default <repo>/.venv/bin/python, else python3).
# The broker jars come from Maven Central (the only place we can fetch from), resolved once.
# Why this version: see deploy/local/KAFKA.md. Keep docker-compose.yml on the same version.
set -euo pipefail

KAFKA_VERSION=4.4.0
MAVEN_DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

HERE=$(dirname "$(readlink -f "$0")")
REPO=$(readlink -f "$HERE/../..")
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
KAFKA_DIR=${KAFKA_DIR:-$REPO/.local/kafka}
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}
KAFKA_JVM_OPTS=${KAFKA_JVM_OPTS--XX:TieredStopAtLevel=1}
KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
KAFKA_STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}
CACHE_DIR=${OPSLEDGER_CACHE:-$HOME/.cache/opsledger}/kafka-$KAFKA_VERSION
LIBS=$CACHE_DIR/libs
DATA=$KAFKA_DIR/data
CONF=$KAFKA_DIR/server.properties
LOG=$KAFKA_DIR/kafka.log
PIDFILE=$KAFKA_DIR/kafka.pid
BOOTSTRAP=127.0.0.1:$KAFKA_PORT

say() { echo "kafka: $*"; }
die() { echo "kafka: $*" >&2; exit 1; }

ensure_tools() {
  local pkgs=()
  command -v java >/dev/null || pkgs+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || pkgs+=(maven)
  [ ${#pkgs[@]} -eq 0 ] && return 0
  say "installing ${pkgs[*]} from Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}

# Writes a throwaway pom with the given <dependency> elements into dir $1.
write_pom() {
  local dir=$1; shift
  {
    echo '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
    echo '<groupId>local.opsledger</groupId><artifactId>kafka-libs</artifactId><version>1</version>'
    echo '<packaging>pom</packaging><dependencies>'
    printf '%s\n' "$@"
    echo '</dependencies></project>'
  } >"$dir/pom.xml"
}

dep() { echo "<dependency><groupId>$1</groupId><artifactId>$2</artifactId><version>$3</version></dependency>"; }

# Copies the dependencies of the pom in dir $1 into $tmp/libs; Maven's chatter only on failure.
mvn_copy() {
  local dir=$1; shift
  mvn -B -q -f "$dir/pom.xml" "$MAVEN_DEPENDENCY_PLUGIN:copy-dependencies" \
    -DoutputDirectory="$tmp/libs" "$@" >"$dir/mvn.log" 2>&1 ||
    { cat "$dir/mvn.log" >&2; die "Maven could not resolve the Kafka $KAFKA_VERSION jars"; }
}

# Prints the version of jar NAME-<version>.jar in dir $1, or nothing.
jar_version() {
  local f
  for f in "$1/$2"-[0-9]*.jar; do
    [ -e "$f" ] || continue
    f=${f##*/"$2"-}; echo "${f%.jar}"; return 0
  done
}

# Resolves the broker jars into $LIBS once. Resolution happens in a temp dir that is renamed into
# place only when complete, so an interrupted download is never taken for a finished one.
ensure_libs() {
  [ -d "$LIBS" ] && return 0
  ensure_tools
  mkdir -p "$CACHE_DIR"
  # Leftovers of runs killed mid-download (an hour old: surely not a concurrent run's).
  find "$CACHE_DIR" -maxdepth 1 -name '.resolve.*' -mmin +60 -exec rm -rf {} + 2>/dev/null || true
  local t0 v
  # Global, not local: the EXIT trap may run after this function's scope is gone.
  tmp=$(mktemp -d "$CACHE_DIR/.resolve.XXXXXX")
  trap 'rm -rf "${tmp:-}"' EXIT
  t0=$(date +%s)
  say "resolving Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
  write_pom "$tmp" "$(dep org.apache.kafka kafka_2.13 "$KAFKA_VERSION")"
  mvn_copy "$tmp" -DincludeScope=runtime
  # The published pom has no logging backend, and without one the broker logs nothing at all.
  # Add the slf4j binding that matches the logging library the tree already brings, at its version
  # (4.x: log4j2 core; 3.x: none, so reload4j), so the two never disagree.
  mkdir -p "$tmp/backend"
  v=$(jar_version "$tmp/libs" log4j-core)
  if [ -n "$v" ]; then
    write_pom "$tmp/backend" "$(dep org.apache.logging.log4j log4j-slf4j-impl "$v")"
  else
    write_pom "$tmp/backend" "$(dep org.slf4j slf4j-reload4j "$(jar_version "$tmp/libs" slf4j-api)")" \
      "$(dep ch.qos.reload4j reload4j 1.2.25)"
  fi
  # Only the binding itself: its own dependencies are the ones already copied above.
  mvn_copy "$tmp/backend" -DincludeScope=runtime -DexcludeTransitive=true
  # Rename is atomic; if another run finished first, keep its copy.
  mv -T "$tmp/libs" "$LIBS" 2>/dev/null || [ -d "$LIBS" ] || die "could not move jars into $LIBS"
  rm -rf "$tmp"
  trap - EXIT
  say "resolved $(find "$LIBS" -name '*.jar' | wc -l) jars ($(du -sh "$LIBS" | cut -f1)) in $(($(date +%s) - t0)) s"
}

write_config() {
  mkdir -p "$DATA"
  # Regenerated on every start so port changes take effect; the data stays.
  cat >"$CONF" <<CONF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA
# The event log is the system of record: keep it forever, and only create topics on purpose.
log.retention.ms=-1
auto.create.topics.enable=false
# One broker: every internal topic has a single replica.
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests start consumer groups constantly; don't wait 3 s for more members.
group.initial.rebalance.delay.ms=0
CONF
  # Logs go to stdout, which start() sends to $LOG. Both files exist so either backend finds one.
  cat >"$KAFKA_DIR/log4j2.properties" <<'L4J2'
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
L4J2
  cat >"$KAFKA_DIR/log4j.properties" <<'L4J'
log4j.rootLogger=INFO, out
log4j.appender.out=org.apache.log4j.ConsoleAppender
log4j.appender.out.layout=org.apache.log4j.PatternLayout
log4j.appender.out.layout.ConversionPattern=[%d] %p %m (%c)%n
L4J
}

# JVM command line for the broker and its tools, into the array JAVA.
# The JIT stops at C1 by default: on a 2-core machine, a fresh broker's C2 compiler thread took 23-24 s
# of CPU in its first 90 s (more than the broker's own work), competing with the platform it
# serves; with C1 only, 16-17 s in all, and the same CPU share at 200 alerts/s (17-18 %) once
# warm. bench/pipeline.py on fresh platforms: logged -> prioritized p99 at 50 alerts/s 27-28 ms
# against 51-52 ms. A broker meant to run for weeks can set KAFKA_JVM_OPTS= (empty) to get C2.
set_java() {
  local heap jvm; read -r -a heap <<<"$KAFKA_HEAP_OPTS"  # several options in one variable
  read -r -a jvm <<<"$KAFKA_JVM_OPTS"
  JAVA=(java "${heap[@]}" "${jvm[@]}" -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$KAFKA_DIR/log4j2.properties"
    "-Dlog4j.configuration=file:$KAFKA_DIR/log4j.properties" -cp "$LIBS/*")
}

format_storage() {
  [ -f "$DATA/meta.properties" ] && return 0
  local id
  id=$("${JAVA[@]}" kafka.tools.StorageTool random-uuid 2>>"$LOG") ||
    { tail -n 20 "$LOG" >&2; die "could not run kafka.tools.StorageTool (see $LOG)"; }
  # --ignore-formatted: a second format (e.g. after a crash mid-start) is harmless.
  "${JAVA[@]}" kafka.tools.StorageTool format -t "$id" -c "$CONF" --ignore-formatted >>"$LOG" 2>&1 ||
    { tail -n 20 "$LOG" >&2; die "storage format failed"; }
}

pid() { cat "$PIDFILE" 2>/dev/null || true; }

# Running = the recorded pid is alive and is our broker (a recycled pid is not).
running() {
  local p; p=$(pid)
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null && tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka'
}

# Something accepts connections on 127.0.0.1:$1 (bash's /dev/tcp, no extra tool).
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

python_bin() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
  elif [ -x "$REPO/.venv/bin/python" ]; then echo "$REPO/.venv/bin/python"
  else echo python3; fi
}

# Ready = a real metadata request answers with a broker (an open port is not enough).
ready() { "$(python_bin)" "$HERE/kafka_ready.py" --bootstrap "$BOOTSTRAP" --timeout "${1:-5}" >/dev/null 2>&1; }

# Waits for readiness; $1=ours means this run launched the broker, so a timeout stops it again.
wait_ready() {
  local deadline=$((SECONDS + KAFKA_START_TIMEOUT)) left
  while :; do
    left=$((deadline - SECONDS))
    if [ "$left" -le 0 ]; then
      echo "kafka: not ready after ${KAFKA_START_TIMEOUT} s; last log lines ($LOG):" >&2
      tail -n 40 "$LOG" >&2
      # Don't leave a half-started broker behind: the next start would take it for a good one.
      [ "${1:-}" = ours ] && stop >&2
      exit 1
    fi
    if ! running; then
      echo "kafka: broker exited during startup; last log lines ($LOG):" >&2
      tail -n 40 "$LOG" >&2; rm -f "$PIDFILE"; exit 1
    fi
    ready "$((left < 5 ? left : 5))" && return 0
  done
}

start() {
  mkdir -p "$KAFKA_DIR"
  if running; then
    say "already running (pid $(pid), $BOOTSTRAP)"
    wait_ready
    return 0
  fi
  # Another broker on our port would answer the readiness check for us while ours fails to bind.
  local port
  for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    port_busy "$port" && die "port $port is already in use by another process (not $PIDFILE); set KAFKA_PORT / KAFKA_CONTROLLER_PORT"
  done
  ensure_libs
  command -v java >/dev/null || ensure_tools
  write_config
  set_java
  format_storage
  local t0=$SECONDS
  echo "===== kafka.sh start $(date -Is) (Kafka $KAFKA_VERSION, $BOOTSTRAP) =====" >>"$LOG"
  rm -f "$PIDFILE"  # stale: running() said no
  # setsid + nohup: the broker outlives the calling shell and its terminal. The detached shell
  # writes its own pid and then execs the JVM, so the pid file names the JVM itself.
  # shellcheck disable=SC2016  # $$, $0 and $@ belong to the detached shell
  setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$PIDFILE" "${JAVA[@]}" kafka.Kafka "$CONF" \
    >>"$LOG" 2>&1 </dev/null &
  # Wait (briefly) for the pid file so running() has something to look at.
  local _
  for _ in $(seq 50); do [ -s "$PIDFILE" ] && break; sleep 0.1; done
  wait_ready ours
  say "started Kafka $KAFKA_VERSION (pid $(pid), $BOOTSTRAP, ready in $((SECONDS - t0)) s, log $LOG)"
}

stop() {
  if ! running; then
    rm -f "$PIDFILE"
    return 0
  fi
  local p deadline; p=$(pid)
  # running(), not kill -0: an unreaped zombie passes kill -0 forever but has no cmdline.
  kill -TERM "$p" 2>/dev/null || true
  deadline=$((SECONDS + KAFKA_STOP_TIMEOUT))
  while running && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
  if running; then
    say "no exit after ${KAFKA_STOP_TIMEOUT} s; killing pid $p"
    kill -KILL "$p" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while running && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    running && die "pid $p survived SIGKILL"
  fi
  rm -f "$PIDFILE"
  say "stopped"
}

status() {
  if running && ready 5; then
    say "running and ready (pid $(pid), $BOOTSTRAP)"
  elif running; then
    say "running but not answering (pid $(pid), $BOOTSTRAP)"; return 1
  else
    say "not running"; return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
