package ringline

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Outbound connections. Connect takes a slot of the calling task's worker
// and a socket (a plain socket(2): measured cheaper than IORING_OP_SOCKET,
// which would cost a loop turn before the connect could be staged, see
// BenchmarkSocketCreate), and stages the connect; with a timeout, the
// connect is linked to a timeout in the same submission (io_uring's
// IORING_OP_LINK_TIMEOUT; the epoll backend emulates it), so a timed
// connect costs no extra enter. Once the connect completes the connection
// becomes what an accepted one is: registered in the fixed-file table where
// it has room, multishot recv on provided buffers, the same send path. It
// belongs to the task that called Connect from the start: if that task
// ends first, the connect is cancelled and the socket closed.

var (
	// ErrConnLimit is returned by Connect when the worker already has
	// Config.MaxConnections connections (accepted and outbound together).
	// Nothing was opened.
	ErrConnLimit = errors.New("ringline: the worker has Config.MaxConnections connections open")
	// ErrNotOwner is returned by ConnectFuture.Await called from a task
	// other than the one that called Connect (which owns the new
	// connection).
	ErrNotOwner = errors.New("ringline: only the task that owns the connection may do this")
)

// sun_path's size on Linux: a longer Unix socket path cannot be named.
const sunPathLen = len(unix.RawSockaddrUnix{}.Path)

// Where, in a connection's iov area (unused until it sends), the connect's
// sockaddr and its linked timeout's timespec live until the kernel has
// them.
const (
	connSockaddrOff = 0
	connTimespecOff = 112
)

// ConnectFuture is the pending result of Connect, ConnectWithTimeout or
// ConnectUnix: the new outbound connection once the kernel has connected
// it. It belongs to the task that called Connect, which owns the new
// connection. The zero ConnectFuture resolves at once with ErrStale.
type ConnectFuture struct {
	c ConnCtx
}

// Connect starts connecting to addr (IPv4 or IPv6; an IPv4-mapped IPv6
// address connects over IPv4) and returns at once with a future for the
// connection. The connection belongs to the calling task (which must be
// a task of this TaskCtx's worker): only that task may receive on it, and
// it closes when the task ends, like an accepted connection closes when
// its OnAccept returns. Any task of the worker may send on it, close it or
// await its sends, as for any connection.
//
// Connect itself fails, having opened nothing, with ErrConnLimit when the
// worker has Config.MaxConnections connections, with an error wrapping
// syscall.EMFILE or ENFILE when the process is out of file descriptors,
// with ErrShutdown once the runtime is shutting down, and with
// ErrNotInWorker or ErrNotInTask when not called from a task of the
// worker. Failures of the connect itself are reported by
// ConnectFuture.Await.
func (t TaskCtx) Connect(addr netip.AddrPort) (ConnectFuture, error) {
	return t.connectIP("Connect", addr, 0)
}

// ConnectWithTimeout is Connect bounded by d: if the connection is not
// established within d, Await reports an error satisfying both
// errors.Is(err, os.ErrDeadlineExceeded) and errors.Is(err,
// syscall.ETIMEDOUT), and the socket is closed. The timeout rides in the
// same submission as the connect (a linked timeout), so it costs no extra
// system call. d <= 0 means no timeout, as for net.DialTimeout.
func (t TaskCtx) ConnectWithTimeout(addr netip.AddrPort, d time.Duration) (ConnectFuture, error) {
	return t.connectIP("ConnectWithTimeout", addr, d)
}

// ConnectUnix starts connecting to the Unix stream socket at path (a
// leading '@' names a Linux abstract socket), like Connect. A path that
// does not fit sun_path with its terminating NUL (longer than 107 bytes)
// is refused with an error wrapping syscall.ENAMETOOLONG, never
// truncated. A missing socket file is
// reported by Await as an error wrapping syscall.ENOENT, and a listener
// whose backlog is full refuses at once with syscall.EAGAIN (a Unix
// connect cannot wait for room without blocking).
func (t TaskCtx) ConnectUnix(path string) (ConnectFuture, error) {
	w, cur, err := t.caller("ConnectUnix")
	if err != nil {
		return ConnectFuture{}, err
	}
	var sa [2 + sunPathLen]byte
	n, err := putSockaddrUnix(sa[:], path)
	if err != nil {
		return ConnectFuture{}, &net.OpError{Op: "dial", Net: "unix", Addr: &net.UnixAddr{Name: path, Net: "unix"}, Err: err}
	}
	return w.connect(cur, unix.AF_UNIX, sa[:n], netip.AddrPort{}, path, 0)
}

