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
	t.Cleanup(func() { stopRuntime(t, rt) })
	return rt
}

func stopRuntime(t *testing.T, rt *Runtime) {
	rt.Shutdown()
	select {
	case <-rt.Done():
	case <-time.After(10 * time.Second):
		t.Errorf("runtime did not stop within 10s")
	}
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
