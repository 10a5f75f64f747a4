package ringline

import (
	"errors"
	"fmt"
	"iter"
	"runtime"
	"sync"
	"syscall"
	"unsafe"

	"github.com/ringline-go/ringline/internal/gid"
)

// Scatter-gather and zero-copy sends: SendParts (copied and referenced
// parts in one batch), ForwardRecvBuf (a received buffer sent as it is),
// and zero-copy sends on io_uring (SEND_ZC / SENDMSG_ZC) above
// Config.SendZCThreshold. All of them go through the connection's one send
// queue (sendpool.go), so bytes reach the peer in call order whatever mix
// of sends is used, with at most one send in flight per connection.

// Limits of one SendParts batch. A batch over any of them is refused whole
// with ErrSendPartsLimit: nothing is sent and every Ref's release is
// called.
const (
	// SendPartsMaxParts is the most parts (Copy and Ref calls with
	// bytes) one batch may have.
	SendPartsMaxParts = 64
	// SendPartsMaxRefs is the most Ref parts one batch may have.
	SendPartsMaxRefs = 32
	// SendPartsMaxRefBytes is the largest one Ref part may be. A batch's
	// bytes also count against Config.MaxSendQueue, so in practice the
	// lower of the two bounds a part, and a whole batch.
	SendPartsMaxRefBytes = 1 << 30
	// sendMaxConnRefs bounds the Ref parts one connection may have queued
	// or held; a batch past it is refused with ErrSendQueueFull.
	sendMaxConnRefs = 4096
)

var (
	// ErrSendPartsLimit is returned by SendBuilder.Submit and Send for a
	// batch over SendPartsMaxParts, SendPartsMaxRefs or
	// SendPartsMaxRefBytes. Nothing was sent; every Ref's release was
	// called.
	ErrSendPartsLimit = errors.New("ringline: SendParts batch over its limits (SendPartsMaxParts, SendPartsMaxRefs, SendPartsMaxRefBytes)")
	// ErrSendBuilderDone is returned by SendBuilder.Submit and Send on a
	// builder that was already submitted (call SendParts again for the
	// next batch).
	ErrSendBuilderDone = errors.New("ringline: SendBuilder already submitted; call SendParts for a new batch")
	// errBatchAbandoned is what an unsubmitted batch's parts meet when the
	// next SendParts on the connection (or its end) abandons it.
	errBatchAbandoned = errors.New("ringline: SendParts batch abandoned before Submit")
)

// sendState is the worker's share of the send path beyond the pool.
type sendState struct {
	// zcMin is the smallest send that goes zero-copy, 0 when zero copy
	// is off: not io_uring, disabled by Config.SendZCThreshold, or fallen
	// back (zcOff) because the kernel refused or copied.
	zcMin int
	zcOff bool
	// refs holds the caller memory of queued Ref parts: kept reachable
	// and pinned while the kernel may read it.
	refs    []sendRef
	refFree []uint32
	// relq are release callbacks due, run by runReleases from the loop
	// (never in the middle of a queue update); relq[:relHead] have run.
	relq    []func()
	relHead int
	// The coroutine release callbacks run in (runReleases): made on
	// first need, again after a callback ended it with runtime.Goexit.
	relNext func() (struct{}, bool)
	relStop func()
	relG    uintptr
	// bufHold counts, per provided buffer, the connections whose queued
	// or held segments forward it (conn.fwdHeld); bufDone says the
	// receive side is done with it too (it goes back to the ring when
	// both are). Allocated on the first forward.
	bufHold []uint32
	bufDone []bool
	// bufsHeld is how many provided buffers forwards hold (bufHold not
	// 0): out of the ring for as long as their sends take, which a peer
	// that does not read makes for ever (rearmParked).
	bufsHeld int
	// pw are the tasks waiting in SendWait, first come first served.
	pw []poolWaiter
	// [rbufLo, rbufHi) is the provided receive buffers' memory: what a
	// Ref must not leave the kernel to read later (recvMemory).
	rbufLo, rbufHi uintptr
}

// sendRef is one referenced part in the queue.
type sendRef struct {
	b       []byte
	release func()
	pin     runtime.Pinner
	inUse   bool
}

// fwdHold is a provided buffer that a connection's forwarded segments
// read, and how many of them do.
type fwdHold struct {
	bid  uint16
	segs uint32
}

