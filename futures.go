package ringline

import (
	"errors"
	"slices"
	"time"
)

// TaskCtx is what a task can do on its worker besides using connections:
// wait for time, start and join other tasks, connect out, ask the runtime
// to shut down. It is a small value naming the worker (copy it freely); its
// methods act on the task that calls them, which must be a task of that
// worker: off the worker they return ErrNotInWorker, and on the worker
// outside any task ErrNotInTask.
//
// Go has no goroutine-local executor, so a task reaches its TaskCtx from
// what it was given: a connection's task through ConnCtx.Task, a spawned or
// posted task and a start task as their argument.
type TaskCtx struct {
	w *worker
}

// Task returns the TaskCtx of the connection's worker, for the task that
// drives the connection (or any task of that worker). Safe from any
// goroutine; using the result is not.
func (c ConnCtx) Task() TaskCtx { return TaskCtx{w: c.w} }

// WorkerID returns the worker's index. Safe from any goroutine.
func (t TaskCtx) WorkerID() int {
	if t.w == nil {
		return -1
	}
	return t.w.id
}

// cur returns the calling task, or why there is none.
func (t TaskCtx) cur() (*task, error) {
	w := t.w
	if w == nil {
		return nil, ErrNotInWorker
	}
	if !w.onWorker() {
		w.foreignCall("TaskCtx")
		return nil, ErrNotInWorker
	}
	if w.cur == nil {
		return nil, ErrNotInTask
	}
	return w.cur, nil
}

var (
	// ErrAborted is how a task stopped by JoinHandle.Abort (or by the
	// runtime's shutdown) ends, as Join reports it.
	ErrAborted = errors.New("ringline: task aborted")
	// ErrGoexit is how a task that called runtime.Goexit ends, as Join
	// reports it.
	ErrGoexit = errors.New("ringline: task called runtime.Goexit")
	// ErrTimerStopped is what Timer.Await returns for a timer stopped
	// before it fired.
	ErrTimerStopped = errors.New("ringline: timer stopped")
	// ErrOtherWorker is returned by Select and JoinAll given a future of
	// another worker: a task can wait only for what its own worker
	// completes.
	ErrOtherWorker = errors.New("ringline: future belongs to another worker")
)

// Sleep suspends the calling task for d. Only the timer wakes it, or the
// runtime's shutdown, which ends the sleep early with ErrShutdown so the
// task can wind down. It returns ErrNotInTask or ErrNotInWorker when
// called outside a task of the worker, and panics inside a parse closure,
// like any suspension.
func (t TaskCtx) Sleep(d time.Duration) error {
	cur, err := t.cur()
	if err != nil {
		return err
	}
	return cur.sleepUntil(addClock(cur.w.now(), d))
}

// SleepUntil suspends the calling task until the wall clock reaches at
// (measured on the monotonic clock when at came from time.Now).
func (t TaskCtx) SleepUntil(at time.Time) error {
	cur, err := t.cur()
	if err != nil {
		return err
	}
	return cur.sleepUntil(cur.w.clockAt(at))
}

func (t *task) sleepUntil(at int64) error {
	w := t.w
	if t.sleepN != nil {
		// A Sleep that did not end (its suspension panicked: refused in a
		// parse closure, or the task was stopped and sleeps again while
		// unwinding).
		w.endSleep(t)
	}
	n := w.takeTimer()
	n.pooled = false // back to the pool by endSleep, not when it fires
	n.task = t
	t.sleepN = n
	w.timers.set(&n.timerNode, at)
	for !n.fired {
		if t.tellStop() {
			w.endSleep(t)
			return ErrShutdown
		}
		t.suspend(waitTimer)
	}
	w.endSleep(t)
	return nil
}

// endSleep disarms the task's sleep timer and returns it to the pool.
// The node's gen stays: a Sleep is not a use of the node a Timer handle
// could name, so it does not age the outcomes Timer remembers.
func (w *worker) endSleep(t *task) {
	n := t.sleepN
	t.sleepN = nil
	w.timers.remove(&n.timerNode)
	n.pooled = true
	n.task = nil
	w.putTimer(n)
}

