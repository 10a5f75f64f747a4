package ringline

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringline-go/ringline/internal/gid"
)

// Builder collects what Launch needs: a Config and the address to serve,
// if any.
type Builder struct {
	cfg      Config
	addr     string
	unixPath string
}

// New returns a Builder for cfg; zero fields take their defaults.
func New(cfg Config) *Builder { return &Builder{cfg: cfg} }

// Bind returns a Builder with the default Config serving addr.
func Bind(addr string) *Builder { return New(Config{}).Bind(addr) }

// Bind sets the TCP address ("host:port"; port 0 picks a free port) that
// every worker accepts on through its own SO_REUSEPORT listener. A runtime
// serves one address: Bind or BindUnix, not both. Without either it is a
// client-only runtime (see Launch).
func (b *Builder) Bind(addr string) *Builder { b.addr = addr; return b }

// BindUnix returns a Builder with the default Config serving the Unix
// stream socket at path.
func BindUnix(path string) *Builder { return New(Config{}).BindUnix(path) }

// BindUnix sets the Unix stream socket path (a leading '@' names a Linux
// abstract socket) that the workers accept on, instead of a TCP address.
// Unix sockets have no SO_REUSEPORT: the workers share one listening
// socket, each with its own accept armed on it, and the kernel hands each
// connection to one of them. Measured (BenchmarkUnixListener,
// docs/BENCHMARKS.md): on epoll the connections spread over the workers;
// on io_uring the kernel gives nearly all of them to one worker, so there
// a Unix listener is served by one worker, as if only it listened.
//
// Launch refuses a path that exists and is in use (a listener answers
// there), with an error wrapping syscall.EADDRINUSE, as Bind refuses a
// held port; it also refuses a path that exists and is not a socket. A
// socket file left behind by a process that is gone (nothing answers) is
// replaced. From that check to listen(2) Launch holds an exclusive
// flock(2) on the socket's directory, so that two runtimes finding the
// same stale file cannot both replace it; a directory it cannot open, or
// whose lock another program keeps for more than 2s, is bound without it
// (after that wait; a program that keeps a lock on the directory delays
// the stop by as much). The socket file is removed when the runtime stops,
// under the same lock, only if Launch created it and it is still the same
// file with nothing listening on it; Wait returns after that. A path longer than
// sun_path allows (107 bytes and a NUL) is refused with an error wrapping
// syscall.ENAMETOOLONG.
func (b *Builder) BindUnix(path string) *Builder { b.unixPath = path; return b }

// Config replaces the Builder's Config.
func (b *Builder) Config(cfg Config) *Builder { b.cfg = cfg; return b }

// Runtime is a running set of workers.
type Runtime struct {
	cfg     Config
	workers []*worker
	addr    net.Addr
	// sockFile is the Unix socket file Launch created (removed when the
	// runtime stops, if it is still that file).
	sockFile *unixSockFile
	backend  Backend
	desc     string
	wg       sync.WaitGroup
	once     sync.Once
	done     chan struct{}
	gate     chan struct{} // closed once every worker is set up
	wd       *stallWatch   // nil without a watchdog
}

// Launch validates the Config, binds the listeners, starts the workers and
// returns once every worker is serving. factory is called once per worker,
// on that worker's goroutine, and the handler it returns serves all of the
// worker's connections (if Auto has to fall back to epoll after io_uring
// workers failed to start, factory is called again for the new workers).
// Errors: a *ConfigError naming the bad field, or the bind/ring setup
// error (wrapping syscall.Errno).
//
// Without Bind or BindUnix the runtime is client-only: no worker listens,
// and a handler that implements Starter gets, on every worker, a start
// task (OnStart) that can Connect, Spawn and Sleep; a load generator or a
// pure client is built that way (OnAccept is then never called). A worker
// with no listener, no start task and no connections is not an error: it
// waits, costing no CPU, for work posted with Runtime.Post, and stops on
// Shutdown like any other.
func (b *Builder) Launch(factory func(workerID int) AsyncEventHandler) (*Runtime, error) {
	cfg := b.cfg
	cfg.fill()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if factory == nil {
		return nil, errors.New("ringline: Launch needs a handler factory")
	}
	if b.addr != "" && b.unixPath != "" {
		return nil, errors.New("ringline: Launch: Bind and BindUnix both set; a runtime serves one address")
	}
	raiseNofile()
	kind, err := selectBackend(&cfg)
	if err != nil {
		return nil, err
	}
	rt, err := b.start(cfg, kind, factory)
	var se *workerSetupError
	if err != nil && kind == IOUring && cfg.Backend == Auto && errors.As(err, &se) {
		// The probe passed but a worker's ring did not come up (memory
		// limits, a per-process ring cap): Auto still means "serve".
		cfg.Logger.Warn("ringline: io_uring worker setup failed; falling back to epoll", "reason", err.Error())
		rt, err = b.start(cfg, Epoll, factory)
	}
	if err != nil {
		return nil, err
	}
	rt.desc = rt.workers[0].be.describe()
	go func() {
		rt.wg.Wait()
		rt.sockFile.remove()
		close(rt.done)
	}()
	if rt.wd != nil {
		go rt.watchdog()
	}
	return rt, nil
}

