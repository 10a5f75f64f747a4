package ringline

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
	"golang.org/x/sys/unix"
)

// Outbound connections (Connect, ConnectWithTimeout, ConnectUnix), the
// rest of the lifecycle (ShutdownWrite, Cancel, RequestShutdown),
// client-only runtimes and Unix listeners. The peers are plain Go sockets
// on loopback or Unix sockets, so what is tested is ringline's side only.

// clientRuntime launches a runtime without a listener; h, when it is not
// nil, is every worker's handler (a Starter gets its start task).
func clientRuntime(t *testing.T, cfg Config, h AsyncEventHandler) *Runtime {
	t.Helper()
	if h == nil {
		h = handlerFunc(func(ConnCtx) {})
	}
	rt, err := New(cfg).Launch(func(int) AsyncEventHandler { return h })
	require.NoError(t, err)
	require.Nil(t, rt.Addr(), "no listener")
	t.Cleanup(func() { stop(t, rt) })
	return rt
}

// inTask runs f as a new task on worker w of rt and returns what it
// returns. f must not stop the test (no require/t.Fatal: it runs on the
// worker); it reports through its error.
func inTask(t *testing.T, rt *Runtime, w int, f func(tc TaskCtx) error) error {
	t.Helper()
	done := make(chan error, 1)
	require.NoError(t, rt.Post(w, func(tc TaskCtx) {
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("task panicked: %v", r)
				panic(r)
			}
		}()
		done <- f(tc)
	}))
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("task did not finish within 30s")
	}
	return nil
}

// onWorker runs f on worker w's loop (not in a task) and waits for it:
// tests read worker state this way without racing the loop.
func onWorker(t *testing.T, rt *Runtime, w int, f func(w *worker)) {
	t.Helper()
	done := make(chan struct{})
	wk := rt.workers[w]
	require.NoError(t, wk.post(func() { f(wk); close(done) }))
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("worker did not run the post within 10s")
	}
}

// liveConns is how many slots worker w has in use.
func liveConns(t *testing.T, rt *Runtime, w int) int {
	var n int
	onWorker(t, rt, w, func(w *worker) { n = w.live })
	return n
}

// goEcho is a plain Go echo server on ln; it stops when the test ends.
func goEcho(t *testing.T, ln net.Listener) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

func listenTCP(t *testing.T, network, addr string) (net.Listener, netip.AddrPort) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	require.NoError(t, err)
	return ln, ln.Addr().(*net.TCPAddr).AddrPort()
}

// echoThrough sends msg on c and reads len(msg) bytes back with WithData,
// awaiting each send; it returns what came back.
func echoThrough(c ConnCtx, msg []byte) ([]byte, error) {
	fut, err := c.Send(msg)
	if err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	got := make([]byte, 0, len(msg))
	for len(got) < len(msg) {
		n := c.WithData(func(b []byte) ParseResult {
			got = append(got, b...)
			return Consumed(len(b))
		})
		if n == 0 {
			return got, fmt.Errorf("WithData returned 0 after %d of %d bytes (Err %v)", len(got), len(msg), c.Err())
		}
	}
	if _, err := fut.Await(); err != nil {
		return got, fmt.Errorf("send await: %w", err)
	}
	return got, nil
}

func TestConnectEcho(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		ln, ap := listenTCP(t, "tcp4", "127.0.0.1:0")
		goEcho(t, ln)
		rt := clientRuntime(t, testConfig(be), nil)
		msg := pattern(200_000, 3) // more than the send pool's slot and the receive buffers
		err := inTask(t, rt, 0, func(tc TaskCtx) error {
			fut, err := tc.Connect(ap)
			if err != nil {
				return err
			}
			c, err := fut.Await()
			if err != nil {
				return err
			}
			if !c.IsOutbound() {
				return errors.New("IsOutbound is false")
			}
			pa, ok := c.PeerAddr()
			if !ok || pa.String() != ap.String() {
				return fmt.Errorf("PeerAddr %v, %v; want %v", pa, ok, ap)
			}
			if v, err := unix.GetsockoptInt(int(c.get().fd), unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v == 0 {
				return fmt.Errorf("TCP_NODELAY %d, %v", v, err)
			}
			// Registered in the fixed-file table, as an accepted socket
			// is, where the backend has one.
			if fixed := c.get().opFlags&opFFixed != 0; fixed != tc.w.be.fixedFiles() {
				return fmt.Errorf("fixed file %v, backend's table %v", fixed, tc.w.be.fixedFiles())
			}
			got, err := echoThrough(c, msg)
			if err != nil {
				return err
			}
			if !bytes.Equal(got, msg) {
				return errors.New("echo differs")
			}
			// The ConnCtx convenience form connects from the same task.
			fut2, err := c.Connect(ap)
			if err != nil {
				return err
			}
			c2, err := fut2.Await()
			if err != nil {
				return err
			}
			if got, err := echoThrough(c2, []byte("second")); err != nil || string(got) != "second" {
				return fmt.Errorf("second connection: %q, %v", got, err)
			}
			c.Close()
			return c.Err()
		})
		require.NoError(t, err)
		assert.True(t, settle(5*time.Second, func() bool { return liveConns(t, rt, 0) == 0 }), "slots still in use after the task ended")
		st := Total(rt.Stats())
		assert.Equal(t, uint64(2), st.Connected)
		assert.Equal(t, uint64(0), st.ConnectErrors)
		assert.True(t, settle(5*time.Second, func() bool { return Total(rt.Stats()).Closed == 2 }), "closed: %d", Total(rt.Stats()).Closed)
	})
}

func TestConnectIPv6(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		ln, ap := listenTCP(t, "tcp6", "[::1]:0")
		goEcho(t, ln)
		rt := clientRuntime(t, testConfig(be), nil)
		err := inTask(t, rt, 0, func(tc TaskCtx) error {
			fut, err := tc.ConnectWithTimeout(ap, 10*time.Second)
			if err != nil {
				return err
			}
			c, err := fut.Await()
			if err != nil {
				return err
			}
			defer c.Close()
			if pa, ok := c.PeerAddr(); !ok || pa.String() != ap.String() {
				return fmt.Errorf("PeerAddr %v; want %v", pa, ap)
			}
			got, err := echoThrough(c, []byte("over IPv6"))
			if err != nil || string(got) != "over IPv6" {
				return fmt.Errorf("echo %q, %v", got, err)
			}
			return nil
		})
		require.NoError(t, err)
	})
}

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) netip.AddrPort {
	ln, ap := listenTCP(t, "tcp4", "127.0.0.1:0")
	require.NoError(t, ln.Close())
	return ap
}

