package ringline

// Benchmarks for outbound connections and the proxy (issue 8's figures):
//
//	go test -run '^$' -bench 'Connect$' -benchtime 20000x -count 3 .
//	go test -run '^$' -bench 'Proxy$' -benchtime 1000000x -count 3 .
//	go test -run '^$' -bench UnixListener -benchtime 20000x -count 3 .
//	go test -run '^$' -bench SocketCreate -count 3 .
//
// (make bench-connect and make bench-proxy run the first two.) As in
// bench_test.go, the server side and the load are pinned to different CPUs
// and every side runs with GOMAXPROCS=1; each benchmark runs ringline on
// every available backend and its peers side by side in one invocation.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// benchConnRoleEnv runs this test binary as the one-shot echo server the
// connect benchmark dials: "onceecho CPU" (CPU -1: not pinned).
const benchConnRoleEnv = "RINGLINE_BENCH_CONNROLE"

func init() {
	args := strings.Fields(os.Getenv(benchConnRoleEnv))
	if len(args) == 0 {
		return
	}
	if err := benchOnceEchoMain(args); err != nil {
		fmt.Fprintf(os.Stderr, "bench role %v: %v\n", args, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// benchOnceEchoMain serves Go net connections that echo the first bytes
// they receive and close: a connect cycle's server. It closes first, so
// the TIME_WAITs are its own and the client never runs out of local ports.
func benchOnceEchoMain(args []string) error {
	if cpu, err := strconv.Atoi(args[len(args)-1]); err == nil && cpu >= 0 {
		benchPinProcess(cpu)
		runtime.GOMAXPROCS(1)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Printf("onceecho: listening on %s\n", ln.Addr())
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 512)
			n, _ := c.Read(buf)
			if n > 0 {
				_, _ = c.Write(buf[:n])
			}
		}()
	}
}

// benchListener is a server child process that prints "listening on
// ADDR"; it stops when its stdin is closed (or, with sigint, on SIGINT).
type benchListener struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	addr  string
}

func benchStartListener(b *testing.B, cmd *exec.Cmd, sigint bool) *benchListener {
	b.Helper()
	stdin, lines := benchSpawn(b, cmd)
	l := &benchListener{cmd: cmd, stdin: stdin}
	b.Cleanup(func() {
		if sigint {
			_ = cmd.Process.Signal(os.Interrupt)
		}
		stdin.Close()
		done := make(chan error, 1)
		go func() {
			for lines.Scan() {
			}
			done <- cmd.Wait()
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			b.Errorf("%s did not stop within 10s", cmd.Path)
		}
	})
	addr := make(chan string, 1)
	go func() {
		for lines.Scan() {
			if m := benchListenRE.FindStringSubmatch(lines.Text()); m != nil {
				addr <- strings.TrimSuffix(m[1], ",")
				return
			}
		}
		close(addr)
	}()
	select {
	case a, ok := <-addr:
		if !ok {
			b.Fatalf("%s exited before listening", cmd.Path)
		}
		l.addr = a
	case <-time.After(10 * time.Second):
		b.Fatalf("%s did not listen within 10s", cmd.Path)
	}
	return l
}

// ---------------------------------------------------------------------------
// Outbound connects

// benchConnectPar is how many connect cycles run at once.
const benchConnectPar = 16

// BenchmarkConnect: connect, one 64-byte echo, close, b.N times, 16 cycles
// at a time, from one ringline worker (a client-only runtime: tasks that
// Connect) and from Go's net.Dial (16 goroutines), against the same
// one-shot echo server (a child process on the other CPU). The client
// process runs on one CPU with GOMAXPROCS=1. connects/s is the rate;
// client-cpu-us/connect the client process's CPU time per cycle
// (getrusage), the figure that says what a connect costs the caller.
func BenchmarkConnect(b *testing.B) {
	for _, be := range availableBackends() {
		b.Run("ringline/"+be.String(), func(b *testing.B) { benchConnect(b, be) })
	}
	b.Run("gonet", func(b *testing.B) { benchConnect(b, -1) })
}

