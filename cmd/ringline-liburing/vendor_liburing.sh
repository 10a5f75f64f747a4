#!/usr/bin/env bash
# vendor_liburing.sh — fetch, verify and build the pinned liburing that the
# cgo layer links against. The source is never committed.
#
# Where it lands: $LIBURING_DIR (dl/ for the tarball, src/, install/ with
# include/ and lib/liburing.a). The repository's ./vendor_liburing.sh sets
# it to third_party/liburing (git-ignored), which uring.go's cgo flags look
# in; `go run github.com/ringline-go/ringline/cmd/ringline-liburing`, which
# embeds this script, sets it to a per-user cache. Re-running is a no-op
# when the pinned build is present; concurrent runs wait for each other.
#
# Source, in order of preference:
#   1. LIBURING_TARBALL=/path/to/liburing_2.9.orig.tar.gz
#   2. a cached tarball in third_party/liburing/dl/
#   3. `apt-get source --download-only liburing=2.9-1` through a private apt
#      configuration (deb-src for trixie, the mirror read from this machine's
#      own apt sources, private lists and cache dirs) — nothing system-wide
#      changes.
set -euo pipefail

VERSION=2.9
DEBVER=2.9-1
SHA256=57e9b36e4ac1e46b8e0351dfb1694dc59638fc25e384b4ba36d87b800b16db1a
TARBALL_NAME="liburing_${VERSION}.orig.tar.gz"

die() { echo "vendor_liburing.sh: $*" >&2; exit 1; }
log() { echo "vendor_liburing.sh: $*" >&2; }

[ -n "${LIBURING_DIR:-}" ] || die "set LIBURING_DIR to the directory to build in"
mkdir -p "$LIBURING_DIR"
root=$(cd "$LIBURING_DIR" && pwd)
dl="$root/dl"
prefix="$root/install"
stamp="$prefix/.built-$VERSION-$SHA256"

built() { [ -f "$stamp" ] && [ -f "$prefix/lib/liburing.a" ] && [ -f "$prefix/include/liburing.h" ]; }
built && exit 0
# Two builds starting at once (make -j, two go runs) must not interleave.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$root/.lock"
  flock 9
  built && exit 0
fi

verify() { echo "$SHA256  $1" | sha256sum -c --status; }

mkdir -p "$dl"
tarball=""
if [ -n "${LIBURING_TARBALL:-}" ]; then
  [ -f "$LIBURING_TARBALL" ] || die "LIBURING_TARBALL=$LIBURING_TARBALL does not exist"
  verify "$LIBURING_TARBALL" || die "LIBURING_TARBALL=$LIBURING_TARBALL does not match sha256 $SHA256"
  tarball="$LIBURING_TARBALL"
elif [ -f "$dl/$TARBALL_NAME" ] && verify "$dl/$TARBALL_NAME"; then
  tarball="$dl/$TARBALL_NAME"
else
  command -v apt-get >/dev/null 2>&1 || die "no liburing source: set LIBURING_TARBALL=path/to/$TARBALL_NAME (sha256 $SHA256); apt-get is not available here"
  # The mirror URI comes from the machine's own apt sources (deb822 or one-line).
  mirror=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    mirror=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' "$f")
    [ -n "$mirror" ] && break
  done
  if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
    mirror=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\/.*\/debian\/?$/) { print $i; exit } }' /etc/apt/sources.list)
  fi
  [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list{,.d}; set LIBURING_TARBALL=path/to/$TARBALL_NAME (sha256 $SHA256)"

  apt_root=$(mktemp -d)
  trap 'rm -rf "$apt_root"' EXIT
  mkdir -p "$apt_root/lists/partial" "$apt_root/cache/archives/partial" "$apt_root/sources.list.d"
  cat >"$apt_root/sources.list.d/liburing-src.sources" <<SRC
Types: deb-src
URIs: $mirror
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  aptopts=(
    -o "Dir::Etc::SourceList=/dev/null"
    -o "Dir::Etc::SourceParts=$apt_root/sources.list.d"
    -o "Dir::State::Lists=$apt_root/lists"
    -o "Dir::Cache=$apt_root/cache"
    -o "Dir::Cache::srcpkgcache="
    -o "Dir::Cache::pkgcache="
    -o "APT::Sandbox::User=root"
  )
  log "fetching liburing $DEBVER source from $mirror (trixie, private apt config)"
  apt-get "${aptopts[@]}" -qq update >&2 || die "apt-get update of the private deb-src list failed; set LIBURING_TARBALL=path/to/$TARBALL_NAME"
  (cd "$apt_root" && apt-get "${aptopts[@]}" -qq source --download-only "liburing=$DEBVER" >&2) \
    || die "apt-get source liburing=$DEBVER failed; set LIBURING_TARBALL=path/to/$TARBALL_NAME (sha256 $SHA256)"
  [ -f "$apt_root/$TARBALL_NAME" ] || die "apt-get source did not produce $TARBALL_NAME"
  verify "$apt_root/$TARBALL_NAME" || die "$TARBALL_NAME from the mirror does not match sha256 $SHA256"
  cp "$apt_root/$TARBALL_NAME" "$dl/$TARBALL_NAME"
  tarball="$dl/$TARBALL_NAME"
fi

src="$root/src"
rm -rf "$src" "$prefix"
mkdir -p "$src" "$prefix/lib" "$prefix/include"
tar -xzf "$tarball" -C "$src" --strip-components=1
log "building liburing $VERSION (static)"
(
  cd "$src"
  ./configure --prefix="$prefix" --use-libc >/dev/null
  make -C src -j"$(nproc)" liburing.a >/dev/null
)
cp "$src/src/liburing.a" "$prefix/lib/"
cp -r "$src/src/include/." "$prefix/include/"
touch "$stamp"
log "liburing $VERSION built into $prefix"
