package ringline

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
	"golang.org/x/sys/unix"
)

// reusePortListener listens on ip:port with SO_REUSEPORT, as a second copy
// of a server would, and returns the fd (closed when the test ends).
func reusePortListener(t *testing.T, ip netip.Addr, port int) int {
	t.Helper()
	domain, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Port: port, Addr: ip.As16()})
	if ip.Is4() {
		domain, sa = unix.AF_INET, &unix.SockaddrInet4{Port: port, Addr: ip.As4()}
	}
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	require.NoError(t, unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1))
	require.NoError(t, unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1))
	require.NoError(t, unix.Bind(fd, sa))
	require.NoError(t, unix.Listen(fd, 16))
	return fd
}

func sockInode(t *testing.T, fd int) uint64 {
	t.Helper()
	var st unix.Stat_t
	require.NoError(t, unix.Fstat(fd, &st))
	return st.Ino
}

// freePort returns a TCP port nothing listens on at ip right now.
func freePort(t *testing.T, ip netip.Addr) int {
	t.Helper()
	l, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return port
}

// A second server that binds the address with SO_REUSEPORT between Bind's
// probe and its listeners would silently share the port: in Bind's group,
// or on an overlapping address, which then takes all the connections it
// matches. Bind must see it and fail with EADDRINUSE, leave nothing of its
// own listening, and leave the other server's listener working.
func TestBindRefusesListenerThatJoinsDuringSetup(t *testing.T) {
	cases := []struct{ name, bind, other, dial string }{
		{"same address", "127.0.0.1", "127.0.0.1", "127.0.0.1"},
		{"same address v6", "::1", "::1", "::1"},
		{"same wildcard", "", "::", "127.0.0.1"},
		{"more specific", "0.0.0.0", "127.0.0.1", "127.0.0.1"},
		{"v4 wildcard beside dual-stack", "", "0.0.0.0", "127.0.0.1"},
	}
	forEachBackend(t, func(t *testing.T, be Backend) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				otherIP, dialIP := netip.MustParseAddr(tc.other), netip.MustParseAddr(tc.dial)
				port := freePort(t, netip.MustParseAddr("::"))
				fds0 := openFDs(t)

				var other int
				testHookBindProbed = func(p int) {
					require.Equal(t, port, p)
					other = reusePortListener(t, otherIP, port)
				}
				defer func() { testHookBindProbed = nil }()
				cfg := testConfig(be)
				cfg.Workers = 2
				addr := net.JoinHostPort(tc.bind, strconv.Itoa(port))
				rt, err := New(cfg).Bind(addr).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
				if err == nil {
					rt.Shutdown()
					<-rt.Done()
				}
				require.ErrorIs(t, err, syscall.EADDRINUSE)
				assert.Contains(t, err.Error(), "took the address while Bind was setting up")
				testHookBindProbed = nil

				// Only the other server listens there now ...
				ls, err := portListeners(port)
				require.NoError(t, err)
				require.Len(t, ls, 1)
				assert.Equal(t, sockInode(t, other), ls[0].inode)
				assert.Equal(t, fds0+1, openFDs(t), "Bind closed all it opened (the other listener is the one more)")

				// ... and it takes the connections.
				c, err := net.DialTimeout("tcp", netip.AddrPortFrom(dialIP, uint16(port)).String(), 5*time.Second)
				require.NoError(t, err)
				defer c.Close()
				pfd := []unix.PollFd{{Fd: int32(other), Events: unix.POLLIN}}
				n, err := unix.Poll(pfd, 5000)
				require.NoError(t, err)
				require.Equal(t, 1, n, "the other listener has the connection")
				nfd, _, err := unix.Accept(other)
				require.NoError(t, err)
				unix.Close(nfd)
			})
		}
	})
}

// Without a race the check passes, on both families and on the
// unspecified addresses, and finds exactly the runtime's own listeners.
func TestBindCheckPassesItsOwnListeners(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		for _, addr := range []string{"127.0.0.1:0", "[::1]:0", ":0", "0.0.0.0:0"} {
			cfg := testConfig(be)
			cfg.Workers = 2
			rt, err := New(cfg).Bind(addr).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
			require.NoError(t, err, addr)
			ls, err := portListeners(rt.Addr().(*net.TCPAddr).Port)
			require.NoError(t, err)
			assert.Len(t, ls, cfg.Workers, "%s: one listener per worker, all the runtime's", addr)
			rt.Shutdown()
			<-rt.Done()
		}
	})
}