func TestConnectRefused(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		ap := closedPort(t)
		rt := clientRuntime(t, testConfig(be), nil)
		for _, timeout := range []time.Duration{0, 10 * time.Second} {
			err := inTask(t, rt, 0, func(tc TaskCtx) error {
				fut, err := tc.ConnectWithTimeout(ap, timeout)
				if err != nil {
					return err
				}
				c, err := fut.Await()
				if c != (ConnCtx{}) {
					return fmt.Errorf("a refused connect returned a connection %v", c)
				}
				return err
			})
			require.Error(t, err)
			assert.ErrorIs(t, err, syscall.ECONNREFUSED, "timeout %v", timeout)
			assert.Contains(t, err.Error(), ap.String())
			var oe *net.OpError
			assert.True(t, errors.As(err, &oe) && oe.Op == "dial", "a *net.OpError like net.Dial's: %#v", err)
		}
		assert.Equal(t, 0, liveConns(t, rt, 0), "the failed connects' slots are free")
		st := Total(rt.Stats())
		assert.Equal(t, uint64(2), st.ConnectErrors)
		assert.Equal(t, uint64(0), st.Connected)
		assert.Equal(t, uint64(0), st.Closed, "a connect that failed is not a closed connection")
	})
}

// fullListener returns a TCP listener whose accept queue is full (listen
// backlog 0, one connection never accepted): the kernel drops SYNs to it,
// so a connect hangs until it times out. It stays on this machine.
func fullListener(t *testing.T) netip.AddrPort {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, unix.Listen(fd, 0))
	sa, err := unix.Getsockname(fd)
	require.NoError(t, err)
	ap := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))
	// Fill the queue: dial until a dial does not complete. With backlog 0
	// the first completes (and waits, never accepted), the next hangs.
	full := false
	for i := 0; i < 8 && !full; i++ {
		c, err := net.DialTimeout("tcp4", ap.String(), 200*time.Millisecond)
		if err != nil {
			full = true
			break
		}
		t.Cleanup(func() { c.Close() })
	}
	require.True(t, full, "the listener's accept queue did not fill")
	return ap
}

func TestConnectTimeout(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		ap := fullListener(t)
		rt := clientRuntime(t, testConfig(be), nil)
		const d = 150 * time.Millisecond
		var took time.Duration
		err := inTask(t, rt, 0, func(tc TaskCtx) error {
			start := time.Now()
			fut, err := tc.ConnectWithTimeout(ap, d)
			if err != nil {
				return err
			}
			_, err = fut.Await()
			took = time.Since(start)
			return err
		})
		require.Error(t, err)
		assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
		assert.ErrorIs(t, err, syscall.ETIMEDOUT)
		var ne net.Error
		assert.True(t, errors.As(err, &ne) && ne.Timeout(), "a net.Error with Timeout(): %v", err)
		assert.GreaterOrEqual(t, took, d, "the timeout never fires early")
		assert.Equal(t, 0, liveConns(t, rt, 0))
		assert.Equal(t, uint64(1), Total(rt.Stats()).ConnectErrors)

		// A timeout that does not fire leaves nothing behind: the
		// connection works past it.
		ln, ap2 := listenTCP(t, "tcp4", "127.0.0.1:0")
		goEcho(t, ln)
		err = inTask(t, rt, 0, func(tc TaskCtx) error {
			fut, err := tc.ConnectWithTimeout(ap2, 100*time.Millisecond)
			if err != nil {
				return err
			}
			c, err := fut.Await()
			if err != nil {
				return err
			}
			if err := tc.Sleep(300 * time.Millisecond); err != nil {
				return err
			}
			got, err := echoThrough(c, []byte("after the timeout"))
			if err != nil || string(got) != "after the timeout" || c.Err() != nil {
				return fmt.Errorf("echo %q, %v, Err %v", got, err, c.Err())
			}
			return nil
		})
		require.NoError(t, err)
	})
}

// unixEcho listens on a new Unix socket and echoes; it returns the path.
func unixEcho(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "echo.sock")
	ln, err := net.Listen("unix", path)
	require.NoError(t, err)
	goEcho(t, ln)
	return path
}