// fwdSegsMax bounds the forwarded segments of one connection that may
// read one buffer at once; past it ForwardRecvBuf copies. Far beyond what
// a queue can hold (every segment is at least a byte of MaxSendQueue), it
// only keeps the count from wrapping.
const fwdSegsMax = 1 << 31

func (w *worker) setupSend() {
	if w.cfg.SendZCThreshold > 0 && w.be.kind() == IOUring {
		w.zcMin = w.cfg.SendZCThreshold
	}
	if w.cfg.BufferCount > 0 {
		w.rbufLo = uintptr(unsafe.Pointer(unsafe.SliceData(w.be.buffer(0))))
		w.rbufHi = w.rbufLo + uintptr(w.cfg.BufferCount)*uintptr(w.cfg.BufferSize)
	}
}

// recvMemory reports whether p overlaps memory the receive side reuses
// while a send may still read it: a provided receive buffer (lent to a
// WithData closure, it goes back to the ring when the closure is done
// with it and carries other connections' bytes next), or the accumulator
// of a connection whose WithData or TryWithData closure is running (its
// consumed bytes are overwritten by the ones that follow). Bytes shown to
// WithBytes are never overwritten and may be referenced.
func (w *worker) recvMemory(p []byte) bool {
	lo := uintptr(unsafe.Pointer(unsafe.SliceData(p)))
	hi := lo + uintptr(len(p))
	if lo < w.rbufHi && hi > w.rbufLo {
		return true
	}
	for _, pc := range w.parsing {
		if pc.accShared || cap(pc.acc) == 0 {
			continue
		}
		a := uintptr(unsafe.Pointer(unsafe.SliceData(pc.acc)))
		if lo < a+uintptr(cap(pc.acc)) && hi > a {
			return true
		}
	}
	return false
}

// serveSendWaits runs the release callbacks that are due and hands freed
// pool slots to SendWait callers.
func (w *worker) serveSendWaits() {
	w.runReleases()
	w.servePoolWaiters()
}

// newRef enters a Ref part into the worker's table. The memory is Go
// memory the kernel reads asynchronously, after this call and Submit have
// returned: the table keeps the slice, so the garbage collector keeps its
// array alive however the caller drops it, and the runtime.Pinner pins it,
// which is what guarantees that the collector neither moves nor frees an
// object while it is pinned (Go's heap objects do not move today; the
// pin keeps that a stated guarantee rather than an implementation
// detail). A slice of stack memory cannot get here: b is stored in the
// builder, so it escapes to the heap. Pinning costs no allocation once a
// table entry has been used.
func (w *worker) newRef(b []byte, release func()) uint32 {
	id, ok := pop(&w.refFree)
	if !ok {
		w.refs = append(w.refs, sendRef{})
		id = uint32(len(w.refs) - 1)
	}
	r := &w.refs[id]
	r.b, r.release, r.inUse = b, release, true
	r.pin.Pin(unsafe.SliceData(b))
	return id
}

// releaseRef unpins a Ref part the kernel is done with and queues its
// release callback.
func (w *worker) releaseRef(id uint32) {
	r := &w.refs[id]
	r.pin.Unpin()
	if r.release != nil {
		w.relq = append(w.relq, r.release)
	}
	r.b, r.release, r.inUse = nil, nil, false
	w.refFree = append(w.refFree, id)
}

// runReleases calls the release callbacks that are due, in order. They run
// on the worker, outside any task, between two queue updates; a callback
// may send (what it queues goes out this iteration), and its releases
// join the queue. They run in a coroutine of the worker's rather than on
// the loop's own goroutine, which a runtime.Goexit in one (t.FailNow or
// require.* in a test's callback) would end, the worker with it: a
// Goexit ends the coroutine instead, and the next callback runs in a new
// one. A switch into it costs about as much as a task's resume (80 ns),
// once per loop iteration that has releases due.
func (w *worker) runReleases() {
	for w.relHead < len(w.relq) {
		w.stepReleases()
	}
	clear(w.relq[:w.relHead])
	w.relq, w.relHead = w.relq[:0], 0
}

// releaseGoexited is what a release callback that called runtime.Goexit
// turns into (see taskGoexited): iter.Pull re-raises it on the loop,
// which recovers it.
type releaseGoexited struct{}

