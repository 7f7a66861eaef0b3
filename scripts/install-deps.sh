#!/usr/bin/env bash
# Installs what ferry's build, demo and tests need on a fresh Debian 12 machine.
# Idempotent: every step checks first and says what it does. Needs root.
set -euo pipefail

say()  { printf '\033[1minstall-deps:\033[0m %s\n' "$*"; }
fail() { printf 'install-deps: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "must run as root (it installs Debian packages and /usr/local/sbin/criu)"

CRIU_MIN_MAJOR=4
PKGS=(
  # build and test tools
  build-essential pkg-config patch busybox-static iproute2 iptables procps util-linux kmod
  # mkfs.ext4, for the test of a restore on a storage too small to stage its pages
  e2fsprogs
  # CRIU 4.x build dependencies (bookworm's CRIU 3.17 fails on this kernel; built below)
  libprotobuf-c-dev protobuf-c-compiler protobuf-compiler libprotobuf-dev libnl-3-dev
  libnet1-dev libcap-dev libbsd-dev pkgconf uuid-dev libnftables-dev libgnutls28-dev
  python3 xz-utils
  # what CRIU runs itself: iptables-restore to lock a container's network while it dumps
  iptables
  # reference clients ferry is tested against
  podman conmon skopeo
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || fail "apt-get update"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || fail "apt-get install ${missing[*]}"
else
  say "Debian packages: all present"
fi

# ferry's own changes to CRIU 4.1 (see each patch's header): a fix for this kernel, a
# dump that skips walking an empty namespace's conntrack table, and a lazy page server
# that works without CAP_SYS_RESOURCE; a CRIU built from
# Debian's source must carry exactly this set, recorded in a stamp beside it.
PATCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/criu-patches"
PATCH_ID=$(cat "$PATCH_DIR"/*.patch 2>/dev/null | sha256sum | cut -c1-16)
STAMP=/usr/local/share/ferry/criu-patches

criu_ok() {
  command -v criu >/dev/null 2>&1 || return 1
  local v major minor
  v=$(criu --version 2>/dev/null | sed -n 's/^Version: \([0-9.]*\).*/\1/p')
  major=${v%%.*}; minor=$(echo "$v" | cut -d. -f2)
  [ -n "$major" ] && [ "$major" -ge "$CRIU_MIN_MAJOR" ] || return 1
  # CRIU < 4.2 cannot dump inet sockets on Linux >= 6.16 without our patch.
  if [ "$major" -eq 4 ] && [ "${minor:-0}" -lt 2 ] && [ "$(cat "$STAMP" 2>/dev/null)" != "$PATCH_ID" ]; then
    say "CRIU $v on PATH lacks ferry's patches ($PATCH_DIR); rebuilding"
    return 1
  fi
  criu check >/dev/null 2>&1
}

if criu_ok; then
  say "CRIU: $(criu --version | head -1) on PATH, 'criu check' passes"
else
  say "CRIU >= $CRIU_MIN_MAJOR.0 not found or 'criu check' fails; building it from Debian's trixie source"
  list=/etc/apt/sources.list.d/ferry-trixie-src.sources
  if [ ! -f "$list" ]; then
    uri=$(sed -n 's/^URIs: *\(.*debian\/*\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1)
    [ -n "$uri" ] || uri=$(awk '/^deb / && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
    [ -n "$uri" ] || fail "cannot find the machine's Debian mirror URI in /etc/apt/sources.list.d/"
    printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" >"$list"
    apt-get update -qq || fail "apt-get update with the trixie deb-src entry"
  fi
  work=/var/cache/ferry/criu-src
  mkdir -p "$work"; cd "$work"
  if ! ls criu_*.orig.tar.xz >/dev/null 2>&1; then
    say "downloading CRIU source (apt-get source --download-only criu)"
    # The .dsc may be missing on the mirror; the orig tarball is all we need.
    apt-get source --download-only criu >/dev/null 2>&1 || true
    ls criu_*.orig.tar.xz >/dev/null 2>&1 || fail "criu_*.orig.tar.xz did not download; check 'apt-get source --download-only criu' in $work"
  fi
  tarball=$(ls criu_*.orig.tar.xz | sort -V | tail -1)
  dir=$(tar tf "$tarball" | awk -F/ 'NR==1 {print $1}')  # awk reads all: no SIGPIPE under pipefail
  rm -rf "$dir"; tar xf "$tarball"
  for p in "$PATCH_DIR"/*.patch; do
    [ -e "$p" ] || continue
    say "applying $(basename "$p")"
    patch -s -p1 -d "$dir" <"$p" || fail "patch $p does not apply to $tarball"
  done
  say "building CRIU in $work/$dir (about a minute)"
  make -C "$dir" -j"$(nproc)" criu >build.log 2>&1 || { tail -30 build.log >&2; fail "CRIU build; full log in $work/build.log"; }
  install -m 0755 "$dir/criu/criu" /usr/local/sbin/criu
  mkdir -p "$(dirname "$STAMP")" && echo "$PATCH_ID" >"$STAMP"
  hash -r
  criu_ok || { criu check >&2 || true; fail "the built CRIU does not pass 'criu check'"; }
  say "CRIU: $(criu --version | head -1) installed as /usr/local/sbin/criu"
fi

if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  fail "no Rust toolchain (cargo) found; install rustup's stable toolchain first"
fi
say "done"