func TestConnectUnix(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		path := unixEcho(t)
		rt := clientRuntime(t, testConfig(be), nil)
		msg := pattern(100_000, 5)
		err := inTask(t, rt, 0, func(tc TaskCtx) error {
			fut, err := tc.ConnectUnix(path)
			if err != nil {
				return err
			}
			c, err := fut.Await()
			if err != nil {
				return err
			}
			defer c.Close()
			if !c.IsOutbound() {
				return errors.New("IsOutbound is false")
			}
			if pa, ok := c.PeerAddr(); !ok || pa.String() != path || pa.Network() != "unix" {
				return fmt.Errorf("PeerAddr %v, %v", pa, ok)
			}
			// On io_uring the socket must block once connected (it
			// connects non-blocking): an O_NONBLOCK socket's sendmsg can
			// fail with EAGAIN there instead of waiting for room, which
			// the proxy example's Unix test hit.
			if fl, err := unix.FcntlInt(uintptr(c.get().fd), unix.F_GETFL, 0); err != nil ||
				(be == IOUring && fl&unix.O_NONBLOCK != 0) {
				return fmt.Errorf("socket flags %#x, %v", fl, err)
			}
			got, err := echoThrough(c, msg)
			if err != nil {
				return err
			}
			if !bytes.Equal(got, msg) {
				return errors.New("echo differs")
			}
			return nil
		})
		require.NoError(t, err)

		// A peer that does not read for a while: the sends wait for room
		// in the socket (on io_uring a non-blocking socket would fail them
		// with EAGAIN instead) and all bytes arrive.
		slowPath := filepath.Join(t.TempDir(), "slow.sock")
		slow, err := net.Listen("unix", slowPath)
		require.NoError(t, err)
		defer slow.Close()
		bulk := pattern(4<<20, 9)
		slowErr := make(chan error, 1)
		go func() {
			c, err := slow.Accept()
			if err != nil {
				slowErr <- err
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			// Slow, small reads: the sender keeps meeting a full socket.
			var got []byte
			buf := make([]byte, 8<<10)
			for {
				n, err := c.Read(buf)
				got = append(got, buf[:n]...)
				if err == io.EOF {
					err = nil
				}
				if err != nil || n == 0 {
					break
				}
				if len(got)%(64<<10) < n {
					time.Sleep(time.Millisecond)
				}
			}
			if err == nil && !bytes.Equal(got, bulk) {
				err = fmt.Errorf("read %d bytes, want %d intact", len(got), len(bulk))
			}
			slowErr <- err
		}()
		err = inTask(t, rt, 0, func(tc TaskCtx) error {
			fut, err := tc.ConnectUnix(slowPath)
			if err != nil {
				return err
			}
			c, err := fut.Await()
			if err != nil {
				return err
			}
			defer c.Close()
			// One send in flight at a time, each large enough to go out
			// as a sendmsg of many pool slots (as a proxy's are).
			for off := 0; off < len(bulk); off += 128 << 10 {
				f, err := c.Send(bulk[off : off+128<<10])
				if err != nil {
					return err
				}
				if _, err := f.Await(); err != nil {
					return err
				}
			}
			return nil
		})
		require.NoError(t, err)
		require.NoError(t, <-slowErr)

		// A listener whose backlog is full refuses at once with EAGAIN
		// (backlog 0 holds one connection that is never accepted).
		fullPath := filepath.Join(t.TempDir(), "full.sock")
		lfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		require.NoError(t, err)
		defer unix.Close(lfd)
		require.NoError(t, unix.Bind(lfd, &unix.SockaddrUnix{Name: fullPath}))
		require.NoError(t, unix.Listen(lfd, 0))
		for i := 0; ; i++ {
			fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
			require.NoError(t, err)
			defer unix.Close(fd)
			if err := unix.Connect(fd, &unix.SockaddrUnix{Name: fullPath}); err != nil {
				require.ErrorIs(t, err, unix.EAGAIN)
				break
			}
			require.Less(t, i, 8, "the backlog did not fill")
		}
		start := time.Now()
		err = inTask(t, rt, 0, func(tc TaskCtx) error {
			fut, err := tc.ConnectUnix(fullPath)
			if err != nil {
				return err
			}
			_, err = fut.Await()
			return err
		})
		assert.ErrorIs(t, err, syscall.EAGAIN)
		assert.Less(t, time.Since(start), 5*time.Second, "refused at once, not after waiting")

		// A missing socket file: ENOENT, from Await.
		err = inTask(t, rt, 0, func(tc TaskCtx) error {
			fut, err := tc.ConnectUnix(filepath.Join(t.TempDir(), "nobody.sock"))
			if err != nil {
				return fmt.Errorf("ConnectUnix itself failed: %w", err)
			}
			_, err = fut.Await()
			return err
		})
		assert.ErrorIs(t, err, syscall.ENOENT)

		// Too long for sun_path: refused up front, never truncated (a
		// truncated path would name another socket: the one made here).
		long := filepath.Join(t.TempDir(), strings.Repeat("x", 120))
		err = inTask(t, rt, 0, func(tc TaskCtx) error {
			_, err := tc.ConnectUnix(long)
			return err
		})
		assert.ErrorIs(t, err, syscall.ENAMETOOLONG)
		assert.Contains(t, err.Error(), "sun_path")
		assert.Equal(t, 0, liveConns(t, rt, 0))
	})
}

func TestConnectSeveralFromOneTask(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		ln, ap := listenTCP(t, "tcp4", "127.0.0.1:0")
		goEcho(t, ln)
		path := unixEcho(t)
		rt := clientRuntime(t, testConfig(be), nil)
		const n = 8
		err := inTask(t, rt, 0, func(tc TaskCtx) error {
			// Start them all, then await them all: the connects run
			// concurrently.
			var futs []ConnectFuture
			for i := 0; i < n; i++ {
				var fut ConnectFuture
				var err error
				if i%2 == 0 {
					fut, err = tc.Connect(ap)
				} else {
					fut, err = tc.ConnectUnix(path)
				}
				if err != nil {
					return err
				}
				futs = append(futs, fut)
			}
			fs := make([]Future, n)
			for i := range futs {
				fs[i] = futs[i]
			}
			if err := JoinAll(fs...); err != nil {
				return err
			}
			conns := make([]ConnCtx, n)
			for i, f := range futs {
				c, err := f.Await()
				if err != nil {
					return fmt.Errorf("conn %d: %w", i, err)
				}
				conns[i] = c
			}
			// Everything goes out first, then each echo is read: one
			// task drives all of them.
			msgs := make([][]byte, n)
			for i, c := range conns {
				msgs[i] = pattern(10_000+i, byte(i))
				if err := c.SendNowait(msgs[i]); err != nil {
					return err
				}
			}
			for i, c := range conns {
				var got []byte
				for len(got) < len(msgs[i]) {
					if c.WithData(func(b []byte) ParseResult { got = append(got, b...); return Consumed(len(b)) }) == 0 {
						return fmt.Errorf("conn %d: EOF after %d bytes (%v)", i, len(got), c.Err())
					}
				}
				if !bytes.Equal(got, msgs[i]) {
					return fmt.Errorf("conn %d: echo differs", i)
				}
			}
			if l := len(tc.w.cur.owned); l != n {
				return fmt.Errorf("the task owns %d connections, want %d", l, n)
			}
			return nil
		})
		require.NoError(t, err)
		assert.True(t, settle(5*time.Second, func() bool { return liveConns(t, rt, 0) == 0 }))
		assert.Equal(t, uint64(n), Total(rt.Stats()).Connected)
	})
}