// stepReleases runs the release coroutine until the queue is done or a
// callback ended it with Goexit. While it runs it is the worker's running
// code for the ownership check (a callback may send), outside any task.
func (w *worker) stepReleases() {
	if w.relNext == nil {
		w.relNext, w.relStop = iter.Pull(w.releaseLoop)
		w.relG = 0
	}
	prev := w.curG.Load()
	defer func() {
		w.curG.Store(prev)
		if r := recover(); r != nil {
			if _, ok := r.(releaseGoexited); !ok {
				panic(r)
			}
			w.relNext, w.relStop = nil, nil
			w.log.Error("ringline: a SendBuilder.Ref release callback called runtime.Goexit (t.FailNow, require.*?); the other releases run, the worker goes on",
				"worker", w.id)
		}
	}()
	w.curG.Store(w.relG) // 0 before its first run, which sets it
	w.relNext()
}

// releaseLoop is the release coroutine: it runs the due callbacks and
// yields when none is left. A callback's runtime.Goexit cannot be stopped:
// it unwinds the coroutine, whose end turns it into releaseGoexited (as
// task.ended does for a task), whatever the callback recovered on the way.
func (w *worker) releaseLoop(yield func(struct{}) bool) {
	w.relG = gid.Get()
	w.curG.Store(w.relG)
	stopped := false
	defer func() {
		if !stopped {
			if r := recover(); r != nil {
				panic(r)
			}
			panic(releaseGoexited{})
		}
	}()
	for {
		for w.relHead < len(w.relq) {
			f := w.relq[w.relHead]
			w.relq[w.relHead] = nil
			w.relHead++
			w.progress()
			w.callRelease(f)
		}
		if !yield(struct{}{}) {
			stopped = true
			return
		}
	}
}

// stopReleases ends the release coroutine (at teardown, after the last
// releases ran).
func (w *worker) stopReleases() {
	if w.relStop != nil {
		w.relStop()
		w.relNext, w.relStop = nil, nil
	}
}

// callRelease runs a release callback; a panic in it is logged and does
// not stop the others. The worker's stopping of a task (taskKilled) goes
// on unwinding it, and a runtime.Goexit goes on too: in the release
// coroutine it ends the coroutine (releaseLoop), in a task (a refused
// batch's releases) the task, as anywhere in it.
func (w *worker) callRelease(f func()) {
	defer func() {
		switch r := recover().(type) {
		case nil:
		case taskKilled:
			panic(r)
		default:
			w.log.Error("ringline: a SendBuilder.Ref release callback panicked", "worker", w.id, "panic", fmt.Sprint(r))
		}
	}()
	f()
}

// leakedRefs keeps, for the life of the process, the references whose
// zero-copy notification had not come when their worker stopped: the
// kernel may still send from their pages (an orphaned socket), so their
// memory must be neither reused nor freed, and their pinners must stay
// reachable (an unreachable pinner with pinned objects is a fatal error).
var leakedRefs struct {
	sync.Mutex
	refs []sendRef
}

// releaseSendsAtStop runs at the worker's teardown, after its ring is
// gone: every reference still queued or held is released, so each release
// still runs exactly once, except those a zero-copy send read whose
// notification has not come. The kernel may still send from those (the
// shutdown reset their connections shortly before the deadline, which
// normally brings every notification, but a socket that was already
// closed, or a slow kernel, may not have let go): what the release
// callback or Go's allocator wrote there would reach the wire. They are
// kept pinned and reachable instead, their release never called, logged
// and counted (ZeroCopyRefsLeaked). Pool slots and provided buffers are
// unmapped memory by then, which the kernel's page references keep as
// they are.
func (w *worker) releaseSendsAtStop() {
	var inKernel []bool
	for _, cn := range w.conns {
		if cn == nil {
			continue
		}
		cn.abandonBatch()
		x := cn.sx
		if x == nil {
			continue // no zero-copy send ever, so no reference in the kernel
		}
		for _, segs := range [2][]sendSeg{cn.q[cn.qHead:], x.held[x.heldHead:]} {
			for i := range segs {
				if s := &segs[i]; s.kind == segRef && s.zc > x.zcBase {
					if inKernel == nil {
						inKernel = make([]bool, len(w.refs))
					}
					inKernel[s.id] = true
				}
			}
		}
	}
	leaked := 0
	for i := range w.refs {
		r := &w.refs[i]
		if !r.inUse {
			continue
		}
		if inKernel != nil && inKernel[i] {
			leakedRefs.Lock()
			leakedRefs.refs = append(leakedRefs.refs, sendRef{b: r.b, pin: r.pin})
			leakedRefs.Unlock()
			*r = sendRef{}
			leaked++
			continue
		}
		w.releaseRef(uint32(i))
	}
	if leaked > 0 {
		w.st.zcLeaked += uint64(leaked)
		w.log.Warn("ringline: references still read by zero-copy sends at shutdown are kept pinned and never released (the kernel may still send from them)",
			"worker", w.id, "references", leaked)
	}
	w.runReleases()
}