// Addr returns the bound listen address (with the real port when Bind was
// given port 0), or nil when the runtime has no listener.
func (rt *Runtime) Addr() net.Addr { return rt.addr }

// Backend reports the backend the workers run on.
func (rt *Runtime) Backend() Backend { return rt.backend }

// Features describes the backend and the ring features in use.
func (rt *Runtime) Features() string { return rt.desc }

// Workers returns the number of workers.
func (rt *Runtime) Workers() int { return len(rt.workers) }

// Shutdown asks every worker to stop: listeners close, connections close
// and their tasks are told (WithData returns 0) and then stopped. It does
// not wait; Wait does. Safe to call more than once and from any goroutine.
func (rt *Runtime) Shutdown() {
	rt.once.Do(func() {
		for _, w := range rt.workers {
			w.stop()
		}
	})
}

// Wait blocks until every worker has stopped and released its ring,
// buffers, sockets and task goroutines, and the socket file BindUnix
// created is removed. A task that never yields (it blocks, or loops
// without calling a suspending method) keeps its worker from stopping,
// and Wait with it: use ShutdownContext to bound the wait.
func (rt *Runtime) Wait() {
	<-rt.done
}

// Done returns a channel closed when every worker has stopped and the
// socket file BindUnix created is removed: when Wait returns.
func (rt *Runtime) Done() <-chan struct{} { return rt.done }

// ShutdownContext is Shutdown followed by a wait that ends when every
// worker has stopped (it returns nil) or when ctx is done. Then it returns
// an error naming each worker that has not stopped, what it is stuck in
// (a task that does not yield, or at teardown a task's deferred call or a
// release callback that does not return: none can be preempted) and,
// with the watchdog on, for how long. The workers keep trying to stop; a
// program that must exit can do so.
func (rt *Runtime) ShutdownContext(ctx context.Context) error {
	rt.Shutdown()
	select {
	case <-rt.done:
		return nil
	case <-ctx.Done():
	}
	var stuck []string
	for _, w := range rt.workers {
		if w.exited.Load() {
			continue
		}
		msg := fmt.Sprintf("worker %d", w.id)
		if mark := w.busyMark.Load(); mark != 0 {
			c := stallCulprit[mark&partMask]
			if since := w.stuckSince.Load(); since != 0 {
				msg += fmt.Sprintf(" (%s has run at least %v without %s)", c.who, time.Duration(w.now()-since).Round(time.Millisecond), c.without)
			} else {
				msg += fmt.Sprintf(" (%s is running without %s)", c.who, c.without)
			}
		}
		stuck = append(stuck, msg)
	}
	if len(stuck) == 0 {
		return nil
	}
	return fmt.Errorf("ringline: shutdown did not finish: %s did not stop: %w", strings.Join(stuck, ", "), ctx.Err())
}

