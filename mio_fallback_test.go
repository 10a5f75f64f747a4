package ringline

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
	"golang.org/x/sys/unix"
)

// Backend-level conformance: the same operations staged on every backend
// implementation must give the same completion stream (the io_uring
// semantics the core is written against). The epoll backend runs in both
// readiness modes, so the one not chosen by default stays correct too.

type beImpl struct {
	name string
	mk   func(bc backendConfig) (backend, error)
}

func backendImpls() []beImpl {
	// io_uring is always listed: forEachImpl skips it visibly (or fails,
	// under RINGLINE_REQUIRE_IOURING=1) when it cannot run here.
	out := []beImpl{{"iouring", newURing}}
	for _, edge := range []bool{true, false} {
		name := "epoll-edge"
		if !edge {
			name = "epoll-level"
		}
		out = append(out, beImpl{name, func(bc backendConfig) (backend, error) {
			b, err := newEpollBackend(bc, edge)
			if err != nil {
				return nil, err
			}
			return b, nil
		}})
	}
	return out
}

// beHarness drives one backend directly from a locked thread (io_uring's
// SINGLE_ISSUER wants every submission from the thread that made the ring).
type beHarness struct {
	t    *testing.T
	be   backend
	mem  region // scratch outside the Go heap: send data, msghdr, sockaddr, timespec
	pend []cqEntry
}

const beScratch = 4 << 20

func forEachImpl(t *testing.T, bc backendConfig, f func(t *testing.T, h *beHarness)) {
	t.Helper()
	forImpls(t, backendImpls(), bc, f)
}

// forEachEpollImpl is forEachImpl over the epoll backend's two modes
// only, for what io_uring has no counterpart of (parking).
func forEachEpollImpl(t *testing.T, bc backendConfig, f func(t *testing.T, h *beHarness)) {
	t.Helper()
	var epoll []beImpl
	for _, impl := range backendImpls() {
		if strings.HasPrefix(impl.name, "epoll") {
			epoll = append(epoll, impl)
		}
	}
	forImpls(t, epoll, bc, f)
}

func forImpls(t *testing.T, impls []beImpl, bc backendConfig, f func(t *testing.T, h *beHarness)) {
	t.Helper()
	for _, impl := range impls {
		t.Run(impl.name, func(t *testing.T) {
			if impl.name == "iouring" {
				noteMissingIOUring(t)
			}
			h, done := newHarness(t, func() (backend, error) { return impl.mk(bc) })
			defer done()
			f(t, h)
		})
	}
}

// newHarness locks the calling goroutine to its thread (io_uring's single
// issuer), makes a backend with mk and maps scratch memory for it; done
// undoes all three, on the same goroutine.
func newHarness(t *testing.T, mk func() (backend, error)) (h *beHarness, done func()) {
	t.Helper()
	runtime.LockOSThread()
	be, err := mk()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("backend: %v", err)
	}
	mem, err := mapRegion(beScratch)
	if err != nil {
		be.close()
		runtime.UnlockOSThread()
		t.Fatalf("scratch memory: %v", err)
	}
	return &beHarness{t: t, be: be, mem: mem}, func() {
		mem.unmap()
		be.close()
		runtime.UnlockOSThread()
	}
}

func smallBC() backendConfig {
	return backendConfig{ringEntries: 64, bufCount: 8, bufSize: 4096, maxConns: 64, plainFDs: true}
}

// pump enters once and keeps every completion except the io_uring wake's.
func (h *beHarness) pump(wait bool, timeout time.Duration) {
	cq, err := h.be.enter(wait, timeout)
	require.NoError(h.t, err)
	for _, e := range cq {
		if udKind(e.ud) != udWake {
			h.pend = append(h.pend, e)
		}
	}
}

// next returns the next completion for ud, entering until it arrives.
func (h *beHarness) next(ud uint64) cqEntry {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for i, e := range h.pend {
			if e.ud == ud {
				h.pend = append(h.pend[:i], h.pend[i+1:]...)
				return e
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("no completion for ud %#x within 5s (pending: %v)", ud, h.pend)
		}
		h.pump(true, 20*time.Millisecond)
	}
}

// none checks that nothing completes for ud within d.
func (h *beHarness) none(ud uint64, d time.Duration) {
	h.t.Helper()
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		h.pump(true, 10*time.Millisecond)
	}
	for _, e := range h.pend {
		require.NotEqual(h.t, ud, e.ud, "unexpected completion %+v", e)
	}
}

// eventfdRead stages a read of 8 bytes, at offset off of the scratch
// memory, on a new non-blocking eventfd (closed when the test ends),
// which completes only once the eventfd is written; it returns the fd.
func (h *beHarness) eventfdRead(ud uint64, off int) int {
	h.t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	require.NoError(h.t, err)
	h.t.Cleanup(func() { unix.Close(fd) })
	h.be.stage(sqOp{code: opRead, fd: int32(fd), ud: ud, addr: h.mem.addr(off), len: 8})
	return fd
}

func (h *beHarness) put(off int, b []byte) (uint64, uint32) {
	copy(h.mem.b[off:], b)
	return h.mem.addr(off), uint32(len(b))
}

// tcpPair returns a connected loopback pair: ours (blocking, as io_uring's
// accept hands them out, so the epoll backend must not rely on O_NONBLOCK)
// and the peer's (blocking, with 5s timeouts so a failing test cannot hang).
func tcpPair(t *testing.T) (ours, peer int) {
	t.Helper()
	return tcpPairBuf(t, 0, 0)
}

// tcpPairBuf is tcpPair with small buffers (0: the default): ours sends
// through sndbuf bytes, the peer receives through rcvbuf. They are set
// before the connection exists; shrinking a receive buffer on an open
// connection retracts its window and stalls TCP for seconds.
func tcpPairBuf(t *testing.T, sndbuf, rcvbuf int) (ours, peer int) {
	t.Helper()
	lfd, port := tcpListener(t)
	if sndbuf > 0 {
		require.NoError(t, unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, sndbuf)) // inherited by accept
	}
	peer = tcpDialBuf(t, port, rcvbuf)
	ours, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(ours) })
	return ours, peer
}

func tcpListener(t *testing.T) (int, int) {
	t.Helper()
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(lfd) })
	require.NoError(t, unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, unix.Listen(lfd, 64))
	sa, err := unix.Getsockname(lfd)
	require.NoError(t, err)
	return lfd, sa.(*unix.SockaddrInet4).Port
}

func tcpDial(t *testing.T, port int) int {
	t.Helper()
	return tcpDialBuf(t, port, 0)
}

func tcpDialBuf(t *testing.T, port, rcvbuf int) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	if rcvbuf > 0 {
		require.NoError(t, unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf))
	}
	tv := unix.Timeval{Sec: 5}
	require.NoError(t, unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv))
	require.NoError(t, unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv))
	require.NoError(t, sockConnect(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: port}))
	return fd
}

// sockConnect is connect(2) on a blocking test socket. A signal interrupts
// it (EINTR) while the handshake goes on in the kernel: wait for that to
// end (up to 5 s) and report how it did.
func sockConnect(fd int, sa unix.Sockaddr) error {
	err := unix.Connect(fd, sa)
	if err != unix.EINTR {
		return err
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := unix.Poll(pfd, max(0, int(time.Until(deadline)/time.Millisecond)))
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return err
		case n == 0:
			return unix.ETIMEDOUT
		}
		if soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || soErr != 0 {
			if err == nil {
				err = unix.Errno(soErr)
			}
			return err
		}
		return nil
	}
}