// zcRefused tells a zero-copy send the kernel or socket refused (nothing
// was sent) from a connection failure.
func zcRefused(res int32) bool {
	return res == -int32(syscall.EOPNOTSUPP) || res == -int32(syscall.EINVAL)
}

// zcFallback turns zero copy off for the worker: the kernel refused it,
// or copied the bytes anyway (loopback and veth deliveries, devices
// without scatter-gather), where zero copy costs more than a copied send.
func (w *worker) zcFallback(why string, errno syscall.Errno) {
	if w.zcOff {
		return
	}
	w.zcOff, w.zcMin = true, 0
	w.st.zcFallbacks++
	if errno != 0 {
		w.log.Info("ringline: zero-copy sends off for this worker; sending copies", "worker", w.id, "reason", why, "err", errno)
	} else {
		w.log.Info("ringline: zero-copy sends off for this worker; sending copies", "worker", w.id, "reason", why)
	}
}

// onZCNotif counts a zero-copy notification whose res says the kernel
// copied after all, and falls back.
func (w *worker) onZCNotif(res uint32) {
	if res&zcUsageCopied == 0 {
		return
	}
	w.st.zcCopied++
	if !w.cfg.zcKeepCopied {
		w.zcFallback("the kernel copied the zero-copy sends (loopback or a device without scatter-gather)", 0)
	}
}

// holdBuf takes a connection's hold on provided buffer bid.
func (w *worker) holdBuf(bid uint16) {
	if w.bufHold == nil {
		w.bufHold = make([]uint32, w.cfg.BufferCount)
		w.bufDone = make([]bool, w.cfg.BufferCount)
	}
	if w.bufHold[bid] == 0 {
		w.bufsHeld++
	}
	w.bufHold[bid]++
}

// heldBuf reports whether forwarded segments hold buffer bid.
func (w *worker) heldBuf(bid uint16) bool {
	return w.bufHold != nil && w.bufHold[bid] != 0
}

// holdRecycle is called by recycle: a forwarded buffer goes back to the
// ring only when its sends are done too. It reports whether the recycle
// is deferred.
func (w *worker) holdRecycle(bid uint16) bool {
	if !w.heldBuf(bid) {
		return false
	}
	w.bufDone[bid] = true
	return true
}

// unholdBuf drops a connection's hold; the buffer returns to the ring
// when no hold is left and the receive side is done with it.
func (w *worker) unholdBuf(bid uint16) {
	if w.bufHold[bid]--; w.bufHold[bid] != 0 {
		return
	}
	w.bufsHeld--
	if w.bufDone[bid] {
		w.bufDone[bid] = false
		w.recycle(bid)
	}
}

// fwdFind is the index of buffer bid in the connection's holds, or -1.
// The table has at most fwdPerConn entries, and the buffer forwarded last
// is at its end.
func (cn *conn) fwdFind(bid uint16) int {
	if cn.sx == nil {
		return -1
	}
	h := cn.sx.fwdHeld
	for i := len(h) - 1; i >= 0; i-- {
		if h[i].bid == bid {
			return i
		}
	}
	return -1
}

// fwdHolds is how many provided buffers the connection holds.
func (cn *conn) fwdHolds() int {
	if cn.sx == nil {
		return 0
	}
	return len(cn.sx.fwdHeld)
}

// fwdRelease drops one forwarded segment of buffer bid; the connection's
// hold on the buffer goes with its last one.
func (cn *conn) fwdRelease(bid uint16) {
	i := cn.fwdFind(bid)
	x := cn.sx
	h := &x.fwdHeld[i]
	if h.segs--; h.segs > 0 {
		return
	}
	last := len(x.fwdHeld) - 1
	x.fwdHeld[i] = x.fwdHeld[last]
	x.fwdHeld = x.fwdHeld[:last]
	cn.w.unholdBuf(bid)
}

