package ringline

import (
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// logLimiter lets one message a second through and counts the rest, so an
// error that repeats at line rate (accept at EMFILE) costs a counter, not
// a log flood. For one goroutine.
type logLimiter struct {
	next    int64 // worker clock before which messages are held back
	skipped uint64
}

// allow reports whether to log now and how many messages were held back
// since the last one that was.
func (l *logLimiter) allow(now int64) (bool, uint64) {
	if now < l.next {
		l.skipped++
		return false, 0
	}
	l.next = now + int64(time.Second)
	n := l.skipped
	l.skipped = 0
	return true, n
}

// foreignLog counts ConnCtx calls refused because they came from a
// goroutine other than the worker's, and logs at most one a second. Any
// goroutine may use it.
type foreignLog struct {
	calls atomic.Uint64
	next  atomic.Int64
}

// foreignCall reports a refused call: the misuse fails alone (the method
// returns ErrNotInWorker or its zero value) but loudly, naming the method
// and its caller.
//
//go:noinline
func (w *worker) foreignCall(method string) {
	n := w.foreign.calls.Add(1)
	now := int64(time.Since(w.epoch))
	next := w.foreign.next.Load()
	if now < next || !w.foreign.next.CompareAndSwap(next, now+int64(time.Second)) {
		return
	}
	if !strings.Contains(method, ".") {
		method = "ConnCtx." + method
	}
	w.log.Error("ringline: "+method+" called from a goroutine that is not its worker's; refused with ErrNotInWorker (ConnCtx, TaskCtx and futures belong to their worker: see the package documentation on which goroutine may call what)",
		"worker", w.id, "caller", callerOutside(), "refused_so_far", n)
}

// callerOutside names the first caller outside this package.
func callerOutside() string {
	var pcs [16]uintptr
	frames := runtime.CallersFrames(pcs[:runtime.Callers(2, pcs[:])])
	for {
		f, more := frames.Next()
		if !strings.HasPrefix(f.Function, pkgPrefix) || strings.HasSuffix(f.File, "_test.go") {
			return f.File + ":" + strconv.Itoa(f.Line)
		}
		if !more {
			return "unknown"
		}
	}
}

const pkgPrefix = "github.com/ringline-go/ringline."