// resetPeer resets the connection of a test socket from tcpPair: its
// last close with a zero linger sends an RST (processed before the call
// returns, on loopback). The close is a dup3 of a placeholder onto fd, so
// the number stays taken until the pair's cleanup closes it, and never
// closes a descriptor opened meanwhile.
func resetPeer(t *testing.T, fd int) {
	t.Helper()
	require.NoError(t, unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}))
	ph, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	require.NoError(t, unix.Dup3(ph, fd, unix.O_CLOEXEC))
	require.NoError(t, unix.Close(ph))
}

// sockRead and writeAll are read(2) and write(2) on a blocking test
// socket. With SO_RCVTIMEO/SO_SNDTIMEO set, a signal makes a blocked call
// fail with EINTR rather than restart (signal(7)), and the Go runtime
// signals threads to preempt goroutines (SIGURG): retry.
func sockRead(fd int, b []byte) (int, error) {
	for {
		n, err := unix.Read(fd, b)
		if err != unix.EINTR {
			return n, err
		}
		sockEINTRs.Add(1)
	}
}

// sockEINTRs counts the calls sockRead and writeAll made again.
var sockEINTRs atomic.Int64

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			sockEINTRs.Add(1)
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func readN(t *testing.T, fd, n int) []byte {
	t.Helper()
	got, err := readFull(fd, n)
	require.NoError(t, err)
	return got
}

// readFull reads n bytes from a blocking fd; usable from any goroutine.
func readFull(fd, n int) ([]byte, error) {
	got := make([]byte, 0, n)
	buf := make([]byte, 64<<10)
	for len(got) < n {
		k, err := sockRead(fd, buf[:min(len(buf), n-len(got))])
		if err != nil {
			return got, err
		}
		if k == 0 {
			return got, fmt.Errorf("EOF after %d of %d bytes", len(got), n)
		}
		got = append(got, buf[:k]...)
	}
	return got, nil
}

func ud(kind uint64, idx uint32) uint64 { return packUD(kind, idx, 3, 0) }

func bufID(e cqEntry) uint16 { return uint16(e.flags >> cqeBufferShift) }

func TestBackendRecvMultishot(t *testing.T) {
	forEachImpl(t, smallBC(), func(t *testing.T, h *beHarness) {
		ours, peer := tcpPair(t)
		recv := ud(udRecv, 1)
		h.be.stage(sqOp{code: opRecvMulti, fd: int32(ours), ud: recv})
		h.none(recv, 30*time.Millisecond)
		for _, msg := range []string{"hello", "world!"} {
			err := writeAll(peer, []byte(msg))
			require.NoError(t, err)
			e := h.next(recv)
			require.Equal(t, int32(len(msg)), e.res)
			require.Equal(t, uint32(cqeFBuffer|cqeFMore), e.flags&(cqeFBuffer|cqeFMore), "buffer and still armed")
			assert.Equal(t, msg, string(h.be.buffer(bufID(e))[:e.res]))
			h.be.recycle(bufID(e))
		}
		require.NoError(t, unix.Shutdown(peer, unix.SHUT_WR))
		e := h.next(recv)
		assert.Equal(t, int32(0), e.res, "EOF")
		assert.Zero(t, e.flags&cqeFMore, "EOF ends the multishot recv")
		assert.Equal(t, 8, h.be.buffersFree())
	})
}

func TestBackendRecvENOBUFS(t *testing.T) {
	bc := smallBC()
	bc.bufCount, bc.bufSize = 2, 256
	forEachImpl(t, bc, func(t *testing.T, h *beHarness) {
		ours, peer := tcpPair(t)
		recv := ud(udRecv, 2)
		h.be.stage(sqOp{code: opRecvMulti, fd: int32(ours), ud: recv})
		msg := pattern(1000, 9)
		err := writeAll(peer, msg)
		require.NoError(t, err)
		var got []byte
		var bids []uint16
		for {
			e := h.next(recv)
			if e.res < 0 {
				require.Equal(t, -int32(syscall.ENOBUFS), e.res)
				require.Zero(t, e.flags&cqeFMore, "ENOBUFS ends the recv")
				break
			}
			require.NotZero(t, e.flags&cqeFMore)
			got = append(got, h.be.buffer(bufID(e))[:e.res]...)
			bids = append(bids, bufID(e))
		}
		require.Equal(t, 0, h.be.buffersFree())
		require.Len(t, got, 512, "both buffers filled before ENOBUFS")
		// Buffers back, recv re-armed: the rest arrives, nothing lost.
		for _, b := range bids {
			h.be.recycle(b)
		}
		h.be.stage(sqOp{code: opRecvMulti, fd: int32(ours), ud: recv})
		for len(got) < len(msg) {
			e := h.next(recv)
			if e.res == -int32(syscall.ENOBUFS) {
				h.be.stage(sqOp{code: opRecvMulti, fd: int32(ours), ud: recv})
				continue
			}
			require.Greater(t, e.res, int32(0))
			got = append(got, h.be.buffer(bufID(e))[:e.res]...)
			h.be.recycle(bufID(e))
		}
		assert.True(t, bytes.Equal(msg, got))
	})
}

func TestBackendCancel(t *testing.T) {
	forEachImpl(t, smallBC(), func(t *testing.T, h *beHarness) {
		ours, peer := tcpPair(t)
		recv, cancel := ud(udRecv, 4), ud(udCancel, 4)
		h.be.stage(sqOp{code: opRecvMulti, fd: int32(ours), ud: recv})
		h.none(recv, 20*time.Millisecond)
		h.be.stage(sqOp{code: opCancel, ud: cancel, addr: recv})
		e := h.next(recv)
		assert.Equal(t, -int32(syscall.ECANCELED), e.res)
		assert.Zero(t, e.flags&cqeFMore)
		assert.Equal(t, int32(0), h.next(cancel).res)
		// Nothing armed any more: the data stays in the socket.
		err := writeAll(peer, []byte("x"))
		require.NoError(t, err)
		h.none(recv, 30*time.Millisecond)
		h.be.stage(sqOp{code: opCancel, ud: cancel, addr: recv})
		assert.Equal(t, -int32(syscall.ENOENT), h.next(cancel).res)
		// Re-armed, the byte that waited is received.
		h.be.stage(sqOp{code: opRecvMulti, fd: int32(ours), ud: recv})
		e = h.next(recv)
		require.Equal(t, int32(1), e.res)
		h.be.recycle(bufID(e))
	})
}

func TestBackendSendAndSendmsg(t *testing.T) {
	forEachImpl(t, smallBC(), func(t *testing.T, h *beHarness) {
		ours, peer := tcpPair(t)
		send := ud(udSend, 5)
		addr, n := h.put(0, []byte("plain send;"))
		h.be.stage(sqOp{code: opSend, fd: int32(ours), ud: send, addr: addr, len: n})
		assert.Equal(t, int32(n), h.next(send).res)
		assert.Equal(t, "plain send;", string(readN(t, peer, int(n))))

		// sendmsg with three iovecs, laid out as the core lays them out.
		parts := []string{"one,", "two,", "three"}
		iov := unsafe.Slice((*iovec)(h.mem.ptr(4096+64)), len(parts))
		off := 8192
		for i, p := range parts {
			a, l := h.put(off, []byte(p))
			iov[i] = iovec{base: a, len: uint64(l)}
			off += 100
		}
		*(*msghdr)(h.mem.ptr(4096)) = msghdr{iov: h.mem.addr(4096 + 64), iovlen: uint64(len(parts))}
		h.be.stage(sqOp{code: opSendmsg, fd: int32(ours), ud: send, addr: h.mem.addr(4096)})
		assert.Equal(t, int32(13), h.next(send).res)
		assert.Equal(t, "one,two,three", string(readN(t, peer, 13)))
	})
}