// listenReusePort opens n listeners on addr with SO_REUSEPORT; when the
// port is 0 the first one picks it and the rest join it. Unless share is
// set, it first checks that no other socket holds the address: SO_REUSEPORT
// would otherwise let a second server (another copy of the same program,
// say) start without error and silently take half the connections.
func listenReusePort(addr string, n, backlog int, share bool) ([]int, net.Addr, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("ringline: bind %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, nil, fmt.Errorf("ringline: bind %q: bad port", addr)
	}
	var ip netip.Addr
	if host == "" {
		ip = netip.IPv6Unspecified()
	} else if ip, err = netip.ParseAddr(host); err != nil {
		ips, lerr := net.DefaultResolver.LookupNetIP(context.Background(), "ip", host)
		if lerr != nil || len(ips) == 0 {
			return nil, nil, fmt.Errorf("ringline: bind %q: %w", addr, err)
		}
		ip = ips[0]
	}
	var fds []int
	fail := func(op string, err error) ([]int, net.Addr, error) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, nil, fmt.Errorf("ringline: %s %s: %w", op, addr, err)
	}
	sockaddr := func() (int, unix.Sockaddr) {
		if ip.Is4() || ip.Is4In6() {
			return unix.AF_INET, &unix.SockaddrInet4{Port: port, Addr: ip.Unmap().As4()}
		}
		return unix.AF_INET6, &unix.SockaddrInet6{Port: port, Addr: ip.As16()}
	}
	if !share && port != 0 {
		// A socket without SO_REUSEPORT cannot bind where any socket is
		// bound (SO_REUSEADDR still lets it past TIME_WAIT), so this bind
		// fails exactly when the address is taken. A second ringline
		// server making the same check cannot join this one's group.
		domain, sa := sockaddr()
		fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fail("socket", err)
		}
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		err = unix.Bind(fd, sa)
		unix.Close(fd)
		if err != nil {
			if err == unix.EADDRINUSE {
				return nil, nil, fmt.Errorf("ringline: bind %s: another socket already holds the address (set Config.ReusePort to share it): %w", addr, err)
			}
			return fail("bind", err)
		}
		if testHookBindProbed != nil {
			testHookBindProbed(port)
		}
	}
	var bound net.Addr
	for i := 0; i < n; i++ {
		domain, sa := sockaddr()
		fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			return fail("socket", err)
		}
		fds = append(fds, fd)
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fail("setsockopt SO_REUSEPORT", err)
		}
		if err := unix.Bind(fd, sa); err != nil {
			return fail("bind", err)
		}
		if err := unix.Listen(fd, backlog); err != nil {
			return fail("listen", err)
		}
		if i == 0 {
			got, err := unix.Getsockname(fd)
			if err != nil {
				return fail("getsockname", err)
			}
			bound = sockaddrToAddr(got)
			port = bound.(*net.TCPAddr).Port
		}
	}
	if !share {
		// The probe above was closed before these binds; see bindcheck.go.
		if err := checkSoleListeners(fds, ip, port); err != nil {
			return fail("bind", err)
		}
	}
	return fds, bound, nil
}

// testHookBindProbed, when set by a test, runs between listenReusePort's
// probe bind and its listeners' binds: the window another server can
// slip through.
var testHookBindProbed func(port int)

// raiseNofile lifts the soft RLIMIT_NOFILE to the hard limit: each
// connection costs an fd and the fixed-file tables are sized from it.
func raiseNofile() {
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
}

func nofileHard() int {
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) != nil || lim.Max > 1<<24 {
		return 0
	}
	return int(lim.Max)
}

