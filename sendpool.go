package ringline

import (
	"unsafe"
)

// sendPool is a worker's fixed set of send slots in memory outside the Go
// heap, so the kernel can read queued bytes while Go code runs and the
// garbage collector never sees them. Exhaustion is an error to the caller
// (SendWait waits for room instead).
//
// A slot is counted by the queue segments that refer to it: usually one,
// more when copies on both sides of a referenced or forwarded part share
// it (see conn.copyOut). It is free again when the last one is released.
type sendPool struct {
	mem      region
	slotSize uint32
	free     []uint32 // stack of free slot numbers
	refs     []uint32 // segments referring to each slot (up to a segment per byte)
	// held is how many free slots are earmarked for SendWait callers
	// (servePoolWaiters): every other send sees len(free)-held, so a
	// waiter's turn cannot be taken by a later send.
	held int
}

func newSendPool(slots, slotSize int) (*sendPool, error) {
	mem, err := mapRegion(slots * slotSize)
	if err != nil {
		return nil, err
	}
	p := &sendPool{mem: mem, slotSize: uint32(slotSize), free: make([]uint32, slots), refs: make([]uint32, slots)}
	for i := range p.free {
		p.free[i] = uint32(slots - 1 - i)
	}
	return p, nil
}

func (p *sendPool) get() uint32 {
	s := p.free[len(p.free)-1]
	p.free = p.free[:len(p.free)-1]
	p.refs[s] = 1
	return s
}

// share counts one more segment referring to slot s.
func (p *sendPool) share(s uint32) { p.refs[s]++ }

// put releases one segment's hold on slot s and reports whether that
// freed the slot.
func (p *sendPool) put(s uint32) bool {
	if p.refs[s]--; p.refs[s] > 0 {
		return false
	}
	if debugPoison {
		poison(p.slot(s))
	}
	p.free = append(p.free, s)
	return true
}

// avail is how many slots a send may take now.
func (p *sendPool) avail() int { return len(p.free) - p.held }

// reserve is how many free slots SendWait's earmarks leave to sends that
// do not wait (servePoolWaiters): an eighth of the pool, at least one.
func (p *sendPool) reserve() int { return max(cap(p.free)/8, 1) }

// inUse is how many slots are taken (free never grows past its capacity,
// the slot count).
func (p *sendPool) inUse() int { return cap(p.free) - len(p.free) }

func (p *sendPool) slot(s uint32) []byte {
	off := int(s) * int(p.slotSize)
	return p.mem.b[off : off+int(p.slotSize) : off+int(p.slotSize)]
}

func (p *sendPool) addr(s, off uint32) uint64 {
	return p.mem.addr(int(s)*int(p.slotSize) + int(off))
}

func (p *sendPool) close() { p.mem.unmap() }

// zcRoom reports whether sends may go zero-copy as far as the pool is
// concerned. A zero-copy send keeps its memory until the peer has
// acknowledged the bytes (the kernel's notification), not just until the
// kernel queued them, so its slots stay taken about a round trip longer
// and a slow reader's socket buffer is held in pool slots rather than in
// kernel memory. Past half the pool, sends are copied by the kernel
// instead, so zero copy cannot exhaust the pool for the sends that follow.
func (p *sendPool) zcRoom() bool { return 2*p.inUse() <= cap(p.free) }

// slotsFor is how many fresh slots n bytes take.
func (p *sendPool) slotsFor(n int) int { return (n + int(p.slotSize) - 1) / int(p.slotSize) }

// What a queue segment's bytes are.
const (
	segPool uint8 = iota // copied into a pool slot; id is the slot
	segRef               // caller memory from SendBuilder.Ref; id indexes worker.refs
	segFwd               // a provided receive buffer forwarded by ForwardRecvBuf; id is its buffer id
)

// sendSeg is a run of queued bytes [off, end) of one slot, reference or
// buffer; start is where it began (off advances as bytes are sent).
type sendSeg struct {
	start    uint32
	off, end uint32
	id       uint32
	// zc is the number of the last zero-copy send that read these bytes
	// (conn.zcSeq), 0 for none: the memory goes back only once that
	// send's notification (and every earlier one's) has come.
	zc   uint32
	kind uint8
}

