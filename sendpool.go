package ringline

import (
	"unsafe"
)

// sendPool is a worker's fixed set of send slots in memory outside the Go
// heap, so the kernel can read queued bytes while Go code runs and the
// garbage collector never sees them. A slot belongs to one connection at a
// time; exhaustion is an error to the caller, never a block.
type sendPool struct {
	mem      region
	slotSize uint32
	free     []uint32 // stack of free slot numbers
}

func newSendPool(slots, slotSize int) (*sendPool, error) {
	mem, err := mapRegion(slots * slotSize)
	if err != nil {
		return nil, err
	}
	p := &sendPool{mem: mem, slotSize: uint32(slotSize), free: make([]uint32, slots)}
	for i := range p.free {
		p.free[i] = uint32(slots - 1 - i)
	}
	return p, nil
}

func (p *sendPool) get() uint32 {
	s := p.free[len(p.free)-1]
	p.free = p.free[:len(p.free)-1]
	return s
}

func (p *sendPool) put(s uint32) {
	if debugPoison {
		poison(p.slot(s))
	}
	p.free = append(p.free, s)
}

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

// sendSeg is a run of queued bytes [off, end) in one pool slot.
type sendSeg struct {
	slot, off, end uint32
}

// iovecs per send; more segments go out in the next send of the chain.
const maxIov = 32

// iovArea is the per-connection scratch C and the kernel read a sendmsg
// from: a msghdr followed by maxIov iovecs, in the worker's iov region.
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

// enqueue copies b behind the connection's queued bytes, filling the tail
// slot first. It is all or nothing: when the connection's queue would pass
// MaxSendQueue or the pool cannot hold b, nothing is queued and
// ErrSendQueueFull or ErrSendPoolExhausted is returned.
func (c *conn) enqueue(b []byte) error {
	if !c.poolRoom(len(b)) {
		c.w.st.poolExhausted++
		return ErrSendPoolExhausted
	}
	if !c.queueRoom(len(b)) {
		c.w.st.sendQueueFull++
		return ErrSendQueueFull
	}
	c.appendQueue(b)
	return nil
}

// poolRoom reports whether n more bytes fit in the tail slot and the
// pool's free slots.
func (c *conn) poolRoom(n int) bool {
	p := c.w.pool
	room := 0
	if k := len(c.q); k > c.qHead {
		room = int(p.slotSize - c.q[k-1].end)
	}
	rest := n - room
	return rest <= 0 || (rest+int(p.slotSize)-1)/int(p.slotSize) <= len(p.free)
}

// queueRoom reports whether n more bytes stay within MaxSendQueue.
func (c *conn) queueRoom(n int) bool {
	return int(c.queued-c.sent)+n <= c.w.cfg.MaxSendQueue
}

// appendQueue copies b behind the queued bytes; the caller has checked
// poolRoom (a TLS connection checks once for all the records of a write).
func (c *conn) appendQueue(b []byte) {
	w := c.w
	p := w.pool
	c.queued += uint64(len(b))
	if n := len(c.q); n > c.qHead && len(b) > 0 {
		t := &c.q[n-1]
		k := copy(p.slot(t.slot)[t.end:], b)
		t.end += uint32(k)
		b = b[k:]
	}
	for len(b) > 0 {
		s := p.get()
		n := copy(p.slot(s), b)
		c.q = append(c.q, sendSeg{slot: s, end: uint32(n)})
		b = b[n:]
	}
	if !c.sending && !c.flushPending {
		c.flushPending = true
		w.flushq = append(w.flushq, c)
	}
}

// startSend stages one send covering up to maxIov queued segments. At most
// one send is in flight per connection, so bytes reach the peer in order.
func (c *conn) startSend() {
	w := c.w
	segs := c.q[c.qHead:]
	if len(segs) == 0 || c.sending || c.state == connClosing || c.state == connClosed {
		return
	}
	if len(segs) > maxIov {
		segs = segs[:maxIov]
	}
	ud := packUD(udSend, c.idx, c.gen, 0)
	if len(segs) == 1 {
		s := segs[0]
		w.be.stage(sqOp{code: opSend, fd: c.opFd, flags: c.opFlags, ud: ud,
			addr: w.pool.addr(s.slot, s.off), len: s.end - s.off})
	} else {
		area := w.iovMem.ptr(int(c.idx) * iovAreaSize)
		iov := unsafe.Slice((*iovec)(unsafe.Add(area, 64)), len(segs))
		for i, s := range segs {
			iov[i] = iovec{base: w.pool.addr(s.slot, s.off), len: uint64(s.end - s.off)}
		}
		*(*msghdr)(area) = msghdr{iov: uint64(uintptr(unsafe.Add(area, 64))), iovlen: uint64(len(segs))}
		w.be.stage(sqOp{code: opSendmsg, fd: c.opFd, flags: c.opFlags, ud: ud, addr: uint64(uintptr(area))})
	}
	c.sending = true
	c.pending++
}

// sent advances the queue by n bytes the kernel took, releasing slots.
func (c *conn) sentBytes(n int) {
	p := c.w.pool
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
			p.put(s.slot)
			c.qHead++
		}
	}
	c.compactQueue()
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

// dropQueue releases every queued slot (the connection failed or is being
// torn down); bytes not yet sent are lost, and futures see the error.
func (c *conn) dropQueue() {
	for _, s := range c.q[c.qHead:] {
		c.w.pool.put(s.slot)
	}
	c.q = c.q[:0]
	c.qHead = 0
}

func (c *conn) sendIdle() bool { return !c.sending && c.qHead == len(c.q) }
