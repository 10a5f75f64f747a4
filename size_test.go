package ringline

import (
	"testing"
	"unsafe"

	"github.com/ringline-go/ringline/internal/assert"
)

// Every connection has a conn and a task, idle or not, so their sizes are
// most of what ringline adds per idle connection beyond the task's stack
// (docs/BENCHMARKS.md §4). Each is kept within a malloc size class; state
// only some connections need goes behind a pointer (connTimers,
// sendExtra, dialState, tlsConn). Growing one past its class costs every
// idle connection the next class's bytes: move the new field behind one
// of those pointers, or raise the bound here and re-measure
// BenchmarkIdleConnRSS.
func TestIdleStructSizes(t *testing.T) {
	t.Logf("conn %d B, task %d B, timerNode %d B", unsafe.Sizeof(conn{}), unsafe.Sizeof(task{}), unsafe.Sizeof(timerNode{}))
	assert.LessOrEqual(t, unsafe.Sizeof(conn{}), uintptr(288), "conn outgrew the 288-byte size class")
	assert.LessOrEqual(t, unsafe.Sizeof(task{}), uintptr(112), "task outgrew the 112-byte size class")
	assert.LessOrEqual(t, unsafe.Sizeof(timerNode{}), uintptr(32), "timerNode (three in a connTimers) grew")
}