// sendExtra is the send state of a connection that uses more than plain
// copies: zero-copy sends, SendParts, ForwardRecvBuf, or tasks of other
// connections awaiting its SendFutures. Most connections never do, so it
// lives apart from conn (idle memory per connection, docs/BENCHMARKS.md
// §4), made on first need (conn.extra) and kept with the slot.
type sendExtra struct {
	// Zero-copy sends are numbered from 1 (zcSeq is the last issued);
	// every one up to zcBase is done (notified, or never promised a
	// notification), and bit i of zcMask says zcBase+1+i is done too.
	zcSeq, zcBase uint32
	zcMask        uint64
	// held are segments already sent whose memory a zero-copy send may
	// still read, in send order, from heldHead.
	held      []sendSeg
	heldHead  int
	heldBytes int // bytes of held[heldHead:]
	refsOut   int // SendBuilder.Ref parts queued or held
	// fwdHeld are the provided buffers its queued or held forwarded
	// segments read (ForwardRecvBuf), at most fwdPerConn.
	fwdHeld []fwdHold
	builder *SendBuilder // SendParts' builder, reused
	// sendWaiters are tasks of other connections awaiting this one's
	// SendFutures; the connection's own task is woken through task.
	sendWaiters []*task
}

// extra returns the connection's sendExtra, making it on first use. The
// callers that may run on a task's stack (SendParts, ForwardRecvBuf, a
// SendFuture awaited by another connection's task) allocate there anyway.
func (c *conn) extra() *sendExtra {
	if c.sx == nil {
		c.sx = new(sendExtra)
	}
	return c.sx
}

// zcHeld reports whether memory a zero-copy send may still read is held.
func (c *conn) zcHeld() bool { return c.sx != nil && c.sx.heldHead < len(c.sx.held) }

// zcAllowed reports whether a send of total bytes may go zero-copy as far
// as the connection goes: fewer than zcWindow sends awaiting their
// notifications, and what they hold within half of MaxSendQueue.
func (c *conn) zcAllowed(total uint64) bool {
	if c.sx == nil {
		return total <= uint64(c.w.cfg.MaxSendQueue/2)
	}
	return c.sx.zcSeq-c.sx.zcBase < zcWindow && c.sx.heldBytes+int(total) <= c.w.cfg.MaxSendQueue/2
}

// iovecs per send; more segments go out in the next send of the chain.
const maxIov = 32

// iovArea is the per-connection scratch C and the kernel read a sendmsg
// from: a msghdr followed by maxIov iovecs, in the worker's iov region.
// The kernel reads it while the send is issued (a send that waits copies
// what it needs), so it is free again by the send's first completion.
const iovAreaSize = 64 + maxIov*16

type msghdr struct {
	name       uint64
	namelen    uint32
	_          uint32
	iov        uint64
	iovlen     uint64
	control    uint64
	controllen uint64
	flags      int32
	_          int32
}

type iovec struct {
	base uint64
	len  uint64
}

// zcWindow bounds the zero-copy sends of one connection whose
// notifications have not come; past it sends are copied by the kernel
// until notifications return (zcMask has one bit per send in the window).
const zcWindow = 64

// copyRoom is how many bytes fit in the connection's copy tail, the pool
// slot its last copy went into, without a fresh slot.
func (c *conn) copyRoom() int {
	if !c.ctail {
		return 0
	}
	return int(c.w.pool.slotSize - c.cend)
}

