package ringline

import (
	"net"
	"os"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringline-go/ringline/internal/gid"
)

// Connection states. A slot is reused only once its connection is closed,
// its task has returned and no operation on it is still in the kernel.
const (
	connFree = iota
	connOpen
	connClosing // close ops staged; waiting for their completions
	connClosed
	// connConnecting: an outbound connection whose connect is in the
	// kernel; it becomes connOpen (or closes) when the connect completes.
	connConnecting
)

// conn is one connection slot of a worker's slab. Only the worker's
// goroutine (the loop and the tasks it resumes) touches it.
type conn struct {
	w    *worker
	task *task
	// pending counts completions still expected from the kernel;
	// closesLeft the close completions outstanding while closing.
	pending, closesLeft int32
	idx, gen            uint32
	fd                  int32
	// opFd/opFlags are what ring ops name: a fixed-file index with
	// opFFixed, or the plain fd.
	opFd     int32
	opFlags  uint8
	state    uint8
	outbound bool
	// connected: an outbound connection's connect succeeded.
	connected bool

	// Receive side.
	recvArmed  bool // a multishot recv is in the kernel
	recvPaused bool // flow control: the accumulator is full, recv cancelled
	parked     bool // ENOBUFS: waiting on the worker's parked list
	eof        bool // peer sent FIN, reset, or the connection closed
	accShared  bool // a retained Bytes may point into acc: never move it
	// sinkPending: SetRecvSink inside a parse closure, fill it after.
	sinkPending bool
	parsing     bool // a parse closure of this connection is running
	// A receive that gave up at the read deadline sets rdTimedOut, which
	// Err reports until the deadline moves or data is read.
	rdTimedOut bool
	lent       int32 // provided buffer lent to WithData, or -1
	lentOff    uint32
	lentEnd    uint32
	// err is why the connection failed, first cause only: a receive or
	// send errno, a runtime limit, a drain timeout, shutdown. nil after a
	// clean FIN or a Close.
	err        error
	lentq      []lentBuf // received behind the lent buffer, unread (recv.go)
	lentqHead  int       // the next of lentq to lend
	lentqBytes int
	acc        []byte // accumulator: acc[accOff:] is unread
	accOff     int
	sink       []byte
	sinkN      int

	// Send side.
	q            []sendSeg
	qHead        int
	queued, sent uint64 // byte totals: accepted by SendNowait/Send, taken by the kernel
	sending      bool
	sendZC       bool // the send in flight is zero-copy (sendInFlightUD)
	flushPending bool
	closeWanted  bool
	draining     bool // a drain deadline is armed (Close with sends queued)
	// Write side shut down (ShutdownWrite): shutWr once asked, shutStaged
	// once the shutdown op went to the kernel behind the last queued byte.
	shutWr, shutStaged bool
	// The copy tail: the pool slot the connection's last copy went into
	// (cslot) and where its free room starts (cend), while ctail. One of
	// the connection's segments (queued, held, or in an open SendParts
	// batch) refers to it as long as ctail holds (putSlot).
	ctail       bool
	cslot, cend uint32
	copies      uint32 // copyOut calls, for SendBuilder's refusal

	// What only some connections need lives behind pointers, nil until
	// first needed, so an idle connection stays small (docs/BENCHMARKS.md
	// §4.4): tm the deadlines and their timers (connTimers), sx the send
	// state of zero copy, SendParts, ForwardRecvBuf and cross-task waits
	// (sendExtra), dial an outbound connect in progress (dialState): each
	// kept with the slot for its next connection. tls is the TLS session
	// (tls.go), released with the connection.
	tm   *connTimers
	sx   *sendExtra
	dial *dialState
	tls  *tlsConn
}