// A sendmsg of about 2 MB over 400 uneven iovecs (some empty) into
// socket buffers smaller than that, resubmitted from where each short
// completion left it, delivers every byte in order. On a socket
// the kernel paces (BBR) the epoll backend sends it in chunks of at most
// epSendChunk bytes, each starting inside some iovec and ending inside
// another; under cubic, in one call. "bbr/1" caps a send at one chunk
// (the constant is 16), where the first chunk is also the last.
func TestBackendLargeSendmsg(t *testing.T) {
	forEachImpl(t, smallBC(), func(t *testing.T, h *beHarness) {
		// No subtests: io_uring wants every submission from this thread.
		for _, run := range []string{"bbr", "cubic", "bbr/1"} {
			func() {
				cc, maxChunks := run, epSendChunks
				if run == "bbr/1" {
					cc, maxChunks = "bbr", 1
				}
				// Buffers smaller than the message, so sends complete short
				// and resume inside an iovec (tcpPairBuf: not below a few
				// loopback MSS).
				ours, peer := tcpPairBuf(t, 256<<10, 256<<10)
				setCongestion(t, ours, cc)
				if eb, ok := h.be.(*epollBackend); ok {
					eb.resetFile(int32(ours)) // as attach does: a fresh entry for a new socket
					eb.sendChunkMax = maxChunks
					defer func() { eb.sendChunkMax = epSendChunks }()
				}
				const iovOff, dataOff, parts = 64, 8192, 400
				lens := make([]uint64, parts)
				var total uint64
				for i := range lens {
					if i%17 != 5 { // and some empty ones
						lens[i] = 1 + uint64(i*7919)%9973
					}
					total += lens[i]
				}
				msg := pattern(int(total), 4)
				copy(h.mem.b[dataOff:], msg)
				// The peer starts reading after the first completion, which
				// is therefore short.
				var wg sync.WaitGroup
				var rcvd []byte
				var rerr error
				chunks := 0
				testHookSendChunk = func(int32) { chunks++ }
				defer func() { testHookSendChunk = nil }()
				send := ud(udSend, 8)
				var sent uint64
				short := 0
				for sent < total {
					// The iovecs of what is left, the first one cut at sent.
					iov := unsafe.Slice((*iovec)(h.mem.ptr(iovOff)), parts)
					n, pos := 0, uint64(0)
					for _, l := range lens {
						if pos+l > sent {
							skip := max(sent, pos) - pos
							iov[n] = iovec{base: h.mem.addr(dataOff + int(pos+skip)), len: l - skip}
							n++
						}
						pos += l
					}
					*(*msghdr)(h.mem.ptr(0)) = msghdr{iov: h.mem.addr(iovOff), iovlen: uint64(n)}
					chunks = 0
					h.be.stage(sqOp{code: opSendmsg, fd: int32(ours), ud: send, addr: h.mem.addr(0)})
					e := h.next(send)
					require.Greater(t, e.res, int32(0))
					if _, epoll := h.be.(*epollBackend); epoll && cc == "bbr" {
						assert.GreaterOrEqual(t, chunks, (int(e.res)-1)/epSendChunk,
							"%s: a paced send of %d bytes goes in chunks of at most %d", run, e.res, epSendChunk)
						assert.LessOrEqual(t, int(e.res), maxChunks*epSendChunk, "%s: one send takes at most %d chunks", run, maxChunks)
					} else {
						assert.Zero(t, chunks, "%s: one call", run)
					}
					if sent == 0 {
						wg.Add(1)
						go func() {
							defer wg.Done()
							rcvd, rerr = readFull(peer, len(msg))
						}()
					}
					sent += uint64(e.res)
					if sent < total {
						short++
					}
				}
				assert.Greater(t, short, 0, "%s: some sends completed short and resumed", run)
				wg.Wait()
				require.NoError(t, rerr)
				assert.True(t, bytes.Equal(msg, rcvd), "%s: bytes arrive complete and in order", run)
			}()
		}
	})
}

// waitPollErr waits (up to 5 s) until fd reports an error or hang-up, as
// a reset arriving makes it; poll leaves the socket's error in place.
func waitPollErr(t *testing.T, fd int) {
	t.Helper()
	pfd := []unix.PollFd{{Fd: int32(fd)}} // POLLERR and POLLHUP need no asking
	require.True(t, settle(5*time.Second, func() bool {
		_, err := unix.Poll(pfd, 10)
		return err == nil && pfd[0].Revents&(unix.POLLERR|unix.POLLHUP) != 0
	}), "the reset reaches the socket")
}

// setCongestion sets fd's TCP congestion control (root may load its
// module; bbr is tcp_bbr).
func setCongestion(t *testing.T, fd int, cc string) {
	t.Helper()
	require.NoError(t, unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION, cc),
		"congestion control %q (see /proc/sys/net/ipv4/tcp_available_congestion_control)", cc)
}

// A chunk that meets a reset after earlier chunks of the same send went
// out fails the send with ECONNRESET. The kernel reports a reset once and
// clears it: a short completion instead would leave the resubmitted rest
// to see EPIPE, and a read to see a clean EOF, before the connection
// learned it was reset. epoll only: io_uring sends in one call.
func TestEpollSendChunkReportsReset(t *testing.T) {
	for _, edge := range []bool{true, false} {
		t.Run(fmt.Sprintf("edge=%v", edge), func(t *testing.T) {
			h, done := newHarness(t, func() (backend, error) { return newEpollBackend(smallBC(), edge) })
			defer done()

			ours, peer := tcpPair(t)
			setCongestion(t, ours, "bbr") // paced, so chunked
			msg := pattern(1<<20, 7)
			copy(h.mem.b, msg)
			chunks := 0
			testHookSendChunk = func(int32) {
				if chunks++; chunks == 1 {
					resetPeer(t, peer)
					waitPollErr(t, ours)
				}
			}
			defer func() { testHookSendChunk = nil }()
			send := ud(udSend, 9)
			h.be.stage(sqOp{code: opSend, fd: int32(ours), ud: send, addr: h.mem.addr(0), len: uint32(len(msg))})
			e := h.next(send)
			require.GreaterOrEqual(t, chunks, 1, "the send went in chunks")
			assert.Equal(t, -int32(syscall.ECONNRESET), e.res, "the reset, not a short count")
		})
	}
}