// fwdPerConn is the most provided buffers one connection may hold through
// ForwardRecvBuf: a sixteenth of the ring (at least one).
func (w *worker) fwdPerConn() int { return max(1, w.cfg.BufferCount/16) }

// fwdReserve is how many buffers the ring keeps free for every
// connection's receives: below it ForwardRecvBuf copies instead.
func (w *worker) fwdReserve() int { return max(1, w.cfg.BufferCount/8) }

// lentBuffer finds the provided buffer lent to a running parse closure
// that b lies in, and where.
func (w *worker) lentBuffer(b []byte) (bid uint16, off uint32, ok bool) {
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	for _, pc := range w.parsing {
		if pc.lent < 0 {
			continue
		}
		lent := pc.lentData()
		lo := uintptr(unsafe.Pointer(unsafe.SliceData(lent)))
		if p >= lo && p+uintptr(len(b)) <= lo+uintptr(len(lent)) {
			return uint16(pc.lent), pc.lentOff + uint32(p-lo), true
		}
	}
	return 0, 0, false
}

// ForwardRecvBuf sends b, a slice of the bytes a WithData closure is
// running over, on this connection (often another one than the closure's,
// as a proxy does). When b lies in the kernel's receive buffer lent to
// the closure, that buffer itself is queued (no copy) and goes back to the
// ring only once the kernel has sent it; otherwise (accumulated bytes, a
// WithBytes closure, a slice from elsewhere) b is copied into the send
// pool as SendNowait would. Forwarding does not consume: the closure still
// returns Consumed for what it is done with.
//
// Bytes reach the peer in call order with the connection's other sends.
// What one connection may hold is bounded so the receive ring does not run
// dry for the others: at most BufferCount/16 buffers (at least one) per
// connection, and no forward takes the worker's free buffers below
// BufferCount/8; past either, ForwardRecvBuf copies. A buffer counts once
// per connection that holds it, whatever else that connection forwards
// from it and whichever other connections hold it too (a fan-out charges
// every subscriber). A slice that starts where
// the connection's previous forward of the same buffer ended extends that
// send segment, so forwarding a buffer message by message costs one iovec
// and one hold, not one per call. Both backends forward
// (on epoll the send is written at once, so the buffer returns within the
// loop iteration). WorkerStats.ForwardedBuffers and ForwardCopies count
// which way each call that queued its bytes went; a refused call counts in
// neither.
//
// Errors are SendNowait's; nothing is queued when one is returned. It
// must be called on the worker (ErrNotInWorker otherwise); outside a
// parse closure it copies.
func (c ConnCtx) ForwardRecvBuf(b []byte) error {
	cn, err := c.own("ForwardRecvBuf")
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
	if cn.tls != nil {
		// A TLS connection sends sealed records: the buffer's bytes are
		// plaintext, so they are sealed like any send (a copy).
		if err := cn.queueSend(b); err != nil {
			return err // nothing queued: no copy to count
		}
		w.st.forwardCopies++
		return nil
	}
	if bid, off, ok := w.lentBuffer(b); ok {
		// Every connection is charged for every buffer it holds, whoever
		// else holds it too: a fan-out's slow subscriber keeps the
		// buffers it holds out of the ring after the fast ones are done.
		i := cn.fwdFind(bid)
		if i >= 0 && cn.sx.fwdHeld[i].segs < fwdSegsMax || i < 0 && cn.fwdHolds() < w.fwdPerConn() && w.be.buffersFree() >= w.fwdReserve() {
			return cn.forward(bid, off, len(b), i)
		}
	}
	if err := cn.enqueue(b); err != nil {
		return err // nothing queued: no copy to count
	}
	w.st.forwardCopies++
	return nil
}