// A task that returns closes the connections it made, and cancels the
// connects it has not seen complete.
func TestConnectTaskReturnClosesOutbound(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		ln, ap := listenTCP(t, "tcp4", "127.0.0.1:0")
		accepted := make(chan net.Conn, 8)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				accepted <- c
			}
		}()
		t.Cleanup(func() { ln.Close() })
		full := fullListener(t)
		rt := clientRuntime(t, testConfig(be), nil)
		err := inTask(t, rt, 0, func(tc TaskCtx) error {
			for i := 0; i < 3; i++ {
				fut, err := tc.Connect(ap)
				if err != nil {
					return err
				}
				c, err := fut.Await()
				if err != nil {
					return err
				}
				if err := c.SendNowait([]byte{byte('a' + i)}); err != nil {
					return err
				}
			}
			// Never completes: the kernel drops its SYNs.
			_, err := tc.Connect(full)
			return err
		})
		require.NoError(t, err)
		for i := 0; i < 3; i++ {
			select {
			case c := <-accepted:
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				b, err := io.ReadAll(c)
				assert.NoError(t, err, "the peer sees a clean EOF")
				assert.Len(t, b, 1, "the queued byte went out before the close")
				c.Close()
			case <-time.After(10 * time.Second):
				t.Fatal("connection not accepted")
			}
		}
		assert.True(t, settle(5*time.Second, func() bool { return liveConns(t, rt, 0) == 0 }),
			"slots in use: the pending connect was not cancelled")
		st := Total(rt.Stats())
		assert.Equal(t, uint64(3), st.Connected)
		assert.Equal(t, uint64(3), st.Closed)
		assert.Equal(t, uint64(1), st.ConnectErrors, "the abandoned connect")
	})
}

// ShutdownWrite: the FIN follows every queued byte, the read side stays
// open, and the peer can still send. Tested from an accepted connection
// (the Go client is the peer) and from an outbound one (the Go server is).
func TestShutdownWrite(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		data := pattern(1<<20, 7)
		// halfClose is the ringline side: queue data (more than one send
		// can carry), shut the write side, then read what the peer sends
		// until it closes.
		halfClose := func(c ConnCtx) error {
			// The last 256 KiB are still queued when ShutdownWrite is
			// called, more than a small socket buffer takes at once: the
			// FIN must wait for them.
			_ = unix.SetsockoptInt(int(c.get().fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 8192)
			const chunk, tail = 64 << 10, 256 << 10
			for off := 0; off < len(data); off += chunk {
				f, err := c.Send(data[off : off+chunk])
				if err != nil {
					return err
				}
				if off+chunk <= len(data)-tail {
					if _, err := f.Await(); err != nil {
						return err
					}
				}
			}
			if c.get().sendIdle() {
				return errors.New("the tail already went out: the test proves nothing")
			}
			if err := c.ShutdownWrite(); err != nil {
				return err
			}
			if err := c.ShutdownWrite(); err != nil {
				return fmt.Errorf("a second ShutdownWrite: %w", err)
			}
			if err := c.SendNowait([]byte("late")); !errors.Is(err, ErrWriteShutdown) || !errors.Is(err, ErrClosed) {
				return fmt.Errorf("send after ShutdownWrite: %v", err)
			}
			var got []byte
			for {
				if c.WithData(func(b []byte) ParseResult { got = append(got, b...); return Consumed(len(b)) }) == 0 {
					break
				}
			}
			if string(got) != "reply after EOF" {
				return fmt.Errorf("read %q after the half-close", got)
			}
			return c.Err()
		}
		// peer reads everything to EOF, then answers and closes.
		peer := func(c net.Conn) error {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			got, err := io.ReadAll(c)
			if err != nil {
				return err
			}
			if !bytes.Equal(got, data) {
				return fmt.Errorf("peer read %d bytes before EOF, want %d intact", len(got), len(data))
			}
			_, err = c.Write([]byte("reply after EOF"))
			return err
		}

		t.Run("accepted", func(t *testing.T) {
			res := make(chan error, 1)
			rt := serve(t, testConfig(be), func(c ConnCtx) { res <- halfClose(c) })
			c := dial(t, rt)
			require.NoError(t, peer(c))
			select {
			case err := <-res:
				require.NoError(t, err)
			case <-time.After(20 * time.Second):
				t.Fatal("task did not finish")
			}
		})
		t.Run("outbound", func(t *testing.T) {
			ln, ap := listenTCP(t, "tcp4", "127.0.0.1:0")
			perr := make(chan error, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					perr <- err
					return
				}
				perr <- peer(c)
			}()
			t.Cleanup(func() { ln.Close() })
			rt := clientRuntime(t, testConfig(be), nil)
			err := inTask(t, rt, 0, func(tc TaskCtx) error {
				fut, err := tc.Connect(ap)
				if err != nil {
					return err
				}
				c, err := fut.Await()
				if err != nil {
					return err
				}
				return halfClose(c)
			})
			require.NoError(t, err)
			require.NoError(t, <-perr)
		})
	})
}