// ConnCtx is a connection handle: a small value (worker, slot index,
// generation) that can be copied freely.
//
// A ConnCtx belongs to its worker. Its methods may be called only from the
// worker's goroutine: inside a task of that worker (OnAccept's body, or any
// task it runs), including from a parse closure where documented. Called
// from any other goroutine, every method except Index, Token and WorkerID
// does nothing and returns ErrNotInWorker (or, for methods without an
// error, its zero value), and the misuse is logged and counted in
// WorkerStats.ForeignCalls. The check is exact, not a racy read, and costs
// a few nanoseconds per call (docs/BENCHMARKS.md). A coroutine a task makes
// itself (with iter.Pull) is another goroutine, so calls from it are
// refused too.
//
// The receive methods (WithData, WithBytes, TryWithData, SetRecvSink,
// TakeRecvSink, RecvReady, and NetConn's Read) are further reserved to the task that owns the
// connection; any task of the worker may send on it, close it or await its
// sends.
//
// Once the connection's slot is released (it closed and its task
// returned, or, for an outbound one, its task connected again; the slot
// may then be reused), every method refuses the stale
// handle: it returns 0, false or ErrStale and never touches a new
// connection in the slot.
type ConnCtx struct {
	w   *worker
	idx uint32
	gen uint32
}

// ConnToken identifies a connection (worker, slot index and generation)
// without a pointer: it is comparable, usable as a map key, and may be
// handed to other goroutines, which reach the connection with
// Runtime.Send or Runtime.Post. It names a connection of one runtime only:
// kept across a restart, or used with another runtime, it may name an
// unrelated connection there.
type ConnToken struct {
	Worker uint32
	Index  uint32
	// Generation counts the slot's reuses; with 32 bits a stale handle
	// would need 4 billion reuses of its slot to look live again.
	Generation uint32
}

// AsyncEventHandler handles a worker's connections. The runtime makes one
// per worker with the factory given to Launch.
type AsyncEventHandler interface {
	// OnAccept is the body of an accepted connection's task. It runs on
	// the worker's goroutine as a coroutine; returning closes the
	// connection (after queued sends drain), and a panic or a
	// runtime.Goexit (t.FailNow, require.* in tests) closes only this
	// connection and is logged.
	//
	// It must not block: no channel receives or sends that wait, no
	// mutex held for long, no time.Sleep, no net calls. Any of those
	// stalls every connection of the worker (the watchdog logs it; see
	// Config.StallThreshold). It must never call runtime.LockOSThread or
	// runtime.UnlockOSThread: the Go runtime kills the process when a
	// coroutine's thread locking changes. Wait only through ringline's
	// suspending calls (WithData, WithBytes, RecvReady, SendFuture.Await,
	// TaskCtx.Sleep, Timer.Await, JoinHandle.Join, Select, JoinAll,
	// Mailbox.Recv).
	OnAccept(c ConnCtx)
}

// get returns the live conn for c, or nil when c is stale or empty. Only
// on the worker's goroutine (see own).
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

// onWorker reports whether the caller is the worker's loop goroutine or
// the task it is running.
func (w *worker) onWorker() bool {
	// A worker that has exited no longer owns its goroutine identity: the
	// runtime reuses g structs, so a new goroutine could match it.
	if w.exited.Load() {
		return false
	}
	g := gid.Get()
	return g == w.curG.Load() || g == w.g
}

// own resolves c for method: ErrNotInWorker off the worker (checked before
// anything of the worker is read), ErrStale for a stale or zero handle.
func (c ConnCtx) own(method string) (*conn, error) {
	w := c.w
	if w == nil {
		return nil, ErrStale
	}
	if !w.onWorker() {
		w.foreignCall(method)
		return nil, ErrNotInWorker
	}
	cn := c.get()
	if cn == nil {
		return nil, ErrStale
	}
	return cn, nil
}

// owned is own for the receive methods: the caller must be the task that
// owns the connection.
func (c ConnCtx) owned(method string) *conn {
	cn, err := c.own(method)
	if err != nil || cn.task == nil || cn.task != cn.w.cur {
		return nil
	}
	return cn
}

// Index returns the connection's slot index on its worker: dense, below
// Config.MaxConnections, usable to index per-connection arrays. A slot is
// reused after the connection is gone. Safe from any goroutine.
func (c ConnCtx) Index() int { return int(c.idx) }

