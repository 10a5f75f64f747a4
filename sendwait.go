package ringline

// Waiting for send pool space: SendWait suspends the calling task until
// the worker's send pool (and the connection's Config.MaxSendQueue) has
// room for its bytes. Waiters are served first come, first served across
// all the connections of the worker: slots freed by completed sends are
// earmarked for the oldest waiter (sendPool.held) until it has all it
// needs, so a later waiter cannot take its turn, and sends that do not
// wait share only the pool's last eighth with it (sendPool.reserve): a
// large waiter does not stop the worker's other connections.

// waitPool is the task wait bit (see task.go's waitFor masks) of a task
// waiting in SendWait; only servePoolWaiters wakes it. It is kept clear of
// the bits task.go defines.
const waitPool uint8 = 1 << 7

// poolWaiter is one task waiting in SendWait.
type poolWaiter struct {
	t       *task
	cn      *conn
	gen     uint32
	n       int // bytes it wants to queue
	need    int // fresh slots those need beyond the connection's tail room
	granted int // slots earmarked for it
	woken   bool
}

// SendWait queues a copy of b like SendNowait, but when the worker's send
// pool has no room for b, or b would take this connection past
// Config.MaxSendQueue, it suspends the calling task until there is room
// instead of failing. Tasks waiting on the same worker are served in the
// order they started waiting, whatever their connection (sends that do
// not wait are not held up by a large waiter: the last eighth of the pool
// stays theirs until the waiter can go), and each is woken only when the slots it needs are free (and set aside for it) and
// its connection's queue has room, or when the wait must end: the
// connection it sends on closes or fails (SendWait returns ErrClosed or
// Err's cause) or goes stale (ErrStale: it closed and its slot was
// released before the waiting task ran again, which happens when the
// waiter is not the connection's own task and that task has returned),
// its write deadline passes (an error satisfying errors.Is(err,
// os.ErrDeadlineExceeded)), or the runtime shuts down (ErrShutdown, once;
// see Runtime.Shutdown). Whatever the error, nothing of b was queued.
//
// It returns nil once b is queued, not when it is sent (await a Send's
// future for that). A b that can never fit fails at once: larger than the
// whole pool with ErrSendPoolExhausted, larger than Config.MaxSendQueue
// with ErrSendQueueFull. It must be called from a task of the connection's
// worker (ErrNotInTask on the loop itself, e.g. from a Ref release
// callback, when it would have to wait) and, since it may suspend, never
// from inside a parse closure: there it panics, every time, which closes
// the task's connection and logs the panic.
func (c ConnCtx) SendWait(b []byte) error {
	cn, err := c.own("SendWait")
	if err != nil {
		return err
	}
	if err := cn.sendable(); err != nil {
		return err
	}
	if len(b) == 0 {
		return nil
	}
	w := cn.w
	if len(w.parsing) > 0 {
		// Every time, not only when it would wait: a misuse that shows
		// only under load is found late.
		panic("ringline: SendWait may suspend, so it must not be called inside a WithData/WithBytes/TryWithData closure: use SendNowait there, or SendWait after the closure returns")
	}
	if len(w.pw) == 0 {
		// Nobody waits ahead: a send that fits goes now.
		if err := cn.trySend(b); err != ErrSendPoolExhausted && err != ErrSendQueueFull {
			return err
		}
	}
	t := w.cur
	if t == nil {
		return ErrNotInTask
	}
	wire := cn.wireLen(len(b)) // what b takes in the pool: more on TLS (its records)
	if w.pool.slotsFor(wire) > cap(w.pool.free) {
		w.st.poolExhausted++
		return ErrSendPoolExhausted
	}
	if wire > w.cfg.MaxSendQueue {
		w.st.sendQueueFull++
		return ErrSendQueueFull
	}
	if err := cn.sendWaitEnds(t); err != nil {
		return err
	}
	w.st.sendWaits++
	need := w.pool.slotsFor(max(wire-cn.copyRoom(), 0))
	w.pw = append(w.pw, poolWaiter{t: t, cn: cn, gen: cn.gen, n: wire, need: need})
	for {
		t.suspend(waitPool)
		i := w.waiterIndex(t)
		wt := &w.pw[i]
		// The earmarked slots become usable by this send only; if it
		// still cannot go, they are earmarked again below, so the waiter
		// keeps what it was granted as well as its place.
		granted := wt.granted
		w.pool.held -= granted
		wt.granted = 0
		if c.get() != cn {
			// The connection closed and its slot was released while this
			// task waited (it may hold a new connection already): the
			// handle is stale, and says so as any method on it would now.
			w.removeWaiter(i)
			return ErrStale
		}
		if err := cn.sendWaitEnds(t); err != nil {
			w.removeWaiter(i)
			return err
		}
		err := cn.trySend(b)
		if err != ErrSendPoolExhausted && err != ErrSendQueueFull {
			w.removeWaiter(i)
			return err
		}
		// Someone else's send on this connection changed its tail or
		// filled its queue since the grant: wait again, keeping the place
		// in line. The slots (a refused send took none) stay earmarked
		// only while the pool is what it waits for: a waiter blocked by
		// its own connection's queue may wait for a peer that never
		// reads, and must not hold slots the others could use meanwhile.
		wt.need = w.pool.slotsFor(max(wire-cn.copyRoom(), 0))
		if err == ErrSendPoolExhausted {
			wt.granted = min(granted, wt.need)
			w.pool.held += wt.granted
		}
		wt.woken = false
	}
}

