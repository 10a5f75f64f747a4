#!/usr/bin/env bash
# consumer_build.sh — builds and runs ringline the way a service that
# depends on it does: from a module outside this repository that requires
# ringline through a `replace` to a read-only copy laid out as the module
# cache holds it (no third_party/, no nested modules such as bench/). Each
# of the README's three ways to build ("Using ringline in your service") is
# built and makes an echo round trip over loopback:
#
#   1. the distribution's liburing-dev (plain go build; dynamic liburing)
#   2. the pinned liburing 2.9 through the documented command
#      (cmd/ringline-liburing), linked statically
#   3. no cgo: CGO_ENABLED=0, and -tags ringline_epoll on a machine without
#      liburing headers
#
# It also checks that a cgo build without liburing fails with the single
# #error naming these ways, and that the consumer's module graph holds none
# of the benchmark peers' modules.
#
# Needs: go, gcc, the distribution's liburing headers (make test installs
# liburing-dev), the pinned build's inputs (LIBURING_TARBALL, or apt-get
# source as vendor_liburing.sh does). LIBURING_CACHE is where the pinned
# build goes (default: a fresh temporary directory).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GO=${GO:-go}
work=$(mktemp -d)
cleanup() { chmod -R u+w "$work" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

pass=0
fail=0
ok() { echo "consumer: ok: $*"; pass=$((pass + 1)); }
bad() { echo "consumer: FAIL: $*"; fail=$((fail + 1)); }
# expect NAME OUTPUT STRING...: each STRING must occur in OUTPUT.
expect() {
  local name=$1 out=$2 s
  shift 2
  for s in "$@"; do
    if ! grep -qF -- "$s" <<<"$out"; then
      bad "$name: output lacks \"$s\":"
      sed 's/^/    /' <<<"$out"
      return 1
    fi
  done
}

# --- the module as a consumer's module cache holds it ---------------------
# The files the next commit holds (tracked and new, not ignored; on a fresh
# clone exactly HEAD), less nested modules, read-only.
mod="$work/modcache/github.com/ringline-go/ringline@v0.0.0"
mkdir -p "$mod"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard) |
  while IFS= read -r -d '' f; do [ -e "$repo/$f" ] && printf '%s\0' "$f"; done |
  tar -C "$repo" --null -T - -cf - | tar -C "$mod" -xf -
find "$mod" -mindepth 2 -name go.mod -printf '%h\0' | xargs -0 -r rm -rf
[ ! -e "$mod/third_party" ] || { echo "consumer: the module copy has third_party/"; exit 1; }
chmod -R a-w "$mod"

app="$work/consumer"
mkdir -p "$app"
cp "$repo/.ci/consumer/main.go" "$app/"
cat >"$app/go.mod" <<EOF
module example.com/consumer

go 1.26.0

require github.com/ringline-go/ringline v0.0.0

replace github.com/ringline-go/ringline => $mod
EOF
cd "$app"
unset CGO_CFLAGS CGO_CPPFLAGS CGO_LDFLAGS
"$GO" mod tidy

graph=$("$GO" mod graph)
if peers=$(grep -E 'gnet|go\.uber\.org/zap|ants|yaml|testify|lumberjack|bytebufferpool' <<<"$graph"); then
  bad "go mod graph holds benchmark peers' modules:"
  sed 's/^/    /' <<<"$peers"
else
  ok "go mod graph: $(cut -d' ' -f2 <<<"$graph" | sort -u | tr '\n' ' ')"
fi

# run NAME BINARY ARGS...: runs the consumer, prints its output on failure.
run() {
  local name=$1 out
  shift
  if ! out=$("$@" 2>&1); then
    bad "$name: the consumer failed:"
    sed 's/^/    /' <<<"$out"
    return 1
  fi
  printf '%s' "$out"
}

# --- 1. the distribution's liburing -----------------------------------------
distro_ver=$(pkg-config --modversion liburing 2>/dev/null || dpkg-query -W -f='${Version}' liburing-dev 2>/dev/null || true)
distro_ver=$(sed -E 's/^([0-9]+\.[0-9]+).*/\1/' <<<"$distro_ver")
if [ -z "$distro_ver" ]; then
  bad "distro: no liburing-dev installed (pkg-config liburing / dpkg liburing-dev)"
elif ! CGO_ENABLED=1 "$GO" build -o "$work/app-distro" . 2>"$work/err"; then
  bad "distro: go build against liburing $distro_ver failed:"
  sed 's/^/    /' "$work/err"