// Cancel on a pending connect, and on a connection whose task waits in
// WithData (the Cancel comes from another task of the worker).
func TestCancel(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		full := fullListener(t)
		rt := clientRuntime(t, testConfig(be), nil)
		err := inTask(t, rt, 0, func(tc TaskCtx) error {
			fut, err := tc.Connect(full) // no timeout: only Cancel ends it
			if err != nil {
				return err
			}
			if _, err := tc.Spawn(func(tc TaskCtx) {
				_ = tc.Sleep(50 * time.Millisecond)
				_ = fut.Cancel()
			}); err != nil {
				return err
			}
			_, err = fut.Await()
			return err
		})
		assert.ErrorIs(t, err, syscall.ECANCELED)
		assert.True(t, settle(5*time.Second, func() bool { return liveConns(t, rt, 0) == 0 }))

		ln, ap := listenTCP(t, "tcp4", "127.0.0.1:0")
		peerErr := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				peerErr <- err
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			_, err = io.ReadAll(c) // the peer is never sent a byte: it sees the close
			peerErr <- err
		}()
		t.Cleanup(func() { ln.Close() })
		err = inTask(t, rt, 0, func(tc TaskCtx) error {
			fut, err := tc.Connect(ap)
			if err != nil {
				return err
			}
			c, err := fut.Await()
			if err != nil {
				return err
			}
			if _, err := tc.Spawn(func(tc TaskCtx) {
				_ = tc.Sleep(50 * time.Millisecond)
				_ = c.Cancel()
			}); err != nil {
				return err
			}
			start := time.Now()
			n := c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
			if n != 0 || time.Since(start) < 50*time.Millisecond {
				return fmt.Errorf("WithData returned %d after %v", n, time.Since(start))
			}
			if _, err := c.Send([]byte("x")); !errors.Is(err, syscall.ECANCELED) {
				return fmt.Errorf("send after Cancel: %v", err)
			}
			return c.Err()
		})
		assert.ErrorIs(t, err, syscall.ECANCELED)
		require.NoError(t, <-peerErr)
		assert.True(t, settle(5*time.Second, func() bool { return liveConns(t, rt, 0) == 0 }))

		// Cancel with bytes queued that the peer does not read: nothing
		// waits for them, and the peer is reset rather than given a FIN
		// after a cut stream.
		// Small socket buffers at both ends, so the queue cannot all fit
		// in the kernel.
		lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
			return rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096) })
		}}
		stall, err := lc.Listen(t.Context(), "tcp4", "127.0.0.1:0")
		require.NoError(t, err)
		stallAP := stall.Addr().(*net.TCPAddr).AddrPort()
		t.Cleanup(func() { stall.Close() })
		accepted := make(chan net.Conn, 1)
		go func() {
			if c, err := stall.Accept(); err == nil {
				accepted <- c
			}
		}()
		err = inTask(t, rt, 0, func(tc TaskCtx) error {
			fut, err := tc.Connect(stallAP)
			if err != nil {
				return err
			}
			c, err := fut.Await()
			if err != nil {
				return err
			}
			_ = unix.SetsockoptInt(int(c.get().fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 4096)
			f, err := c.Send(make([]byte, 256<<10)) // more than the socket buffers hold
			if err != nil {
				return err
			}
			_ = tc.Sleep(20 * time.Millisecond)
			if done := c.get().sent >= c.get().queued; done {
				return errors.New("the kernel took everything: the test proves nothing")
			}
			_ = c.Cancel()
			_, err = f.Await()
			return err
		})
		assert.ErrorIs(t, err, syscall.ECANCELED)
		var pc net.Conn
		select {
		case pc = <-accepted:
		case <-time.After(10 * time.Second):
			t.Fatal("not accepted")
		}
		defer pc.Close()
		_ = pc.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.Copy(io.Discard, pc)
		assert.ErrorIs(t, err, syscall.ECONNRESET, "the peer of a cancelled connection with unsent bytes is reset")
		assert.True(t, settle(5*time.Second, func() bool { return liveConns(t, rt, 0) == 0 }))
	})
}

// RequestShutdown from a task takes Runtime.Shutdown's path: every worker
// stops, connections close, and no goroutine or descriptor is left.
func TestRequestShutdownFromTask(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		g0, fd0 := runtime.NumGoroutine(), allFDs(t)
		cfg := testConfig(be)
		cfg.Workers = 2
		asked := make(chan error, 1)
		rt, err := New(cfg).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler {
			return handlerFunc(func(c ConnCtx) {
				if c.WithData(func(b []byte) ParseResult {
					if string(b) == "stop" {
						asked <- c.RequestShutdown()
					}
					return Consumed(len(b))
				}) == 0 {
					return
				}
				// Told to stop like any task: WithData returns 0 and
				// Err says why.
				for c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) > 0 {
				}
				if !errors.Is(c.Err(), ErrShutdown) {
					asked <- fmt.Errorf("after RequestShutdown, Err is %v", c.Err())
				}
			})
		})
		require.NoError(t, err)
		// An idle connection on every worker (the kernel spreads them),
		// then one that asks for the shutdown.
		var idle []net.Conn
		for i := 0; i < 8; i++ {
			c, err := dialTCP(rt.Addr().String())
			require.NoError(t, err)
			idle = append(idle, c)
		}
		c, err := dialTCP(rt.Addr().String())
		require.NoError(t, err)
		_, err = c.Write([]byte("stop"))
		require.NoError(t, err)
		require.NoError(t, <-asked)
		select {
		case <-rt.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("the runtime did not stop after RequestShutdown")
		}
		select {
		case err := <-asked:
			t.Fatal(err)
		default:
		}
		for _, ic := range append(idle, c) {
			_ = ic.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := ic.Read(make([]byte, 1))
			assert.Zero(t, n)
			assert.True(t, errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET), "client sees the close: %v", err)
			ic.Close()
		}
		for _, w := range rt.workers {
			assert.True(t, w.exited.Load(), "worker %d stopped", w.id)
		}
		_, err = net.DialTimeout("tcp", rt.Addr().String(), time.Second)
		assert.Error(t, err, "the listeners are closed")
		assert.True(t, settle(5*time.Second, func() bool { return runtime.NumGoroutine() <= g0 }),
			"goroutines: before %d, after %d", g0, runtime.NumGoroutine())
		assert.True(t, settle(5*time.Second, func() bool { return allFDs(t) <= fd0 }),
			"fds: before %d, after %d", fd0, allFDs(t))

		// Off the worker it is refused, like every TaskCtx method.
		assert.ErrorIs(t, rt.workers[0].taskCtx().RequestShutdown(), ErrNotInWorker)
	})
}

func (w *worker) taskCtx() TaskCtx { return TaskCtx{w: w} }

// starter is a client-only handler: OnStart runs on every worker.
type starter struct {
	start func(t TaskCtx)
}

func (s starter) OnAccept(ConnCtx)  { panic("a client-only runtime accepted a connection") }
func (s starter) OnStart(t TaskCtx) { s.start(t) }