// Spawn starts f as a new task on the caller's worker and returns a handle
// to join or abort it. The task is not tied to a connection; it runs from
// the loop's next turn, interleaved with the others, under the same rule
// (it must not block). Its panic is logged, counted and reported by Join,
// never re-raised. At shutdown it is stopped like any task. Spawn may be
// called from a task, a start task or the handler factory of the worker.
func (t TaskCtx) Spawn(f func(TaskCtx)) (JoinHandle, error) {
	w := t.w
	if w == nil {
		return JoinHandle{}, ErrNotInWorker
	}
	if !w.onWorker() {
		w.foreignCall("TaskCtx.Spawn")
		return JoinHandle{}, ErrNotInWorker
	}
	if w.stopped {
		return JoinHandle{}, ErrClosed
	}
	nt := w.spawn(f) // queued, not run yet
	nt.join = new(joinState)
	return JoinHandle{t: nt}, nil
}

// spawn makes and queues a task running f; on the worker goroutine.
func (w *worker) spawn(f func(TaskCtx)) *task {
	tc := TaskCtx{w: w}
	nt := w.newTask(nil, func() { f(tc) })
	w.addTask(nt)
	nt.start()
	return nt
}

// JoinHandle refers to a spawned task. The zero JoinHandle is already
// ended (Join returns nil).
type JoinHandle struct {
	t *task
}

// Join suspends the calling task until the joined task has ended and
// returns how it ended: nil when it returned, a *PanicError when it
// panicked, ErrAborted when it was aborted or stopped at shutdown,
// ErrGoexit when it called runtime.Goexit. It must be called from a task
// of the same worker (ErrNotInWorker otherwise); any number of tasks may
// join the same one. At shutdown a Join still waiting returns
// ErrShutdown (once; see Select).
func (h JoinHandle) Join() error {
	if h.t == nil {
		return nil
	}
	_, err := waitOne(h)
	if err != nil {
		return err
	}
	return h.t.join.result
}

// Done reports whether the task has ended. On the task's worker only
// (false elsewhere).
func (h JoinHandle) Done() bool {
	return h.t == nil || (h.t.w.onWorker() && h.t.done)
}

// Abort stops the task: a suspended task is stopped at the loop's next
// turn (its deferred calls run), a running one (the caller aborting
// itself) at its next suspension. Its connections close. Join then
// returns ErrAborted. Aborting an ended task does nothing. On the task's
// worker only (ErrNotInWorker elsewhere).
func (h JoinHandle) Abort() error {
	if h.t == nil {
		return nil
	}
	w := h.t.w
	if !w.onWorker() {
		w.foreignCall("JoinHandle.Abort")
		return ErrNotInWorker
	}
	if h.t.done || h.t.abort {
		return nil
	}
	h.t.abort = true
	if h.t != w.cur {
		w.aborts = append(w.aborts, h.t)
	}
	return nil
}

func (h JoinHandle) owner() *worker {
	if h.t == nil {
		return nil
	}
	return h.t.w
}

func (h JoinHandle) poll(t *task) (bool, uint8) {
	if h.t == nil || h.t.done {
		return true, 0
	}
	if h.t == t {
		return true, 0 // joining oneself: Join would never return
	}
	h.t.join.joiners = addWaiter(h.t.join.joiners, t)
	return false, waitJoin
}

func (h JoinHandle) drop(t *task) {
	if h.t != nil {
		h.t.join.joiners = removeWaiter(h.t.join.joiners, t)
	}
}

// addWaiter adds t to a waiter list once, dropping tasks that have ended
// on the way (so a list never outgrows the tasks that wait).
func addWaiter(ws []*task, t *task) []*task {
	found := false
	n := 0
	for _, x := range ws {
		if x.done {
			continue
		}
		if x == t {
			found = true
		}
		ws[n] = x
		n++
	}
	clear(ws[n:])
	ws = ws[:n]
	if !found {
		ws = append(ws, t)
	}
	return ws
}

// removeWaiter removes t from a waiter list.
func removeWaiter(ws []*task, t *task) []*task {
	for i, x := range ws {
		if x == t {
			copy(ws[i:], ws[i+1:])
			ws[len(ws)-1] = nil
			return ws[:len(ws)-1]
		}
	}
	return ws
}

