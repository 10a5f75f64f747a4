package ringline

import (
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// At EMFILE the backlog is refused promptly (each queued client sees its
// connection reset, not silence), accept errors are counted and logged at
// most once a second, and once descriptors are free again the worker
// accepts as before. It runs in a child process: the descriptor limit is
// lowered (soft and hard, before Launch, because io_uring's multishot
// accept reads the limit when it is armed) for that process only.
func TestAcceptEMFILE(t *testing.T) {
	if be := os.Getenv("RINGLINE_EMFILE_CHILD"); be != "" {
		acceptEMFILEChild(t, be)
		return
	}
	forEachBackend(t, func(t *testing.T, be Backend) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestAcceptEMFILE$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "RINGLINE_EMFILE_CHILD="+be.String())
		out, err := cmd.CombinedOutput()
		t.Logf("child:\n%s", out)
		require.NoError(t, err, "the child test failed")
		require.Contains(t, string(out), "emfile child: done")
	})
}

func acceptEMFILEChild(t *testing.T, beName string) {
	be := Epoll
	if beName == IOUring.String() {
		be = IOUring
	}
	// The clients' sockets exist before the limit drops, so it is the
	// server's accepts, not the clients, that run out of descriptors.
	const clients = 60
	fds := make([]int, clients)
	for i := range fds {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		require.NoError(t, err)
		tv := unix.Timeval{Sec: 3}
		require.NoError(t, unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv))
		require.NoError(t, unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv))
		fds[i] = fd
	}
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	// Soft and hard, before Launch: io_uring's multishot accept reads the
	// limit when it is armed. Room for the runtime's own descriptors, an
	// echo and a few accepted clients.
	limit := uint64(allFDs(t) + 24)
	require.NoError(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: limit, Max: limit}))
	cfg := testConfig(be)
	logs := captureLog(&cfg)
	rt := serve(t, cfg, echoTask)
	echoOnce(t, rt)
	port := rt.Addr().(*net.TCPAddr).Port

	start := time.Now()
	for _, fd := range fds {
		require.NoError(t, sockConnect(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: port}))
	}
	outcomes := make([]error, clients)
	var wg sync.WaitGroup
	for i, fd := range fds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A socket with SO_RCVTIMEO/SO_SNDTIMEO returns EINTR when a
			// signal (the Go runtime's preemption) interrupts it, even
			// with SA_RESTART (signal(7)): retry those.
			var err error
			for {
				if _, err = unix.Write(fd, []byte("x")); err != unix.EINTR {
					break
				}
			}
			if err != nil {
				outcomes[i] = err
				return
			}
			var b [1]byte
			var n int
			for {
				if n, err = unix.Read(fd, b[:]); err != unix.EINTR {
					break
				}
			}
			switch {
			case err != nil:
				outcomes[i] = err
			case n == 0:
				outcomes[i] = io.EOF
			}
		}()
	}
	wg.Wait()
	served, refused, silent := 0, 0, 0
	for _, err := range outcomes {
		switch {
		case err == nil:
			served++
		case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, syscall.EPIPE):
			refused++
		default:
			silent++
			t.Logf("client: %v", err)
		}
	}
	t.Logf("%d clients: %d served, %d refused, %d left waiting; %v", clients, served, refused, silent, time.Since(start))
	assert.Zero(t, silent, "no client is left waiting without an answer")
	assert.NotZero(t, refused, "some clients met EMFILE")
	st := Total(rt.Stats())
	assert.NotZero(t, st.AcceptErrors)
	assert.NotZero(t, st.AcceptRefused)
	n := strings.Count(logs.String(), "accept failed")
	assert.NotZero(t, n)
	assert.LessOrEqual(t, n, 2+int(time.Since(start)/time.Second), "accept errors are rate-limited in the log")
	for i, fd := range fds {
		unix.Close(fd)
		fds[i] = -1
	}
	// Descriptors are back: the worker accepts again.
	require.True(t, settle(5*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", rt.Addr().String(), time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("y")); err != nil {
			return false
		}
		var b [1]byte
		_, err = io.ReadFull(c, b[:])
		return err == nil && b[0] == 'y'
	}), "the worker accepts again after EMFILE")
	t.Logf("emfile child: done")
}

// The accept error rule, in the core for both backends.
func TestAcceptAction(t *testing.T) {
	for _, c := range []struct {
		errno syscall.Errno
		want  int
	}{
		{syscall.ECONNABORTED, acceptRearm}, {syscall.EINTR, acceptRearm}, {syscall.EAGAIN, acceptRearm},
		{syscall.EPROTO, acceptRearm}, {syscall.EPERM, acceptRearm},
		{syscall.EMFILE, acceptRefuse}, {syscall.ENFILE, acceptRefuse},
		{syscall.ENOMEM, acceptPause}, {syscall.ENOBUFS, acceptPause}, {syscall.EINVAL, acceptPause}, {syscall.EBADF, acceptPause},
	} {
		assert.Equal(t, c.want, acceptAction(c.errno), "%v", c.errno)
	}
}

// A listener that keeps failing (here: a socket that is not listening, so
// every accept says EINVAL) costs a paused retry every few milliseconds,
// one log line a second and a counter, on both backends; the worker stays
// responsive.
func TestAcceptPersistentErrorPauses(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		require.NoError(t, err)
		require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
		cfg := testConfig(be)
		logs := captureLog(&cfg)
		cfg.fill()
		rt := &Runtime{cfg: cfg, backend: be, done: make(chan struct{})}
		w := newWorker(0, &rt.cfg, fd)
		rt.workers = []*worker{w}
		ready := make(chan error, 1)
		rt.wg.Add(1)
		go func() {
			defer rt.wg.Done()
			lockThread()
			w.g = getgForTest()
			if err := w.setup(be); err != nil {
				ready <- err
				return
			}
			w.handler = handlerFunc(echoTask)
			ready <- nil
			w.run()
			w.teardown()
		}()
		require.NoError(t, <-ready)
		time.Sleep(1200 * time.Millisecond)
		st := w.pub.acceptErrors.Load()
		// A retry every 10 ms: about 120 in 1.2 s, never thousands.
		assert.Greater(t, st, uint64(20))
		assert.Less(t, st, uint64(400))
		n := strings.Count(logs.String(), "accept failed")
		assert.GreaterOrEqual(t, n, 1)
		assert.LessOrEqual(t, n, 3)
		ran := make(chan struct{})
		require.NoError(t, w.post(func() { close(ran) }))
		select {
		case <-ran:
		case <-time.After(2 * time.Second):
			t.Fatal("worker unresponsive")
		}
		w.stop()
		rt.wg.Wait()
	})
}

// A "per-client" accept error that repeats with no client getting through
// (an LSM that denies every accept says EPERM) pauses accepting instead of
// spinning the loop (found in review).
func TestAcceptRearmStreakPauses(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, testConfig(be), echoTask)
		w := rt.workers[0]
		out := make(chan [2]bool, 1)
		require.NoError(t, w.post(func() {
			w.acceptError(syscall.EPERM)
			first := w.acceptPaused
			for i := 0; i < 70; i++ {
				w.acceptError(syscall.EPERM)
			}
			out <- [2]bool{first, w.acceptPaused}
		}))
		r := <-out
		assert.False(t, r[0], "one EPERM re-arms at once")
		assert.True(t, r[1], "a streak of them pauses")
		echoOnce(t, rt) // and accepting resumes
	})
}
