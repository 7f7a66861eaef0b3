#!/usr/bin/env bash
# ferry's demo: builds a small busybox bundle, runs a container that counts once a second,
# shows list/state/exec/pause/resume, then kills and deletes it. Cleans up on any exit.
# Usage: scripts/demo.sh [path/to/ferry]   (default: target/release/ferry). Needs root.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
FERRY=$(realpath "${1:-target/release/ferry}")
[ -x "$FERRY" ] || { echo "demo: $FERRY not found; run 'make build' first" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "demo: must run as root (containers need it)" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "demo: /bin/busybox missing; run 'make deps'" >&2; exit 1; }

WORK=$(mktemp -d /tmp/ferry-demo.XXXXXX)
ROOT=$WORK/state            # ferry --root: the demo keeps its containers to itself
BUNDLE=$WORK/bundle
ID=ferry-demo-$$
ferry() { "$FERRY" --root "$ROOT" "$@"; }

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ ferry %s\033[0m\n' "$*"; ferry "$@"; }

cleanup() {
  local rc=$?
  ferry delete --force "$ID" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  [ $rc = 0 ] && printf '\n\033[1mdemo: done, everything cleaned up\033[0m\n' \
              || printf '\ndemo: FAILED (exit %s); cleaned up\n' "$rc" >&2
}
trap cleanup EXIT

step "building a busybox bundle in $BUNDLE"
mkdir -p "$BUNDLE/rootfs"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,etc,root}
cp /bin/busybox "$BUNDLE/rootfs/bin/busybox"
n=0
for applet in $(/bin/busybox --list-full); do
  [ -e "$BUNDLE/rootfs/$applet" ] || { ln -s /bin/busybox "$BUNDLE/rootfs/$applet"; n=$((n+1)); }
done
echo "root:x:0:0:root:/root:/bin/sh" >"$BUNDLE/rootfs/etc/passwd"
echo "rootfs: busybox with $n applet links ($(du -sh "$BUNDLE/rootfs" | cut -f1))"

step "writing config.json with 'ferry spec', then setting the process: a counter"
(cd "$BUNDLE" && "$FERRY" spec)
python3 - "$BUNDLE/config.json" <<'PY'
import json, sys
path = sys.argv[1]
spec = json.load(open(path))
spec["process"]["terminal"] = False
spec["process"]["args"] = ["sh", "-c",
    "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; echo count $i; sleep 1; done"]
spec["root"]["readonly"] = False
spec["hostname"] = "ferry-demo"
json.dump(spec, open(path, "w"), indent=2)
PY
grep -A3 '"args"' "$BUNDLE/config.json"

step "starting the container detached"
printf '\033[2m$ ferry run -d --bundle %s %s\033[0m\n' "$BUNDLE" "$ID"
# A detached container keeps ferry's stdio: send it to a log file.
ferry run -d --bundle "$BUNDLE" "$ID" >"$WORK/container.log" 2>"$WORK/run.err" \
  || { cat "$WORK/run.err" >&2; exit 1; }
echo "container output goes to $WORK/container.log"
sleep 2

step "list and state"
show list
show state "$ID"

step "the counter advances (read through 'ferry exec')"
for _ in 1 2 3; do
  printf 'count inside the container: %s\n' "$(ferry exec "$ID" cat /tmp/count)"
  sleep 1
done
show exec "$ID" hostname
show ps "$ID" || true

step "pause: the counter stops"
show pause "$ID"
ferry state "$ID" | grep -o '"status": *"[a-z]*"'
a=$(cat "$BUNDLE/rootfs/tmp/count"); sleep 2; b=$(cat "$BUNDLE/rootfs/tmp/count")
echo "while paused: $a, two seconds later: $b"
[ "$a" = "$b" ] || { echo "demo: the counter moved while paused" >&2; exit 1; }

step "resume: it goes on from where it was"
show resume "$ID"
sleep 2
echo "after resume: $(ferry exec "$ID" cat /tmp/count)"

step "kill and delete"
show kill "$ID" KILL
for _ in $(seq 50); do
  ferry state "$ID" | grep -q '"stopped"' && break
  sleep 0.1
done
ferry state "$ID" | grep -o '"status": *"[a-z]*"'
show delete "$ID"
echo "last lines the container printed:"; tail -3 "$WORK/container.log"
show list
