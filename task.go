package ringline

import (
	"fmt"
	"iter"
	"runtime/debug"

	"github.com/ringline-go/ringline/internal/gid"
)

// waitFor says which event wakes a suspended task; anything else leaves it
// asleep, so an event stream on a busy connection does not resume a task
// that cannot make progress.
const (
	waitNone uint8 = 0
	waitRecv uint8 = 1 << 0
	waitSend uint8 = 1 << 1
)

// task is a coroutine (iter.Pull) owned by one worker: created, resumed and
// stopped only on the worker's locked goroutine. Suspending is a yield back
// to the loop, ~100 ns, not a goroutine hand-off.
type task struct {
	w    *worker
	conn *conn
	// g is the coroutine's goroutine identity (internal/gid), set when it
	// first runs; ConnCtx methods compare against it through worker.curG.
	g       uintptr
	next    func() (struct{}, bool)
	stop    func()
	yield   func(struct{}) bool
	waiting uint8
	queued  bool
	done    bool
	killed  bool
	// toldStop: the task was already told the worker is stopping.
	toldStop bool
}

// taskKilled unwinds a task that the worker stopped (shutdown). Tasks must
// not swallow it with a blanket recover.
type taskKilled struct{}

// taskGoexited is what a task that called runtime.Goexit turns into. Goexit
// cannot be stopped, and iter.Pull would re-raise it on the worker's
// goroutine, ending the worker. A panic raised by a deferred call while
// Goexit unwinds is recovered by iter.Pull and re-raised as that panic
// instead, which the worker can recover: so the task ends, its connection
// closes, and the worker lives on.
type taskGoexited struct{}

func (w *worker) newTask(c *conn, body func()) *task {
	t := &task{w: w, conn: c}
	seq := func(yield func(struct{}) bool) {
		t.yield = yield
		t.g = gid.Get()
		w.curG.Store(t.g)
		returned := false
		defer func() {
			// A panic or Goexit unwinds every parse closure on the stack
			// (they cannot suspend, so all belong to this task).
			for _, pc := range w.parsing {
				pc.parsing, pc.sinkPending = false, false
			}
			w.parsing = w.parsing[:0]
			r := recover()
			if r == nil {
				if !returned {
					w.taskGoexit(c)
					panic(taskGoexited{})
				}
				return
			}
			if _, ok := r.(taskKilled); ok {
				return
			}
			w.log.Error("ringline: task panicked; closing its connection",
				"worker", w.id, "conn", connIndexOf(c), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			w.st.taskPanics++
		}()
		body()
		returned = true
	}
	t.next, t.stop = iter.Pull(seq)
	return t
}

// taskGoexit reports a task that called runtime.Goexit (t.FailNow and
// require.* do). Kept out of line so its frame is not on every task stack.
//
//go:noinline
func (w *worker) taskGoexit(c *conn) {
	w.st.taskGoexits++
	w.log.Error("ringline: task called runtime.Goexit (t.FailNow, require.*?); closing its connection, the worker goes on",
		"worker", w.id, "conn", connIndexOf(c))
}

func connIndexOf(c *conn) int {
	if c == nil {
		return -1
	}
	return int(c.idx)
}

// suspend yields to the worker loop until an event in mask wakes the task.
func (t *task) suspend(mask uint8) {
	if len(t.w.parsing) > 0 {
		panic("ringline: a WithData/WithBytes/TryWithData closure must not suspend (no Await, WithData or RecvReady inside it): return from the closure first")
	}
	t.waiting = mask
	if !t.yield(struct{}{}) {
		panic(taskKilled{})
	}
	t.waiting = waitNone
}

// wake queues t to run if it waits for any event in ev.
func (t *task) wake(ev uint8) {
	if t == nil || t.done || t.queued || t.waiting&ev == 0 {
		return
	}
	t.queued = true
	t.w.runq = append(t.w.runq, t)
}

// resume runs t until it suspends or returns.
func (w *worker) resume(t *task) {
	t.queued = false
	if t.done {
		return
	}
	prev := w.cur
	w.cur = t
	alive := w.step(t.next)
	w.cur = prev
	w.st.resumes++
	if !alive {
		w.taskDone(t)
		return
	}
	// A lent kernel buffer never outlives one resume: the ring gets it
	// back now and the unread rest moves to the accumulator.
	if c := t.conn; c != nil && c.lent >= 0 {
		c.spillLent()
	}
}

// step switches into a task through next (or stop) and reports whether it
// is still alive. curG names the running coroutine for the ownership
// check while it runs; a task that Goexited surfaces here as a
// taskGoexited panic and counts as ended.
func (w *worker) step(next func() (struct{}, bool)) (alive bool) {
	w.curG.Store(w.cur.g)
	defer func() {
		w.curG.Store(0)
		if r := recover(); r != nil {
			if _, ok := r.(taskGoexited); !ok {
				panic(r)
			}
			alive = false
		}
	}()
	_, alive = next()
	return alive
}

func (w *worker) taskDone(t *task) {
	t.done = true
	if c := t.conn; c != nil {
		if c.lent >= 0 {
			c.spillLent()
		}
		c.task = nil
		c.requestClose()
		c.maybeFree()
	}
}

// kill stops a suspended task: its pending yield returns false and the
// task unwinds through taskKilled.
func (w *worker) kill(t *task) {
	if t.done {
		return
	}
	t.killed = true
	prev := w.cur
	w.cur = t
	w.step(func() (struct{}, bool) { t.stop(); return struct{}{}, false })
	w.cur = prev
	w.taskDone(t)
}
