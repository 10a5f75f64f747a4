package gid

import (
	"iter"
	"testing"

	"github.com/ringline-go/ringline/internal/require"
)

// Get tells goroutines apart, and a coroutine from its caller.
func TestIdentity(t *testing.T) {
	me := Get()
	require.NotZero(t, me)
	require.Equal(t, me, Get(), "stable within a goroutine")
	other := make(chan uintptr)
	go func() { other <- Get() }()
	require.NotEqual(t, me, <-other)

	next, stop := iter.Pull(func(yield func(uintptr) bool) {
		yield(Get())
		yield(Get())
	})
	defer stop()
	a, _ := next()
	b, _ := next()
	require.NotEqual(t, me, a, "a coroutine is its own goroutine")
	require.Equal(t, a, b, "and keeps its identity across resumes")
}

func BenchmarkGet(b *testing.B) {
	var x uintptr
	for b.Loop() {
		x += Get()
	}
	_ = x
}