// forward queues n bytes of provided buffer bid from off; hold is the
// buffer's index in the connection's holds, or -1.
func (cn *conn) forward(bid uint16, off uint32, n int, hold int) error {
	w := cn.w
	if err := cn.queueRoom(n); err != nil {
		w.st.sendQueueFull++
		return err
	}
	cn.queued += uint64(n)
	if k := len(cn.q) - 1; k >= cn.qHead && cn.q[k].kind == segFwd && cn.q[k].id == uint32(bid) && cn.q[k].end == off {
		// The bytes right after the last forwarded ones (a closure
		// forwarding a buffer message by message): one segment, one
		// iovec, one hold.
		cn.q[k].end += uint32(n)
	} else {
		x := cn.extra()
		if hold < 0 {
			if x.fwdHeld == nil {
				x.fwdHeld = make([]fwdHold, 0, 4)
			}
			x.fwdHeld = append(x.fwdHeld, fwdHold{bid: bid, segs: 1})
			w.holdBuf(bid)
		} else {
			x.fwdHeld[hold].segs++
		}
		cn.q = append(cn.q, sendSeg{kind: segFwd, id: uint32(bid), start: off, off: off, end: off + uint32(n)})
	}
	w.st.forwarded++
	cn.scheduleFlush()
	return nil
}

// SendBuilder assembles one scatter-gather send: parts copied into the
// send pool (Copy) and caller-owned memory sent without a copy (Ref), in
// the order they are added, submitted as one batch that reaches the peer
// in call order with the connection's other sends.
//
// A builder comes from ConnCtx.SendParts and is valid until its Submit or
// Send: use it from the task that made it, on the worker's goroutine, and
// do not suspend (Await, WithData, SendWait) before submitting. Called
// from any other goroutine its methods leave the batch alone, as ConnCtx's
// do: Copy adds nothing, Ref adds nothing and calls its release at once
// (on that goroutine), Submit and Send return ErrNotInWorker; each call is
// logged and counted in WorkerStats.ForeignCalls. It is the
// connection's own builder, reused by the next SendParts, so a batch costs
// no allocation once the connection has made one. A second SendParts on
// the connection before Submit abandons the first batch (its references
// are released, nothing of it is sent).
//
// Errors are sticky: the first Copy or Ref that cannot be honoured
// (ErrSendPoolExhausted, ErrSendPartsLimit, the connection's state)
// records it, later parts are ignored (a Ref's release is still called),
// and Submit reports it.
type SendBuilder struct {
	c     ConnCtx
	w     *worker
	cn    *conn // whose copy tail Copy fills; nil on a misuse builder
	err   error
	open  bool
	segs  []sendSeg // in order; a segRef's id indexes refs
	refs  []builderRef
	parts int
	nrefs int
	bytes int // bytes to send
	// copied is how many of them Copy put into the pool.
	copied int
	// The connection's copy tail when the batch began (t0ok: it had one,
	// still alive), its copy count then, and the copies the batch made:
	// a refused batch that no other copy followed gives the tail room it
	// took back.
	t0slot, t0end  uint32
	t0ok           bool
	copies0, ncopy uint32
}

type builderRef struct {
	b       []byte
	release func()
}

// SendParts returns the connection's scatter-gather builder, empty. See
// SendBuilder. Off the worker, or on a stale or closed connection, the
// builder it returns refuses the batch at Submit (with ErrNotInWorker,
// ErrStale, ErrClosed or the connection's failure) and calls every Ref's
// release.
//
//	err := c.SendParts().Copy(header).Ref(value, done).Submit()
func (c ConnCtx) SendParts() *SendBuilder {
	cn, err := c.own("SendParts")
	if err != nil {
		// A builder of its own: the connection's is not this caller's
		// to touch. Only misuse allocates.
		return &SendBuilder{c: c, err: err, open: true}
	}
	x := cn.extra()
	sb := x.builder
	if sb == nil {
		sb = &SendBuilder{w: cn.w, cn: cn}
		x.builder = sb
	}
	if sb.open {
		sb.refuse(errBatchAbandoned)
	}
	sb.c = c
	sb.open = true
	sb.err = cn.sendable()
	sb.t0slot, sb.t0end, sb.t0ok = cn.cslot, cn.cend, cn.ctail
	sb.copies0, sb.ncopy = cn.copies, 0
	return sb
}

// foreign reports, and counts as a foreign call, a call on a connection's
// builder from off its worker. Such a call must not touch the builder: it
// is the connection's, and its tasks may have a batch open in it. (A
// builder without a worker is the one SendParts made for a refused
// caller, that caller's alone; its err is set.)
func (sb *SendBuilder) foreign(method string) bool {
	if sb.w == nil || sb.w.onWorker() {
		return false
	}
	sb.w.foreignCall(method)
	return true
}