// Token returns the connection's identity (index and generation). Safe
// from any goroutine.
func (c ConnCtx) Token() ConnToken {
	if c.w == nil {
		return ConnToken{Index: c.idx, Generation: c.gen}
	}
	return ConnToken{Worker: uint32(c.w.id), Index: c.idx, Generation: c.gen}
}

// Conn returns the handle for the connection tok names, for a task of its
// worker; a stale token's handle, or one of another worker's connection,
// is refused by every method (ErrStale).
func (t TaskCtx) Conn(tok ConnToken) ConnCtx {
	if t.w == nil || int(tok.Worker) != t.w.id {
		return ConnCtx{}
	}
	return ConnCtx{w: t.w, idx: tok.Index, gen: tok.Generation}
}

// WorkerID returns the index of the worker that owns the connection, or -1
// for the zero ConnCtx. Safe from any goroutine.
func (c ConnCtx) WorkerID() int {
	if c.w == nil {
		return -1
	}
	return c.w.id
}

// IsOutbound reports whether the connection was made by Connect rather
// than accepted.
func (c ConnCtx) IsOutbound() bool {
	cn, err := c.own("IsOutbound")
	return err == nil && cn.outbound
}

// PeerAddr returns the remote address, or false when the handle is stale,
// the socket no longer has a peer, or the call is not on the worker.
func (c ConnCtx) PeerAddr() (net.Addr, bool) {
	cn, err := c.own("PeerAddr")
	if err != nil || cn.fd < 0 {
		return nil, false
	}
	sa, serr := unix.Getpeername(int(cn.fd))
	if serr != nil {
		return nil, false
	}
	a := sockaddrToAddr(sa)
	return a, a != nil
}

// Err reports why the connection ended, or nil while it is healthy. It is
// nil after a clean close (the peer's FIN, or Close); after a reset it
// wraps the kernel's errno (errors.Is(err, syscall.ECONNRESET)); a
// connection the runtime closed reports why: ErrRecvLimit,
// ErrDrainTimeout, ErrShutdown. Only the first cause is kept: a send that
// fails with EPIPE after a reset does not replace the reset.
//
// While the connection is healthy, after a receive (WithData, WithBytes,
// RecvReady) returned early because the read deadline passed, Err returns
// an error satisfying errors.Is(err, os.ErrDeadlineExceeded) until the
// deadline is moved or a receive returns data; the connection stays
// usable. It returns ErrStale for a stale handle and ErrNotInWorker off
// the worker.
func (c ConnCtx) Err() error {
	cn, err := c.own("Err")
	if err != nil {
		return err
	}
	if cn.err == nil && cn.w.stopped {
		return ErrShutdown
	}
	if cn.err == nil && cn.rdTimedOut {
		return errReadDeadline
	}
	if cn.err == nil && cn.tls != nil && cn.tls.truncated {
		return ErrTLSTruncated
	}
	return cn.err
}

// Close closes the connection once its queued sends have drained: bytes
// sent before Close reach the peer, unless the peer does not read them
// within Config.CloseDrainTimeout, after which the connection is reset and
// Err reports ErrDrainTimeout. Zero-copy sends drain when the peer has
// acknowledged their bytes (the kernel's notification): until then the
// socket stays open, so the reset at the deadline can make the kernel let
// go of their memory. Close does not wait; the task may keep
// running, but receives report EOF and new sends fail with ErrClosed.
// Closing a stale or closed handle does nothing.
//
// A closed connection keeps its slot, so Err and the SendFutures of its
// last sends still answer, until its task returns; an outbound
// connection's is also released when its task next connects (Connect and
// its variants), after which the handle is stale.
func (c ConnCtx) Close() {
	if cn, err := c.own("Close"); err == nil {
		cn.requestClose()
	}
}

