// Package gid tells goroutines apart cheaply. ringline's ConnCtx methods
// must run on their worker (its loop goroutine or the task coroutine it is
// running), and an exact, cheap test of "which goroutine am I" is what
// enforces that.
//
// On amd64 and arm64 the identity is the runtime's g pointer, read in two
// instructions (gid_*.s, about 1 ns with the call); elsewhere it is the
// goroutine id parsed from runtime.Stack, which is correct but slow (about
// a microsecond). The build tag ringline_nogetg forces the slow path, so it
// can be tested on any machine.
//
// A g pointer is unique among live goroutines only: the runtime reuses a
// dead goroutine's g. ringline compares it against a worker's goroutine and
// its running task's, and checks first that the worker has not exited, so
// both are alive when compared and a foreign goroutine never matches. The
// value is an identity only: it is never dereferenced.
package gid