// A v6-only [::] listener on the port does not take IPv4 connections:
// Bind on 0.0.0.0 beside it is allowed (the probe allows it too), and the
// check must not refuse it.
func TestBindBesideV6OnlyWildcard(t *testing.T) {
	port := freePort(t, netip.MustParseAddr("::"))
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fd)
	require.NoError(t, unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1))
	require.NoError(t, unix.Bind(fd, &unix.SockaddrInet6{Port: port}))
	require.NoError(t, unix.Listen(fd, 4))

	rt, err := New(testConfig(Auto)).Bind(net.JoinHostPort("0.0.0.0", strconv.Itoa(port))).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
	require.NoError(t, err)
	stop(t, rt)
}

// portListeners finds the listeners of both families on the port, with
// their addresses and v6-only flags: not those of another port, not
// connected sockets.
func TestPortListeners(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	port := freePort(t, netip.MustParseAddr("::"))
	a := reusePortListener(t, lo, port)
	b := reusePortListener(t, lo, port)
	other := reusePortListener(t, netip.MustParseAddr("127.0.0.2"), port)
	any4 := reusePortListener(t, netip.MustParseAddr("0.0.0.0"), port)
	v6 := reusePortListener(t, netip.MustParseAddr("::1"), port)
	v6only, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(v6only)
	require.NoError(t, unix.SetsockoptInt(v6only, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1))
	require.NoError(t, unix.SetsockoptInt(v6only, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1))
	require.NoError(t, unix.Bind(v6only, &unix.SockaddrInet6{Port: port}))
	require.NoError(t, unix.Listen(v6only, 4))

	// A connection does not count: only listeners do.
	c, err := net.Dial("tcp", netip.AddrPortFrom(lo, uint16(port)).String())
	require.NoError(t, err)
	defer c.Close()

	ls, err := portListeners(port)
	require.NoError(t, err)
	got := map[uint64]diagListener{}
	for _, l := range ls {
		got[l.inode] = l
	}
	want := map[int]diagListener{
		a:      {addr: lo},
		b:      {addr: lo},
		other:  {addr: netip.MustParseAddr("127.0.0.2")},
		any4:   {addr: netip.MustParseAddr("0.0.0.0")},
		v6:     {addr: netip.MustParseAddr("::1"), v6only: true}, // the kernel sets it for a specific IPv6 address
		v6only: {addr: netip.MustParseAddr("::"), v6only: true},
	}
	assert.Equal(t, len(want), len(got))
	for fd, w := range want {
		w.inode = sockInode(t, fd)
		assert.Equal(t, w, got[w.inode])
	}

	ls, err = portListeners(freePort(t, lo))
	require.NoError(t, err)
	assert.Empty(t, ls)
}

// overlaps follows which listener could take another's connections.
func TestListenerOverlap(t *testing.T) {
	l := func(a string, v6only bool) diagListener {
		return diagListener{addr: netip.MustParseAddr(a), v6only: v6only}
	}
	cases := []struct {
		a, b diagListener
		want bool
	}{
		{l("127.0.0.1", false), l("127.0.0.1", false), true},
		{l("127.0.0.1", false), l("127.0.0.2", false), false},
		{l("0.0.0.0", false), l("127.0.0.1", false), true},
		{l("::1", false), l("::1", false), true},
		{l("::1", false), l("::2", false), false},
		{l("::", false), l("::1", false), true},
		{l("::", false), l("127.0.0.1", false), true},
		{l("::", true), l("127.0.0.1", false), false},
		{l("::", true), l("0.0.0.0", false), false},
		{l("::", false), l("0.0.0.0", false), true},
		{l("::1", false), l("127.0.0.1", false), false},
		{l("::ffff:127.0.0.1", false), l("127.0.0.1", false), true},
		{l("::ffff:127.0.0.1", false), l("0.0.0.0", false), true},
		{l("::ffff:127.0.0.1", false), l("127.0.0.2", false), false},
	}
	for _, tc := range cases {
		assert.Equal(t, tc.want, overlaps(tc.a, tc.b), "%v %v", tc.a, tc.b)
		assert.Equal(t, tc.want, overlaps(tc.b, tc.a), "%v %v", tc.b, tc.a)
	}
}