// SendNowait queues a copy of b for sending and returns at once. It copies
// b into the worker's send pool (memory outside the Go heap) and does not
// allocate; b may be reused as soon as it returns. Bytes reach the peer in
// call order, never interleaved with other sends on this connection.
//
// Errors (nothing was queued for any of them):
//   - ErrSendPoolExhausted: the worker's pool is full. The connection
//     keeps working. SendWait waits for room instead (first come, first
//     served across the worker's connections); or retry after this
//     connection's earlier sends complete (await the SendFuture of one of
//     them). Awaiting a future of a connection with nothing queued
//     returns at once, so do not retry in a loop on it.
//   - ErrSendQueueFull: b would take this connection's queue past
//     Config.MaxSendQueue (a peer that does not read). SendWait waits
//     until it has room; or await an earlier SendFuture, or close the
//     connection.
//   - ErrClosed or ErrStale; ErrNotInWorker off the worker; or the
//     connection's failure (Err), e.g. an error wrapping ECONNRESET.
func (c ConnCtx) SendNowait(b []byte) error {
	cn, err := c.own("SendNowait")
	if err != nil {
		return err
	}
	if err := cn.sendable(); err != nil {
		return err
	}
	if len(b) == 0 {
		return nil
	}
	if cn.tls != nil {
		return cn.tls.write(b)
	}
	return cn.enqueue(b) // not through queueSend: one frame less on the task's stack
}

