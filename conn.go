package ringline

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// Connection states. A slot is reused only once its connection is closed,
// its task has returned and no operation on it is still in the kernel.
const (
	connFree = iota
	connOpen
	connClosing // close ops staged; waiting for their completions
	connClosed
)

// conn is one connection slot of a worker's slab. Only the worker's
// goroutine (the loop and the tasks it resumes) touches it.
type conn struct {
	w     *worker
	idx   uint32
	gen   uint32
	state uint8
	fd    int32
	// opFd/opFlags are what ring ops name: a fixed-file index with
	// opFFixed, or the plain fd.
	opFd     int32
	opFlags  uint8
	outbound bool
	task     *task
	pending  int // completions still expected from the kernel
	// closesLeft counts close completions outstanding while closing.
	closesLeft int

	// Receive side.
	recvArmed   bool // a multishot recv is in the kernel
	recvPaused  bool // flow control: the accumulator is full, recv cancelled
	parked      bool // ENOBUFS: waiting on the worker's parked list
	eof         bool // peer sent FIN, reset, or the connection closed
	rerr        error
	lent        int32 // provided buffer lent to WithData, or -1
	lentOff     uint32
	lentEnd     uint32
	acc         []byte // accumulator: acc[accOff:] is unread
	accOff      int
	accShared   bool // a retained Bytes may point into acc: never move it
	sink        []byte
	sinkN       int
	sinkPending bool // SetRecvSink inside a parse closure: fill it after
	parsing     bool // a parse closure of this connection is running
	closeReason string

	// Send side.
	q            []sendSeg
	qHead        int
	queued, sent uint64 // byte totals: accepted by SendNowait/Send, taken by the kernel
	sending      bool
	flushPending bool
	serr         error
	closeWanted  bool
	// sendWaiters are tasks of other connections awaiting this one's
	// SendFutures; the connection's own task is woken through task.
	sendWaiters []*task
}

// ConnCtx is a connection handle: a small value (worker, slot index,
// generation) that can be copied freely. Methods that wait (WithData,
// SendFuture.Await, RecvReady) must be called from a task running on the
// connection's worker. Once the connection's slot is reused, every method
// refuses the stale handle: it returns 0, false or ErrStale and never
// touches the new connection.
type ConnCtx struct {
	w   *worker
	idx uint32
	gen uint32
}

// ConnToken identifies a connection (slot index and generation) without a
// worker pointer; it is comparable and usable as a map key.
type ConnToken struct {
	Index uint32
	// Generation counts the slot's reuses; with 32 bits a stale handle
	// would need 4 billion reuses of its slot to look live again.
	Generation uint32
}

// AsyncEventHandler handles a worker's connections. The runtime makes one
// per worker with the factory given to Launch.
type AsyncEventHandler interface {
	// OnAccept is the body of an accepted connection's task. It runs on
	// the worker's goroutine as a coroutine; returning closes the
	// connection (after queued sends drain), and a panic closes only this
	// connection and is logged. It must not block on channels, mutexes,
	// time.Sleep or net: that stalls every connection of the worker.
	OnAccept(c ConnCtx)
}

// get returns the live conn for c, or nil when c is stale or empty.
func (c ConnCtx) get() *conn {
	if c.w == nil || int(c.idx) >= len(c.w.conns) {
		return nil
	}
	cn := c.w.conns[c.idx]
	if cn == nil || cn.gen != c.gen || cn.state == connFree {
		return nil
	}
	return cn
}

// Index returns the connection's slot index on its worker: dense, below
// Config.MaxConnections, usable to index per-connection arrays. A slot is
// reused after the connection is gone.
func (c ConnCtx) Index() int { return int(c.idx) }

// Token returns the connection's identity (index and generation).
func (c ConnCtx) Token() ConnToken { return ConnToken{Index: c.idx, Generation: c.gen} }

// WorkerID returns the index of the worker that owns the connection.
func (c ConnCtx) WorkerID() int {
	if c.w == nil {
		return -1
	}
	return c.w.id
}

// IsOutbound reports whether the connection was made by Connect rather
// than accepted.
func (c ConnCtx) IsOutbound() bool {
	cn := c.get()
	return cn != nil && cn.outbound
}

// PeerAddr returns the remote address, or false when the handle is stale or
// the socket no longer has a peer.
func (c ConnCtx) PeerAddr() (net.Addr, bool) {
	cn := c.get()
	if cn == nil || cn.fd < 0 {
		return nil, false
	}
	sa, err := unix.Getpeername(int(cn.fd))
	if err != nil {
		return nil, false
	}
	a := sockaddrToAddr(sa)
	return a, a != nil
}

// Close closes the connection once its queued sends have drained: bytes
// sent before Close reach the peer. It does not wait; the task may keep
// running, but receives report EOF and new sends fail with ErrClosed.
// Closing a stale or closed handle does nothing.
func (c ConnCtx) Close() {
	if cn := c.get(); cn != nil {
		cn.requestClose()
	}
}