// A runtime launched without Bind: each worker's OnStart connects out and
// echoes; a runtime with neither a listener nor a start task idles until
// work is posted and stops on Shutdown.
func TestClientOnlyRuntime(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		ln, ap := listenTCP(t, "tcp4", "127.0.0.1:0")
		goEcho(t, ln)
		cfg := testConfig(be)
		cfg.Workers = 2
		results := make(chan string, 4)
		rt := clientRuntime(t, cfg, starter{start: func(tc TaskCtx) {
			// Spawned tasks outlive OnStart, which returns at once.
			_, _ = tc.Spawn(func(tc TaskCtx) {
				fut, err := tc.Connect(ap)
				if err != nil {
					results <- err.Error()
					return
				}
				c, err := fut.Await()
				if err != nil {
					results <- err.Error()
					return
				}
				msg := fmt.Sprintf("hello from worker %d", tc.WorkerID())
				got, err := echoThrough(c, []byte(msg))
				if err != nil {
					results <- err.Error()
					return
				}
				results <- string(got)
			})
		}})
		seen := map[string]bool{}
		for i := 0; i < 2; i++ {
			select {
			case r := <-results:
				seen[r] = true
			case <-time.After(10 * time.Second):
				t.Fatal("a start task did not report")
			}
		}
		assert.True(t, seen["hello from worker 0"] && seen["hello from worker 1"], "every worker's start task ran: %v", seen)
		assert.Equal(t, uint64(2), Total(rt.Stats()).Connected)

		// No listener, no start task, no connection: the worker waits
		// (no busy loop) and serves what is posted.
		cfg.Workers = 1
		idle := clientRuntime(t, cfg, nil)
		l0 := idle.Stats()[0].LoopIterations
		time.Sleep(100 * time.Millisecond)
		assert.LessOrEqual(t, idle.Stats()[0].LoopIterations-l0, uint64(5), "an idle worker does not spin")
		err := inTask(t, idle, 0, func(tc TaskCtx) error {
			fut, err := tc.Connect(ap)
			if err != nil {
				return err
			}
			c, err := fut.Await()
			if err != nil {
				return err
			}
			got, err := echoThrough(c, []byte("posted"))
			if err == nil && string(got) != "posted" {
				err = fmt.Errorf("echo %q", got)
			}
			return err
		})
		require.NoError(t, err)
		stop(t, idle)
	})
}

func TestBindUnix(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.Workers = 2
		path := filepath.Join(t.TempDir(), "srv.sock")
		rt, err := New(cfg).BindUnix(path).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		require.NoError(t, err)
		assert.Equal(t, "unix", rt.Addr().Network())
		assert.Equal(t, path, rt.Addr().String())
		fi, err := os.Lstat(path)
		require.NoError(t, err)
		require.True(t, fi.Mode()&os.ModeSocket != 0)

		// Echo from many clients, which both workers serve.
		runClients(t, 32, func(i int) error {
			c, err := net.DialTimeout("unix", path, 5*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			msg := pattern(20_000+i, byte(i))
			werr := writeAsync(c, msg)
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil {
				return err
			}
			if err := <-werr; err != nil {
				return err
			}
			if !bytes.Equal(got, msg) {
				return errors.New("echo differs")
			}
			return nil
		})
		var perWorker []uint64
		for _, s := range rt.Stats() {
			perWorker = append(perWorker, s.Accepted)
		}
		assert.Equal(t, uint64(32), Total(rt.Stats()).Accepted, "accepted per worker: %v", perWorker)

		// The path is in use: a second runtime is refused, and the file
		// stays.
		_, err = New(cfg).BindUnix(path).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		assert.ErrorIs(t, err, syscall.EADDRINUSE)
		_, err = os.Lstat(path)
		require.NoError(t, err, "a refused Launch does not remove the other runtime's socket")

		stop(t, rt)
		_, err = os.Lstat(path)
		assert.ErrorIs(t, err, os.ErrNotExist, "the socket file ringline created is removed at shutdown")

		// A stale socket file (its server is gone) is replaced.
		stale, err := net.Listen("unix", path)
		require.NoError(t, err)
		stale.(*net.UnixListener).SetUnlinkOnClose(false)
		stale.Close()
		_, err = os.Lstat(path)
		require.NoError(t, err)
		rt2, err := New(cfg).BindUnix(path).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		require.NoError(t, err, "a stale socket file is replaced")
		require.NoError(t, echoUnix(path, []byte("replaced")))
		// If another socket file took the path meanwhile, it is not
		// removed: only the file ringline created is.
		require.NoError(t, os.Remove(path))
		other, err := net.Listen("unix", path)
		require.NoError(t, err)
		defer other.Close()
		stop(t, rt2)
		_, err = os.Lstat(path)
		assert.NoError(t, err, "a socket file ringline did not create stays")
		other.Close()

		// Not a socket: refused, left alone.
		require.NoError(t, os.WriteFile(path, []byte("data"), 0o600))
		_, err = New(cfg).BindUnix(path).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		assert.ErrorIs(t, err, syscall.EADDRINUSE)
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		assert.Equal(t, "data", string(b))

		// Too long: refused, nothing created.
		long := filepath.Join(t.TempDir(), strings.Repeat("y", 110))
		_, err = New(cfg).BindUnix(long).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		assert.ErrorIs(t, err, syscall.ENAMETOOLONG)

		// An abstract name has no file.
		abs := fmt.Sprintf("@ringline-test-%d-%s", os.Getpid(), be)
		rt3, err := New(cfg).BindUnix(abs).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		require.NoError(t, err)
		require.NoError(t, echoUnix(abs, []byte("abstract")))
		stop(t, rt3)

		// Bind and BindUnix together: one address per runtime.
		_, err = New(cfg).Bind("127.0.0.1:0").BindUnix(path + "2").Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		assert.Error(t, err)
	})
}

func echoUnix(path string, msg []byte) error {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return errors.New("echo differs")
	}
	return nil
}

// onceEchoTask echoes the first bytes that arrive and closes: the server
// closes first, so the client's side of each connection does not linger in
// TIME_WAIT holding a local port (10,000 of those within a second would
// crowd the ephemeral port range).
func onceEchoTask(c ConnCtx) {
	c.WithData(func(b []byte) ParseResult {
		if c.SendNowait(b) != nil {
			return Consumed(0)
		}
		return Consumed(len(b))
	})
}