// Connect is TaskCtx.Connect for the calling task (c.Task().Connect).
func (c ConnCtx) Connect(addr netip.AddrPort) (ConnectFuture, error) {
	return c.Task().connectIP("Connect", addr, 0)
}

// ConnectWithTimeout is TaskCtx.ConnectWithTimeout for the calling task.
func (c ConnCtx) ConnectWithTimeout(addr netip.AddrPort, d time.Duration) (ConnectFuture, error) {
	return c.Task().connectIP("ConnectWithTimeout", addr, d)
}

// ConnectUnix is TaskCtx.ConnectUnix for the calling task.
func (c ConnCtx) ConnectUnix(path string) (ConnectFuture, error) {
	return c.Task().ConnectUnix(path)
}

// RequestShutdown asks the runtime to shut down gracefully, exactly as
// Runtime.Shutdown does: listeners close, every task is told (receives
// return 0 and Err says ErrShutdown; the first Sleep, Select or Await of a
// pending connect returns ErrShutdown) and tasks that have not returned
// within Config.ShutdownTimeout are stopped. It returns at once; the
// calling task keeps running and is told like the others. It must be called on the
// worker (a task, or the handler factory): elsewhere it does nothing and
// returns ErrNotInWorker.
func (t TaskCtx) RequestShutdown() error {
	w := t.w
	if w == nil {
		return ErrNotInWorker
	}
	if !w.onWorker() {
		w.foreignCall("RequestShutdown")
		return ErrNotInWorker
	}
	if w.shutdown != nil {
		w.shutdown()
	} else {
		w.stop()
	}
	return nil
}

// RequestShutdown is TaskCtx.RequestShutdown (c.Task().RequestShutdown).
func (c ConnCtx) RequestShutdown() error { return c.Task().RequestShutdown() }

// caller resolves the calling task for method.
func (t TaskCtx) caller(method string) (*worker, *task, error) {
	w := t.w
	if w == nil {
		return nil, nil, ErrNotInWorker
	}
	if !w.onWorker() {
		w.foreignCall(method)
		return nil, nil, ErrNotInWorker
	}
	if w.cur == nil {
		return nil, nil, ErrNotInTask
	}
	return w, w.cur, nil
}

func (t TaskCtx) connectIP(method string, addr netip.AddrPort, d time.Duration) (ConnectFuture, error) {
	w, cur, err := t.caller(method)
	if err != nil {
		return ConnectFuture{}, err
	}
	ip := addr.Addr().Unmap()
	if !ip.IsValid() {
		return ConnectFuture{}, &net.OpError{Op: "dial", Net: "tcp", Err: fmt.Errorf("invalid address %v: %w", addr, syscall.EINVAL)}
	}
	var scope uint32
	if z := ip.Zone(); z != "" {
		// A link-local address names its interface; the lookup is a
		// netlink round trip, paid only by addresses that carry a zone.
		ifi, err := net.InterfaceByName(z)
		if err != nil {
			n, perr := strconv.Atoi(z)
			if perr != nil {
				return ConnectFuture{}, &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(addr), Err: err}
			}
			scope = uint32(n)
		} else {
			scope = uint32(ifi.Index)
		}
	}
	var sa [28]byte
	domain, n := putSockaddrInet(sa[:], netip.AddrPortFrom(ip, addr.Port()), scope)
	return w.connect(cur, domain, sa[:n], netip.AddrPortFrom(ip, addr.Port()), "", d)
}