// Send queues a copy of b like SendNowait and returns a future that
// resolves once the kernel has taken every byte of it (and of everything
// queued before it). Awaiting it is the backpressure primitive: a task
// that awaits each Send never queues more than it can write. Errors are
// SendNowait's.
func (c ConnCtx) Send(b []byte) (SendFuture, error) {
	cn, err := c.own("Send")
	if err != nil {
		return SendFuture{}, err
	}
	if err := cn.sendable(); err != nil {
		return SendFuture{}, err
	}
	if len(b) > 0 {
		if cn.tls != nil {
			err = cn.tls.write(b)
		} else {
			err = cn.enqueue(b)
		}
		if err != nil {
			return SendFuture{}, err
		}
	}
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
// sends). It returns the connection's failure (Err: an error wrapping the
// kernel's syscall.Errno, or the runtime's reason) if the connection failed
// first, ErrClosed when it was torn down, ErrStale once its slot was
// released, ErrNotInWorker off the worker and ErrNotInTask on the worker but
// outside a task. The zero SendFuture resolves at once with 0.
func (f SendFuture) Await() (int, error) {
	if f.c.w == nil {
		return 0, nil
	}
	for {
		cn, err := f.c.own("SendFuture.Await")
		if err != nil {
			return 0, err
		}
		if cn.sent >= f.mark {
			return f.n, nil
		}
		if cn.err != nil {
			return 0, cn.err
		}
		if cn.state == connClosing || cn.state == connClosed {
			return 0, ErrClosed
		}
		if cn.writeExpired() {
			return 0, errWriteDeadline
		}
		t := cn.w.cur
		if t == nil {
			return 0, ErrNotInTask
		}
		_, mask := f.poll(t)
		t.suspend(mask)
	}
}

func (f SendFuture) owner() *worker { return f.c.w }

func (f SendFuture) poll(t *task) (bool, uint8) {
	cn := f.c.get()
	if cn == nil || cn.sent >= f.mark || cn.err != nil || cn.state == connClosing || cn.state == connClosed {
		return true, 0
	}
	if cn.writeExpired() {
		return true, 0 // Await reports the deadline
	}
	if t != cn.task {
		x := cn.extra()
		x.sendWaiters = addWaiter(x.sendWaiters, t)
	}
	return false, waitSend
}

func (f SendFuture) drop(t *task) {
	if cn := f.c.get(); cn != nil && cn.sx != nil {
		cn.sx.sendWaiters = removeWaiter(cn.sx.sendWaiters, t)
	}
}

func (cn *conn) sendable() error {
	if cn.err != nil {
		return cn.err
	}
	if cn.closeWanted || cn.state != connOpen {
		return ErrClosed
	}
	if cn.shutWr {
		return ErrWriteShutdown
	}
	return nil
}

// ErrWriteShutdown is returned by sends on a connection whose write side
// was shut down with ShutdownWrite. errors.Is(err, ErrClosed) also holds.
var ErrWriteShutdown error = writeShutdownError{}

type writeShutdownError struct{}

func (writeShutdownError) Error() string        { return "ringline: write side shut down (ShutdownWrite)" }
func (writeShutdownError) Is(target error) bool { return target == ErrClosed }

// ShutdownWrite half-closes the connection: once every byte queued before
// it has been taken by the kernel, a FIN follows them (shutdown(2) with
// SHUT_WR), so the peer reads all of them and then EOF. The read side
// stays open: WithData keeps returning what the peer sends until it
// closes its side. Sends made after ShutdownWrite fail with
// ErrWriteShutdown; SendFutures of earlier sends resolve as usual. It does
// not wait. Calling it again does nothing; on a closed or closing
// connection it returns ErrClosed, on a failed one its failure (Err).
func (c ConnCtx) ShutdownWrite() error {
	cn, err := c.own("ShutdownWrite")
	if err != nil {
		return err
	}
	if cn.shutWr {
		return nil
	}
	if cn.err != nil {
		return cn.err
	}
	if cn.closeWanted || cn.state != connOpen {
		return ErrClosed
	}
	if cn.tls != nil {
		cn.tls.closeWrite() // close_notify, behind the queued bytes, before the FIN
	}
	cn.shutWr = true
	cn.maybeShutdownWrite()
	return nil
}

// maybeShutdownWrite stages the half-close once the send queue is empty;
// onSendCQE calls it again as sends complete.
func (cn *conn) maybeShutdownWrite() {
	if !cn.shutWr || cn.shutStaged || !cn.sendIdle() || cn.state != connOpen || cn.err != nil {
		return
	}
	cn.shutStaged = true
	cn.pending++
	cn.w.be.stage(sqOp{code: opShutdown, fd: cn.opFd, flags: cn.opFlags,
		ud: packUD(udShutdown, cn.idx, cn.gen, 0), aux: unix.SHUT_WR})
}

// Cancel aborts the connection: it cancels every operation the
// connection has in the kernel (a pending connect, its receive, a send in
// flight) and closes it without waiting. A pending connect's
// ConnectFuture resolves with an error wrapping syscall.ECANCELED; a task
// suspended in WithData, WithBytes or RecvReady wakes, gets 0 (false), and
// Err reports an error wrapping syscall.ECANCELED; SendFutures not yet
// resolved fail with it. Unlike Close it does not drain: queued bytes are
// dropped, and when any were (or a send was in flight, or a zero-copy
// send's bytes await the peer's acknowledgement, which holds their
// memory) the socket is reset (SO_LINGER 0) rather than closed with a
// FIN, so the peer cannot mistake the cut stream for a complete one and
// the kernel lets go of the memory at once. Both backends behave alike.
// Any task of the worker may call it. It returns nil, ErrStale for a stale
// handle and ErrNotInWorker off the worker; cancelling a connection that
// is already closing does nothing.
func (c ConnCtx) Cancel() error {
	cn, err := c.own("Cancel")
	if err != nil {
		return err
	}
	cn.abort(errCanceled)
	return nil
}

// abort is Cancel: fail with err, cancel what is in the kernel, close.
func (cn *conn) abort(err error) {
	switch cn.state {
	case connConnecting:
		cn.fail(err)
		cn.eof = true
		cn.closeWanted = true
		cn.startClose() // cancels the connect; wakes the task
	case connOpen:
		// A reset only when bytes could still be in flight: an idle
		// connection closes cleanly.
		cn.cut(err, !cn.sendIdle() || cn.zcHeld())
	}
}

// The errors a deadline produces: like net.Conn's, they satisfy
// errors.Is(err, os.ErrDeadlineExceeded) and report Timeout() true.
var (
	errReadDeadline  error = &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	errWriteDeadline error = &net.OpError{Op: "write", Net: "tcp", Err: os.ErrDeadlineExceeded}
)

// SetDeadline sets the read and write deadlines, with net.Conn's meaning.
func (c ConnCtx) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the time after which a receive that is waiting
// (WithData, WithBytes, RecvReady) stops waiting: it returns 0 (or false),
// and Err reports an error satisfying errors.Is(err,
// os.ErrDeadlineExceeded). The connection stays usable and data that
// arrives later is kept. A deadline in the past makes receives that would
// wait return at once; the zero time removes the deadline. Setting a new
// deadline re-arms; renewing it after every parse (an idle timeout) is
// cheap: a later deadline costs a store, not a timer operation. Arming,
// firing and moving deadlines cost no syscall.
func (c ConnCtx) SetReadDeadline(t time.Time) error {
	cn, err := c.own("SetReadDeadline")
	if err != nil {
		return err
	}
	cn.rdTimedOut = false
	if t.IsZero() && cn.tm == nil {
		return nil
	}
	tm := cn.timers()
	cn.setDeadline(&tm.rdDeadline, &tm.rdT, tmReadDeadline, t)
	return nil
}

// SetWriteDeadline sets the time after which SendFuture.Await of this
// connection stops waiting and returns an error satisfying errors.Is(err,
// os.ErrDeadlineExceeded). The bytes stay queued and the connection
// usable: the deadline bounds the wait, not the send. The zero time
// removes it.
func (c ConnCtx) SetWriteDeadline(t time.Time) error {
	cn, err := c.own("SetWriteDeadline")
	if err != nil {
		return err
	}
	if t.IsZero() && cn.tm == nil {
		return nil
	}
	tm := cn.timers()
	cn.setDeadline(&tm.wrDeadline, &tm.wrT, tmWriteDeadline, t)
	return nil
}

func (cn *conn) setDeadline(dl *int64, n *timerNode, kind uint8, t time.Time) {
	w := cn.w
	if t.IsZero() {
		*dl = 0
		w.timers.remove(n)
		return
	}
	at := max(w.clockAt(t), 1)
	*dl = at
	// A later deadline leaves an armed timer where it is: it fires, sees
	// the deadline moved and re-arms once (deadlineFired). That is the
	// idle-timeout renewal after every parse, so it is only a store.
	if n.armed() && at >= n.at {
		return
	}
	w.timers.set(n, at)
	// Waiters re-check: a deadline already past ends their wait now.
	if at <= w.now() {
		ev := waitRecv
		if kind == tmWriteDeadline {
			ev = waitSend
		}
		cn.deadlineFired(n, at, ev)
	}
}

// deadlineFired runs when a deadline timer goes off: if the deadline has
// moved later it re-arms, otherwise it wakes who waits on that side.
func (cn *conn) deadlineFired(n *timerNode, deadline int64, ev uint8) {
	if deadline == 0 || cn.state == connFree {
		return
	}
	w := cn.w
	if deadline > w.now() {
		w.timers.set(n, deadline)
		return
	}
	w.timers.remove(n)
	if cn.task != nil {
		cn.task.wake(ev)
	}
	if ev == waitSend && cn.sx != nil {
		for _, t := range cn.sx.sendWaiters {
			t.wake(waitSend)
		}
	}
}

// readExpired reports whether the read deadline has passed, and notes it
// for Err.
func (cn *conn) readExpired() bool {
	if cn.tm == nil || cn.tm.rdDeadline == 0 || cn.w.now() < cn.tm.rdDeadline {
		return false
	}
	cn.rdTimedOut = true
	return true
}

// writeExpired reports whether the write deadline has passed.
func (cn *conn) writeExpired() bool {
	return cn.tm != nil && cn.tm.wrDeadline != 0 && cn.w.now() >= cn.tm.wrDeadline
}

// connTimers are a connection's deadlines (worker clock, 0: none) and its
// timers: the read and write deadlines' and the drain deadline's after
// Close. Most connections never arm one, so they live apart from conn
// (idle memory per connection, docs/BENCHMARKS.md §4) and stay with the
// slot once made.
type connTimers struct {
	rdDeadline, wrDeadline int64
	drainT, rdT, wrT       timerNode
}

// timers returns the connection's connTimers, making them on first use.
// That is usually inside the connection's task, whose stack has no room
// for an allocation (a task's stack budget, docs/ARCHITECTURE.md), so
// they come from the worker's spares, which resume keeps stocked.
func (cn *conn) timers() *connTimers {
	if cn.tm != nil {
		return cn.tm
	}
	w := cn.w
	tm, ok := pop(&w.spareTimers)
	if !ok {
		tm = new(connTimers)
	}
	tm.drainT = timerNode{kind: tmDrain, conn: cn}
	tm.rdT = timerNode{kind: tmReadDeadline, conn: cn}
	tm.wrT = timerNode{kind: tmWriteDeadline, conn: cn}
	cn.tm = tm
	return tm
}

// timerHeadroom is how many timers a task may arm in one run before the
// timer heap grows on its stack, and how many spare connTimers and pooled
// nodes a task may take in one run before it allocates one on its stack.
const timerHeadroom = 8

// timersLow says whether the worker's timer stock has fallen below
// timerHeadroom anywhere (stockTimers).
func (w *worker) timersLow() bool {
	return len(w.spareTimers) < timerHeadroom || len(w.timerPool) < timerHeadroom ||
		cap(w.timers)-len(w.timers) < timerHeadroom
}

// stockTimers refills the worker's spare connTimers (a block at a time)
// and its pool of timer nodes, and makes room in the timer heap, so that
// each has timerHeadroom to spare. The pool's slice always has room for
// every node, so giving one back (putTimer) never grows it. It runs on the
// worker's own stack (before a task resumes), never a task's.
//
//go:noinline
func (w *worker) stockTimers() {
	if len(w.spareTimers) < timerHeadroom {
		blk := make([]connTimers, 32)
		for i := range blk {
			w.spareTimers = append(w.spareTimers, &blk[i])
		}
	}
	if cap(w.timers)-len(w.timers) < timerHeadroom {
		w.timers = slices.Grow(w.timers, max(timerHeadroom, len(w.timers)))
	}
	if len(w.timerPool) < timerHeadroom {
		w.timerNodes += timerHeadroom
		w.timerPool = slices.Grow(w.timerPool, w.timerNodes-len(w.timerPool))
		for range timerHeadroom {
			w.timerPool = append(w.timerPool, &pooledTimer{timerNode: timerNode{kind: tmTask, pooled: true}})
		}
	}
}

// fail records why the connection failed; the first cause wins.
func (cn *conn) fail(err error) {
	if cn.err == nil {
		cn.err = err
	}
}

// requestClose closes after the send queue drains (zero-copy
// notifications included), within Config.CloseDrainTimeout.
func (cn *conn) requestClose() {
	if cn.closeWanted {
		return
	}
	if cn.tls != nil {
		cn.tls.closing() // close_notify behind the queued bytes
	}
	cn.closeWanted = true
	cn.eof = true
	if cn.closeReady() {
		cn.startClose()
	} else if !cn.draining && cn.state == connOpen {
		cn.draining = true
		cn.w.timers.set(&cn.timers().drainT, addClock(cn.w.now(), cn.w.cfg.CloseDrainTimeout))
	}
}

// drainExpired resets a closing connection whose peer did not take its
// queued bytes in time, so one peer that never reads cannot pin send pool
// slots for ever: SO_LINGER 0 makes the close send RST, the send in
// flight is cancelled, and the slots are freed once its completion says
// the kernel is done with them. The reset also drops what the socket
// holds, so zero-copy notifications come at once.
func (cn *conn) drainExpired() {
	if !cn.draining || cn.state != connOpen {
		return
	}
	cn.w.st.drainTimeouts++
	cn.reset(ErrDrainTimeout)
}

// reset fails an open connection with err and closes it with RST
// (SO_LINGER 0): what is queued is dropped, the send in flight cancelled,
// and the kernel drops what the socket holds, so zero-copy notifications
// come at once.
func (cn *conn) reset(err error) { cn.cut(err, true) }

// cut fails an open connection with err and closes it without sending
// what is queued: the send in flight is cancelled (by the user_data it was
// staged with, a zero-copy send's included) and onSendCQE closes once the
// kernel gives it back; with rst the socket closes with RST.
func (cn *conn) cut(err error, rst bool) {
	w := cn.w
	if cn.draining {
		cn.draining = false
		w.timers.remove(&cn.tm.drainT)
	}
	cn.fail(err)
	cn.eof = true
	cn.closeWanted = true
	if rst {
		cn.resetOnClose()
	}
	if cn.sending {
		w.be.stage(sqOp{code: opCancel, ud: packUD(udCancel, cn.idx, cn.gen, 0), addr: cn.sendInFlightUD()})
		cn.pending++
		cn.wakeAll()
		return // onSendCQE drops the queue and closes
	}
	cn.dropQueue()
	cn.startClose()
}

// resetOnClose makes the socket's close a reset (SO_LINGER 0): the kernel
// drops what it still holds, and the peer sees an error instead of a clean
// end of stream.
func (cn *conn) resetOnClose() {
	if cn.fd >= 0 {
		_ = unix.SetsockoptLinger(int(cn.fd), unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	}
}

// startClose cancels the recv (or a pending connect) and stages the
// socket's close.
func (cn *conn) startClose() {
	if cn.state != connOpen && cn.state != connConnecting {
		return
	}
	w := cn.w
	if cn.state == connConnecting && cn.dial.left > 0 {
		// The connect goes first; its linked timeout goes with it.
		w.be.stage(sqOp{code: opCancel, ud: packUD(udCancel, cn.idx, cn.gen, 0), addr: packUD(udConnect, cn.idx, cn.gen, 0)})
		cn.pending++
	}
	if cn.zcHeld() {
		// Zero-copy bytes still unacknowledged (a connection that failed
		// closes without waiting for them): with a FIN the orphaned
		// socket would go on sending from memory ringline must get back,
		// for as long as a peer that does not read keeps it; a reset
		// makes the kernel drop them and notify at once.
		cn.resetOnClose()
	}
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
	cn.pending += int32(n)
	cn.closesLeft = int32(n)
	cn.wakeAll()
}

func (cn *conn) wakeAll() {
	if cn.task != nil {
		cn.task.wake(waitRecv | waitSend | waitConn)
	}
	cn.wakeSendWaiters()
}

// wakeSendWaiters wakes other connections' tasks awaiting this one's sends;
// each re-registers if its future is still pending.
func (cn *conn) wakeSendWaiters() {
	x := cn.sx
	if x == nil {
		return
	}
	for _, t := range x.sendWaiters {
		t.wake(waitSend)
	}
	clear(x.sendWaiters)
	x.sendWaiters = x.sendWaiters[:0]
}

// maybeFree returns the slot to the slab once nothing refers to it.
func (cn *conn) maybeFree() {
	if cn.state != connClosed || cn.pending != 0 {
		return
	}
	if cn.task != nil {
		// A connection's slot is held until its task returns, so the task
		// can still ask Err and await its sends after Close. An outbound
		// one is also released when its task connects again
		// (freeClosedOutbound), so a task that connects and closes again
		// and again does not pile up slots.
		return
	}
	w := cn.w
	cn.dropLent()
	cn.wakeSendWaiters()
	cn.dropQueue()
	cn.abandonBatch()
	if tm := cn.tm; tm != nil {
		w.timers.remove(&tm.drainT)
		w.timers.remove(&tm.rdT)
		w.timers.remove(&tm.wrT)
		tm.rdDeadline, tm.wrDeadline = 0, 0
	}
	if cn.tls != nil {
		cn.tls.release()
		cn.tls = nil
	}
	if !cn.outbound || cn.connected {
		w.st.closed++ // a connect that failed never was a connection
	}
	w.live--
	cn.state = connFree
	cn.gen++
	cn.acc = nil
	cn.accOff = 0
	cn.accShared = false
	cn.sink = nil
	cn.err = nil
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