elif out=$(run distro "$work/app-distro" -backend iouring); then
  want="built against liburing $distro_ver"
  if [ "${distro_ver%%.*}" = 2 ] && [ "${distro_ver#*.}" -lt 8 ]; then
    want="$want: min-timeout batch waits unavailable"
  fi
  if expect distro "$out" "$want"$'\n' "backend: iouring" "echo: ok"; then
    # Not `ldd | grep -q`: grep -q exits at the first match, ldd may then
    # die of SIGPIPE, and pipefail turns that into a spurious failure.
    if grep -q 'liburing\.so' <<<"$(ldd "$work/app-distro")"; then
      ok "distribution liburing $distro_ver (dynamic): $want; echo on io_uring"
    else
      bad "distro: the binary does not link the distribution's shared liburing"
    fi
  fi
fi

# --- 2. the pinned liburing 2.9, static, through the documented command -----
cache=${LIBURING_CACHE:-$work/liburing-cache}
args=(-dir "$cache")
if [ -n "${LIBURING_TARBALL:-}" ]; then args+=(-tarball "$LIBURING_TARBALL"); fi
if ! flags=$("$GO" run github.com/ringline-go/ringline/cmd/ringline-liburing "${args[@]}" 2>"$work/err"); then
  bad "pinned: cmd/ringline-liburing failed:"
  sed 's/^/    /' "$work/err"
elif ! (eval "$flags" && CGO_ENABLED=1 "$GO" build -o "$work/app-pinned" .) 2>"$work/err"; then
  bad "pinned: go build with the printed flags failed:"
  sed 's/^/    /' <<<"$flags"
  sed 's/^/    /' "$work/err"
elif out=$(run pinned "$work/app-pinned" -backend iouring); then
  if expect pinned "$out" "built against liburing 2.9"$'\n' "backend: iouring" "echo: ok"; then
    if grep -q 'liburing' <<<"$(ldd "$work/app-pinned")"; then
      bad "pinned: the binary links a shared liburing"
    else
      ok "pinned liburing 2.9 (static) via cmd/ringline-liburing: echo on io_uring"
    fi
  fi
fi

# --- 3. no cgo --------------------------------------------------------------
if ! CGO_ENABLED=0 "$GO" build -o "$work/app-nocgo" . 2>"$work/err"; then
  bad "nocgo: CGO_ENABLED=0 go build failed:"
  sed 's/^/    /' "$work/err"
elif out=$(run nocgo "$work/app-nocgo"); then
  expect nocgo "$out" "io_uring compiled in: no" "backend: epoll" "echo: ok" &&
    ok "CGO_ENABLED=0: echo on epoll"
fi

# --- no liburing at all -----------------------------------------------------
# The compiler's own include path, with every liburing header left out:
# directories that hold one are mirrored by symlinks to everything else.
noinc="$work/no-liburing"
cflags="-O2 -g -nostdinc"
i=0
while read -r d; do
  [ -d "$d" ] || continue
  if [ -e "$d/liburing.h" ] || [ -e "$d/liburing" ]; then
    m="$noinc/$i"
    mkdir -p "$m"
    for e in "$d"/*; do
      case "${e##*/}" in liburing*) ;; *) ln -s "$e" "$m/" ;; esac
    done
    d=$m
  fi
  cflags="$cflags -isystem $d"
  i=$((i + 1))
done < <(echo | ${CC:-gcc} -xc -E -v - 2>&1 | sed -n '/#include <...> search starts here:/,/End of search list./p' | sed '1d;$d;s/^ *//')
if CGO_CFLAGS="$cflags" CGO_ENABLED=1 "$GO" build -o "$work/app-none" . >"$work/err" 2>&1; then
  bad "no liburing: a cgo build without liburing headers succeeded (is liburing.h elsewhere on the include path?)"
else
  err=$(cat "$work/err")
  if expect none "$err" "ringline: <liburing.h> not found" "apt-get install liburing-dev" \
    "go run github.com/ringline-go/ringline/cmd/ringline-liburing" "CGO_ENABLED=0 or -tags ringline_epoll"; then
    if [ "$(grep -c ': error: ' <<<"$err")" -ne 1 ]; then
      bad "no liburing: more than the one #error:"
      sed 's/^/    /' <<<"$err"
    else
      ok "no liburing: one build error naming the three ways"
    fi
  fi
fi
if ! CGO_CFLAGS="$cflags" CGO_ENABLED=1 "$GO" build -tags ringline_epoll -o "$work/app-epoll" . 2>"$work/err"; then
  bad "epoll tag: go build -tags ringline_epoll without liburing failed:"
  sed 's/^/    /' "$work/err"
elif out=$(run epoll "$work/app-epoll"); then
  expect epoll "$out" "io_uring compiled in: no" "backend: epoll" "echo: ok" &&
    ok "-tags ringline_epoll without liburing: echo on epoll"
fi

echo "consumer: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
