package ringline

import (
	"fmt"
	"iter"
	"runtime/debug"

	"github.com/ringline-go/ringline/internal/gid"
)

// waitFor says which events wake a suspended task; anything else leaves it
// asleep, so an event stream on a busy connection does not resume a task
// that cannot make progress, and a sleeping task is woken by its timer
// only.
const (
	waitNone  uint8 = 0
	waitRecv  uint8 = 1 << iota // data, EOF or a read deadline on an owned connection
	waitSend                    // a send completed (own connection or a SendFuture awaited)
	waitTimer                   // a timer this task waits on fired
	waitJoin                    // a task this one joins ended
	waitMail                    // a mailbox this task receives from got a value
	waitConn                    // an outbound connect completed (Connect)
)

// task is a coroutine (iter.Pull) owned by one worker: created, resumed and
// stopped only on the worker's goroutine. Suspending is a yield back
// to the loop, ~100 ns, not a goroutine hand-off. A task is the body of an
// accepted connection (OnAccept), a spawned task (TaskCtx.Spawn,
// Runtime.Post) or a worker's start task (OnStart).
type task struct {
	w *worker
	// owned lists the connections this task drives: its accepted one and
	// any it connected. They close when the task ends.
	owned []*conn
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
	// abort: Abort was called; the task is stopped at its next
	// suspension (or by the loop, if it is suspended now).
	abort bool
	// toldStop: the task was already told the worker is stopping.
	toldStop bool
	// returned: the body returned (rather than unwound).
	returned bool
	// prevT, nextT link the worker's live tasks.
	prevT, nextT *task
	// sleepN is the timer of a Sleep in progress, a pooled node lent for
	// the sleep (sleepUntil), nil otherwise.
	sleepN *pooledTimer
	// join is who waits in Join and how the task ended, for a task that
	// Spawn made (it has a JoinHandle); nil for every other task.
	join *joinState
	// body is what the task runs; nil for an accepted connection's task,
	// which runs the handler's OnAccept (run).
	body func()
}

// joinState is what Join needs of a spawned task: joiners are tasks
// waiting for it to end; result is how it ended (nil, a *PanicError,
// ErrAborted, ErrGoexit).
type joinState struct {
	joiners []*task
	result  error
}

// setResult records how the task ended for Join; the first outcome wins.
func (t *task) setResult(err error) {
	if t.join != nil && t.join.result == nil {
		t.join.result = err
	}
}

// taskKilled unwinds a task that the worker stopped (shutdown, Abort).
// Tasks must not swallow it with a blanket recover.
type taskKilled struct{}

// taskGoexited is what a task that called runtime.Goexit turns into. Goexit
// cannot be stopped, and iter.Pull would re-raise it on the worker's
// goroutine, ending the worker. A panic raised by a deferred call while
// Goexit unwinds is recovered by iter.Pull and re-raised as that panic
// instead, which the worker can recover: so the task ends, its connection
// closes, and the worker lives on.
type taskGoexited struct{}

// PanicError is how a spawned task's panic reaches JoinHandle.Join: the
// panic is recovered on the task's worker, logged and counted, never
// re-raised into the joiner.
type PanicError struct {
	Value any    // what the task panicked with
	Stack []byte // the task's stack when it panicked
}

func (e *PanicError) Error() string { return fmt.Sprintf("ringline: task panicked: %v", e.Value) }

// newTask makes a task that runs body; c, when not nil, is the connection
// it owns from the start (an accepted one). With a nil body the task is
// c's accepted-connection task: the TLS handshake when c has one, then the
// handler's OnAccept, called from the coroutine itself rather than from a
// closure, one frame less under every frame of the handler.
func (w *worker) newTask(c *conn, body func()) *task {
	t := &task{w: w, body: body}
	if c != nil {
		t.owned = append(make([]*conn, 0, 1), c)
		c.task = t
	}
	// A method value, not a closure over newTask's variables: 16 bytes
	// per task instead of 48.
	t.next, t.stop = iter.Pull(t.run)
	return t
}

// run is the task's coroutine. Its frames sit under every frame of the
// task, so they are kept small: tasks start on 2 KiB goroutine stacks,
// and a task that outgrows one keeps a 4 KiB stack for the rest of its
// life (2 KiB more per idle connection). The deferred end is a method,
// not a closure, and runs only when the body returns or unwinds. An
// accepted connection's task owns that connection alone when it starts.
func (t *task) run(yield func(struct{}) bool) {
	w := t.w
	t.yield = yield
	t.g = gid.Get()
	w.curG.Store(t.g)
	defer t.ended()
	if t.body != nil {
		t.body()
	} else if c := t.owned[0]; c.tls == nil || c.tlsAccepted() {
		w.handler.OnAccept(ConnCtx{w: w, idx: c.idx, gen: c.gen})
	}
	t.returned = true
}