// copyOut copies b into the connection's copy tail and fresh slots as
// needed (the caller checked there are enough), adding segments for it to
// segs (the queue, or an open SendParts batch); segs[lo:] are segments the
// bytes may extend. Copies share the tail slot whatever was queued between
// them (a reference, a forwarded buffer, another batch): segments are
// sent in order wherever their bytes lie, so the slot's later bytes may
// go out after other memory, and a connection queueing small headers
// between references takes a slot per SendSlotSize bytes of headers, not
// one per header. Each segment in a slot counts one reference to it.
func (c *conn) copyOut(segs []sendSeg, lo int, b []byte) []sendSeg {
	p := c.w.pool
	c.copies++
	for len(b) > 0 {
		fresh := false
		if !c.ctail || c.cend == p.slotSize {
			c.cslot, c.cend, c.ctail, fresh = p.get(), 0, true, true
		}
		start := c.cend
		n := copy(p.slot(c.cslot)[start:], b)
		b = b[n:]
		c.cend += uint32(n)
		if k := len(segs) - 1; k >= lo && segs[k].kind == segPool && segs[k].id == c.cslot && segs[k].end == start {
			segs[k].end += uint32(n)
			continue
		}
		if !fresh {
			p.share(c.cslot) // get counted a fresh slot's first segment
		}
		seg := sendSeg{kind: segPool, id: c.cslot, start: start, off: start, end: c.cend}
		if k := len(segs); k < cap(segs) {
			segs = segs[:k+1]
			segs[k] = seg
		} else {
			segs = appendSeg(segs, seg)
		}
	}
	return segs
}

// appendSeg is append, out of line: a growing append spills what its
// caller keeps live around the call, which made copyOut's frame, on every
// task's stack, twice the size.
//
//go:noinline
func appendSeg(segs []sendSeg, s sendSeg) []sendSeg { return append(segs, s) }

// appendConn is append out of line, for the same reason (scheduleFlush is
// inlined into the send path).
//
//go:noinline
func appendConn(cs []*conn, c *conn) []*conn { return append(cs, c) }

// putSlot releases one of the connection's segments in pool slot s; once
// the slot is free it is no longer the connection's copy tail (nor the
// one an open batch would give back).
func (c *conn) putSlot(s uint32) {
	if !c.w.pool.put(s) {
		return
	}
	if c.ctail && c.cslot == s {
		c.ctail = false
	}
	if c.sx != nil {
		if sb := c.sx.builder; sb != nil && sb.t0ok && sb.t0slot == s {
			sb.t0ok = false
		}
	}
}

// queueRoom reports ErrSendQueueFull when n more bytes would take the
// connection past MaxSendQueue (a single send larger than it never fits).
// Bytes the kernel has taken do not count, so a task that awaited
// everything it queued has all of it again (an echo of everything a parse
// was shown always fits), even while a zero-copy send's bytes await their
// notification: startSend keeps those under half of MaxSendQueue instead.
func (c *conn) queueRoom(n int) error {
	if int(c.queued-c.sent)+n > c.w.cfg.MaxSendQueue {
		return ErrSendQueueFull
	}
	return nil
}

// enqueue copies b behind the connection's queued bytes, filling its copy
// tail first. It is all or nothing: when the connection's queue would pass
// MaxSendQueue or the pool cannot hold b, nothing is queued and
// ErrSendQueueFull or ErrSendPoolExhausted is returned (and counted).
//
// It is tryEnqueue written out rather than called: the send path runs on
// the task's stack, and every frame it saves keeps a task within a 2 KiB
// goroutine stack (see the stack budget in task.go).
func (c *conn) enqueue(b []byte) error {
	if !c.poolRoom(len(b)) {
		c.w.st.poolExhausted++
		return ErrSendPoolExhausted
	}
	if c.queueRoom(len(b)) != nil {
		c.w.st.sendQueueFull++
		return ErrSendQueueFull
	}
	c.queued += uint64(len(b)) // appendQueue, written out
	c.w.st.bytesCopied += uint64(len(b))
	c.q = c.copyOut(c.q, c.qHead, b)
	c.scheduleFlush()
	return nil
}

// tryEnqueue is enqueue without counting a refusal (SendWait retries).
func (c *conn) tryEnqueue(b []byte) error {
	if !c.poolRoom(len(b)) {
		return ErrSendPoolExhausted
	}
	if err := c.queueRoom(len(b)); err != nil {
		return err
	}
	c.appendQueue(b)
	return nil
}

// poolRoom reports whether n more bytes fit behind the tail segment and in
// the pool's free slots.
func (c *conn) poolRoom(n int) bool {
	rest := n - c.copyRoom()
	return rest <= 0 || c.w.pool.slotsFor(rest) <= c.w.pool.avail()
}

