package ringline

import (
	"errors"
	"sync"
)

// The bridge: the only ways in from ordinary goroutines. Each hands the
// worker work through its post queue and wakes it (one eventfd write for a
// burst: wakes coalesce), so nothing outside the worker ever touches its
// state. All are safe from any goroutine; after shutdown they return
// ErrClosed and never block.

var (
	// ErrMailboxFull is returned by Mailbox.Put when the mailbox holds its
	// capacity of values: nothing was put. It is back-pressure without
	// blocking: retry later, drop, or shed load.
	ErrMailboxFull = errors.New("ringline: mailbox full")
	// ErrWouldBlock is returned by Runtime.Send when called from a worker's
	// goroutine (a task), where waiting for another worker would stall
	// every connection of the caller's: use Runtime.Post from a task.
	ErrWouldBlock = errors.New("ringline: Runtime.Send would block a worker (from a task, use Runtime.Post)")
	// ErrNoWorker is returned for a worker index out of range.
	ErrNoWorker = errors.New("ringline: no such worker")
)

// Post runs f as a new task on worker workerID (like TaskCtx.Spawn from
// there). It returns at once: nil when f was queued, ErrClosed once the
// runtime is shutting down, ErrNoWorker for a bad index. A function queued
// just before the worker begins to stop may not run. Posts from one
// goroutine start in the order they were made; a burst of posts costs a
// handful of wake-ups, not one each.
func (rt *Runtime) Post(workerID int, f func(TaskCtx)) error {
	w, err := rt.worker(workerID)
	if err != nil {
		return err
	}
	return w.post(func() {
		if !w.stopped {
			w.spawn(f)
		}
	})
}

func (rt *Runtime) worker(id int) (*worker, error) {
	if id < 0 || id >= len(rt.workers) {
		return nil, ErrNoWorker
	}
	return rt.workers[id], nil
}

// onAnyWorker reports whether the caller runs on one of the runtime's
// workers.
func (rt *Runtime) onAnyWorker() bool {
	for _, w := range rt.workers {
		if w.onWorker() {
			return true
		}
	}
	return false
}

// Send queues a copy of b on the connection tok names (its Worker, Index
// and Generation) and returns once the worker has queued it or refused:
// the error is SendNowait's (ErrStale for a token whose connection is
// gone, ErrSendPoolExhausted, ErrSendQueueFull, the connection's failure),
// or ErrClosed once the runtime is shutting down. b may be reused when it
// returns. It blocks the calling goroutine for a round trip to the worker,
// so from a task it returns ErrWouldBlock: a task reaches another worker's
// connection with Post.
func (rt *Runtime) Send(tok ConnToken, b []byte) error {
	w, err := rt.worker(int(tok.Worker))
	if err != nil {
		return err
	}
	if rt.onAnyWorker() {
		return ErrWouldBlock
	}
	cp := append([]byte(nil), b...)
	reply := make(chan error, 1)
	err = w.post(func() {
		if w.stopped {
			reply <- ErrClosed
			return
		}
		c := ConnCtx{w: w, idx: tok.Index, gen: tok.Generation}
		cn := c.get()
		if cn == nil {
			reply <- ErrStale
			return
		}
		if err := cn.sendable(); err != nil {
			reply <- err
			return
		}
		reply <- cn.queueSend(cp)
	})
	if err != nil {
		return err
	}
	return <-reply
}

// Mailbox is a bounded queue of values from any goroutine to the tasks of
// one worker: Put never blocks (ErrMailboxFull when full), a task Recv's
// the next value, suspending until there is one. Several tasks may receive
// from one mailbox; each value goes to one of them. Values are received in
// the order they were put.
type Mailbox[T any] struct {
	w *worker

	mu     sync.Mutex
	buf    []T
	head   int
	n      int
	closed bool
	// notify: a wake for the receivers is on its way (one per burst).
	notify bool
	// notifyFn is the posted wake, made once so Put allocates nothing.
	notifyFn func()

	waiters []*task // worker goroutine only
}

// NewMailbox makes a mailbox of capacity values (at least 1) whose
// receivers are tasks of worker workerID.
func NewMailbox[T any](rt *Runtime, workerID, capacity int) (*Mailbox[T], error) {
	w, err := rt.worker(workerID)
	if err != nil {
		return nil, err
	}
	m := &Mailbox[T]{w: w, buf: make([]T, max(capacity, 1))}
	m.notifyFn = m.wakeReceivers
	return m, nil
}

