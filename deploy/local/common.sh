# Sourced by the deploy/local scripts: paths, ports and the service list, all overridable.
REPO=$(readlink -f "$(dirname "${BASH_SOURCE[0]}")/../..")
STATE_DIR=${OPSLEDGER_STATE_DIR:-$REPO/.local}
PY=${PYTHON:-$REPO/.venv/bin/python}
SERVICES=(intake triage assignment sla resolution reporting)
declare -A DEFAULT_PORT=([intake]=8001 [triage]=8002 [assignment]=8003 [sla]=8004 [resolution]=8005 [reporting]=8006)

service_port() {  # INTAKE_PORT=9001 etc. override the defaults
  local var="${1^^}_PORT"
  echo "${!var:-${DEFAULT_PORT[$1]}}"
}

# Worker processes per service (OPSLEDGER_WORKERS): INTAKE_WORKERS=2 etc. One each by default:
# on one machine the services share its cores, and a second intake worker only split intake's
# share under load (README, "Worker processes").
service_workers() {
  local var="${1^^}_WORKERS"
  echo "${!var:-1}"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# SIGTERM (the service finishes its batch and commits), then SIGKILL after a bounded wait.
stop_pid_file() {
  local pidfile=$1 name=$2 i
  pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  local pid; pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  # The whole process group (setsid made the service its leader): its worker processes too.
  if kill -0 "$pid" 2>/dev/null; then echo "$name: did not stop in 20s, killing"; kill -KILL -- "-$pid" 2>/dev/null || true; fi
  rm -f "$pidfile"
  echo "$name: stopped"
}