func benchConnect(b *testing.B, be Backend) {
	serverCPU, restore := benchPinServer() // this process is the client here
	defer restore()
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), benchConnRoleEnv+"=onceecho "+strconv.Itoa(serverCPU))
	srv := benchStartListener(b, cmd, false)
	ta, err := net.ResolveTCPAddr("tcp", srv.addr)
	if err != nil {
		b.Fatal(err)
	}
	ap := ta.AddrPort()

	var rt *Runtime
	if be >= 0 {
		cfg := Config{Workers: 1, Backend: be}
		rt, err = New(cfg).Launch(func(int) AsyncEventHandler { return handlerFunc(func(ConnCtx) {}) })
		if err != nil {
			b.Fatal(err)
		}
		defer rt.Shutdown()
	}
	// cycle runs n connect cycles with benchConnectPar at a time.
	cycle := func(n int) error {
		if rt == nil {
			return benchGoNetCycles(srv.addr, n)
		}
		done := make(chan error, 1)
		if err := rt.Post(0, func(tc TaskCtx) { done <- benchRinglineCycles(tc, ap, n) }); err != nil {
			return err
		}
		select {
		case err := <-done:
			return err
		case <-time.After(60*time.Second + time.Duration(n)*100*time.Microsecond):
			return errors.New("connect cycles did not finish")
		}
	}
	if err := cycle(benchConnectPar * 4); err != nil { // warm up
		b.Fatal(err)
	}
	u0, _ := benchSelfUsage()
	b.ResetTimer()
	err = cycle(b.N)
	b.StopTimer()
	u1, _ := benchSelfUsage()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "connects/s")
	b.ReportMetric(float64(u0.cpu(u1).Microseconds())/float64(b.N), "client-cpu-us/connect")
	if rt != nil {
		st := Total(rt.Stats())
		b.ReportMetric(float64(st.CgoCalls)/float64(st.Connected), "cgo-calls/connect")
	}
}