// ended runs when a task's body returns or unwinds (a panic, Goexit, or
// the worker stopping it): it records how the task ended. Deferred by the
// task's coroutine; out of line so its frame is not on the task's stack
// while the body runs.
func (t *task) ended() {
	w := t.w
	// A panic or Goexit unwinds every parse closure on the stack
	// (they cannot suspend, so all belong to this task).
	for _, pc := range w.parsing {
		pc.parsing, pc.sinkPending = false, false
	}
	w.parsing = w.parsing[:0]
	r := recover()
	if r == nil {
		if !t.returned {
			w.taskGoexit(t)
			t.setResult(ErrGoexit)
			panic(taskGoexited{})
		}
		return
	}
	if _, ok := r.(taskKilled); ok {
		t.setResult(ErrAborted)
		return
	}
	pe := &PanicError{Value: r, Stack: debug.Stack()}
	t.setResult(pe)
	w.log.Error("ringline: task panicked; closing its connections",
		"worker", w.id, "conn", t.connIndex(), "panic", fmt.Sprint(r), "stack", string(pe.Stack))
	w.st.taskPanics++
}

// taskGoexit reports a task that called runtime.Goexit (t.FailNow and
// require.* do). Kept out of line so its frame is not on every task stack.
//
//go:noinline
func (w *worker) taskGoexit(t *task) {
	w.st.taskGoexits++
	w.log.Error("ringline: task called runtime.Goexit (t.FailNow, require.*?); closing its connections, the worker goes on",
		"worker", w.id, "conn", t.connIndex())
}

// connIndex names the task's first connection for logs, -1 for none.
func (t *task) connIndex() int {
	if len(t.owned) == 0 {
		return -1
	}
	return int(t.owned[0].idx)
}

// suspend yields to the worker loop until an event in mask wakes the task.
func (t *task) suspend(mask uint8) {
	if len(t.w.parsing) > 0 {
		panic("ringline: a WithData/WithBytes/TryWithData closure must not suspend (no Await, Sleep, WithData or RecvReady inside it): return from the closure first")
	}
	if t.abort {
		panic(taskKilled{})
	}
	t.waiting = mask
	// An Abort made while this task waited stops it here, even if it was
	// woken in the same loop turn before the loop could stop it.
	if !t.yield(struct{}{}) || t.abort {
		panic(taskKilled{})
	}
	t.waiting = waitNone
}

// Telling a task the worker stops: the first wait it makes (or is in) once
// shutdown began returns early (WithData 0, Sleep or Select ErrShutdown,
// Mailbox.Recv ErrClosed), so a long sleep or an idle read does not hold
// the shutdown up. After that, waits behave normally, so the task can wind
// down (sleep a little, send a goodbye and await it) within
// Config.ShutdownTimeout; receives, which would now return at once for
// ever, suspend instead (a task looping on them would spin, and a
// spinning task never lets the loop stop) until the task is stopped at
// the deadline.

// tellStop reports whether this wait should return early to tell t.
func (t *task) tellStop() bool {
	if !t.w.stopped || t.toldStop {
		return false
	}
	t.toldStop = true
	return true
}

// spinGuard suspends a told task that waits again on a receive that would
// return at once, until the shutdown deadline stops it.
func (t *task) spinGuard() {
	if t.w.stopped && t.toldStop {
		t.suspend(waitNone)
	}
	t.toldStop = t.toldStop || t.w.stopped
}

// wake queues t to run if it waits for any event in ev.
func (t *task) wake(ev uint8) {
	if t == nil || t.done || t.queued || t.waiting&ev == 0 {
		return
	}
	t.queued = true
	t.w.runq = append(t.w.runq, t)
}

// start queues a new task for its first run.
func (t *task) start() {
	t.waiting = waitRecv
	t.wake(waitRecv)
}

// resume runs t until it suspends or returns.
func (w *worker) resume(t *task) {
	t.queued = false
	if t.done {
		return
	}
	// What a task may need to allocate on its first deadline is made
	// here, on the worker's stack: a task's has no room (conn.timers).
	if w.timersLow() {
		w.stockTimers()
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
	for _, c := range t.owned {
		if c.lent >= 0 {
			c.spillLent()
		}
	}
}

// step switches into a task through next (or stop) and reports whether it
// is still alive. curG names the running coroutine for the ownership
// check while it runs; a task that Goexited surfaces here as a
// taskGoexited panic and counts as ended. Each step is a task run for
// the watchdog's progress marks (a resume, or an end that runs the
// task's deferred calls).
func (w *worker) step(next func() (struct{}, bool)) (alive bool) {
	w.progress()
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

// taskDone releases what an ended task held: its connections close (after
// their queued sends drain), its timer is disarmed, joiners wake.
func (w *worker) taskDone(t *task) {
	t.done = true
	if t.sleepN != nil {
		w.endSleep(t) // stopped while sleeping
	}
	for i, c := range t.owned {
		if c.lent >= 0 {
			c.spillLent()
		}
		c.task = nil
		c.requestClose()
		c.maybeFree()
		t.owned[i] = nil
	}
	t.owned = t.owned[:0]
	if t.join != nil {
		for i, j := range t.join.joiners {
			j.wake(waitJoin)
			t.join.joiners[i] = nil
		}
		t.join.joiners = nil
	}
	w.dropTask(t)
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
	t.setResult(ErrAborted) // stopped before it ever ran, or while it ran on
	w.taskDone(t)
}

// own adds c to the connections t drives.
func (t *task) own(c *conn) {
	c.task = t
	t.owned = append(t.owned, c)
}