// Copy adds a copy of p to the batch: p is copied into the worker's send
// pool now and may be reused as soon as Copy returns. Copies share pool
// slots with the connection's other copies, across references, forwarded
// buffers and batches, so small parts between references take a slot per
// Config.SendSlotSize bytes, not one each.
func (sb *SendBuilder) Copy(p []byte) *SendBuilder {
	if sb.foreign("SendBuilder.Copy") || !sb.open || len(p) == 0 || sb.err != nil {
		return sb
	}
	if sb.parts++; sb.parts > SendPartsMaxParts {
		sb.err = ErrSendPartsLimit
		return sb
	}
	w, cn := sb.w, sb.cn
	if !cn.poolRoom(len(p)) {
		w.st.poolExhausted++
		sb.err = ErrSendPoolExhausted
		return sb
	}
	sb.bytes += len(p)
	sb.copied += len(p)
	sb.segs = cn.copyOut(sb.segs, 0, p)
	sb.ncopy++
	return sb
}

// Ref adds p to the batch without copying it: the kernel reads p itself,
// after Submit has returned, so p must not be modified until release is
// called. release (nil for none) is called exactly once, on the worker
// outside any task, when the kernel no longer reads p: after the send
// that took its last byte completed, or, for a zero-copy send, after the
// kernel's notification; also when the batch is refused (then inside
// Submit or Send), when the connection fails or resets before p went out,
// when the batch is abandoned, and at shutdown. release must not block or
// suspend; it may send. A panic in it is logged; a runtime.Goexit in it
// (t.FailNow or require.* in a test) ends only that call when it runs on
// the loop, and the task when it runs inside Submit: either way every
// other release still runs once and the worker goes on.
//
// The one exception is a zero-copy send whose notification has not come
// when the worker stops (shutdown resets such connections shortly before
// Config.ShutdownTimeout, which normally brings it): the kernel may still
// send from p, so p is never released. ringline keeps it pinned and
// reachable for the life of the process, logs it and counts it in
// WorkerStats.ZeroCopyRefsLeaked; release is not called, and the memory
// must be treated as lent to the kernel for good.
//
// p must be Go memory (or memory outside the Go heap that stays mapped
// until release): ringline keeps p reachable and pins it with a
// runtime.Pinner until release, so the garbage collector neither frees
// nor moves it while the kernel reads it. An empty p is not sent; its
// release is called at Submit.
//
// Bytes a WithData or TryWithData closure is shown are not the caller's:
// they may be the kernel's receive buffer, which goes back to the ring
// (and fills with other connections' bytes) once the closure is done with
// it, or the accumulator, which the bytes that follow overwrite. A Ref of
// them (or of a receive buffer at any time) is taken as a Copy: the bytes
// are copied now and release is called at Submit. ForwardRecvBuf sends a
// lent receive buffer without a copy; bytes shown to WithBytes may be
// referenced.
func (sb *SendBuilder) Ref(p []byte, release func()) *SendBuilder {
	if sb.foreign("SendBuilder.Ref") || !sb.open {
		// Nothing will send it: the release is due now (off the worker,
		// on the caller's goroutine).
		if release != nil {
			release()
		}
		return sb
	}
	sb.refs = append(sb.refs, builderRef{b: p, release: release})
	if len(p) == 0 || sb.err != nil {
		return sb
	}
	if sb.w.recvMemory(p) {
		// Received bytes are ringline's memory, reused once the closure
		// is done: copied now, the release due at Submit.
		sb.refs[len(sb.refs)-1].b = nil
		return sb.Copy(p)
	}
	sb.parts++
	sb.nrefs++
	if sb.parts > SendPartsMaxParts || sb.nrefs > SendPartsMaxRefs || len(p) > SendPartsMaxRefBytes {
		sb.err = ErrSendPartsLimit
		return sb
	}
	sb.bytes += len(p)
	sb.segs = append(sb.segs, sendSeg{kind: segRef, id: uint32(len(sb.refs) - 1), end: uint32(len(p))})
	return sb
}

// Submit queues the batch and returns at once, like SendNowait. It is all
// or nothing: on an error nothing of the batch is sent and every Ref's
// release has been called before Submit returns. Errors are SendNowait's
// (the batch's bytes, copied and referenced, count against
// Config.MaxSendQueue), ErrSendPartsLimit, and ErrSendBuilderDone for a
// builder already submitted.
func (sb *SendBuilder) Submit() error {
	_, err := sb.submit()
	return err
}