// 10,000 connect, echo, close cycles (32 tasks at a time) leave no
// descriptor and no slot behind: the slab does not grow past what was in
// use at once.
func TestConnectCloseCycles(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		srv := serve(t, testConfig(be), onceEchoTask)
		ap := srv.Addr().(*net.TCPAddr).AddrPort()
		rt := clientRuntime(t, testConfig(be), nil)
		fd0 := openFDs(t)
		const total, par = 10_000, 32
		err := inTask(t, rt, 0, func(tc TaskCtx) error {
			var hs []JoinHandle
			errs := make([]error, par)
			for p := 0; p < par; p++ {
				h, err := tc.Spawn(func(tc TaskCtx) {
					msg := []byte{byte(p)}
					for i := p; i < total; i += par {
						fut, err := tc.Connect(ap)
						if err != nil {
							errs[p] = err
							return
						}
						c, err := fut.Await()
						if err != nil {
							errs[p] = err
							return
						}
						got, err := echoThrough(c, msg)
						if err != nil || !bytes.Equal(got, msg) {
							errs[p] = fmt.Errorf("cycle %d: %q, %w", i, got, err)
							return
						}
						if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) != 0 || c.Err() != nil {
							errs[p] = fmt.Errorf("cycle %d: no clean EOF (%v)", i, c.Err())
							return
						}
						c.Close()
					}
				})
				if err != nil {
					return err
				}
				hs = append(hs, h)
			}
			for _, h := range hs {
				if err := h.Join(); err != nil {
					return err
				}
			}
			return errors.Join(errs...)
		})
		require.NoError(t, err)
		st := Total(rt.Stats())
		assert.Equal(t, uint64(total), st.Connected)
		assert.Equal(t, uint64(0), st.ConnectErrors)
		var slots int
		require.True(t, settle(10*time.Second, func() bool {
			onWorker(t, rt, 0, func(w *worker) { slots = len(w.conns) })
			return liveConns(t, rt, 0) == 0 && Total(rt.Stats()).Closed == total
		}), "live %d, closed %d", liveConns(t, rt, 0), Total(rt.Stats()).Closed)
		assert.LessOrEqual(t, slots, 2*par, "slots are reused: the slab holds %d", slots)
		assert.True(t, settle(10*time.Second, func() bool { return openFDs(t) <= fd0 }),
			"fds: before %d, after %d", fd0, openFDs(t))
	})
}

// The worker's MaxConnections and the process's descriptor limit each
// refuse a connect with their own error, and leave nothing behind.
func TestConnectLimits(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		ln, ap := listenTCP(t, "tcp4", "127.0.0.1:0")
		goEcho(t, ln)
		cfg := testConfig(be)
		cfg.MaxConnections = 2
		rt := clientRuntime(t, cfg, nil)
		err := inTask(t, rt, 0, func(tc TaskCtx) error {
			var cs []ConnCtx
			for i := 0; i < 2; i++ {
				fut, err := tc.Connect(ap)
				if err != nil {
					return err
				}
				c, err := fut.Await()
				if err != nil {
					return err
				}
				cs = append(cs, c)
			}
			if _, err := tc.Connect(ap); !errors.Is(err, ErrConnLimit) {
				return fmt.Errorf("third connect: %v, want ErrConnLimit", err)
			}
			// A slot freed is a slot usable again.
			cs[0].Close()
			for i := 0; ; i++ {
				fut, err := tc.Connect(ap)
				if errors.Is(err, ErrConnLimit) && i < 100 {
					_ = tc.Sleep(time.Millisecond) // the close completes first
					continue
				}
				if err != nil {
					return err
				}
				c, err := fut.Await()
				if err != nil {
					return err
				}
				if got, err := echoThrough(c, []byte("again")); err != nil || string(got) != "again" {
					return fmt.Errorf("after a slot was freed: %q, %v", got, err)
				}
				return nil
			}
		})
		require.NoError(t, err)
		assert.True(t, settle(5*time.Second, func() bool { return liveConns(t, rt, 0) == 0 }))

		// Out of descriptors: the soft limit is lowered to the lowest
		// free descriptor number, so socket(2) fails with EMFILE.
		var lim unix.Rlimit
		require.NoError(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &lim))
		fd0 := openFDs(t)
		err = inTask(t, rt, 0, func(tc TaskCtx) error {
			low := lim
			low.Cur = uint64(lowestFreeFD())
			if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
				return err
			}
			_, cerr := tc.Connect(ap)
			if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
				return err
			}
			return cerr
		})
		assert.ErrorIs(t, err, syscall.EMFILE)
		assert.False(t, errors.Is(err, ErrConnLimit))
		assert.Equal(t, 0, liveConns(t, rt, 0), "the slot went back")
		assert.LessOrEqual(t, openFDs(t), fd0, "nothing leaked")
	})
}

// lowestFreeFD is the descriptor number the next socket would get.
func lowestFreeFD() int {
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0
	}
	unix.Close(fd)
	return fd
}