// appendQueue copies b behind the queued bytes, filling the tail slot
// first; the caller has checked poolRoom (a TLS connection checks once for
// all the records of a write, tls.go).
func (c *conn) appendQueue(b []byte) {
	c.queued += uint64(len(b))
	c.w.st.bytesCopied += uint64(len(b))
	c.q = c.copyOut(c.q, c.qHead, b)
	c.scheduleFlush()
}

// scheduleFlush has the loop start a send for c once the running tasks
// have queued what they will this iteration.
func (c *conn) scheduleFlush() {
	if !c.sending && !c.flushPending {
		c.flushPending = true
		c.w.flushq = appendConn(c.w.flushq, c)
	}
}

// segAddr is where the kernel reads segment s's unsent bytes.
func (w *worker) segAddr(s *sendSeg) uint64 {
	switch s.kind {
	case segPool:
		return w.pool.addr(s.id, s.off)
	case segRef:
		return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(w.refs[s.id].b)))) + uint64(s.off)
	}
	return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(w.be.buffer(uint16(s.id)))))) + uint64(s.off)
}

// startSend stages one send covering up to maxIov queued segments. At most
// one send is in flight per connection, so bytes reach the peer in order.
// A send of at least Config.SendZCThreshold bytes goes zero-copy on
// io_uring (w.zcMin > 0), unless the connection has zcWindow zero-copy
// sends awaiting their notifications, the pool is more than half used
// (see zcRoom), or the connection's bytes awaiting notifications would
// pass half of MaxSendQueue. Their memory stays taken until the peer has
// acknowledged them, however large the socket's send buffer: with this
// bound a connection whose peer does not read holds at most 1.5 times
// MaxSendQueue of the pool (MaxSendQueue queued, and half of it held);
// past it the kernel copies, into its own memory.
func (c *conn) startSend() {
	w := c.w
	segs := c.q[c.qHead:]
	if len(segs) == 0 || c.sending || c.state == connClosing || c.state == connClosed {
		return
	}
	if len(segs) > maxIov {
		segs = segs[:maxIov]
	}
	var total uint64
	for i := range segs {
		total += uint64(segs[i].end - segs[i].off)
	}
	zc := w.zcMin > 0 && total >= uint64(w.zcMin) && w.pool.zcRoom() && c.zcAllowed(total)
	ud := packUD(udSend, c.idx, c.gen, 0)
	var aux uint32
	code, codeMsg := uint8(opSend), uint8(opSendmsg)
	if zc {
		x := c.extra()
		x.zcSeq++
		for i := range segs {
			segs[i].zc = x.zcSeq
		}
		ud = packUD(udSendZC, c.idx, c.gen, uint16(x.zcSeq))
		code, codeMsg = opSendZC, opSendmsgZC
		aux = zcReportUsage | testHookZCFlags
		w.st.zcSends++
	}
	if len(segs) == 1 {
		w.be.stage(sqOp{code: code, fd: c.opFd, flags: c.opFlags, ud: ud, aux: aux,
			addr: w.segAddr(&segs[0]), len: uint32(total)})
	} else {
		area := w.iovMem.ptr(int(c.idx) * iovAreaSize)
		iov := unsafe.Slice((*iovec)(unsafe.Add(area, 64)), len(segs))
		for i := range segs {
			iov[i] = iovec{base: w.segAddr(&segs[i]), len: uint64(segs[i].end - segs[i].off)}
		}
		*(*msghdr)(area) = msghdr{iov: uint64(uintptr(unsafe.Add(area, 64))), iovlen: uint64(len(segs))}
		w.be.stage(sqOp{code: codeMsg, fd: c.opFd, flags: c.opFlags, ud: ud, aux: aux, addr: uint64(uintptr(area))})
	}
	c.sendZC = zc
	c.sending = true
	c.pending++
}

// sendInFlightUD is the user_data of the send in flight, what a cancel
// names: a zero-copy send's carries its number, the last one issued (one
// send is in flight at a time).
func (c *conn) sendInFlightUD() uint64 {
	if c.sendZC {
		return packUD(udSendZC, c.idx, c.gen, uint16(c.sx.zcSeq))
	}
	return packUD(udSend, c.idx, c.gen, 0)
}

// testHookZCFlags, when set by a test, is added to the zero-copy flags of
// every zero-copy send: an invalid flag makes the kernel refuse the send
// (EINVAL), to exercise the fallback to copies.
var testHookZCFlags uint32