// Where the kernel cannot be asked (no inet_diag, a sandbox) Bind keeps the
// probe's answer and succeeds; any other failure of the question fails
// Bind with it, and closes what Bind opened.
func TestBindCheckWithoutDiagnostics(t *testing.T) {
	defer func() { listPortListeners = portListeners }()
	cfg := testConfig(Auto)
	launch := func() (*Runtime, error) {
		return New(cfg).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
	}
	fds0 := openFDs(t)

	listPortListeners = func(int) ([]diagListener, error) { return nil, errDiagUnavailable }
	rt, err := launch()
	require.NoError(t, err)
	rt.Shutdown()
	<-rt.Done()

	listPortListeners = func(int) ([]diagListener, error) { return nil, unix.ENOBUFS }
	_, err = launch()
	require.ErrorIs(t, err, unix.ENOBUFS)
	assert.Contains(t, err.Error(), "ringline: bind 127.0.0.1:0")

	// A listener the check does not know fails Bind: the check's answer is
	// what decides.
	listPortListeners = func(int) ([]diagListener, error) {
		return []diagListener{{addr: netip.MustParseAddr("127.0.0.1"), inode: 1}}, nil
	}
	_, err = launch()
	require.ErrorIs(t, err, syscall.EADDRINUSE)
	assert.Equal(t, fds0, openFDs(t), "nothing left open")
}

// Two runtimes that find the same stale socket file must not both start:
// without the directory lock the second removed the first one's new
// socket file as "stale" and both Launches succeeded, the first
// unreachable. The hook holds the first Launch between its check and its
// removal of the stale file while a second Launch runs.
func TestBindUnixRaceOnStaleFile(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		path := filepath.Join(t.TempDir(), "srv.sock")
		stale, err := net.Listen("unix", path)
		require.NoError(t, err)
		stale.(*net.UnixListener).SetUnlinkOnClose(false)
		require.NoError(t, stale.Close())

		launch := func() (*Runtime, error) {
			return New(cfg).BindUnix(path).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		}
		hook, second := launchInWindow(launch)
		testHookUnixStale = hook
		defer func() { testHookUnixStale = nil }()
		first, err1 := launch()
		if err1 == nil {
			defer stop(t, first)
		}
		rt2, err2 := second(t)
		testHookUnixStale = nil
		if err2 == nil {
			defer stop(t, rt2)
		}

		require.NoError(t, err1, "the first Launch holds the lock and starts")
		require.ErrorIs(t, err2, syscall.EADDRINUSE, "the second finds the first listening")
		require.NoError(t, echoUnix(path, []byte("reachable")), "the path reaches the runtime that started")
	})
}

// A runtime that stops removes its socket file; a second runtime that
// replaces it meanwhile (the file is stale once the first's listener is
// closed) must keep its own file: without the lock around the removal the
// first unlinked the second's new file, leaving it unreachable.
func TestBindUnixRemovalRacesReplacement(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		path := filepath.Join(t.TempDir(), "srv.sock")
		launch := func() (*Runtime, error) {
			return New(cfg).BindUnix(path).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		}
		first, err := launch()
		require.NoError(t, err)

		hook, second := launchInWindow(launch)
		testHookUnixRemove = hook
		defer func() { testHookUnixRemove = nil }()
		stop(t, first)
		rt2, err := second(t)
		testHookUnixRemove = nil
		require.NoError(t, err)
		defer stop(t, rt2)
		require.NoError(t, echoUnix(path, []byte("still reachable")), "the second runtime's socket file survived the first's removal")
	})
}