// connect opens the socket and stages the connect (and its linked
// timeout) for a connection owned by t.
func (w *worker) connect(t *task, domain int, sa []byte, ap netip.AddrPort, path string, d time.Duration) (ConnectFuture, error) {
	network := "tcp"
	if domain == unix.AF_UNIX {
		network = "unix"
	}
	if w.stopped {
		return ConnectFuture{}, ErrShutdown
	}
	t.freeClosedOutbound()
	cn := w.allocConn()
	if cn == nil {
		w.st.connectErrors++
		return ConnectFuture{}, ErrConnLimit
	}
	// io_uring connects a blocking socket without blocking (as it accepts
	// blocking sockets), and must have one: on an O_NONBLOCK socket its
	// sends and receives fail with EAGAIN instead of waiting for room or
	// data. Only epoll needs O_NONBLOCK (else two fcntl calls). A Unix
	// socket connects non-blocking on both, so that a listener with a full
	// backlog refuses at once (EAGAIN), as a non-blocking connect(2) does,
	// instead of parking the connect in a kernel worker; io_uring then
	// clears the flag once connected.
	typ := unix.SOCK_STREAM | unix.SOCK_CLOEXEC
	if domain == unix.AF_UNIX || w.be.kind() != IOUring {
		typ |= unix.SOCK_NONBLOCK
	}
	fd, err := unix.Socket(domain, typ, 0)
	if err != nil {
		w.freeSlots = append(w.freeSlots, cn.idx)
		w.st.connectErrors++
		return ConnectFuture{}, &net.OpError{Op: "dial", Net: network, Addr: dialAddr(ap, path), Err: os.NewSyscallError("socket", err)}
	}
	if domain != unix.AF_UNIX {
		// Set before the handshake, so the first segment already goes
		// out without Nagle's delay.
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
	w.initConn(cn, fd, true)
	cn.state = connConnecting
	if cn.dial == nil {
		cn.dial = new(dialState)
	}
	*cn.dial = dialState{to: ap, path: path}
	t.own(cn)

	area := w.iovMem.b[int(cn.idx)*iovAreaSize:][:iovAreaSize]
	copy(area[connSockaddrOff:], sa)
	op := sqOp{code: opConnect, fd: int32(fd), ud: packUD(udConnect, cn.idx, cn.gen, 0),
		addr: w.iovMem.addr(int(cn.idx)*iovAreaSize + connSockaddrOff), len: uint32(len(sa))}
	cn.dial.left = 1
	if d > 0 {
		op.flags = opFLink
		ts := area[connTimespecOff : connTimespecOff+16]
		binary.NativeEndian.PutUint64(ts[0:], uint64(d/time.Second))
		binary.NativeEndian.PutUint64(ts[8:], uint64(d%time.Second))
		cn.dial.left = 2
		cn.dial.timeout = d
	}
	w.be.stage(op)
	if d > 0 {
		w.be.stage(sqOp{code: opLinkTimeout, ud: packUD(udLinkTimeout, cn.idx, cn.gen, 0),
			addr: w.iovMem.addr(int(cn.idx)*iovAreaSize + connTimespecOff)})
	}
	cn.pending += int32(cn.dial.left)
	return ConnectFuture{c: ConnCtx{w: w, idx: cn.idx, gen: cn.gen}}, nil
}

// dialState is an outbound connection's connect in progress: completions
// still expected (the connect and its linked timeout), the connect's
// result, whether the timeout fired, and where to. Only outbound
// connections have one (conn.dial), kept with the slot.
type dialState struct {
	left     uint8
	timedOut bool
	res      int32
	timeout  time.Duration
	to       netip.AddrPort
	path     string
}

// onConnectCQE takes the connect's completion and its linked timeout's; the
// outcome is decided once both are in (they may come in either order).
func (w *worker) onConnectCQE(cn *conn, kind uint64, res int32) {
	cn.pending--
	if kind == udLinkTimeout {
		// ETIME: the timeout fired and cancelled the connect. EALREADY:
		// it fired while the connect could not be cancelled any more.
		if res == -int32(syscall.ETIME) || res == -int32(syscall.EALREADY) {
			cn.dial.timedOut = true
		}
	} else {
		cn.dial.res = res
	}
	if cn.dial.left--; cn.dial.left > 0 {
		return
	}
	if cn.state != connConnecting {
		// Closed while connecting (Cancel, its task ended, shutdown):
		// the close is under way.
		w.st.connectErrors++
		return
	}
	if cn.dial.res == 0 {
		if cn.dial.path != "" && w.be.kind() == IOUring {
			_, _ = unix.FcntlInt(uintptr(cn.fd), unix.F_SETFL, 0) // see connect
		}
		cn.connected = true
		cn.state = connOpen
		w.st.connects++
		w.startConn(cn)
		cn.task.wake(waitConn)
		return
	}
	w.st.connectErrors++
	network := "tcp"
	if cn.dial.path != "" {
		network = "unix"
	}
	var err error
	if cn.dial.timedOut {
		err = &connectTimeoutError{d: cn.dial.timeout}
	} else {
		err = os.NewSyscallError("connect", syscall.Errno(-cn.dial.res))
	}
	cn.fail(&net.OpError{Op: "dial", Net: network, Addr: dialAddr(cn.dial.to, cn.dial.path), Err: err})
	cn.eof = true
	cn.closeWanted = true
	cn.startClose() // wakes the task
}

func dialAddr(ap netip.AddrPort, path string) net.Addr {
	if path != "" {
		return &net.UnixAddr{Name: path, Net: "unix"}
	}
	if !ap.IsValid() {
		return nil
	}
	return net.TCPAddrFromAddrPort(ap)
}

// Await suspends the calling task until the connect has completed and
// returns the new connection, or why there is none: an error wrapping the
// kernel's errno (errors.Is(err, syscall.ECONNREFUSED), ENOENT for a
// missing Unix socket, ...), a timeout (errors.Is(err,
// os.ErrDeadlineExceeded) and errors.Is(err, syscall.ETIMEDOUT)), an error
// wrapping syscall.ECANCELED after Cancel, ErrShutdown when the runtime
// shut down first. On failure the socket is closed and its slot released:
// there is nothing to close. Only the task that called Connect may await
// it (ErrNotOwner for another task of the worker; ErrNotInWorker off the
// worker, ErrNotInTask outside a task). Await once: after a failure has
// been reported the future is spent (ErrStale once its slot is reused).
func (f ConnectFuture) Await() (ConnCtx, error) {
	w := f.c.w
	if w == nil {
		return ConnCtx{}, ErrStale
	}
	if !w.onWorker() {
		w.foreignCall("ConnectFuture.Await")
		return ConnCtx{}, ErrNotInWorker
	}
	t := w.cur
	if t == nil {
		return ConnCtx{}, ErrNotInTask
	}
	for {
		cn := f.c.get()
		if cn == nil {
			return ConnCtx{}, ErrStale
		}
		if cn.task != t {
			return ConnCtx{}, ErrNotOwner
		}
		if cn.state == connConnecting {
			if t.tellStop() {
				// Shutdown: the connect is abandoned (cancelled when the
				// task ends and its connections close).
				return ConnCtx{}, ErrShutdown
			}
			t.suspend(waitConn)
			continue
		}
		if cn.connected {
			return f.c, nil
		}
		err := cn.err
		if err == nil {
			err = ErrClosed
		}
		// The connection never was: release it now rather than when the
		// task ends, so a task that retries does not pile up slots.
		t.disown(cn)
		return ConnCtx{}, err
	}
}

// Cancel cancels the pending connect: Await then reports an error
// wrapping syscall.ECANCELED (unless the connect had already completed:
// then the connection is aborted like ConnCtx.Cancel does). It is
// ConnCtx.Cancel on the connection being made, with the same rules.
func (f ConnectFuture) Cancel() error { return f.c.Cancel() }

func (f ConnectFuture) owner() *worker { return f.c.w }

func (f ConnectFuture) poll(t *task) (bool, uint8) {
	cn := f.c.get()
	if cn == nil || cn.state != connConnecting || cn.task != t {
		return true, 0 // Await reports it
	}
	return false, waitConn
}

// drop: the connect wakes its connection's owner, which is the only task
// that may wait on it; nothing to undo.
func (f ConnectFuture) drop(*task) {}

// disown drops c from the connections t drives; with no task and nothing
// left in the kernel its slot goes back to the slab.
func (t *task) disown(c *conn) {
	t.dropOwned(c)
	c.maybeFree()
}

// freeClosedOutbound releases the slots of t's outbound connections that
// are closed and that the kernel is done with; their handles go stale.
// Called as t connects again: until then a closed connection's Err and
// SendFutures still answer. A connection still closing then (draining to
// a slow peer) waits for the next connect or the task's end, and so does a
// connect that failed or was cancelled and that nobody awaited (its
// Await would report why; freeing it would make that ErrStale).
func (t *task) freeClosedOutbound() {
	for i := 0; i < len(t.owned); {
		c := t.owned[i]
		if c.outbound && c.connected && c.state == connClosed && c.pending == 0 && !c.parsing {
			t.disown(c) // removes c from t.owned: i now names the next one
			continue
		}
		i++
	}
}

// dropOwned removes c from t's connections.
func (t *task) dropOwned(c *conn) {
	for i, x := range t.owned {
		if x == c {
			last := len(t.owned) - 1
			copy(t.owned[i:], t.owned[i+1:])
			t.owned[last] = nil
			t.owned = t.owned[:last]
			break
		}
	}
	c.task = nil
}

// connectTimeoutError is a connect that did not complete within its
// timeout. Like net's timeouts it reports Timeout() and matches
// os.ErrDeadlineExceeded; it also matches syscall.ETIMEDOUT, the errno a
// kernel connect timeout gives.
type connectTimeoutError struct{ d time.Duration }

func (e *connectTimeoutError) Error() string {
	return "connect: timed out after " + e.d.String()
}
func (e *connectTimeoutError) Timeout() bool   { return true }
func (e *connectTimeoutError) Temporary() bool { return true }
func (e *connectTimeoutError) Is(target error) bool {
	return target == os.ErrDeadlineExceeded || target == syscall.ETIMEDOUT
}

// errCanceled is what Cancel records: it wraps syscall.ECANCELED.
var errCanceled error = &net.OpError{Op: "cancel", Net: "tcp", Err: os.NewSyscallError("cancel", syscall.ECANCELED)}

// putSockaddrInet writes a sockaddr_in (16 bytes) or sockaddr_in6 (28) for
// ap into b and returns the domain and length.
func putSockaddrInet(b []byte, ap netip.AddrPort, scope uint32) (int, int) {
	ip := ap.Addr()
	if ip.Is4() {
		binary.NativeEndian.PutUint16(b[0:], unix.AF_INET)
		binary.BigEndian.PutUint16(b[2:], ap.Port())
		a := ip.As4()
		copy(b[4:8], a[:])
		clear(b[8:16])
		return unix.AF_INET, 16
	}
	binary.NativeEndian.PutUint16(b[0:], unix.AF_INET6)
	binary.BigEndian.PutUint16(b[2:], ap.Port())
	clear(b[4:8]) // flow info
	a := ip.As16()
	copy(b[8:24], a[:])
	binary.NativeEndian.PutUint32(b[24:], scope)
	return unix.AF_INET6, 28
}

// putSockaddrUnix writes a sockaddr_un for path into b (2+sunPathLen
// bytes) and returns its length. A leading '@' names an abstract socket.
func putSockaddrUnix(b []byte, path string) (int, error) {
	if path == "" {
		return 0, fmt.Errorf("empty Unix socket path: %w", syscall.EINVAL)
	}
	if len(path) >= sunPathLen {
		// The path and its terminating NUL must fit (an abstract name's
		// '@' becomes its leading NUL): never truncated.
		return 0, fmt.Errorf("unix socket path is %d bytes; sun_path holds at most %d and a NUL: %w", len(path), sunPathLen-1, syscall.ENAMETOOLONG)
	}
	binary.NativeEndian.PutUint16(b[0:], unix.AF_UNIX)
	if path[0] == '@' {
		b[2] = 0
		copy(b[3:], path[1:])
		return 2 + len(path), nil // abstract names are length-delimited
	}
	for i := 0; i < len(path); i++ {
		if path[i] == 0 {
			return 0, fmt.Errorf("unix socket path contains a NUL byte: %w", syscall.EINVAL)
		}
	}
	copy(b[2:], path)
	b[2+len(path)] = 0
	return 2 + len(path) + 1, nil
}