// Future is something a task can wait for: a SendFuture, a Timer, a
// JoinHandle, a ConnectFuture, a Mailbox's Ready, a connection's
// Readable. Each has its own Await; Select waits for the first of several,
// JoinAll for all of them. Every future belongs to one worker and can be
// waited for only by tasks of that worker.
type Future interface {
	// poll reports whether the future has resolved; when it has not, it
	// arranges for t to be woken by an event in the returned mask when it
	// may have.
	poll(t *task) (ready bool, mask uint8)
	// drop undoes what poll arranged for t (the wait is over), so waiter
	// lists hold only tasks that still wait.
	drop(t *task)
	owner() *worker
}

// Select suspends the calling task until one of fs has resolved and
// returns its index (the lowest, when several have). The others stay
// valid: select again, or await them one by one. It returns ErrOtherWorker
// for a future of another worker, ErrNotInWorker or ErrNotInTask when
// called outside a task of their worker; nil futures are ignored.
//
// A task suspended in Select is woken only by events of the futures it
// waits for. At shutdown, the first Select (or Sleep, or JoinAll) a task
// is in or makes returns ErrShutdown, so the task can wind down; later
// ones wait normally until Config.ShutdownTimeout stops the task.
func Select(fs ...Future) (int, error) {
	t, err := waitingTask(fs)
	if err != nil {
		return -1, err
	}
	if t == nil {
		// No future has a worker: all are nil or zero values, which are
		// resolved.
		for i, f := range fs {
			if f != nil {
				return i, nil
			}
		}
		return -1, nil
	}
	defer dropAll(fs, t)
	for {
		var mask uint8
		for i, f := range fs {
			if f == nil {
				continue
			}
			ready, m := f.poll(t)
			if ready {
				return i, nil
			}
			mask |= m
		}
		if t.tellStop() {
			return -1, ErrShutdown
		}
		t.suspend(mask)
	}
}

// dropAll ends t's registrations with fs.
func dropAll(fs []Future, t *task) {
	for _, f := range fs {
		if f != nil {
			f.drop(t)
		}
	}
}

// JoinAll suspends the calling task until every one of fs has resolved
// (it does not collect their results: await each, which then returns at
// once). Errors are Select's.
func JoinAll(fs ...Future) error {
	t, err := waitingTask(fs)
	if err != nil || t == nil {
		return err
	}
	defer dropAll(fs, t)
	for {
		var mask uint8
		all := true
		for _, f := range fs {
			if f == nil {
				continue
			}
			if ready, m := f.poll(t); !ready {
				all = false
				mask |= m
			}
		}
		if all {
			return nil
		}
		if t.tellStop() {
			return ErrShutdown
		}
		t.suspend(mask)
	}
}

// waitOne is Select of one future.
func waitOne(f Future) (int, error) { return Select(f) }

// waitingTask checks that the caller is a task of the futures' worker.
func waitingTask(fs []Future) (*task, error) {
	var w *worker
	for _, f := range fs {
		if f == nil {
			continue
		}
		fw := f.owner()
		if fw == nil {
			continue
		}
		if w == nil {
			w = fw
		} else if fw != w {
			return nil, ErrOtherWorker
		}
	}
	if w == nil {
		// Only resolved or nil futures: nothing to wait for, but the
		// caller must still be somewhere a wait is legal. With no
		// worker to check against, return at once.
		return nil, nil
	}
	if !w.onWorker() {
		w.foreignCall("Select")
		return nil, ErrNotInWorker
	}
	if w.cur == nil {
		return nil, ErrNotInTask
	}
	return w.cur, nil
}

// Starter is an optional interface of an AsyncEventHandler. When the
// handler has it, OnStart runs once per worker as the worker's start task,
// from the worker's first loop turn (alongside any accepts). A runtime
// launched without Bind has no listener: its start tasks are how it does
// anything (a load generator, a pure client). OnStart may return at once;
// what it spawned keeps running.
type Starter interface {
	OnStart(t TaskCtx)
}

// Readable returns a future that resolves once the connection has unread
// bytes, has reached EOF or failed, or its read deadline has passed: then
// WithData returns without waiting. Only the connection's owning task may
// wait for it (for any other task it is resolved at once, and WithData
// returns 0 there). It lets a task wait for data and something else at
// once: Select(c.Readable(), timer).
func (c ConnCtx) Readable() Future { return readable{c} }

type readable struct{ c ConnCtx }

func (r readable) owner() *worker { return r.c.w }

func (r readable) drop(*task) {}