// Put adds v for a receiver. It never blocks: it returns ErrMailboxFull
// when the mailbox is full, ErrClosed after Close or once the runtime is
// shutting down. Safe from any goroutine.
func (m *Mailbox[T]) Put(v T) error {
	m.mu.Lock()
	if m.closed || m.w.stopping.Load() {
		m.mu.Unlock()
		return ErrClosed
	}
	if m.n == len(m.buf) {
		m.mu.Unlock()
		return ErrMailboxFull
	}
	if !m.notify {
		// The wake-up is posted before the value is committed, under the
		// lock: a post refused because the worker just stopped leaves
		// nothing to take back (taking it back after unlocking could take
		// another Put's value).
		if err := m.w.post(m.notifyFn); err != nil {
			m.mu.Unlock()
			return err
		}
		m.notify = true
	}
	m.buf[(m.head+m.n)%len(m.buf)] = v
	m.n++
	m.mu.Unlock()
	return nil
}

// Close stops the mailbox: Put returns ErrClosed, receivers get the values
// still in it, then ErrClosed. Safe from any goroutine.
func (m *Mailbox[T]) Close() {
	m.mu.Lock()
	m.closed = true
	post := !m.notify
	m.notify = true
	m.mu.Unlock()
	if post {
		_ = m.w.post(m.notifyFn)
	}
}

// wakeReceivers runs on the worker when values (or a close) arrived.
func (m *Mailbox[T]) wakeReceivers() {
	m.mu.Lock()
	m.notify = false
	m.mu.Unlock()
	// Each waiter re-registers if it still finds nothing.
	for i, t := range m.waiters {
		t.wake(waitMail)
		m.waiters[i] = nil
	}
	m.waiters = m.waiters[:0]
}

// TryRecv takes the next value without waiting; false when there is none.
// Safe from any goroutine.
func (m *Mailbox[T]) TryRecv() (T, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.take()
}

func (m *Mailbox[T]) take() (T, bool) {
	var zero T
	if m.n == 0 {
		return zero, false
	}
	v := m.buf[m.head]
	m.buf[m.head] = zero
	m.head = (m.head + 1) % len(m.buf)
	m.n--
	return v, true
}

// Recv suspends the calling task until a value is there and returns it.
// It returns ErrClosed once the mailbox is closed and empty (or the
// runtime shuts down), ErrNotInWorker or ErrNotInTask when not called from
// a task of the mailbox's worker.
func (m *Mailbox[T]) Recv() (T, error) {
	var zero T
	if !m.w.onWorker() {
		m.w.foreignCall("Mailbox.Recv")
		return zero, ErrNotInWorker
	}
	t := m.w.cur
	if t == nil {
		return zero, ErrNotInTask
	}
	for {
		m.mu.Lock()
		v, ok := m.take()
		closed := m.closed
		m.mu.Unlock()
		if ok {
			m.waiters = removeWaiter(m.waiters, t)
			return v, nil
		}
		if closed || m.w.stopped {
			m.waiters = removeWaiter(m.waiters, t)
			t.spinGuard()
			return zero, ErrClosed
		}
		m.await(t)
		t.suspend(waitMail)
	}
}

// Ready returns a future that resolves when the mailbox has a value (or
// is closed), for Select; then TryRecv or Recv takes it without waiting.
func (m *Mailbox[T]) Ready() Future { return mailReady[T]{m} }

type mailReady[T any] struct{ m *Mailbox[T] }

func (r mailReady[T]) owner() *worker { return r.m.w }

func (r mailReady[T]) drop(t *task) { r.m.waiters = removeWaiter(r.m.waiters, t) }

func (r mailReady[T]) poll(t *task) (bool, uint8) {
	m := r.m
	m.mu.Lock()
	ready := m.n > 0 || m.closed
	m.mu.Unlock()
	if ready || m.w.stopped {
		return true, 0
	}
	m.await(t)
	return false, waitMail
}

func (m *Mailbox[T]) await(t *task) { m.waiters = addWaiter(m.waiters, t) }
