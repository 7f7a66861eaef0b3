#!/usr/bin/env bash
# ferry's demo: what ferry is for. It imports a busybox image, runs a container from it that
# counts five times a second, changes a file inside, checkpoints the running container into a
# signed archive, and restores it under a new name: the counter goes on from where it was and
# the file is still there. Every step is checked; any surprise stops the demo with an error.
# It uses its own --root and --storage in a temp dir (never /run/ferry or /var/lib/ferry) and
# cleans up on any exit.
# Usage: scripts/demo.sh [path/to/ferry]   (default: target/release/ferry). Needs root.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
FERRY=$(realpath "${1:-target/release/ferry}")
[ -x "$FERRY" ] || { echo "demo: $FERRY not found; run 'make build' first" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "demo: must run as root (containers need it)" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "demo: /bin/busybox missing; run 'make deps'" >&2; exit 1; }
command -v criu >/dev/null || { echo "demo: criu not on PATH; run 'make deps'" >&2; exit 1; }

WORK=$(mktemp -d /tmp/ferry-demo.XXXXXX)
ROOT=$WORK/state            # ferry --root: the demo keeps its containers to itself
STORAGE=$WORK/storage       # ferry --storage: its own image store, identity and trust list
LOG=$WORK/ferry.log         # ferry's log for commands whose stdio is /dev/null
ARCHIVE=$WORK/counter.tar.zst
IMAGE=demo-busybox
ID=counter
RID=counter-restored
ferry() { "$FERRY" --root "$ROOT" --storage "$STORAGE" "$@"; }

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ ferry %s\033[0m\n' "$*"; ferry "$@"; }
ok()   { printf '\033[32mok:\033[0m %s\n' "$*"; }
fail() { printf '\ndemo: FAILED: %s\n' "$*" >&2; exit 1; }

cleanup() {
  local rc=$?
  trap - EXIT
  set +e
  for c in "$RID" "$ID"; do ferry delete --force "$c" >/dev/null 2>&1; done
  # Anything still mounted under the temp dir (an overlay rootfs a failed step left): unmount
  # it before removing the directory, deepest first.
  findmnt -rn -o TARGET | grep "^$WORK/" | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$WORK"
  if [ $rc = 0 ]; then
    printf '\n\033[1mdemo: done, everything cleaned up\033[0m\n'
  else
    printf 'demo: FAILED (exit %s); containers and %s removed\n' "$rc" "$WORK" >&2
  fi
  exit $rc
}
trap cleanup EXIT

# The counter's value, read inside the container.
count() { ferry exec "$1" cat /tmp/count; }
# Waits (up to 10 s) until the counter of $1 is above $2; prints the value.
count_above() {
  local v=0
  for _ in $(seq 100); do
    v=$(count "$1" 2>/dev/null || echo 0)
    [ "$v" -gt "$2" ] 2>/dev/null && { echo "$v"; return 0; }
    sleep 0.1
  done
  fail "the counter of $1 stayed at $v (waited for more than $2)"
}
status() { ferry state "$1" | sed -n 's/.*"status": *"\([a-z]*\)".*/\1/p'; }
expect_status() {
  local s; s=$(status "$1")
  [ "$s" = "$2" ] || fail "container $1 is '$s', expected '$2'"
  ok "$1 is $2"
}

step "1. building a busybox root filesystem and importing it as the image '$IMAGE'"
mkdir -p "$WORK/rootfs"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,etc,root}
cp /bin/busybox "$WORK/rootfs/bin/busybox"
n=0
for applet in $(/bin/busybox --list-full); do
  [ -e "$WORK/rootfs/$applet" ] || { ln -s /bin/busybox "$WORK/rootfs/$applet"; n=$((n+1)); }
done
echo "root:x:0:0:root:/root:/bin/sh" >"$WORK/rootfs/etc/passwd"
echo "rootfs: busybox with $n applet links ($(du -sh "$WORK/rootfs" | cut -f1)) in $WORK/rootfs"
show image import "$WORK/rootfs" --name "$IMAGE"
show image ls
ferry image ls | grep -q "^$IMAGE:latest " || fail "'ferry image ls' does not list $IMAGE"

step "2. running a container from the image: a shell counting into /tmp/count every 0.2 s"
COUNTER='i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done'
printf "\033[2m\$ ferry run -d --image %s --name %s -- sh -c '%s'\033[0m\n" "$IMAGE" "$ID" "$COUNTER"
# Its stdio is /dev/null: a detached container holding the caller's terminal or a log file
# could not be checkpointed (CRIU dumps what the processes hold). Errors go to ferry's log.
ferry --log "$LOG" run -d --image "$IMAGE" --name "$ID" -- sh -c "$COUNTER" \
  </dev/null >/dev/null 2>&1 || { cat "$LOG" >&2; fail "ferry run -d"; }