// start binds the listeners and starts the workers on backend kind; on any
// failure everything it started is stopped and released.
func (b *Builder) start(cfg Config, kind Backend, factory func(workerID int) AsyncEventHandler) (*Runtime, error) {
	rt := &Runtime{cfg: cfg, backend: kind, done: make(chan struct{}), gate: make(chan struct{})}
	if cfg.StallThreshold > 0 {
		rt.wd = newStallWatch()
	}
	var lfds []int
	var err error
	if b.addr != "" {
		lfds, rt.addr, err = listenReusePort(b.addr, cfg.Workers, cfg.ListenBacklog, cfg.ReusePort)
		if err != nil {
			return nil, err
		}
	}
	if b.unixPath != "" {
		n := cfg.Workers
		if testHookUnixOneListener {
			n = 1
		}
		lfds, rt.sockFile, err = listenUnix(b.unixPath, n, cfg.ListenBacklog)
		if err != nil {
			return nil, err
		}
		rt.addr = &net.UnixAddr{Name: b.unixPath, Net: "unix"}
	}
	ready := make(chan error, cfg.Workers)
	// Every worker exists before any runs: a task may call
	// RequestShutdown (Runtime.Shutdown, which reads rt.workers) as soon
	// as its worker starts.
	for i := 0; i < cfg.Workers; i++ {
		lfd := -1
		if i < len(lfds) {
			lfd = lfds[i]
		}
		w := newWorker(i, &rt.cfg, lfd)
		w.wd = rt.wd
		w.exitReady = ready
		w.lunix = b.unixPath != ""
		w.shutdown = rt.Shutdown
		rt.workers = append(rt.workers, w)
	}
	for _, w := range rt.workers {
		rt.wg.Add(1)
		go func() {
			defer rt.wg.Done()
			defer w.exited.Store(true)
			// io_uring needs its submitter to stay on one thread
			// (SINGLE_ISSUER, DEFER_TASKRUN), and PinCPUs pins the
			// thread. An epoll worker needs neither, and unlocked it can
			// wait parked in Go's netpoller (epollBackend.waitAdaptive).
			if kind == IOUring || cfg.PinCPUs {
				lockThread()
				w.locked = true
			}
			w.g = gid.Get()
			w.pin()
			if err := w.setup(kind); err != nil {
				ready <- &workerSetupError{worker: w.id, err: err}
				if w.lfd >= 0 {
					unix.Close(w.lfd)
					w.lfd = -1
				}
				return
			}
			switch be := w.be.(type) {
			case *epollBackend:
				be.canPark, be.log = !w.locked, w.log.With("worker", w.id)
			case holdLogger:
				be.setLog(w.log.With("worker", w.id))
			}
			h, err := w.callFactory(factory)
			if err != nil {
				ready <- err
				w.teardown()
				return
			}
			w.handler = h
			ready <- nil
			// Every worker waits until all are set up: a Launch that fails
			// (or falls back to epoll) must not have served connections or
			// run start tasks on the workers that did come up.
			<-rt.gate
			if testHookWorkerRun != nil {
				testHookWorkerRun(w.id)
			}
			w.run()
			w.teardown()
		}()
	}
	var firstErr error
	for range cfg.Workers {
		if err := <-ready; err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		// Stopping is set before the gate opens, so the workers that came
		// up go straight to their teardown.
		rt.Shutdown()
		close(rt.gate)
		rt.wg.Wait() // rt.done has no closer yet
		rt.sockFile.remove()
		return nil, firstErr
	}
	close(rt.gate)
	return rt, nil
}

// workerSetupError is a worker's backend setup failure (as opposed to a
// bind error), the one Auto recovers from by falling back to epoll.
type workerSetupError struct {
	worker int
	err    error
}

func (e *workerSetupError) Error() string {
	return fmt.Sprintf("ringline: worker %d: %v", e.worker, e.err)
}

func (e *workerSetupError) Unwrap() error { return e.err }

// callFactory runs the handler factory on the worker's goroutine. A panic
// in it, or a runtime.Goexit (require.* in a test's factory), fails Launch
// with an error instead of killing the process or leaving Launch waiting
// for ever: Goexit cannot be stopped, so its deferred path reports the
// failure and releases the worker before the goroutine ends.
func (w *worker) callFactory(factory func(int) AsyncEventHandler) (h AsyncEventHandler, err error) {
	returned := false
	defer func() {
		if returned {
			return
		}
		if r := recover(); r != nil {
			err = &workerSetupError{worker: w.id, err: fmt.Errorf("handler factory panicked: %v", r)}
			return
		}
		// runtime.Goexit: this goroutine is ending; say so and clean up
		// here, since nothing after the call will run.
		w.exitReady <- &workerSetupError{worker: w.id, err: errors.New("handler factory called runtime.Goexit")}
		w.teardown()
	}()
	h = factory(w.id)
	returned = true
	if h == nil {
		return nil, &workerSetupError{worker: w.id, err: errors.New("handler factory returned nil")}
	}
	return h, nil
}

// testHookWorkerRun, when set by a test, runs on each worker's goroutine
// after Launch has released the workers and before the worker's loop
// starts (a worker scheduled late).
var testHookWorkerRun func(worker int)

// testHookUnixOneListener, when set by a benchmark, gives a BindUnix
// runtime's listening socket to worker 0 only (the alternative that
// BenchmarkUnixListener measures the shared listener against).
var testHookUnixOneListener bool

// unixSockFile identifies the socket file Launch created, so that only
// that file is removed at the end (not one another process has put at
// the same path since).
type unixSockFile struct {
	path     string
	dev, ino uint64
}

// remove deletes the socket file if it is still the one Launch created,
// under the directory lock BindUnix takes (lockSocketDir), so that another
// runtime cannot replace it between the look and the unlink.
func (f *unixSockFile) remove() {
	if f == nil {
		return
	}
	defer lockSocketDir(f.path)()
	f.removeLocked()
}