// A send into a full socket waits (no completion, no spin) and completes
// once the peer reads; short sends resubmitted deliver every byte in order.
func TestBackendSendBackpressure(t *testing.T) {
	forEachImpl(t, smallBC(), func(t *testing.T, h *beHarness) {
		// Buffers of a few loopback MSS (~64 KiB): smaller ones stall TCP
		// itself (silly-window avoidance waits on the persist timer).
		ours, peer := tcpPairBuf(t, 256<<10, 256<<10)
		msg := pattern(beScratch, 3)
		copy(h.mem.b, msg)
		send := ud(udSend, 6)
		sent := 0
		// Fill the pipe: sends complete short until one has to wait.
		for {
			h.be.stage(sqOp{code: opSend, fd: int32(ours), ud: send, addr: h.mem.addr(sent), len: uint32(len(msg) - sent)})
			var e cqEntry
			got := false
			enters := h.be.enters()
			end := time.Now().Add(200 * time.Millisecond)
			for !got && time.Now().Before(end) {
				h.pump(true, 10*time.Millisecond)
				for i, x := range h.pend {
					if x.ud == send {
						e, got = x, true
						h.pend = append(h.pend[:i], h.pend[i+1:]...)
						break
					}
				}
			}
			if !got {
				// Pending: the socket is full, and waiting for it did
				// not spin the loop (~20 waits of 10ms, not thousands).
				assert.Less(t, h.be.enters()-enters, uint64(40), "a pending send must not spin the loop")
				break
			}
			require.Greater(t, e.res, int32(0))
			sent += int(e.res)
			require.Less(t, sent, len(msg), "4 MiB should not fit in the socket buffers")
		}

		var wg sync.WaitGroup
		var rcvd []byte
		var rerr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			rcvd, rerr = readFull(peer, len(msg))
		}()
		for {
			e := h.next(send)
			require.Greater(t, e.res, int32(0))
			if sent += int(e.res); sent == len(msg) {
				break
			}
			h.be.stage(sqOp{code: opSend, fd: int32(ours), ud: send, addr: h.mem.addr(sent), len: uint32(len(msg) - sent)})
		}
		wg.Wait()
		require.NoError(t, rerr)
		assert.True(t, bytes.Equal(msg, rcvd), "bytes arrive complete and in order")
	})
}

func TestBackendSendErrors(t *testing.T) {
	forEachImpl(t, smallBC(), func(t *testing.T, h *beHarness) {
		ours, peer := tcpPair(t)
		resetPeer(t, peer)
		time.Sleep(20 * time.Millisecond)
		send := ud(udSend, 7)
		addr, n := h.put(0, []byte("into a reset connection"))
		h.be.stage(sqOp{code: opSend, fd: int32(ours), ud: send, addr: addr, len: n})
		e := h.next(send)
		assert.Contains(t, []int32{-int32(syscall.ECONNRESET), -int32(syscall.EPIPE)}, e.res, "got %d", e.res)

		recv := ud(udRecv, 7)
		h.be.stage(sqOp{code: opRecvMulti, fd: int32(ours), ud: recv})
		e = h.next(recv)
		assert.LessOrEqual(t, e.res, int32(0), "a reset socket reads EOF or an error")
		assert.Zero(t, e.flags&cqeFMore)
	})
}

func TestBackendAcceptMultishot(t *testing.T) {
	forEachImpl(t, smallBC(), func(t *testing.T, h *beHarness) {
		lfd, port := tcpListener(t)
		acc, cancel := packUD(udAccept, 0, 0, 0), packUD(udCancel, 0, 0, acceptCancelPayload)
		h.be.stage(sqOp{code: opAcceptMulti, fd: int32(lfd), ud: acc})
		h.none(acc, 20*time.Millisecond)
		for i := 0; i < 3; i++ {
			c := tcpDial(t, port)
			e := h.next(acc)
			require.GreaterOrEqual(t, e.res, int32(0), "accept: %d", e.res)
			assert.NotZero(t, e.flags&cqeFMore, "accept stays armed")
			// The accepted socket is the dialled one's peer.
			err := writeAll(c, []byte{byte(i)})
			require.NoError(t, err)
			var b [1]byte
			_, err = sockRead(int(e.res), b[:])
			require.NoError(t, err)
			assert.Equal(t, byte(i), b[0])
			unix.Close(int(e.res))
		}
		h.be.stage(sqOp{code: opCancel, ud: cancel, addr: acc})
		e := h.next(acc)
		assert.Equal(t, -int32(syscall.ECANCELED), e.res)
		assert.Zero(t, e.flags&cqeFMore)
		assert.Equal(t, int32(0), h.next(cancel).res)
	})
}

func TestBackendCloseShutdownNop(t *testing.T) {
	forEachImpl(t, smallBC(), func(t *testing.T, h *beHarness) {
		ours, peer := tcpPair(t)
		nop, sd, cl := ud(udWake+10, 1), ud(udShutdown, 8), ud(udClose, 8)
		h.be.stage(sqOp{code: opNop, ud: nop})
		assert.Equal(t, int32(0), h.next(nop).res)

		h.be.stage(sqOp{code: opShutdown, fd: int32(ours), ud: sd, aux: unix.SHUT_WR})
		assert.Equal(t, int32(0), h.next(sd).res)
		var b [1]byte
		n, err := sockRead(peer, b[:])
		require.NoError(t, err)
		assert.Zero(t, n, "peer sees EOF after SHUT_WR")

		dup, err := unix.Dup(ours) // ours is closed by the cleanup; close a twin
		require.NoError(t, err)
		h.be.stage(sqOp{code: opClose, fd: int32(dup), ud: cl})
		assert.Equal(t, int32(0), h.next(cl).res)
		_, err = unix.FcntlInt(uintptr(dup), unix.F_GETFD, 0)
		assert.ErrorIs(t, err, unix.EBADF, "closed")
	})
}

func sockaddrIn4(h *beHarness, off int, port int) (uint64, uint32) {
	var sa [16]byte
	binary.LittleEndian.PutUint16(sa[0:], unix.AF_INET)
	binary.BigEndian.PutUint16(sa[2:], uint16(port))
	copy(sa[4:], []byte{127, 0, 0, 1})
	return h.put(off, sa[:])
}

func TestBackendConnect(t *testing.T) {
	forEachImpl(t, smallBC(), func(t *testing.T, h *beHarness) {
		lfd, port := tcpListener(t)
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		require.NoError(t, err)
		defer unix.Close(fd)
		conn := ud(udSend+20, 9)
		addr, l := sockaddrIn4(h, 0, port)
		h.be.stage(sqOp{code: opConnect, fd: int32(fd), ud: conn, addr: addr, len: l})
		assert.Equal(t, int32(0), h.next(conn).res)
		afd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		require.NoError(t, err)
		unix.Close(afd)

		// A closed port refuses: the error is the kernel's errno.
		unix.Close(lfd)
		fd2, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		require.NoError(t, err)
		defer unix.Close(fd2)
		h.be.stage(sqOp{code: opConnect, fd: int32(fd2), ud: conn, addr: addr, len: l})
		assert.Equal(t, -int32(syscall.ECONNREFUSED), h.next(conn).res)
	})
}

func timespecAt(h *beHarness, off int, d time.Duration) uint64 {
	var ts [16]byte
	binary.LittleEndian.PutUint64(ts[0:], uint64(d/time.Second))
	binary.LittleEndian.PutUint64(ts[8:], uint64(d%time.Second))
	a, _ := h.put(off, ts[:])
	return a
}

