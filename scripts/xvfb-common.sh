# Sourced by the screenshot scripts: a virtual X display and a wait on the app's log.

# Starts Xvfb on display :$1 (1400x900, the size the scripts' clicks assume) unless a
# display is already set.
start_display() {
  if [ -z "${DISPLAY:-}" ]; then
    Xvfb ":$1" -screen 0 1400x900x24 >/dev/null 2>&1 &
    export DISPLAY=":$1"
    sleep 2
  fi
}

# Waits until file $1 (the app's log, its stderr) has a line matching $2; at most $3 seconds.
wait_for() {
  for _ in $(seq "$3"); do
    grep -q "$2" "$1" && return 0
    sleep 1
  done
  echo "timed out waiting for '$2' in $1" >&2
  tail -5 "$1" >&2
  return 1
}