// removeLocked is remove for a caller that holds the directory lock. Once
// the runtime's listener is closed nothing answers at its file; a file
// that answers is another server's, which may have reused the inode
// number.
func (f *unixSockFile) removeLocked() {
	if f == nil {
		return
	}
	var st unix.Stat_t
	if unix.Lstat(f.path, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK &&
		uint64(st.Dev) == f.dev && st.Ino == f.ino && !unixAnswers(f.path) {
		if testHookUnixRemove != nil {
			testHookUnixRemove()
		}
		_ = unix.Unlink(f.path)
	}
}

// testHookUnixRemove, when set by a test, runs after removeLocked has
// decided the file is the runtime's and before it unlinks it.
var testHookUnixRemove func()

// unixAnswers reports whether a listener answers at path. Any failure
// other than a full backlog (EAGAIN) counts as no: a refused connect, and
// also one this process may not make (EACCES after dropping privileges,
// EMFILE), where the file may still be removed.
func unixAnswers(path string) bool { return connectAnswered(unixConnect(path)) }

// connectAnswered is unixAnswers' reading of a connect's error.
func connectAnswered(err error) bool { return err == nil || err == unix.EAGAIN }

// unixConnect tries a non-blocking connect to the Unix socket at path and
// returns its error: nil or EAGAIN when a listener is there (EAGAIN: its
// backlog is full), ECONNREFUSED when the file's server is gone.
func unixConnect(path string) error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Connect(fd, &unix.SockaddrUnix{Name: path})
}

// listenUnix binds and listens on the Unix stream socket at path and
// returns one descriptor per worker, all for the same socket (dups: each
// worker closes its own). The socket file it creates is returned for
// removal at the end; an abstract name has none.
func listenUnix(path string, n, backlog int) ([]int, *unixSockFile, error) {
	var raw [2 + sunPathLen]byte
	if _, err := putSockaddrUnix(raw[:], path); err != nil { // the checks Connect makes
		return nil, nil, fmt.Errorf("ringline: bind unix %q: %w", path, err)
	}
	sa := &unix.SockaddrUnix{Name: path} // x/sys/unix maps a leading '@' to the abstract NUL
	abstract := path[0] == '@'
	if !abstract {
		// Held until the socket listens: see lockSocketDir.
		defer lockSocketDir(path)()
		if err := unixPathFree(path); err != nil {
			return nil, nil, err
		}
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("ringline: socket for unix %s: %w", path, err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		if err == unix.EADDRINUSE {
			return nil, nil, fmt.Errorf("ringline: bind unix %s: the path exists: %w", path, err)
		}
		return nil, nil, fmt.Errorf("ringline: bind unix %s: %w", path, err)
	}
	var file *unixSockFile
	if !abstract {
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err == nil {
			file = &unixSockFile{path: path, dev: uint64(st.Dev), ino: st.Ino}
		}
	}
	fds := []int{fd}
	fail := func(op string, err error) ([]int, *unixSockFile, error) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		file.removeLocked() // the lock taken above is still held
		return nil, nil, fmt.Errorf("ringline: %s unix %s: %w", op, path, err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		return fail("listen", err)
	}
	for len(fds) < n {
		d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fail("dup listener", err)
		}
		fds = append(fds, d)
	}
	return fds, file, nil
}

// unixPathFree checks that nothing serves at path: a missing path is
// free; a socket nobody accepts on (ECONNREFUSED: its server is gone) is
// removed; anything else (a live listener, a file that is not a socket)
// is refused with EADDRINUSE.
func unixPathFree(path string) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if err == unix.ENOENT {
			return nil
		}
		return fmt.Errorf("ringline: bind unix %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("ringline: bind unix %s: the path exists and is not a socket: %w", path, unix.EADDRINUSE)
	}
	switch err := unixConnect(path); err {
	case nil, unix.EAGAIN:
		// Accepting (EAGAIN: its backlog is full, but it is there).
		return fmt.Errorf("ringline: bind unix %s: another socket is listening there: %w", path, unix.EADDRINUSE)
	case unix.ECONNREFUSED:
		if testHookUnixStale != nil {
			testHookUnixStale()
		}
		if err := unix.Unlink(path); err != nil && err != unix.ENOENT {
			return fmt.Errorf("ringline: bind unix %s: removing the stale socket file: %w", path, err)
		}
		return nil
	default:
		return fmt.Errorf("ringline: bind unix %s: checking the existing socket file: %w", path, err)
	}
}