// SendNowait queues a copy of b for sending and returns at once. It copies
// b into the worker's send pool (memory outside the Go heap) and does not
// allocate; b may be reused as soon as it returns. Bytes reach the peer in
// call order, never interleaved with other sends on this connection.
// Errors: ErrSendPoolExhausted (nothing was queued; the connection keeps
// working), ErrClosed or ErrStale, or the connection's earlier send error.
func (c ConnCtx) SendNowait(b []byte) error {
	cn := c.get()
	if cn == nil {
		return ErrStale
	}
	if err := cn.sendable(); err != nil {
		return err
	}
	if len(b) == 0 {
		return nil
	}
	return cn.enqueue(b)
}

// Send queues a copy of b like SendNowait and returns a future that
// resolves once the kernel has taken every byte of it (and of everything
// queued before it). Awaiting it is the backpressure primitive: a task
// that awaits each Send never queues more than it can write.
func (c ConnCtx) Send(b []byte) (SendFuture, error) {
	if err := c.SendNowait(b); err != nil {
		return SendFuture{}, err
	}
	cn := c.get()
	return SendFuture{c: c, mark: cn.queued, n: len(b)}, nil
}

// SendFuture is the pending result of Send.
type SendFuture struct {
	c    ConnCtx
	mark uint64 // connection's queued total once this send was queued
	n    int
}

// Await suspends the calling task until the send's bytes have all been
// taken by the kernel and returns their count. Any task on the
// connection's worker may await it (a proxy task can await its upstream's
// sends). It returns an error wrapping
// the kernel's syscall.Errno if the connection failed first, or ErrClosed
// when the connection was torn down. The zero SendFuture resolves at once
// with 0.
func (f SendFuture) Await() (int, error) {
	if f.c.w == nil {
		return 0, nil
	}
	for {
		cn := f.c.get()
		if cn == nil {
			return 0, ErrStale
		}
		if cn.sent >= f.mark {
			return f.n, nil
		}
		if cn.serr != nil {
			return 0, cn.serr
		}
		if cn.state == connClosing || cn.state == connClosed {
			return 0, ErrClosed
		}
		t := cn.w.cur
		if t == nil {
			return 0, ErrNotInTask
		}
		if t.conn != cn {
			cn.sendWaiters = append(cn.sendWaiters, t)
		}
		t.suspend(waitSend)
	}
}

func (cn *conn) sendable() error {
	if cn.serr != nil {
		return cn.serr
	}
	if cn.closeWanted || cn.state != connOpen {
		return ErrClosed
	}
	return nil
}

// requestClose closes after the send queue drains.
func (cn *conn) requestClose() {
	if cn.closeWanted {
		return
	}
	cn.closeWanted = true
	cn.eof = true
	if cn.sendIdle() {
		cn.startClose()
	}
}

// startClose cancels the recv and stages the socket's close.
func (cn *conn) startClose() {
	if cn.state != connOpen {
		return
	}
	w := cn.w
	cn.state = connClosing
	cn.eof = true
	if cn.recvArmed {
		w.be.stage(sqOp{code: opCancel, ud: packUD(udCancel, cn.idx, cn.gen, 0), addr: packUD(udRecv, cn.idx, cn.gen, 0)})
		cn.pending++
	}
	if cn.parked {
		cn.parked = false // dropped from the parked list lazily
	}
	n := w.detach(cn)
	cn.pending += n
	cn.closesLeft = n
	cn.wakeAll()
}

func (cn *conn) wakeAll() {
	if cn.task != nil {
		cn.task.wake(waitRecv | waitSend)
	}
	cn.wakeSendWaiters()
}

// wakeSendWaiters wakes other connections' tasks awaiting this one's sends;
// each re-registers if its future is still pending.
func (cn *conn) wakeSendWaiters() {
	for _, t := range cn.sendWaiters {
		t.wake(waitSend)
	}
	clear(cn.sendWaiters)
	cn.sendWaiters = cn.sendWaiters[:0]
}

// maybeFree returns the slot to the slab once nothing refers to it.
func (cn *conn) maybeFree() {
	if cn.state != connClosed || cn.pending != 0 || cn.task != nil {
		return
	}
	w := cn.w
	if cn.lent >= 0 {
		w.be.recycle(uint16(cn.lent))
		cn.lent = -1
	}
	cn.wakeSendWaiters()
	cn.dropQueue()
	w.st.closed++
	w.live--
	cn.state = connFree
	cn.gen++
	cn.acc = nil
	cn.accOff = 0
	cn.accShared = false
	cn.sink = nil
	cn.rerr, cn.serr = nil, nil
	w.freeSlots = append(w.freeSlots, cn.idx)
}

func sockaddrToAddr(sa unix.Sockaddr) net.Addr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(append([]byte(nil), a.Addr[:]...)), Port: a.Port}
	case *unix.SockaddrInet6:
		ip := net.IP(append([]byte(nil), a.Addr[:]...))
		zone := ""
		if a.ZoneId != 0 {
			if ifi, err := net.InterfaceByIndex(int(a.ZoneId)); err == nil {
				zone = ifi.Name
			}
		}
		return &net.TCPAddr{IP: ip, Port: a.Port, Zone: zone}
	case *unix.SockaddrUnix:
		return &net.UnixAddr{Name: a.Name, Net: "unix"}
	}
	return nil
}

// errnoErr turns a negative completion result into an error wrapping
// syscall.Errno, so errors.Is(err, syscall.ECONNRESET) works.
func errnoErr(op string, res int32) error {
	return &net.OpError{Op: op, Net: "tcp", Err: syscall.Errno(-res)}
}
