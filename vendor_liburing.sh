#!/usr/bin/env bash
# vendor_liburing.sh — build the pinned, verified liburing 2.9 into
# third_party/liburing (git-ignored), where uring.go's cgo flags find it.
# `make` runs this. The logic is cmd/ringline-liburing/vendor_liburing.sh,
# the same script a consumer runs through
# `go run github.com/ringline-go/ringline/cmd/ringline-liburing`.
# LIBURING_TARBALL=/path/to/liburing_2.9.orig.tar.gz overrides the source.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LIBURING_DIR="$here/third_party/liburing" exec bash "$here/cmd/ringline-liburing/vendor_liburing.sh"