// The backends give a linked timeout io_uring's completions: the timed op
// cancelled and the timeout ETIME when it fires; the timeout ECANCELED
// when the op completes first or is cancelled; EINVAL when nothing is
// linked to it.
func TestBackendLinkTimeout(t *testing.T) {
	forEachImpl(t, smallBC(), func(t *testing.T, h *beHarness) {
		full := fullListener(t)
		conn, lt := ud(udConnect, 20), ud(udLinkTimeout, 20)
		sock := func() int {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			require.NoError(t, err)
			t.Cleanup(func() { unix.Close(fd) })
			return fd
		}
		addr, l := sockaddrIn4(h, 0, int(full.Port()))
		start := time.Now()
		h.be.stage(sqOp{code: opConnect, flags: opFLink, fd: int32(sock()), ud: conn, addr: addr, len: l})
		h.be.stage(sqOp{code: opLinkTimeout, ud: lt, addr: timespecAt(h, 64, 50*time.Millisecond)})
		assert.Equal(t, -int32(syscall.ETIME), h.next(lt).res)
		assert.Equal(t, -int32(syscall.ECANCELED), h.next(conn).res)
		assert.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond)

		// The connect completes first: the timeout is cancelled, and does
		// not fire later.
		lfd, port := tcpListener(t)
		addr2, l2 := sockaddrIn4(h, 128, port)
		h.be.stage(sqOp{code: opConnect, flags: opFLink, fd: int32(sock()), ud: conn, addr: addr2, len: l2})
		h.be.stage(sqOp{code: opLinkTimeout, ud: lt, addr: timespecAt(h, 192, 100*time.Millisecond)})
		assert.Equal(t, int32(0), h.next(conn).res)
		assert.Equal(t, -int32(syscall.ECANCELED), h.next(lt).res)
		h.none(lt, 150*time.Millisecond)
		afd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		require.NoError(t, err)
		unix.Close(afd)

		// A connect that fails at once (refused) cancels its timeout too.
		unix.Close(lfd)
		h.be.stage(sqOp{code: opConnect, flags: opFLink, fd: int32(sock()), ud: conn, addr: addr2, len: l2})
		h.be.stage(sqOp{code: opLinkTimeout, ud: lt, addr: timespecAt(h, 192, 10*time.Second)})
		assert.Equal(t, -int32(syscall.ECONNREFUSED), h.next(conn).res)
		assert.Equal(t, -int32(syscall.ECANCELED), h.next(lt).res)

		// Cancelling the op cancels its timeout.
		cancel := ud(udCancel, 20)
		h.be.stage(sqOp{code: opConnect, flags: opFLink, fd: int32(sock()), ud: conn, addr: addr, len: l})
		h.be.stage(sqOp{code: opLinkTimeout, ud: lt, addr: timespecAt(h, 64, 10*time.Second)})
		h.none(conn, 20*time.Millisecond)
		h.be.stage(sqOp{code: opCancel, ud: cancel, addr: conn})
		assert.Equal(t, -int32(syscall.ECANCELED), h.next(conn).res)
		assert.Equal(t, -int32(syscall.ECANCELED), h.next(lt).res)
		assert.Equal(t, int32(0), h.next(cancel).res)

		// Nothing linked to it.
		h.be.stage(sqOp{code: opLinkTimeout, ud: lt, addr: timespecAt(h, 64, 10*time.Millisecond)})
		assert.Equal(t, -int32(syscall.EINVAL), h.next(lt).res)
	})
}

// A ConnectFuture is a Future: Select waits for it and a timer together;
// only the task that called Connect may await it.
func TestConnectSelect(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		full := fullListener(t)
		ln, ap := listenTCP(t, "tcp4", "127.0.0.1:0")
		goEcho(t, ln)
		rt := clientRuntime(t, testConfig(be), nil)
		err := inTask(t, rt, 0, func(tc TaskCtx) error {
			// The timer wins against a connect that cannot complete.
			fut, err := tc.Connect(full)
			if err != nil {
				return err
			}
			i, err := Select(fut, tc.After(50*time.Millisecond))
			if err != nil || i != 1 {
				return fmt.Errorf("Select: %d, %v; want the timer (1)", i, err)
			}
			// Another task of the worker may not await it.
			h, err := tc.Spawn(func(TaskCtx) {
				if _, err := fut.Await(); !errors.Is(err, ErrNotOwner) {
					panic(fmt.Sprintf("another task's Await: %v", err))
				}
			})
			if err != nil {
				return err
			}
			if err := h.Join(); err != nil {
				return err
			}
			if err := fut.Cancel(); err != nil {
				return err
			}
			if _, err := fut.Await(); !errors.Is(err, syscall.ECANCELED) {
				return fmt.Errorf("after Cancel: %v", err)
			}
			// The connect wins against a long timer.
			fut, err = tc.Connect(ap)
			if err != nil {
				return err
			}
			if i, err := Select(fut, tc.After(10*time.Second)); err != nil || i != 0 {
				return fmt.Errorf("Select: %d, %v; want the connect (0)", i, err)
			}
			c, err := fut.Await()
			if err != nil {
				return err
			}
			got, err := echoThrough(c, []byte("selected"))
			if err == nil && string(got) != "selected" {
				err = fmt.Errorf("echo %q", got)
			}
			return err
		})
		require.NoError(t, err)
		assert.True(t, settle(5*time.Second, func() bool { return liveConns(t, rt, 0) == 0 }))
	})
}

// A task that sends its last bytes on an outbound connection, closes it
// and then awaits the send (or asks Err) learns how it went, as it would
// on an accepted connection, rather than ErrStale: a closed outbound
// connection keeps its slot until its task connects again or ends. That
// next Connect frees it, so a task that connects and closes again and
// again does not pile up slots.
func TestOutboundCloseThenAwait(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		srv := serve(t, testConfig(be), onceEchoTask)
		ap := srv.Addr().(*net.TCPAddr).AddrPort()
		rt := clientRuntime(t, testConfig(be), nil)
		const cycles = 50
		var slots int
		err := inTask(t, rt, 0, func(tc TaskCtx) error {
			for i := 0; i < cycles; i++ {
				fut, err := tc.Connect(ap)
				if err != nil {
					return err
				}
				c, err := fut.Await()
				if err != nil {
					return err
				}
				sf, err := c.Send([]byte("bye"))
				if err != nil {
					return err
				}
				c.Close()
				// Suspend past the close's completion, then ask.
				if err := tc.Sleep(5 * time.Millisecond); err != nil {
					return err
				}
				if _, err := sf.Await(); err != nil {
					return fmt.Errorf("cycle %d: Await after Close = %v, want nil", i, err)
				}
				if err := c.Err(); err != nil {
					return fmt.Errorf("cycle %d: Err after Close = %v, want nil", i, err)
				}
			}
			slots = len(rt.workers[0].conns)
			return nil
		})
		require.NoError(t, err)
		assert.LessOrEqual(t, slots, 2, "closed outbound slots are reused while the task runs: the slab holds %d", slots)
		assert.True(t, settle(5*time.Second, func() bool { return liveConns(t, rt, 0) == 0 }), "no outbound connection left live")
	})
}