// Send is Submit returning a SendFuture that resolves, like Send's, once
// the kernel has taken every byte of the batch (and of everything queued
// before it). Ref releases may come after that: a zero-copy send's memory
// is released on its notification.
func (sb *SendBuilder) Send() (SendFuture, error) {
	return sb.submit()
}

func (sb *SendBuilder) submit() (SendFuture, error) {
	if sb.foreign("SendBuilder.Submit") {
		return SendFuture{}, ErrNotInWorker
	}
	if !sb.open {
		return SendFuture{}, ErrSendBuilderDone
	}
	if sb.err != nil {
		return SendFuture{}, sb.refuse(sb.err)
	}
	cn, err := sb.c.own("SendBuilder.Submit")
	if err == nil {
		err = cn.sendable()
	}
	if err == nil && cn.tls != nil {
		return sb.submitTLS(cn)
	}
	if err == nil {
		if err = cn.queueRoom(sb.bytes); err == nil && cn.sx.refsOut > 0 && cn.sx.refsOut+sb.nrefs > sendMaxConnRefs {
			err = ErrSendQueueFull
		}
		if err == ErrSendQueueFull {
			sb.w.st.sendQueueFull++
		}
	}
	if err != nil {
		return SendFuture{}, sb.refuse(err)
	}
	w := cn.w
	for k, s := range sb.segs {
		if k == 0 && s.kind == segPool {
			if n := len(cn.q) - 1; n >= cn.qHead && cn.q[n].kind == segPool && cn.q[n].id == s.id && cn.q[n].end == s.off {
				// Right behind the queue's last copy: one segment.
				cn.q[n].end = s.end
				w.pool.put(s.id) // the queue's segment still refers to it
				continue
			}
		}
		if s.kind == segRef {
			r := &sb.refs[s.id]
			s.id = w.newRef(r.b, r.release)
			r.release = nil // the table's now
			cn.sx.refsOut++
		}
		cn.q = append(cn.q, s)
	}
	cn.queued += uint64(sb.bytes)
	w.st.bytesCopied += uint64(sb.copied)
	if sb.bytes > 0 {
		cn.scheduleFlush()
	}
	f := SendFuture{c: sb.c, mark: cn.queued, n: sb.bytes}
	sb.finish() // empty Refs' releases
	return f, nil
}

// refuse gives back what the batch took (pool slots) and calls every
// release, in order; it returns err.
func (sb *SendBuilder) refuse(err error) error {
	if cn := sb.cn; cn != nil && sb.w.onWorker() {
		for _, s := range sb.segs {
			if s.kind == segPool {
				cn.putSlot(s.id)
			}
		}
		if sb.ncopy > 0 && cn.copies-sb.copies0 == sb.ncopy {
			// Only this batch copied since it began: the room it took is
			// the connection's again.
			cn.cslot, cn.cend, cn.ctail = sb.t0slot, sb.t0end, sb.t0ok
		}
	}
	sb.finish()
	return err
}

// finish calls the releases the builder still owns and empties it.
func (sb *SendBuilder) finish() {
	// Detached while the callbacks run: one may start the connection's
	// next batch on this builder.
	refs := sb.refs
	sb.refs = nil
	sb.open = false
	sb.segs = sb.segs[:0]
	sb.parts, sb.nrefs, sb.bytes, sb.copied = 0, 0, 0, 0
	i := 0
	defer func() {
		// A callback that ended the task (Goexit, or the worker stopping
		// a task that suspended in it) leaves the rest to the loop.
		for ; i < len(refs) && sb.w != nil; i++ {
			if f := refs[i].release; f != nil {
				sb.w.relq = append(sb.w.relq, f)
			}
			refs[i] = builderRef{}
		}
		if sb.refs == nil {
			sb.refs = refs[:0]
		}
	}()
	for ; i < len(refs); i++ {
		f := refs[i].release
		refs[i] = builderRef{}
		if f == nil {
			continue
		}
		if sb.w != nil {
			sb.w.callRelease(f)
		} else {
			f()
		}
	}
}

// abandonBatch refuses a batch left open on a connection that is going
// away (or a worker that stops).
func (cn *conn) abandonBatch() {
	if cn.sx == nil {
		return
	}
	if sb := cn.sx.builder; sb != nil && sb.open {
		sb.refuse(errBatchAbandoned)
	}
}