// sentBytes advances the queue by n bytes the kernel took, releasing what
// no send reads any more.
func (c *conn) sentBytes(n int) {
	c.sent += uint64(n)
	for n > 0 && c.qHead < len(c.q) {
		s := &c.q[c.qHead]
		take := int(s.end - s.off)
		if take > n {
			take = n
		}
		s.off += uint32(take)
		n -= take
		if s.off == s.end {
			c.retire(s)
			c.qHead++
		}
	}
	c.compactQueue()
}

// retire releases a segment the connection is done with, or, when a
// zero-copy send that read it has not been notified yet, keeps it until
// the notification.
func (c *conn) retire(s *sendSeg) {
	if s.zc == 0 || s.zc <= c.sx.zcBase {
		c.releaseSeg(s)
		return
	}
	x := c.sx
	x.held = append(x.held, *s)
	x.heldBytes += int(s.end - s.start)
}

// releaseSeg gives a segment's memory back: a pool slot to the pool, a
// forwarded buffer to the ring, a reference to its owner (release runs
// from the loop, see runReleases).
func (c *conn) releaseSeg(s *sendSeg) {
	w := c.w
	switch s.kind {
	case segPool:
		c.putSlot(s.id)
	case segRef:
		c.sx.refsOut--
		w.releaseRef(s.id)
	case segFwd:
		c.fwdRelease(uint16(s.id))
	}
}

// zcSeqOf recovers the full number of an outstanding zero-copy send from
// the 16 bits its user_data carries (the window is far narrower).
func (c *conn) zcSeqOf(payload uint16) uint32 {
	lo := c.sx.zcBase + 1
	return lo + uint32(payload-uint16(lo))
}

// zcDone records that zero-copy send seq needs no more waiting (its
// notification came, or it never promised one) and releases the held
// segments every send up to the oldest outstanding one was done with.
// Notifications may come out of order; memory goes back in order.
func (c *conn) zcDone(seq uint32) {
	x := c.sx
	bit := seq - x.zcBase - 1
	if bit >= zcWindow {
		return // not outstanding
	}
	x.zcMask |= 1 << bit
	for x.zcMask&1 != 0 {
		x.zcMask >>= 1
		x.zcBase++
	}
	for x.heldHead < len(x.held) && x.held[x.heldHead].zc <= x.zcBase {
		s := &x.held[x.heldHead]
		x.heldBytes -= int(s.end - s.start)
		c.releaseSeg(s)
		x.heldHead++
	}
	if x.heldHead == len(x.held) {
		clear(x.held)
		x.held, x.heldHead = x.held[:0], 0
	}
}

func (c *conn) compactQueue() {
	if c.qHead == len(c.q) {
		c.q = c.q[:0]
		c.qHead = 0
	} else if c.qHead > 64 && c.qHead*2 > len(c.q) {
		n := copy(c.q, c.q[c.qHead:])
		c.q = c.q[:n]
		c.qHead = 0
	}
}

// dropQueue gives up every queued segment (the connection failed or is
// being torn down); bytes not yet sent are lost, and futures see the
// error. Memory a zero-copy send may still read stays held until its
// notification.
func (c *conn) dropQueue() {
	for i := c.qHead; i < len(c.q); i++ {
		c.retire(&c.q[i])
	}
	c.q = c.q[:0]
	c.qHead = 0
}

func (c *conn) sendIdle() bool { return !c.sending && c.qHead == len(c.q) }

// drained reports whether the connection may close: nothing queued or in
// flight, and no memory a zero-copy send may still read (its
// notification comes once the peer has acknowledged the bytes, so a
// closed socket would keep it, the pool slots and the connection slot
// for as long as the kernel keeps trying). A failed connection's socket
// sends nothing more: it closes at once.
func (c *conn) drained() bool {
	return c.sendIdle() && (!c.zcHeld() || c.err != nil)
}

// closeReady reports whether a connection whose close was asked for may
// close its socket now: drained, and not waiting for a TLS peer's
// close_notify (a failed or reset connection waits for nobody).
func (c *conn) closeReady() bool { return c.drained() && (!c.tlsAwaitsPeer() || c.err != nil) }
