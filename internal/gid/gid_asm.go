//go:build (amd64 || arm64) && !ringline_nogetg

package gid

// Get returns an identity of the calling goroutine (its g pointer).
func Get() uintptr