// benchRinglineCycles runs n connect cycles from benchConnectPar tasks of
// tc's worker (they share the count: one worker, no locking).
func benchRinglineCycles(tc TaskCtx, ap netip.AddrPort, n int) error {
	remaining := n
	var firstErr error
	var hs []JoinHandle
	msg := make([]byte, 64)
	drain := func(b []byte) ParseResult { return Consumed(len(b)) }
	for range benchConnectPar {
		h, err := tc.Spawn(func(tc TaskCtx) {
			for remaining > 0 && firstErr == nil {
				remaining--
				fut, err := tc.Connect(ap)
				if err != nil {
					firstErr = err
					return
				}
				c, err := fut.Await()
				if err != nil {
					firstErr = err
					return
				}
				if err := c.SendNowait(msg); err != nil {
					firstErr = err
					return
				}
				for got := 0; got < len(msg); {
					k := c.WithData(drain)
					if k == 0 {
						firstErr = fmt.Errorf("EOF after %d bytes of the echo (%v)", got, c.Err())
						return
					}
					got += k
				}
				if c.WithData(drain) != 0 {
					firstErr = errors.New("no EOF after the echo")
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
		if err := h.Join(); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// benchGoNetCycles runs n connect cycles with net.Dial.
func benchGoNetCycles(addr string, n int) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, benchConnectPar)
	msg := make([]byte, 64)
	for range benchConnectPar {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := make([]byte, 64)
			for next.Add(1) <= int64(n) {
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					errs <- err
					return
				}
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Write(msg); err != nil {
					c.Close()
					errs <- err
					return
				}
				if _, err := io.ReadFull(c, got); err != nil {
					c.Close()
					errs <- err
					return
				}
				if k, err := c.Read(got); k != 0 || err != io.EOF {
					c.Close()
					errs <- fmt.Errorf("no EOF after the echo: %d, %v", k, err)
					return
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// ---------------------------------------------------------------------------
// Proxy

// benchProxyPeer is a proxy the proxy benchmark measures.
type benchProxyPeer struct {
	name string
	// cmd builds the command that runs the proxy in front of upstream.
	cmd    func(b *testing.B, upstream string) *exec.Cmd
	sigint bool // stops on SIGINT (examples/proxy) rather than at stdin's end
}

// BenchmarkProxy: pipelined 64-byte echo (64 connections, 16 in flight
// each; b.N messages in all) through a proxy to an echo server: the proxy
// of examples/proxy (one worker, each backend, forwarding the receive
// buffers and copying), the same proxy written
// with Go's net (a goroutine per direction, bench/netproxy) and with gnet
// (one event loop, bench/gnetproxy). Each proxy is a child process pinned
// to the first CPU with GOMAXPROCS=1; the load client (a child) and the
// echo server (ringline, in this process) share the second. The figure is
// msgs/proxy-cpu-s: messages relayed (each crosses the proxy twice) per
// second of the proxy's CPU time (utime+stime from /proc); the user and
// system split and, with perf, syscalls per message go beside it.
func BenchmarkProxy(b *testing.B) {
	var peers []benchProxyPeer
	for _, be := range availableBackends() {
		for _, mode := range []string{"forward", "copy"} {
			peers = append(peers, benchProxyPeer{name: "ringline-" + be.String() + "/mode=" + mode, sigint: true,
				cmd: func(b *testing.B, up string) *exec.Cmd {
					return exec.Command(benchBuilt(b, "proxy", ".", "./examples/proxy"), "-listen", "127.0.0.1:0",
						"-upstream", up, "-workers", "1", "-backend", be.String(), "-mode", mode)
				}})
		}
	}
	peers = append(peers,
		benchProxyPeer{name: "gonet", cmd: func(b *testing.B, up string) *exec.Cmd {
			return exec.Command(benchBuilt(b, "netproxy", "bench", "./netproxy"), "-upstream", up)
		}},
		benchProxyPeer{name: "gnet", cmd: func(b *testing.B, up string) *exec.Cmd {
			return exec.Command(benchBuilt(b, "gnetproxy", "bench", "./gnetproxy"), "-upstream", up)
		}})
	for _, p := range peers {
		p.cmd(b, "127.0.0.1:1") // build before any CPU pinning
	}
	for _, p := range peers {
		b.Run("proxy="+p.name, func(b *testing.B) { benchProxy(b, p) })
	}
}

var benchBuilds sync.Map // name -> *benchBuild

type benchBuild struct {
	once sync.Once
	path string
	err  error
}

// benchBuilt builds package pkg of the module in dir once per run into the
// user's cache directory and returns the program's path.
func benchBuilt(b *testing.B, name, dir, pkg string) string {
	v, _ := benchBuilds.LoadOrStore(name, &benchBuild{})
	bb := v.(*benchBuild)
	bb.once.Do(func() {
		cache, err := os.UserCacheDir()
		if err != nil {
			bb.err = err
			return
		}
		bb.path = filepath.Join(cache, "ringline", "bench", name)
		args := []string{"build", "-o", bb.path}
		if !uringCompiled && dir == "." {
			args = append(args, "-tags", "ringline_epoll")
		}
		cmd := exec.Command(benchGoTool(), append(args, pkg)...)
		cmd.Dir = dir
		if msg, err := cmd.CombinedOutput(); err != nil {
			bb.err = fmt.Errorf("building %s: %v: %s", pkg, err, msg)
		}
	})
	if bb.err != nil {
		b.Fatal(bb.err)
	}
	return bb.path
}

func benchProxy(b *testing.B, p benchProxyPeer) {
	cpus := benchAllowedCPUs()
	proxyCPU, loadCPU := -1, -1
	if len(cpus) >= 2 {
		proxyCPU, loadCPU = cpus[0], cpus[1]
	}
	// The upstream echo: ringline on the best backend, on the load's CPU
	// (its worker thread inherits the affinity of the thread that makes
	// it).
	be := availableBackends()[0]
	if loadCPU >= 0 {
		defer benchPinProcess(loadCPU)() // restores the affinity at the end
	}
	up := benchLaunchEcho(b, be, echoNowaitTask)

	// The proxy inherits the affinity it is started with.
	cmd := p.cmd(b, up.Addr().String())
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	if proxyCPU >= 0 {
		benchPinProcess(proxyCPU)
	}
	srv := benchStartListener(b, cmd, p.sigint)
	if loadCPU >= 0 {
		benchPinProcess(loadCPU)
	}
	pid := cmd.Process.Pid

	l := benchLoad
	ch := benchStartChild(b, "pipeclient",
		l.pipeClientArgs(srv.addr, b.N, loadCPU),
		60*time.Second+time.Duration(b.N)*40*time.Microsecond)
	defer ch.wait()
	if s := ch.next(); s != "ready" {
		b.Fatalf("client: %s", s)
	}
	perf := benchStartPerf(b, pid)
	t0 := benchProcTicks(b, pid)
	b.ResetTimer()
	if _, err := io.WriteString(ch.stdin, "go\n"); err != nil {
		b.Fatal(err)
	}
	res := ch.next()
	b.StopTimer()
	t1 := benchProcTicks(b, pid)
	syscalls := perf.stop()
	if res != "done" {
		b.Fatalf("client: %s", res)
	}
	ch.wait()
	hz := float64(benchClockTicks())
	user := float64(t1[0]-t0[0]) / hz
	sys := float64(t1[1]-t0[1]) / hz
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	if user+sys > 0 {
		b.ReportMetric(float64(b.N)/(user+sys), "msgs/proxy-cpu-s")
	}
	b.ReportMetric(user*1e9/float64(b.N), "proxy-user-ns/msg")
	b.ReportMetric(sys*1e9/float64(b.N), "proxy-sys-ns/msg")
	if syscalls >= 0 {
		b.ReportMetric(float64(syscalls)/float64(b.N), "syscalls/msg")
	}
}

// benchProcTicks reads process pid's utime and stime (clock ticks, dead
// threads included) from /proc.
func benchProcTicks(b *testing.B, pid int) [2]int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The command name may hold spaces: fields count from after its ')'.
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return [2]int64{ut, st}
}

// benchClockTicks is USER_HZ, the unit of /proc's CPU times: 100 on every
// Linux architecture ringline builds for (it is ABI, not the kernel's HZ).
func benchClockTicks() int { return 100 }

// ---------------------------------------------------------------------------
// Unix listener: shared by every worker, or on one worker only

// BenchmarkUnixListener: 2 workers serving a Unix socket, connect + one
// 64-byte echo + close, b.N times from 16 client goroutines. listener=shared
// is what BindUnix does (every worker arms its own accept on one listening
// socket); listener=one gives the socket to worker 0 only, the alternative
// for a socket that cannot be bound once per worker. spread-max is the
// busiest worker's share of the connections (0.5 is even).
func BenchmarkUnixListener(b *testing.B) {
	for _, be := range availableBackends() {
		for _, one := range []bool{false, true} {
			name := be.String() + "/listener=shared"
			if one {
				name = be.String() + "/listener=one"
			}
			b.Run(name, func(b *testing.B) { benchUnixListener(b, be, one) })
		}
	}
}

func benchUnixListener(b *testing.B, be Backend, one bool) {
	testHookUnixOneListener = one
	defer func() { testHookUnixOneListener = false }()
	path := filepath.Join(b.TempDir(), "bench.sock")
	rt, err := New(Config{Workers: 2, Backend: be}).BindUnix(path).
		Launch(func(int) AsyncEventHandler { return handlerFunc(onceEchoTask) })
	if err != nil {
		b.Fatal(err)
	}
	defer func() { rt.Shutdown(); rt.Wait() }()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, benchConnectPar)
	b.ResetTimer()
	for range benchConnectPar {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg, got := make([]byte, 64), make([]byte, 64)
			for next.Add(1) <= int64(b.N) {
				c, err := net.DialTimeout("unix", path, 5*time.Second)
				if err != nil {
					errs <- err
					return
				}
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
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
		}()
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conns/s")
	st := rt.Stats()
	total := float64(st[0].Accepted + st[1].Accepted)
	b.ReportMetric(float64(max(st[0].Accepted, st[1].Accepted))/total, "spread-max")
}