show list
show state "$ID"
expect_status "$ID" running
a=$(count_above "$ID" 0)
echo "count inside the container: $a"
sleep 1
b=$(count "$ID")
echo "one second later:           $b"
[ "$b" -gt "$a" ] || fail "the counter did not advance ($a, then $b)"
ok "the counter advances"

step "3. changing a file inside the container; 'ferry diff' shows the container's own changes"
printf "\033[2m\$ ferry exec %s sh -c 'echo \"written before the checkpoint\" > /root/note'\033[0m\n" "$ID"
ferry exec "$ID" sh -c 'echo "written before the checkpoint" > /root/note'
show diff "$ID"
ferry diff "$ID" | grep -q '^A /root/note$' || fail "'ferry diff' does not show /root/note as added"
ok "/root/note is among the changes"

step "4. checkpointing the running container into a signed archive"
show identity
# Let it count a little longer, so a restart from 1 could not pass for the restored count.
before=$(count_above "$ID" 24)
echo "count just before the checkpoint: $before"
show checkpoint "$ID" -e "$ARCHIVE" --print-stats
[ -s "$ARCHIVE" ] || fail "no archive at $ARCHIVE"
echo "archive: $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1))"
show list
if ferry list -q | grep -qx "$ID"; then fail "$ID is still listed after the checkpoint"; fi
ok "$ID is gone: the checkpoint released it once the archive was complete"
show inspect "$ARCHIVE"
inspected=$(ferry inspect "$ARCHIVE")
grep -q 'trusted (this host)' <<<"$inspected" || fail "inspect does not show the archive as signed by this host"
grep -q '/root/note' <<<"$inspected" || fail "inspect does not list /root/note among the rootfs changes"
grep -Eq '^ +1 +0 +alive +1 +sh$' <<<"$inspected" || fail "inspect does not show the counting shell"
ok "the archive verifies and holds the shell, its memory and /root/note"

step "5. restoring the archive under a new name"
show restore -i "$ARCHIVE" --name "$RID" -d </dev/null
show list
expect_status "$RID" running
# Every value read from now on must be at least the one before the checkpoint: a restarted
# shell would count 1, 2, … again (and could pass $before after a few seconds).
first=$(count "$RID")
echo "count right after the restore: $first (before the checkpoint: $before)"
last=$first
for _ in $(seq 100); do
  v=$(count "$RID")
  [ "$v" -ge "$before" ] && [ "$v" -ge "$last" ] \
    || fail "the counter restarted: it reads $v after $last, and was $before before the checkpoint"
  last=$v
  [ "$v" -gt "$before" ] && [ "$v" -gt "$first" ] && break
  sleep 0.1
done
[ "$last" -gt "$before" ] && [ "$last" -gt "$first" ] || fail "the restored counter stayed at $last"
echo "a moment later:                $last"
ok "the counter goes on from where it was ($before -> $last), not from 1"
note=$(ferry exec "$RID" cat /root/note) || fail "/root/note is missing in the restored container"
printf '\033[2m$ ferry exec %s cat /root/note\033[0m\n%s\n' "$RID" "$note"
[ "$note" = "written before the checkpoint" ] || fail "/root/note holds '$note'"
ok "/root/note survived the trip"

step "pause and resume the restored container"
show pause "$RID"
expect_status "$RID" paused
bundle=$(ferry state "$RID" | sed -n 's/.*"bundle": *"\([^"]*\)".*/\1/p')
a=$(cat "$bundle/rootfs/tmp/count"); sleep 1; b=$(cat "$bundle/rootfs/tmp/count")
echo "while paused: $a, one second later: $b"
[ "$a" = "$b" ] || fail "the counter moved while paused ($a, then $b)"
show resume "$RID"
expect_status "$RID" running
c=$(count_above "$RID" "$b")
echo "after resume: $c"
ok "paused, then going on"

step "kill and delete"
show kill "$RID" KILL
for _ in $(seq 100); do [ "$(status "$RID")" = stopped ] && break; sleep 0.1; done
expect_status "$RID" stopped
show delete "$RID"
show list
[ -z "$(ferry list -q)" ] || fail "containers are left: $(ferry list -q | tr '\n' ' ')"
ok "no container left"