// launchInWindow returns a test hook that, at its first call only, starts
// launch in another goroutine and gives it 300 ms to run to the end if
// nothing holds it back (its own call of the hook returns at once), and a
// wait for what that launch returned.
func launchInWindow(launch func() (*Runtime, error)) (hook func(), second func(t *testing.T) (*Runtime, error)) {
	type result struct {
		rt  *Runtime
		err error
	}
	done := make(chan result, 1)
	var fired atomic.Bool
	hook = func() {
		if !fired.CompareAndSwap(false, true) {
			return
		}
		go func() {
			rt, err := launch()
			done <- result{rt, err}
		}()
		select {
		case r := <-done:
			done <- r
		case <-time.After(300 * time.Millisecond):
		}
	}
	second = func(t *testing.T) (*Runtime, error) {
		t.Helper()
		select {
		case r := <-done:
			return r.rt, r.err
		case <-time.After(10 * time.Second):
			t.Fatal("the second Launch did not return")
			return nil, nil
		}
	}
	return hook, second
}

// A directory whose lock another program holds delays BindUnix at most
// socketDirLockWait; then it binds without the lock.
func TestBindUnixDirectoryLockHeldElsewhere(t *testing.T) {
	dir := t.TempDir()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fd)
	require.NoError(t, unix.Flock(fd, unix.LOCK_EX))
	start := time.Now()
	rt, err := New(testConfig(Auto)).BindUnix(filepath.Join(dir, "srv.sock")).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
	require.NoError(t, err)
	waited := time.Since(start)
	require.NoError(t, unix.Flock(fd, unix.LOCK_UN)) // so that the stop's removal does not wait too
	defer stop(t, rt)
	assert.GreaterOrEqual(t, waited, socketDirLockWait, "it waited for the lock")
	require.NoError(t, echoUnix(filepath.Join(dir, "srv.sock"), []byte("bound")))
}

// diagV6Only reads the kernel's attributes without trusting their
// lengths: short, unpadded or lying attributes end the search, never the
// process.
func TestDiagV6OnlyAttrs(t *testing.T) {
	hdr := func(alen, typ uint16) []byte {
		return binary.NativeEndian.AppendUint16(binary.NativeEndian.AppendUint16(nil, alen), typ)
	}
	attr := func(typ uint16, payload ...byte) []byte {
		b := append(hdr(uint16(4+len(payload)), typ), payload...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	six := uint16(inetDiagSKV6Only)
	assert.True(t, diagV6Only(attr(six, 1)))
	assert.False(t, diagV6Only(attr(six, 0)))
	assert.True(t, diagV6Only(append(attr(5, 7, 7, 7, 7, 7), attr(six, 1)...)), "found after another attribute")
	assert.False(t, diagV6Only(nil))
	assert.False(t, diagV6Only(append(hdr(5, 1), 0)), "an unpadded last attribute")
	assert.False(t, diagV6Only(append(hdr(200, six), 1)), "a length past the end")
	assert.False(t, diagV6Only(append(hdr(2, six), 1)), "a length below the header")
	assert.False(t, diagV6Only(hdr(4, six)), "no payload")
}

// The socket file is removed unless something answers on it: a connect
// this process may not make (EACCES after dropping privileges, no fd left)
// must not leave the file behind.
func TestUnixRemovalReadsConnectErrors(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, true}, {unix.EAGAIN, true},
		{unix.ECONNREFUSED, false}, {unix.EACCES, false}, {unix.EMFILE, false}, {unix.ENOENT, false},
	} {
		assert.Equal(t, c.want, connectAnswered(c.err), "%v", c.err)
	}
}

// Wait returns only once the socket file is gone: a program that exits
// after Shutdown and Wait leaves no file behind. The directory lock, held
// here for a moment after Shutdown, holds the removal back.
func TestBindUnixWaitReturnsAfterRemoval(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		dir := t.TempDir()
		path := filepath.Join(dir, "srv.sock")
		rt, err := New(testConfig(be)).BindUnix(path).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		require.NoError(t, err)
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		require.NoError(t, err)
		require.NoError(t, unix.Flock(fd, unix.LOCK_EX))
		go func() {
			time.Sleep(200 * time.Millisecond)
			unix.Close(fd) // releases the lock
		}()
		rt.Shutdown()
		rt.Wait()
		_, err = os.Lstat(path)
		assert.ErrorIs(t, err, os.ErrNotExist, "Wait returned before the socket file was removed")
	})
}
