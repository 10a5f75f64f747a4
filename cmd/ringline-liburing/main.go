// Command ringline-liburing builds the liburing that ringline pins (2.9,
// its source tarball checked against a fixed sha256, compiled as a static
// library) into a per-user cache, and prints the cgo flags that make a Go
// build link ringline against it:
//
//	eval "$(go run github.com/ringline-go/ringline/cmd/ringline-liburing)"
//	go build ./...
//
// Run inside a module that requires ringline, it builds the version of this
// command that the module's go.mod selects; outside one, name a version:
// go run github.com/ringline-go/ringline/cmd/ringline-liburing@VERSION.
//
// The build is the one `make` does inside ringline's repository (the
// embedded vendor_liburing.sh): on Debian-family systems the source comes
// from `apt-get source --download-only liburing=2.9-1` through a private
// apt configuration (nothing system-wide changes); elsewhere pass the
// tarball with -tarball. It needs bash, a C compiler and make. Once built,
// running it again only prints the flags.
//
// Flags:
//
//	-dir DIR      where to build (default: $XDG_CACHE_HOME/ringline/liburing-2.9,
//	              i.e. ~/.cache/ringline/liburing-2.9)
//	-tarball F    use F as liburing_2.9.orig.tar.gz (its sha256 is checked)
//	-format F     sh (default): export lines for eval; env: KEY=VALUE lines
//	              (for go env -w, a Makefile or CI settings)
package main

import (
	_ "embed"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

//go:embed vendor_liburing.sh
var vendorScript string

// pinned is the liburing version vendor_liburing.sh builds.
const pinned = "2.9"

func main() {
	dir := flag.String("dir", "", "build directory (default: the user cache dir's ringline/liburing-"+pinned+")")
	tarball := flag.String("tarball", "", "liburing_"+pinned+".orig.tar.gz to build from (sha256-checked)")
	format := flag.String("format", "sh", "output: sh (export lines for eval) or env (KEY=VALUE lines)")
	flag.Parse()
	if *format != "sh" && *format != "env" {
		fatalf("unknown -format %q: sh or env", *format)
	}
	if *dir == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			fatalf("no user cache directory (%v); pass -dir", err)
		}
		*dir = filepath.Join(cache, "ringline", "liburing-"+pinned)
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		fatalf("%v", err)
	}
	cmd := exec.Command("bash", "-c", vendorScript, "vendor_liburing.sh")
	cmd.Env = append(os.Environ(), "LIBURING_DIR="+abs)
	if *tarball != "" {
		t, err := filepath.Abs(*tarball)
		if err != nil {
			fatalf("%v", err)
		}
		cmd.Env = append(cmd.Env, "LIBURING_TARBALL="+t)
	}
	// Progress and errors go to stderr: stdout carries only the flags.
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fatalf("building liburing %s in %s: %v", pinned, abs, err)
	}
	inc := filepath.Join(abs, "install", "include")
	lib := filepath.Join(abs, "install", "lib")
	for _, f := range []string{filepath.Join(inc, "liburing.h"), filepath.Join(lib, "liburing.a")} {
		if _, err := os.Stat(f); err != nil {
			fatalf("the build left no %s: %v", f, err)
		}
	}
	// CGO_CFLAGS replaces Go's default "-O2 -g", so it is kept. Only the
	// static library is in lib/, so -luring (from ringline's own #cgo
	// LDFLAGS) finds it there before any shared system liburing.
	vars := [][2]string{
		{"CGO_CFLAGS", "-O2 -g -I" + inc},
		{"CGO_LDFLAGS", "-L" + lib},
	}
	for _, v := range vars {
		if *format == "sh" {
			fmt.Printf("export %s=%s\n", v[0], shellQuote(v[1]))
		} else {
			fmt.Printf("%s=%s\n", v[0], v[1])
		}
	}
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	out := "'"
	for _, r := range s {
		if r == '\'' {
			out += `'\''`
		} else {
			out += string(r)
		}
	}
	return out + "'"
}

func fatalf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "ringline-liburing: "+format+"\n", a...)
	os.Exit(1)
}