// sendWaitEnds says why a SendWait on cn must stop waiting, or nil.
func (cn *conn) sendWaitEnds(t *task) error {
	if err := cn.sendable(); err != nil {
		return err
	}
	if cn.writeExpired() {
		return errWriteDeadline
	}
	if t.tellStop() {
		return ErrShutdown
	}
	return nil
}

func (w *worker) waiterIndex(t *task) int {
	for i := range w.pw {
		if w.pw[i].t == t {
			return i
		}
	}
	panic("ringline: SendWait waiter lost")
}

func (w *worker) removeWaiter(i int) {
	copy(w.pw[i:], w.pw[i+1:])
	w.pw[len(w.pw)-1] = poolWaiter{}
	w.pw = w.pw[:len(w.pw)-1]
}

// servePoolWaiters earmarks free slots for waiters in order and wakes
// those that can go: the oldest waiter blocked on the pool stops the line
// (later ones wait behind it), while one blocked only by its own
// connection's queue cap keeps its place without holding up the others.
// Earmarks never take the pool's last eighth (poolReserve): a waiter that
// needs more than is free fills up from what frees beyond it, so the
// worker's other connections can still queue small sends meanwhile
// instead of failing with free slots in the pool; a waiter whose whole
// need is free now takes the reserve too and goes.
// Waiters whose connection is gone, or whose write deadline passed, are
// woken to return their error, and those of tasks that ended (a shutdown
// stopped them) are dropped. Shutdown wakes every task itself.
func (w *worker) servePoolWaiters() {
	if len(w.pw) == 0 {
		return
	}
	p := w.pool
	avail := p.avail()
	blocked := false
	j := 0
	for i := range w.pw {
		wt := w.pw[i]
		if wt.t.done {
			p.held -= wt.granted
			continue
		}
		w.pw[j] = wt
		pw := &w.pw[j]
		j++
		if pw.woken {
			continue
		}
		cn := pw.cn
		if cn.gen != pw.gen || cn.sendable() != nil || cn.writeExpired() {
			pw.woken = true
			pw.t.wake(waitPool)
			continue
		}
		if cn.queueRoom(pw.n) != nil {
			// Its own queue is full: it may wait for a peer that never
			// reads, so it holds no slots meanwhile.
			p.held -= pw.granted
			avail += pw.granted
			pw.granted = 0
			continue
		}
		if blocked {
			continue
		}
		take := pw.need - pw.granted
		if take > avail {
			take = max(avail-p.reserve(), 0)
		}
		pw.granted += take
		p.held += take
		avail -= take
		if pw.granted >= pw.need {
			pw.woken = true
			pw.t.wake(waitPool)
		} else {
			blocked = true
		}
	}
	clear(w.pw[j:])
	w.pw = w.pw[:j]
}