func (r readable) poll(t *task) (bool, uint8) {
	cn := r.c.get()
	if cn == nil || cn.task != t || cn.buffered() > 0 || cn.eof || cn.closeWanted || cn.state != connOpen {
		return true, 0
	}
	if cn.sink != nil && cn.sinkN > 0 {
		return true, 0
	}
	if cn.readExpired() {
		return true, 0
	}
	cn.resumeRecv()
	return false, waitRecv
}

// Timer is a timer future from TaskCtx.After: it resolves when its
// duration has passed. Await it, Select on it, or Stop it. Timers come from
// a per-worker pool: After allocates nothing once the pool has grown.
type Timer struct {
	w   *worker
	n   *pooledTimer
	gen uint32
}

// After returns a timer that fires d from now. It must be called from a
// task (or the handler factory) of the worker; off the worker it returns
// the zero Timer, which Await reports as ErrNotInWorker.
func (t TaskCtx) After(d time.Duration) Timer {
	w := t.w
	if w == nil || !w.onWorker() {
		if w != nil {
			w.foreignCall("TaskCtx.After")
		}
		return Timer{}
	}
	n := w.takeTimer()
	w.timers.set(&n.timerNode, addClock(w.now(), d))
	return Timer{w: w, n: n, gen: n.gen}
}

// takeTimer takes a disarmed node from the pool; the loop keeps the pool
// stocked before a task resumes (stockTimers), so a task does not
// allocate one on its stack.
func (w *worker) takeTimer() *pooledTimer {
	n, ok := pop(&w.timerPool)
	if !ok {
		// The stock ran out within one run of a task: allocated here,
		// on the task's stack.
		n = &pooledTimer{timerNode: timerNode{kind: tmTask, pooled: true}}
		w.timerNodes++
		w.timerPool = slices.Grow(w.timerPool, w.timerNodes)
	}
	n.fired = false
	n.task = nil
	return n
}

// releaseTimer ends the current use of a pooled node (fired or stopped)
// and returns it to the pool.
func (w *worker) releaseTimer(n *pooledTimer, stopped bool) {
	bit := uint64(1) << (n.gen % 64)
	if stopped {
		n.stopped |= bit
	} else {
		n.stopped &^= bit
	}
	n.gen++
	n.task = nil
	w.putTimer(n)
}

// putTimer returns a disarmed node to the pool, whose slice has room for
// every node (stockTimers, takeTimer), so this never allocates.
func (w *worker) putTimer(n *pooledTimer) { w.timerPool = append(w.timerPool, n) }

// ended reports whether the timer's use is over, and whether by Stop.
func (tm Timer) ended() (over, stopped bool) {
	if tm.n.gen == tm.gen {
		return false, false
	}
	if tm.n.gen-tm.gen > 64 {
		return true, false // long recycled: its outcome is forgotten
	}
	return true, tm.n.stopped&(uint64(1)<<(tm.gen%64)) != 0
}

// Await suspends the calling task until the timer fires and returns nil,
// or ErrTimerStopped if it was stopped first. Only one task may wait on a
// timer at a time. A Timer's outcome is remembered while its pooled node
// has been reused fewer than 64 times since: awaiting a stopped timer much
// later than that reports nil.
func (tm Timer) Await() error {
	if tm.w == nil {
		return ErrNotInWorker
	}
	if _, err := waitOne(tm); err != nil {
		return err
	}
	if _, stopped := tm.ended(); stopped {
		return ErrTimerStopped
	}
	return nil
}

// Stop cancels the timer if it has not fired and reports whether it did;
// a task waiting on it wakes with ErrTimerStopped. On the timer's worker
// only (false elsewhere).
func (tm Timer) Stop() bool {
	if tm.w == nil || !tm.w.onWorker() {
		return false
	}
	if over, _ := tm.ended(); over {
		return false
	}
	waiter := tm.n.task
	tm.w.timers.remove(&tm.n.timerNode)
	tm.w.releaseTimer(tm.n, true)
	if waiter != nil {
		waiter.wake(waitTimer)
	}
	return true
}

func (tm Timer) owner() *worker { return tm.w }

func (tm Timer) drop(t *task) {
	if tm.w != nil && tm.n.gen == tm.gen && tm.n.task == t {
		tm.n.task = nil
	}
}

func (tm Timer) poll(t *task) (bool, uint8) {
	if tm.w == nil {
		return true, 0
	}
	if over, _ := tm.ended(); over {
		return true, 0
	}
	tm.n.task = t
	return false, waitTimer
}