func TestBackendTimeout(t *testing.T) {
	forEachImpl(t, smallBC(), func(t *testing.T, h *beHarness) {
		tm, cancel := ud(udSend+30, 10), ud(udCancel, 10)
		start := time.Now()
		h.be.stage(sqOp{code: opTimeout, ud: tm, addr: timespecAt(h, 0, 30*time.Millisecond)})
		assert.Equal(t, -int32(syscall.ETIME), h.next(tm).res)
		assert.GreaterOrEqual(t, time.Since(start), 30*time.Millisecond, "never early")

		h.be.stage(sqOp{code: opTimeout, ud: tm, addr: timespecAt(h, 64, 10*time.Second)})
		h.none(tm, 20*time.Millisecond)
		h.be.stage(sqOp{code: opCancel, ud: cancel, addr: tm})
		assert.Equal(t, -int32(syscall.ECANCELED), h.next(tm).res)
		assert.Equal(t, int32(0), h.next(cancel).res)
	})
}

// opFLink: a failed op cancels the op linked behind it; one that has to
// wait holds the next op back until it completes.
func TestBackendLink(t *testing.T) {
	forEachImpl(t, smallBC(), func(t *testing.T, h *beHarness) {
		a, b := ud(udClose, 11), ud(udWake+10, 11)
		h.be.stage(sqOp{code: opClose, flags: opFLink, fd: 1 << 30, ud: a})
		h.be.stage(sqOp{code: opNop, ud: b})
		assert.Equal(t, -int32(syscall.EBADF), h.next(a).res)
		assert.Equal(t, -int32(syscall.ECANCELED), h.next(b).res)

		h.be.stage(sqOp{code: opNop, flags: opFLink, ud: a})
		h.be.stage(sqOp{code: opNop, ud: b})
		assert.Equal(t, int32(0), h.next(a).res)
		assert.Equal(t, int32(0), h.next(b).res)

		// A timeout linked to a nop: the nop waits for the timeout, which
		// "fails" with ETIME, so the nop is cancelled — io_uring's rule.
		h.be.stage(sqOp{code: opTimeout, flags: opFLink, ud: a, addr: timespecAt(h, 0, 300*time.Millisecond)})
		h.be.stage(sqOp{code: opNop, ud: b})
		h.none(b, 20*time.Millisecond)
		assert.Equal(t, -int32(syscall.ETIME), h.next(a).res)
		assert.Equal(t, -int32(syscall.ECANCELED), h.next(b).res)

		// An op that has to wait holds its linked successor back until it
		// completes: a read on an eventfd nobody has written yet.
		efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		require.NoError(t, err)
		defer unix.Close(efd)
		h.be.stage(sqOp{code: opRead, flags: opFLink, fd: int32(efd), ud: a, addr: h.mem.addr(64), len: 8})
		h.be.stage(sqOp{code: opNop, ud: b})
		h.none(b, 30*time.Millisecond)
		require.Empty(t, h.pend, "the read waits, and the nop behind it")
		_, err = unix.Write(efd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		require.NoError(t, err)
		assert.Equal(t, int32(8), h.next(a).res)
		assert.Equal(t, int32(0), h.next(b).res, "the nop runs once the read completed")

		// Cancelling the waiting op cancels the chain behind it.
		h.be.stage(sqOp{code: opRead, flags: opFLink, fd: int32(efd), ud: a, addr: h.mem.addr(64), len: 8})
		h.be.stage(sqOp{code: opNop, ud: b})
		h.none(b, 10*time.Millisecond)
		h.be.stage(sqOp{code: opCancel, ud: ud(udCancel, 11), addr: a})
		assert.Equal(t, -int32(syscall.ECANCELED), h.next(a).res)
		assert.Equal(t, -int32(syscall.ECANCELED), h.next(b).res)
		assert.Equal(t, int32(0), h.next(ud(udCancel, 11)).res)
	})
}

func TestBackendReadAndWake(t *testing.T) {
	forEachImpl(t, smallBC(), func(t *testing.T, h *beHarness) {
		rd := ud(udWake+10, 12)
		efd := h.eventfdRead(rd, 0)
		h.none(rd, 20*time.Millisecond)
		var one [8]byte
		binary.LittleEndian.PutUint64(one[:], 5)
		_, err := unix.Write(efd, one[:])
		require.NoError(t, err)
		assert.Equal(t, int32(8), h.next(rd).res)
		assert.Equal(t, uint64(5), binary.LittleEndian.Uint64(h.mem.b[:8]))

		// wake from another goroutine ends a wait with no time limit: the
		// enter must block until the wake (not return at once), and return
		// because of it. A guard read on a second eventfd, written after
		// 5 s, ends the wait if the wake does not, so a broken wake fails
		// the test instead of hanging it. The wait is signalled throughout,
		// as the runtime's preemption signals hit it at random under load
		// (where an epoll wait that returned on EINTR made this test flaky).
		grd := ud(udWake+10, 13)
		guard := h.eventfdRead(grd, 64)
		h.none(grd, 10*time.Millisecond) // the guard read is armed and waits
		cq := waitForWake(t, h, guard)
		for _, e := range cq {
			require.NotEqual(t, grd, e.ud, "the wake did not end the wait: the 5 s guard did")
			require.Equal(t, udWake, udKind(e.ud), "nothing but the wake completes: %+v", e)
		}
	})
}

// waitForWake makes a blocking enter with no time limit, under signals,
// while another goroutine calls wake after 50 ms, and checks that the
// enter waited for the wake and returned without error; it returns what
// the enter returned. The goroutine writes guardFd 5 s after the wake, so
// that the armed read on it ends a wait that the wake failed to end,
// instead of the test hanging.
func waitForWake(t *testing.T, h *beHarness, guardFd int) []cqEntry {
	t.Helper()
	var wakeAt atomic.Int64 // UnixNano just before wake was called
	stopGuard, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(50 * time.Millisecond)
		wakeAt.Store(time.Now().UnixNano())
		h.be.wake()
		select {
		case <-stopGuard:
		case <-time.After(5 * time.Second):
			unix.Write(guardFd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		}
	}()
	var cq []cqEntry
	var err error
	underSignals(func() { cq, err = h.be.enter(true, -1) })
	returned := time.Now().UnixNano()
	close(stopGuard)
	<-done // the backend closes when the test returns
	require.NoError(t, err)
	w := wakeAt.Load()
	require.NotZero(t, w, "the blocking enter returned before wake was called: it did not wait")
	require.GreaterOrEqual(t, returned, w, "the blocking enter returned before wake was called: it did not wait")
	require.NotEmpty(t, cq, "the enter returned the wake's completion")
	return cq
}

// A signal is none of the things a blocking enter waits for (a
// completion, its timeout, a wake), so a wait that one interrupts goes on
// for the time it has left; the runtime signals threads (SIGURG) to
// preempt goroutines, and the kernel ends epoll_wait and io_uring_enter
// with EINTR whatever SA_RESTART says. Each way of waiting: ordinary,
// held (Config.HoldWait, whose raw system call the runtime's preemption
// also interrupts) and, on epoll, that of a worker that may park, both
// while its waits are short (it blocks) and once they are long (it parks).
func TestBackendWaitThroughSignals(t *testing.T) {
	for _, v := range []struct {
		name       string
		hold       time.Duration
		park, long bool
	}{
		{"ordinary", 0, false, false},
		{"held", maxHoldWait, false, true},
		{"may-park", 0, true, false},
		{"parked", 0, true, true},
	} {
		t.Run(v.name, func(t *testing.T) {
			if v.long {
				alwaysLong(t)
			} else {
				parkSettings(t, time.Hour, [2]int{1 << 30, 1 << 30})
			}
			bc := smallBC()
			bc.hold = v.hold
			run := func(t *testing.T, h *beHarness) {
				if b, ok := h.be.(*epollBackend); ok {
					b.canPark = v.park
				}
				// A read nothing completes, so that the backend has an op
				// to wait on.
				rd := ud(udWake+10, 14)
				efd := h.eventfdRead(rd, 0)
				h.none(rd, 10*time.Millisecond)
				h0, _, _ := h.be.holds()

				const timeout = 100 * time.Millisecond
				var cq []cqEntry
				var err error
				start := time.Now()
				underSignals(func() { cq, err = h.be.enter(true, timeout) })
				took := time.Since(start)
				require.NoError(t, err)
				require.Empty(t, cq, "nothing completes during the timed wait")
				assert.GreaterOrEqual(t, took, timeout, "the timed wait lasted its timeout")

				// Waits whose enter also submits (an op staged just before,
				// as most turns stage something): on io_uring the kernel
				// then returns the count submitted, not how the wait ended.
				// Some of them shorter than the hold, which then waits the
				// whole of it.
				for i := 0; i < 20; i++ {
					h.eventfdRead(ud(udWake+11, uint32(20+i)), 64)
					d := 20 * time.Millisecond
					if i%2 == 1 {
						d = 1500 * time.Microsecond
					}
					start := time.Now()
					underSignals(func() { cq, err = h.be.enter(true, d) })
					took := time.Since(start)
					require.NoError(t, err)
					require.Empty(t, cq, "round %d: nothing completes", i)
					require.GreaterOrEqual(t, took, d, "round %d: a wait that submitted lasted its timeout", i)
				}

				// The untimed wait ends at the wake; the read completes after
				// 5 s if it does not, so a lost wake fails the test rather
				// than hanging it.
				cq = waitForWake(t, h, efd)
				for _, e := range cq {
					require.Equal(t, udWake, udKind(e.ud), "nothing but the wake completes: %+v", e)
				}
				if v.hold > 0 {
					h1, _, _ := h.be.holds()
					assert.Greater(t, h1, h0, "the waits held")
				}
				if b, ok := h.be.(*epollBackend); ok && v.park && v.long {
					assert.NotZero(t, b.parks, "the waits parked")
				}
			}
			if v.park {
				forEachEpollImpl(t, bc, run) // io_uring workers do not park
			} else {
				forEachImpl(t, bc, run)
			}
		})
	}
}

// An idle backend with armed ops blocks in its wait instead of spinning.
func TestBackendIdleDoesNotSpin(t *testing.T) {
	forEachImpl(t, smallBC(), func(t *testing.T, h *beHarness) {
		ours, _ := tcpPair(t)
		lfd, _ := tcpListener(t)
		h.be.stage(sqOp{code: opRecvMulti, fd: int32(ours), ud: ud(udRecv, 13)})
		h.be.stage(sqOp{code: opAcceptMulti, fd: int32(lfd), ud: packUD(udAccept, 0, 0, 0)})
		h.pump(false, 0)
		e0 := h.be.enters()
		start := time.Now()
		for time.Since(start) < 200*time.Millisecond {
			h.pump(true, 100*time.Millisecond)
		}
		assert.Empty(t, h.pend)
		assert.LessOrEqual(t, h.be.enters()-e0, uint64(4), "200ms idle with a 100ms wait")
	})
}

// ---------------------------------------------------------------------------
// The epoll backend under the runtime.

// withEpollMode runs f with new epoll backends in the given readiness mode.
func withEpollMode(edge bool, f func()) {
	prev := epollEdgeTriggered
	epollEdgeTriggered = edge
	defer func() { epollEdgeTriggered = prev }()
	f()
}

// The level-triggered mode also serves the runtime scenarios that stress
// readiness: big echoes, many connections, a tiny buffer ring.
func TestEpollLevelTriggeredRuntime(t *testing.T) {
	withEpollMode(false, func() {
		cfg := testConfig(Epoll)
		cfg.BufferCount = 4
		rt := serve(t, cfg, echoTask)
		assert.Contains(t, rt.Features(), "level-triggered")
		runClients(t, 40, func(i int) error {
			return echoCheck(rt.Addr().String(), pattern(100<<10+i, byte(i)))
		})
	})
}

// pipelinedEcho drives conns connections, each writing msgs messages of
// size bytes in batches of depth and reading the echoes back.
func pipelinedEcho(t testing.TB, rt *Runtime, conns, msgs, size, depth int) {
	pipelinedEchoRcvbuf(t, rt, conns, msgs, size, depth, 0)
}

// pipelinedEchoRcvbuf is pipelinedEcho with the clients' receive buffers
// set to rcvbuf bytes (0: the default), so the server's sends fill them.
func pipelinedEchoRcvbuf(t testing.TB, rt *Runtime, conns, msgs, size, depth, rcvbuf int) {
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			// The receive buffer is sized before connect: shrinking it on
			// an open connection retracts the advertised window and
			// stalls TCP for seconds on any backend.
			d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
				if rcvbuf > 0 {
					rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf) })
				}
				return nil
			}}
			c, err := d.Dial("tcp", rt.Addr().String())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			batch := bytes.Repeat(pattern(size, byte(i)), depth)
			got := make([]byte, len(batch))
			for sent := 0; sent < msgs; sent += depth {
				if _, err := c.Write(batch); err != nil {
					errs <- err
					return
				}
				if _, err := io.ReadFull(c, got); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, batch) {
					errs <- fmt.Errorf("conn %d: echoed bytes differ from the batch sent", i)
					return
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// BenchmarkEpollTrigger measures the two readiness modes side by side and
// reports, per message: every syscall the backend makes (epoll_wait,
// epoll_ctl, recv, send, accept, close), epoll_ctl calls alone, and
// epoll_wait calls. Loads: pipelined small messages, ping-pong, bulk
// transfers that fill socket buffers (sends wait for EPOLLOUT), a buffer
// ring too small for its connections (recvs park on ENOBUFS), and
// connection churn (one message per connection).
//
//	go test -run '^$' -bench EpollTrigger -benchtime 20000x -count 3 .
func BenchmarkEpollTrigger(b *testing.B) {
	type load struct {
		name                        string
		conns, size, depth, buffers int
		rcvbuf, sndbuf              int
		churn                       bool
	}
	for _, mode := range []struct {
		name string
		edge bool
	}{{"edge", true}, {"level", false}} {
		for _, ld := range []load{
			{name: "pipelined64B", conns: 16, size: 64, depth: 16},
			{name: "pingpong64B", conns: 16, size: 64, depth: 1},
			{name: "bulk256KiB", conns: 4, size: 256 << 10, depth: 2},
			{name: "tinyring16KiB", conns: 32, size: 16 << 10, depth: 2, buffers: 4},
			{name: "slowreader64KiB", conns: 8, size: 64 << 10, depth: 1, rcvbuf: 4 << 10, sndbuf: 8 << 10},
			{name: "churn64B", conns: 8, size: 64, depth: 1, churn: true},
		} {
			b.Run(mode.name+"/"+ld.name, func(b *testing.B) {
				withEpollMode(mode.edge, func() {
					cfg := testConfig(Epoll)
					cfg.BufferSize = 16 << 10
					cfg.SendSlotSize = 16 << 10
					cfg.SendPoolSlots = 2048
					if ld.buffers > 0 {
						cfg.BufferCount = ld.buffers
					}
					rt, err := New(cfg).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
					require.NoError(b, err)
					defer func() { rt.Shutdown(); rt.Wait() }()
					if ld.sndbuf > 0 {
						// Accepted sockets inherit the listener's send
						// buffer: small, so the server's sends must wait.
						require.NoError(b, unix.SetsockoptInt(rt.workers[0].lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, ld.sndbuf))
					}
					eb := rt.workers[0].be.(*epollBackend)
					run := func(msgs int) {
						if ld.churn {
							churnEcho(b, rt, ld.conns, msgs, ld.size)
						} else {
							pipelinedEchoRcvbuf(b, rt, ld.conns, msgs, ld.size, ld.depth, ld.rcvbuf)
						}
					}
					per := max(b.N/ld.conns/ld.depth*ld.depth, ld.depth)
					run(ld.depth) // warm up
					time.Sleep(10 * time.Millisecond)
					s0, c0, w0, cpu0 := eb.syscalls(), eb.ctls(), Total(rt.Stats()).RingEnters, cpuTime()
					b.ResetTimer()
					run(per)
					b.StopTimer()
					cpu1 := cpuTime()
					time.Sleep(10 * time.Millisecond) // the worker publishes as it goes idle
					s1, c1, w1 := eb.syscalls(), eb.ctls(), Total(rt.Stats()).RingEnters
					msgs := float64(ld.conns * per)
					b.ReportMetric(float64(cpu1-cpu0)/msgs, "cpu-ns/msg")
					b.ReportMetric(float64(s1-s0)/msgs, "syscalls/msg")
					b.ReportMetric(float64(c1-c0)/msgs, "epoll_ctl/msg")
					b.ReportMetric(float64(w1-w0)/msgs, "epoll_wait/msg")
				})
			})
		}
	}
}

// cpuTime is the process's user+system CPU time in nanoseconds (server
// and load client together: the client's share is the same for both
// modes, so differences are the server's).
func cpuTime() int64 {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// churnEcho runs conns goroutines that each make msgs connections, echo
// one message of size bytes on each and close it.
func churnEcho(b testing.TB, rt *Runtime, conns, msgs, size int) {
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			msg := pattern(size, byte(i))
			got := make([]byte, size)
			for k := 0; k < msgs; k++ {
				c, err := net.DialTimeout("tcp", rt.Addr().String(), 5*time.Second)
				if err != nil {
					errs <- err
					return
				}
				c.SetDeadline(time.Now().Add(30 * time.Second))
				_, err = c.Write(msg)
				if err == nil {
					_, err = io.ReadFull(c, got)
				}
				c.Close()
				if err != nil {
					errs <- err
					return
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Error(err)
	}
}

// A burst larger than one buffer arrives in order, one completion per
// buffer filled. On epoll a read that filled its buffer makes the next
// ones span several buffers (recvmsg), so 64 KiB of 4 KiB buffers take a
// handful of reads, not sixteen.
func TestBackendRecvLargeBurst(t *testing.T) {
	bc := smallBC()
	bc.bufCount = 32
	forEachImpl(t, bc, func(t *testing.T, h *beHarness) {
		ours, peer := tcpPair(t)
		msg := pattern(64<<10, 9)
		err := writeAll(peer, msg)
		require.NoError(t, err)
		time.Sleep(20 * time.Millisecond) // all of it in our receive queue
		eb, _ := h.be.(*epollBackend)
		var sys0 uint64
		if eb != nil {
			sys0 = eb.nSys
		}
		recv := ud(udRecv, 1)
		h.be.stage(sqOp{code: opRecvMulti, fd: int32(ours), ud: recv})
		var got []byte
		completions := 0
		for len(got) < len(msg) {
			e := h.next(recv)
			require.Greater(t, e.res, int32(0))
			require.LessOrEqual(t, e.res, int32(bc.bufSize))
			require.Equal(t, uint32(cqeFBuffer|cqeFMore), e.flags&(cqeFBuffer|cqeFMore))
			got = append(got, h.be.buffer(bufID(e))[:e.res]...)
			h.be.recycle(bufID(e))
			completions++
		}
		require.True(t, bytes.Equal(msg, got), "bytes in order")
		assert.GreaterOrEqual(t, completions, len(msg)/int(bc.bufSize))
		if eb != nil {
			reads := eb.nSys - sys0
			t.Logf("%d completions, %d reads", completions, reads)
			assert.LessOrEqual(t, reads, uint64(7), "reads for 16 buffers' worth")
		}
	})
}

// The blocking socket helpers survive signals. Their sockets carry
// SO_RCVTIMEO/SO_SNDTIMEO, so a signal makes a blocked read or write fail
// with EINTR instead of restarting it (signal(7)), and Go sends SIGURG to
// preempt goroutines: under load a reader that gave up on EINTR left a
// backend's send waiting for 5 s (TestBackendSendBackpressure in CI).
func TestSocketHelpersRetryEINTR(t *testing.T) {
	ours, peer := tcpPair(t)

	// Reading: blocked, and signalled, until the bytes come.
	msg := pattern(64<<10, 5)
	go func() {
		time.Sleep(100 * time.Millisecond)
		_, _ = unix.Write(ours, msg)
	}()
	var got []byte
	var err error
	intr := sockEINTRs.Load()
	underSignals(func() { got, err = readFull(peer, len(msg)) })
	require.NoError(t, err)
	assert.True(t, bytes.Equal(msg, got))
	assert.Greater(t, sockEINTRs.Load(), intr, "the blocked read was interrupted")

	// Writing: more than the socket buffers hold, so the writer blocks,
	// and is signalled, until the other side reads.
	msg = pattern(16<<20, 6) // more than autotuned buffers reach (tcp_wmem, tcp_rmem)
	intr = sockEINTRs.Load()
	done := make(chan error, 1)
	go underSignals(func() { done <- writeAll(peer, msg) })
	select {
	case err := <-done:
		t.Fatalf("writeAll returned before anything was read: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	tv := unix.Timeval{Sec: 5}
	require.NoError(t, unix.SetsockoptTimeval(ours, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv))
	got, err = readFull(ours, len(msg))
	require.NoError(t, <-done)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(msg, got))
	assert.Greater(t, sockEINTRs.Load(), intr, "the blocked write was interrupted")
}

// underSignals runs f on a thread of its own that receives SIGURG (the
// runtime's preemption signal, so harmless) every 100 µs until f returns.
func underSignals(f func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	pid, tid := unix.Getpid(), unix.Gettid()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				_ = unix.Tgkill(pid, tid, unix.SIGURG)
				time.Sleep(100 * time.Microsecond)
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	f()
}

// A sendmsg carrying ancillary data goes in one call even on a paced
// socket (the control message must go once, with the whole message), and
// its count is what that call took, however large. Forced pacing on a
// Unix pair, which takes SCM_RIGHTS; epoll only (io_uring never chunks).
func TestEpollSendWithControlNotChunked(t *testing.T) {
	h, release := newHarness(t, func() (backend, error) { return newEpollBackend(smallBC(), true) })
	defer release()
	be, mem := h.be.(*epollBackend), h.mem
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	require.NoError(t, unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20))
	be.resetFile(int32(fds[0]))
	be.files[fds[0]].pacing = 1 // as if BBR

	const dataOff, total = 8192, 2 << 20 // more than epSendChunks chunks
	msg := pattern(total, 3)
	copy(mem.b[dataOff:], msg)
	*(*iovec)(mem.ptr(64)) = iovec{base: mem.addr(dataOff), len: total}
	rights := unix.UnixRights(fds[1])
	copy(mem.b[128:], rights)
	*(*msghdr)(mem.ptr(0)) = msghdr{iov: mem.addr(64), iovlen: 1, control: mem.addr(128), controllen: uint64(len(rights))}
	var rcvd []byte
	var rerr error
	done := make(chan struct{})
	go func() { defer close(done); rcvd, rerr = readFull(fds[1], total) }()
	chunks := 0
	testHookSendChunk = func(int32) { chunks++ }
	defer func() { testHookSendChunk = nil }()
	send := ud(udSend, 10)
	var sent int
	for first := true; sent < total; first = false {
		if first {
			h.be.stage(sqOp{code: opSendmsg, fd: int32(fds[0]), ud: send, addr: mem.addr(0)})
		} else { // the rest without the control message
			h.be.stage(sqOp{code: opSend, fd: int32(fds[0]), ud: send, addr: mem.addr(dataOff + sent), len: uint32(total - sent)})
		}
		e := h.next(send)
		require.Greater(t, e.res, int32(0))
		require.LessOrEqual(t, int(e.res), total-sent)
		if first {
			assert.Zero(t, chunks, "a message with control data goes in one call")
		}
		sent += int(e.res)
	}
	<-done
	require.NoError(t, rerr)
	assert.True(t, bytes.Equal(msg, rcvd))
}

// BenchmarkEpollLinkedTimeout prices what a connect with a timeout costs
// the epoll backend in timer bookkeeping while others are pending: one
// linked timeout armed and disarmed (its connect completed in time) among
// `pending` armed ones, as a load generator with many connects in flight
// has. It should not grow with pending beyond the heap's log factor.
//
//	go test -run '^$' -bench EpollLinkedTimeout .
func BenchmarkEpollLinkedTimeout(b *testing.B) {
	for _, pending := range []int{0, 100, 10000} {
		b.Run(fmt.Sprintf("pending=%d", pending), func(b *testing.B) {
			be, err := newEpollBackend(smallBC(), true)
			require.NoError(b, err)
			defer be.close()
			// Far deadlines (an hour), varied so the heap has some shape;
			// the connect made last has the latest, as with one timeout.
			mem, err := mapRegion((pending + 1) * 16)
			require.NoError(b, err)
			defer mem.unmap()
			ts := unsafe.Slice((*[2]int64)(mem.ptr(0)), pending+1)
			for i := range ts {
				ts[i] = [2]int64{3600 + int64(i%97), 0}
			}
			ts[pending][0] = 3700
			arm := func(i int, target uint64) {
				be.armLinked(&sqOp{code: opLinkTimeout, ud: ud(udLinkTimeout, uint32(i)),
					addr: mem.addr(i * 16)}, target)
			}
			for i := 0; i < pending; i++ {
				arm(i, ud(udConnect, uint32(i)))
			}
			target := ud(udConnect, uint32(pending))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				arm(pending, target)
				be.disarmLinked(target)
				be.out = be.out[:0]
			}
			b.StopTimer()
			require.Len(b, be.timers, pending)
		})
	}
}

// The epoll backend keeps each linked timeout's place in its timer heap
// (linked) as the heap moves entries: after every arm, disarm, cancel and
// expiry among plain timeouts, each armed linked timeout is found where
// linked says, the heap is ordered, and every timeout completes once.
func TestEpollLinkedTimerPositions(t *testing.T) {
	be, err := newEpollBackend(smallBC(), true)
	require.NoError(t, err)
	defer be.close()
	rng := rand.New(rand.NewPCG(1, 2))
	// Timespecs outside the Go heap, as the core stages them.
	mem, err := mapRegion(4096 * 16)
	require.NoError(t, err)
	defer mem.unmap()
	ts := unsafe.Slice((*[2]int64)(mem.ptr(0)), 4096)
	armed := map[uint64]uint64{} // linked target -> its timeout's ud
	plain := map[uint64]bool{}   // plain timeouts' uds
	done := map[uint64]int{}
	expired := 0
	check := func(step int) {
		for _, e := range be.out {
			done[e.ud]++
			require.Equal(t, 1, done[e.ud], "step %d: one completion per timeout", step)
			if e.res == -int32(unix.ETIME) {
				expired++
				if udKind(e.ud) == udLinkTimeout {
					delete(armed, ud(udConnect, udIdx(e.ud)))
				} else {
					delete(plain, e.ud)
				}
			}
		}
		be.out = be.out[:0]
		require.Len(t, be.linked, len(armed), "step %d", step)
		for target, i := range be.linked {
			require.Less(t, i, len(be.timers), "step %d", step)
			require.Equal(t, target, be.timers[i].target, "step %d: linked points at its timeout", step)
			require.Equal(t, armed[target], be.timers[i].ud, "step %d", step)
		}
		require.Len(t, be.timers, len(armed)+len(plain), "step %d", step)
		for i := 1; i < len(be.timers); i++ {
			require.LessOrEqual(t, be.timers[(i-1)/2].at, be.timers[i].at, "step %d: heap order", step)
		}
	}
	for step := 0; step < 3000; step++ {
		idx := uint32(step + 1)
		tsp := &ts[step%len(ts)]
		*tsp = [2]int64{0, int64(rng.IntN(200)+1) * int64(time.Millisecond)}
		addr := mem.addr(step % len(ts) * 16)
		switch r := rng.IntN(10); {
		case r < 4: // a connect with a linked timeout
			target, lt := ud(udConnect, idx), ud(udLinkTimeout, idx)
			be.armLinked(&sqOp{code: opLinkTimeout, ud: lt, addr: addr}, target)
			armed[target] = lt
		case r < 6: // a plain timeout
			u := ud(udCancel, idx)
			be.applyOps([]sqOp{{code: opTimeout, ud: u, addr: addr}})
			plain[u] = true
		case r < 8: // a connect completes in time
			for target := range armed {
				be.disarmLinked(target)
				delete(armed, target)
				break
			}
		case r < 9: // a plain timeout is cancelled
			for u := range plain {
				require.True(t, be.cancelTarget(u))
				delete(plain, u)
				break
			}
		default: // time passes: whatever is due expires
			time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
			be.expireTimers()
		}
		check(step)
	}
	assert.Greater(t, expired, 20, "some timeouts expired on the way")
}

// A parking epoll worker whose park file refuses deadlines falls back to
// blocking in epoll_wait for the time left; a signal during that wait is
// not an error (it would stop the worker).
func TestEpollParkFallbackWaitsThroughSignals(t *testing.T) {
	alwaysLong(t)
	forEachEpollImpl(t, smallBC(), func(t *testing.T, h *beHarness) {
		b := h.be.(*epollBackend)
		b.canPark = true
		f, err := os.Open("/dev/null") // not in the netpoller: refuses deadlines
		require.NoError(t, err)
		rc, err := f.SyscallConn()
		require.NoError(t, err)
		b.park, b.parkRC, b.parkFn = f, rc, b.parkCheck
		b.mode.long = true
		const timeout = 100 * time.Millisecond
		var cq []cqEntry
		start := time.Now()
		underSignals(func() { cq, err = h.be.enter(true, timeout) })
		took := time.Since(start)
		require.NoError(t, err, "a signal is not an error")
		assert.Empty(t, cq)
		assert.GreaterOrEqual(t, took, timeout, "the wait lasted its timeout")
		assert.False(t, b.canPark, "the worker gave up parking")
	})
}
