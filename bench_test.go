package ringline

// Benchmarks for the figures in docs/BENCHMARKS.md (issue 2, "Figures it
// must reach"; issue 3, "Figures"). They run only under -bench; plain
// `go test` skips them.
//
//	go test -run '^$' -bench PipelinedEcho -benchtime 200000x -count 3 .
//	go test -run '^$' -bench PingPongLatency -benchtime 50000x -count 3 .
//	go test -run '^$' -bench IdleConnRSS -benchtime 1x -count 3 .
//
// Each runs ringline on every available backend and its peers (gnet/v2
// with one event loop, Go's net) side by side in the same invocation. The
// gnet peer is a separate program in the bench/ module (bench/gnetecho),
// which these benchmarks build and start as a child process, so that gnet
// and its dependencies stay out of ringline's module graph;
// RINGLINE_BENCH_GNET=/path/to/gnetecho uses a prebuilt one.
//
// The test binary doubles as the helper processes these benchmarks start
// (a pipelined load client, a ping-pong client, a Go net echo server): when
// benchRoleEnv is set, init runs that role and exits before any test or
// benchmark starts.

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	benchRoleEnv = "RINGLINE_BENCH_ROLE" // "pipeclient", "pingclient" or "netecho"
	benchArgsEnv = "RINGLINE_BENCH_ARGS" // role arguments
	// benchPerfEnv=0 disables the perf-stat syscall count.
	benchPerfEnv = "RINGLINE_BENCH_PERF"
)

func init() {
	role := os.Getenv(benchRoleEnv)
	if role == "" {
		return
	}
	var err error
	switch role {
	case "pipeclient":
		err = benchPipeClientMain()
	case "netecho":
		err = benchNetEchoMain()
	case "pingclient":
		err = benchPingClientMain()
	case "hsclient":
		err = benchHandshakeClientMain()
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench role %s: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// ---------------------------------------------------------------------------
// Pipelined echo

// benchPipeLoad is the pipelined echo load: Conns connections, each keeping
// Depth messages of Size bytes in flight. A writer goroutine per connection
// sends a message whenever a pipeline slot is free; a reader goroutine reads
// the echoes, checks them and frees slots.
type benchPipeLoad struct {
	Conns, Depth, Size int
	// PerMsgWrites makes the writer issue one write(2) per message. When
	// false it writes every free slot's message in one write(2), as a
	// pipelining client does (redis-benchmark -P).
	PerMsgWrites bool
	// TLS runs the connections over TLS 1.3 (bench_tls_test.go).
	TLS bool
}

var benchLoad = benchPipeLoad{Conns: 64, Depth: 16, Size: 64}

type benchPipeClient struct {
	load  benchPipeLoad
	conns []net.Conn
}

// benchDialPipe connects the load's connections and does one round trip on
// each, so every connection is accepted and its task running before timing.
func benchDialPipe(addr string, l benchPipeLoad) (*benchPipeClient, error) {
	pc := &benchPipeClient{load: l}
	for i := 0; i < l.Conns; i++ {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			pc.close()
			return nil, err
		}
		if l.TLS {
			c = benchTLSClient(c)
		}
		pc.conns = append(pc.conns, c)
	}
	msg := make([]byte, l.Size)
	got := make([]byte, l.Size)
	for _, c := range pc.conns {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(msg); err != nil {
			pc.close()
			return nil, fmt.Errorf("warm-up write: %w", err)
		}
	}
	for _, c := range pc.conns {
		if _, err := io.ReadFull(c, got); err != nil {
			pc.close()
			return nil, fmt.Errorf("warm-up read: %w", err)
		}
		_ = c.SetDeadline(time.Time{})
	}
	return pc, nil
}

func (pc *benchPipeClient) close() {
	for _, c := range pc.conns {
		c.Close()
	}
}

// run sends total messages spread over the connections and waits for every
// echo. It never hangs: a connection that makes no progress for 5 s fails
// the run, and the first failure closes every connection.
func (pc *benchPipeClient) run(total int) error {
	l := pc.load
	n := len(pc.conns)
	var (
		wg       sync.WaitGroup
		once     sync.Once
		firstErr error
		abort    = make(chan struct{})
	)
	fail := func(err error) {
		once.Do(func() {
			firstErr = err
			close(abort)
			pc.close()
		})
	}
	for i, c := range pc.conns {
		quota := total / n
		if i < total%n {
			quota++
		}
		if quota == 0 {
			continue
		}
		credits := make(chan struct{}, l.Depth)
		for range l.Depth {
			credits <- struct{}{}
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := benchPipeWriter(c, l, quota, credits, abort); err != nil {
				fail(fmt.Errorf("conn %d write: %w", i, err))
			}
		}()
		go func() {
			defer wg.Done()
			if err := benchPipeReader(c, l, quota, credits); err != nil {
				fail(fmt.Errorf("conn %d read: %w", i, err))
			}
		}()
	}
	wg.Wait()
	return firstErr
}

// benchDeadline refreshes a socket deadline at most once a second, so a
// stalled connection fails within 5 s at no per-call cost.
type benchDeadline struct {
	last time.Time
	set  func(time.Time) error
}

func (d *benchDeadline) touch() {
	now := time.Now()
	if now.Sub(d.last) > time.Second {
		d.last = now
		_ = d.set(now.Add(5 * time.Second))
	}
}

// Message i of a run is Size bytes of byte(i), so the reader can check the
// echoed stream position by position.
func benchPipeWriter(c net.Conn, l benchPipeLoad, quota int, credits chan struct{}, abort chan struct{}) error {
	buf := make([]byte, l.Depth*l.Size)
	dl := benchDeadline{set: c.SetWriteDeadline}
	for sent := 0; sent < quota; {
		select {
		case <-credits:
		case <-abort:
			return nil
		}
		k := 1
		if !l.PerMsgWrites {
		more:
			for k < l.Depth && sent+k < quota {
				select {
				case <-credits:
					k++
				default:
					break more
				}
			}
		}
		for j := 0; j < k; j++ {
			m := buf[j*l.Size : (j+1)*l.Size]
			v := byte(sent + j)
			for x := range m {
				m[x] = v
			}
		}
		dl.touch()
		if _, err := c.Write(buf[:k*l.Size]); err != nil {
			return err
		}
		sent += k
	}
	return nil
}

func benchPipeReader(c net.Conn, l benchPipeLoad, quota int, credits chan struct{}) error {
	buf := make([]byte, 16<<10)
	dl := benchDeadline{set: c.SetReadDeadline}
	want := quota * l.Size
	for got := 0; got < want; {
		dl.touch()
		n, err := c.Read(buf)
		for j := 0; j < n; j++ {
			if buf[j] != byte((got+j)/l.Size) {
				return fmt.Errorf("echo mismatch at byte %d: got %d want %d", got+j, buf[j], byte((got+j)/l.Size))
			}
		}
		done := (got+n)/l.Size - got/l.Size
		got += n
		for range done {
			credits <- struct{}{} // never blocks: at most Depth are out
		}
		if err != nil && got < want {
			return err
		}
	}
	return nil
}

// pipeClientArgs are the "pipeclient" role's arguments, in the order
// benchPipeClientMain reads them (one place, so callers cannot fall out
// of step with it).
func (l benchPipeLoad) pipeClientArgs(addr string, msgs, cpu int) string {
	return fmt.Sprintf("%s %d %d %d %t %d %d %t", addr, l.Conns, l.Depth, l.Size, l.PerMsgWrites, msgs, cpu, l.TLS)
}

// benchPipeClientMain is the "pipeclient" role: connect, print "ready",
// wait for "go" on stdin, run, print "done" (or "fail: ...").
func benchPipeClientMain() error {
	var addr string
	var l benchPipeLoad
	var msgs, cpu int
	if _, err := fmt.Sscan(os.Getenv(benchArgsEnv), &addr, &l.Conns, &l.Depth, &l.Size, &l.PerMsgWrites, &msgs, &cpu, &l.TLS); err != nil {
		return fmt.Errorf("bad %s: %w", benchArgsEnv, err)
	}
	if cpu >= 0 {
		benchPinProcess(cpu)
		runtime.GOMAXPROCS(1) // as under taskset
	}
	pc, err := benchDialPipe(addr, l)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() || in.Text() != "go" {
		return errors.New("no go from the benchmark")
	}
	if err := pc.run(msgs); err != nil {
		fmt.Println("fail:", err)
		return err
	}
	pc.close()
	fmt.Println("done")
	return nil
}

// echoNowaitTask is the echo the figure is specified for: a task
// looping on WithData + SendNowait, never waiting for send completions.
func echoNowaitTask(c ConnCtx) {
	for c.WithData(func(b []byte) ParseResult {
		if c.SendNowait(b) != nil {
			c.Close()
			return Consumed(0)
		}
		return Consumed(len(b))
	}) > 0 {
	}
}

func benchLaunchEcho(b *testing.B, be Backend, h func(ConnCtx)) *Runtime {
	return benchLaunchSpec(b, benchServerSpec{be: be, h: h})
}

// benchLaunchSpec starts ringline as s says (backend, task, Config
// changes, bind address).
func benchLaunchSpec(b *testing.B, s benchServerSpec) *Runtime {
	b.Helper()
	// One worker; every other field at its default, as in examples/echo.
	// RINGLINE_BENCH_BATCHWAIT (a duration) sets Config.BatchWait.
	bw, _ := time.ParseDuration(os.Getenv("RINGLINE_BENCH_BATCHWAIT"))
	// RINGLINE_BENCH_HOLDWAIT (a duration; negative: off) sets
	// Config.HoldWait.
	hold, _ := time.ParseDuration(os.Getenv("RINGLINE_BENCH_HOLDWAIT"))
	// RINGLINE_BENCH_PLAINFDS=1 skips the fixed-file table (to measure it).
	cfg := Config{Workers: 1, Backend: s.be, BatchWait: bw, HoldWait: hold, plainFDs: os.Getenv("RINGLINE_BENCH_PLAINFDS") == "1"}
	// RINGLINE_BENCH_PIN=1 sets Config.PinCPUs (an epoll worker then runs
	// locked to its thread and holds its long waits instead of parking).
	cfg.PinCPUs = os.Getenv("RINGLINE_BENCH_PIN") == "1"
	// RINGLINE_BENCH_BUFSIZE (bytes) sets Config.BufferSize, and
	// RINGLINE_BENCH_BUFCOUNT Config.BufferCount.
	cfg.BufferSize, _ = strconv.Atoi(os.Getenv("RINGLINE_BENCH_BUFSIZE"))
	cfg.BufferCount, _ = strconv.Atoi(os.Getenv("RINGLINE_BENCH_BUFCOUNT"))
	// Warnings and errors only: an informational line (a worker turning
	// zero copy off) printed mid-row would break the benchmark's output.
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if s.tls {
		cfg.TLS = benchTLSServer(true)
	}
	if s.cfg != nil {
		s.cfg(&cfg)
	}
	bind := "127.0.0.1:0"
	if s.bind != "" {
		bind = s.bind
	}
	h := s.h
	rt, err := New(cfg).Bind(bind).
		Launch(func(int) AsyncEventHandler { return handlerFunc(h) })
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		rt.Shutdown()
		select {
		case <-rt.Done():
		case <-time.After(10 * time.Second):
			b.Errorf("runtime did not stop within 10s")
		}
	})
	return rt
}

// benchSettledStats reads the runtime's totals once they stop moving (they
// are published once per loop iteration, so they may lag the client).
func benchSettledStats(rt *Runtime) WorkerStats {
	prev := Total(rt.Stats())
	for i := 0; i < 20; i++ {
		time.Sleep(10 * time.Millisecond)
		cur := Total(rt.Stats())
		if cur == prev {
			break
		}
		prev = cur
	}
	return prev
}

// BenchmarkPipelinedEcho: one worker, 64 loopback connections, 64-byte
// messages, 16 in flight per connection; b.N is the total message count.
//
// client=inproc runs the client goroutines in this process: proc-allocs/msg
// then counts client and server allocations together. client=subproc runs
// the same client in a child process (this test binary re-executed) pinned
// to the second CPU while this process, now only the server, is pinned to
// the first, both with GOMAXPROCS=1 (benchPinServer):
// server-allocs/msg, msgs/server-cpu-s and (with perf) syscalls/msg then
// describe the server alone.
//
// The peers run in the same invocation, in the same way as ringline with
// client=subproc: gnet/v2 with one event loop (issue 3's yardstick) and Go's
// net with a goroutine per connection.
func BenchmarkPipelinedEcho(b *testing.B) {
	_, _ = benchGnetBinary() // built before any CPU pinning; gnet rows report an error
	for _, perMsg := range []bool{false, true} {
		writes := "writes=batched"
		if perMsg {
			writes = "writes=per-msg"
		}
		l := benchLoad
		l.PerMsgWrites = perMsg
		for _, be := range availableBackends() {
			// handler=nowait is the figure's echo (WithData + SendNowait);
			// handler=await is examples/echo (Send + Await backpressure).
			nowait := benchServerSpec{be: be, h: echoNowaitTask}
			await := benchServerSpec{be: be, h: echoTask}
			b.Run(be.String()+"/"+writes+"/handler=nowait/client=inproc", func(b *testing.B) { benchPipelinedInproc(b, be, echoNowaitTask, l) })
			b.Run(be.String()+"/"+writes+"/handler=nowait/client=subproc", func(b *testing.B) { benchPipelinedSubproc(b, nowait, l) })
			b.Run(be.String()+"/"+writes+"/handler=await/client=subproc", func(b *testing.B) { benchPipelinedSubproc(b, await, l) })
		}
		b.Run("gnet/"+writes+"/client=subproc", func(b *testing.B) { benchPipelinedSubproc(b, benchServerSpec{peer: peerGnet}, l) })
		b.Run("gonet/"+writes+"/client=subproc", func(b *testing.B) { benchPipelinedSubproc(b, benchServerSpec{peer: peerGoNet}, l) })
	}
}

func benchReportCounters(b *testing.B, d WorkerStats, msgs int) {
	m := float64(msgs)
	b.ReportMetric(float64(d.CgoCalls)/m, "cgo-calls/msg")
	b.ReportMetric(float64(d.RingEnters)/m, "ring-enters/msg")
	b.ReportMetric(float64(d.LoopIterations)/m, "loops/msg")
	b.ReportMetric(float64(d.BytesCopied)/m, "bytes-copied/msg")
	if d.ENOBUFS > 0 {
		b.ReportMetric(float64(d.ENOBUFS)/m, "enobufs/msg")
	}
	if d.ZeroCopySends > 0 {
		b.ReportMetric(float64(d.ZeroCopySends)/m, "zc-sends/msg")
	}
	if d.ForwardedBuffers+d.ForwardCopies > 0 {
		b.ReportMetric(float64(d.ForwardedBuffers)/m, "fwd-bufs/msg")
		b.ReportMetric(float64(d.ForwardCopies)/m, "fwd-copies/msg")
	}
}

func benchStatsDelta(a, z WorkerStats) WorkerStats {
	return WorkerStats{
		CgoCalls: z.CgoCalls - a.CgoCalls, RingEnters: z.RingEnters - a.RingEnters,
		LoopIterations: z.LoopIterations - a.LoopIterations, TaskResumes: z.TaskResumes - a.TaskResumes,
		BytesIn: z.BytesIn - a.BytesIn, BytesOut: z.BytesOut - a.BytesOut, ENOBUFS: z.ENOBUFS - a.ENOBUFS,
		SendPoolExhausted: z.SendPoolExhausted - a.SendPoolExhausted,
		BytesCopied:       z.BytesCopied - a.BytesCopied, ZeroCopySends: z.ZeroCopySends - a.ZeroCopySends,
		ZeroCopyCopied: z.ZeroCopyCopied - a.ZeroCopyCopied, ForwardedBuffers: z.ForwardedBuffers - a.ForwardedBuffers,
		ForwardCopies: z.ForwardCopies - a.ForwardCopies,
	}
}

func benchCheckBytes(b *testing.B, d WorkerStats, l benchPipeLoad, msgs int) {
	if l.TLS {
		// Bytes are counted on the wire: records cost more than their
		// plaintext.
		if want := uint64(msgs * l.Size); d.BytesIn < want || d.BytesOut < want {
			b.Fatalf("server counted %d bytes in, %d out; want at least %d each", d.BytesIn, d.BytesOut, want)
		}
		return
	}
	if want := uint64(msgs * l.Size); d.BytesIn != want || d.BytesOut != want {
		b.Fatalf("server counted %d bytes in, %d out; want %d each", d.BytesIn, d.BytesOut, want)
	}
}

func benchPipelinedInproc(b *testing.B, be Backend, h func(ConnCtx), l benchPipeLoad) {
	rt := benchLaunchEcho(b, be, h)
	pc, err := benchDialPipe(rt.Addr().String(), l)
	if err != nil {
		b.Fatal(err)
	}
	defer pc.close()
	before := benchSettledStats(rt)
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	b.ResetTimer()
	err = pc.run(b.N)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	runtime.ReadMemStats(&ms1)
	d := benchStatsDelta(before, benchSettledStats(rt))
	benchCheckBytes(b, d, l, b.N)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	benchReportCounters(b, d, b.N)
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/float64(b.N), "proc-allocs/msg")
}

// benchGoNetServer is the Go net peer for the pipelined benchmark: one
// goroutine per connection echoing through a buffer as large as ringline's
// default provided buffer (16 KiB), so both read as much per call.
type benchGoNetServer struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func benchStartGoNet(b *testing.B, tc *tls.Config) *benchGoNetServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	if tc != nil {
		ln = tls.NewListener(ln, tc)
	}
	s := &benchGoNetServer{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				buf := make([]byte, 16<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	b.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

// benchPeer names the server a benchServerSpec starts.
type benchPeer int

const (
	peerRingline benchPeer = iota
	peerGnet               // gnet/v2, one event loop
	peerGoNet              // Go net, goroutine per connection, GOMAXPROCS=1
	peerCEpoll             // bench/cepoll, plain C, one thread
)

// benchServerSpec is a server the subprocess-client benchmarks run: ringline
// (one worker on backend be, task h) or a peer. All run in this process but
// gnet, which runs in a child process of its own (benchStartGnet).
type benchServerSpec struct {
	peer benchPeer
	be   Backend
	h    func(ConnCtx)
	// ringline only: Config changes, and the address to bind (default
	// 127.0.0.1:0).
	cfg  func(*Config)
	bind string
	// netns runs the load client in that network namespace (a veth
	// peer: benchVeth).
	netns string
	tls   bool // serve TLS 1.3 (ringline and Go net only)
}

// benchServer is a started server and the process it runs in.
type benchServer struct {
	addr  string
	rt    *Runtime // ringline's runtime; nil for a peer
	pid   int      // the server's process
	usage func() (benchUsage, error)
}

// benchStartServer starts s. Servers stop in b.Cleanup; undo restores what
// the start changed (GOMAXPROCS for the Go net peer) and must be called
// when the benchmark ends.
func benchStartServer(b *testing.B, s benchServerSpec) (srv benchServer, undo func()) {
	undo = func() {}
	srv = benchServer{pid: os.Getpid(), usage: benchSelfUsage}
	switch s.peer {
	case peerGoNet:
		prev := runtime.GOMAXPROCS(1)
		undo = func() { runtime.GOMAXPROCS(prev) }
		srv.addr = benchStartGoNet(b, benchTLSServer(s.tls)).ln.Addr().String()
	case peerGnet:
		g := benchStartGnet(b)
		srv.addr, srv.pid, srv.usage = g.addr, g.cmd.Process.Pid, g.usage
	case peerCEpoll:
		g := benchStartCEpoll(b)
		srv.addr, srv.pid, srv.usage = g.addr, g.cmd.Process.Pid, g.usage
	default:
		srv.rt = benchLaunchSpec(b, s)
		srv.addr = srv.rt.Addr().String()
	}
	return srv, undo
}

// benchGnet is the gnet/v2 echo server (bench/gnetecho) running as a child
// process. It inherits this process's CPU affinity when started (the
// benchmarks pin first) and runs with GOMAXPROCS=1.
type benchGnet struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines *bufio.Scanner
	addr  string
}

var benchGnetBin struct {
	once sync.Once
	path string
	err  error
}

// benchGnetBinary returns the gnetecho program: RINGLINE_BENCH_GNET, or
// one built once per run from bench/gnetecho into the user's cache
// directory (a fixed path, so runs leave nothing behind).
func benchGnetBinary() (string, error) {
	if p := os.Getenv("RINGLINE_BENCH_GNET"); p != "" {
		return p, nil
	}
	g := &benchGnetBin
	g.once.Do(func() {
		cache, err := os.UserCacheDir()
		if err != nil {
			g.err = err
			return
		}
		g.path = filepath.Join(cache, "ringline", "bench", "gnetecho")
		cmd := exec.Command(benchGoTool(), "build", "-o", g.path, "./gnetecho")
		cmd.Dir = "bench"
		if msg, err := cmd.CombinedOutput(); err != nil {
			g.err = fmt.Errorf("building bench/gnetecho: %v: %s", err, msg)
		}
	})
	return g.path, g.err
}

// benchGoTool is the go command: `go test` puts the go that runs it first
// on the test's PATH.
func benchGoTool() string { return "go" }

// benchStartGnet starts the gnet echo server and returns it once it
// listens; it stops in b.Cleanup.
func benchStartGnet(b *testing.B) *benchGnet {
	bin, err := benchGnetBinary()
	if err != nil {
		b.Skipf("gnet peer unavailable: %v", err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	stdin, lines := benchSpawn(b, cmd)
	g := &benchGnet{cmd: cmd, stdin: stdin, lines: lines}
	b.Cleanup(func() {
		g.stdin.Close() // gnetecho stops at the end of its stdin
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				b.Errorf("gnetecho: %v", err)
			}
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			b.Errorf("gnetecho did not stop within 10s")
		}
	})
	ready := make(chan string, 1)
	go func() {
		if g.lines.Scan() {
			ready <- g.lines.Text()
		}
		close(ready)
	}()
	select {
	case line := <-ready:
		m := benchListenRE.FindStringSubmatch(line)
		if m == nil {
			b.Fatalf("gnetecho: %q", line)
		}
		g.addr = m[1]
	case <-time.After(10 * time.Second):
		b.Fatal("gnetecho did not listen within 10s")
	}
	return g
}

// usage asks the child for its CPU time and allocation count.
func (g *benchGnet) usage() (benchUsage, error) {
	var u benchUsage
	if _, err := io.WriteString(g.stdin, "usage\n"); err != nil {
		return u, err
	}
	if !g.lines.Scan() {
		return u, fmt.Errorf("gnetecho exited")
	}
	var ut, st int64
	if _, err := fmt.Sscanf(g.lines.Text(), "usage %d %d %d", &ut, &st, &u.mallocs); err != nil {
		return u, fmt.Errorf("gnetecho: %q: %v", g.lines.Text(), err)
	}
	u.utime, u.stime = time.Duration(ut), time.Duration(st)
	return u, nil
}

// benchUsage is a server process's CPU time and Go heap allocation count.
type benchUsage struct {
	utime, stime time.Duration
	mallocs      uint64
}

func (a benchUsage) cpu(z benchUsage) time.Duration {
	return z.utime + z.stime - a.utime - a.stime
}

// benchSelfUsage samples this process.
func benchSelfUsage() (benchUsage, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return benchUsage{}, err
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return benchUsage{utime: time.Duration(ru.Utime.Nano()), stime: time.Duration(ru.Stime.Nano()), mallocs: ms.Mallocs}, nil
}

// benchPinServer pins this process to the first allowed CPU when there are
// two or more, and returns the client's CPU (-1 when not pinned) and a func
// that restores the affinity and GOMAXPROCS. Pinned, the process runs with
// GOMAXPROCS=1, as Go sets it for a process started under taskset on one
// CPU: every server, ringline or peer, then runs as it would deployed that
// way, and no second P competes with the server for its CPU.
func benchPinServer() (clientCPU int, restore func()) {
	if cpus := benchAllowedCPUs(); len(cpus) >= 2 {
		unpin := benchPinProcess(cpus[0])
		prev := runtime.GOMAXPROCS(1)
		return cpus[1], func() { runtime.GOMAXPROCS(prev); unpin() }
	}
	return -1, func() {}
}

// benchChild is a load client child process (this test binary re-executed
// in a role) that prints "ready", waits for "go" on stdin, runs and prints
// one result line. A watchdog kills it if it overruns limit.
type benchChild struct {
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	lines    *bufio.Scanner
	watchdog *time.Timer
	once     sync.Once
}

func benchStartChild(b *testing.B, role, args string, limit time.Duration) *benchChild {
	return benchStartChildIn(b, "", role, args, limit)
}

// benchStartChildIn is benchStartChild in network namespace netns ("" for
// this one).
func benchStartChildIn(b *testing.B, netns, role, args string, limit time.Duration) *benchChild {
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	if netns != "" {
		cmd = exec.Command("ip", "netns", "exec", netns, os.Args[0], "-test.run=^$", "-test.bench=^$")
	}
	cmd.Env = append(os.Environ(), benchRoleEnv+"="+role, benchArgsEnv+"="+args)
	stdin, lines := benchSpawn(b, cmd)
	ch := &benchChild{cmd: cmd, stdin: stdin, lines: lines}
	// Never hang: the child is killed if the run takes unreasonably long.
	ch.watchdog = time.AfterFunc(limit, func() { _ = cmd.Process.Kill() })
	return ch
}

// benchSpawn starts cmd talking over stdin and stdout (line by line); its
// stderr is this process's.
func benchSpawn(b *testing.B, cmd *exec.Cmd) (io.WriteCloser, *bufio.Scanner) {
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	return stdin, bufio.NewScanner(stdout)
}

func (ch *benchChild) next() string {
	if ch.lines.Scan() {
		return ch.lines.Text()
	}
	return "<client exited>"
}

func (ch *benchChild) wait() {
	ch.once.Do(func() {
		ch.stdin.Close()
		_ = ch.cmd.Wait()
		ch.watchdog.Stop()
	})
}

// benchPipelinedSubproc runs the load from a child process against server
// s in this process.
func benchPipelinedSubproc(b *testing.B, s benchServerSpec, l benchPipeLoad) {
	clientCPU, restore := benchPinServer()
	defer restore()
	srv, undo := benchStartServer(b, s)
	defer undo()

	ch := benchStartChildIn(b, s.netns, "pipeclient",
		l.pipeClientArgs(srv.addr, b.N, clientCPU),
		60*time.Second+time.Duration(b.N)*20*time.Microsecond)
	defer ch.wait()
	if s := ch.next(); s != "ready" {
		b.Fatalf("client: %s", s)
	}
	perf := benchStartPerf(b, srv.pid)
	var before WorkerStats
	var epSys0 uint64
	if srv.rt != nil {
		before = benchSettledStats(srv.rt)
		epSys0 = benchEpollSyscalls(srv.rt)
	}
	thr0 := benchThreadTicks(srv.pid) // outside the allocation count
	u0, err := srv.usage()
	if err != nil {
		b.Fatal(err)
	}
	stall0 := benchCPUStall()
	b.ResetTimer()
	if _, err := io.WriteString(ch.stdin, "go\n"); err != nil {
		b.Fatal(err)
	}
	res := ch.next()
	b.StopTimer()
	stall1 := benchCPUStall()
	u1, err := srv.usage()
	if err != nil {
		b.Fatal(err)
	}
	thr1 := benchThreadTicks(srv.pid)
	syscalls := perf.stop()
	if res != "done" {
		b.Fatalf("client: %s", res)
	}
	ch.wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	if srv.rt != nil {
		d := benchStatsDelta(before, benchSettledStats(srv.rt))
		benchCheckBytes(b, d, l, b.N)
		benchReportCounters(b, d, b.N)
		if n := benchEpollSyscalls(srv.rt) - epSys0; n > 0 {
			// The epoll backend's own syscalls (epoll_wait, reads,
			// writes, epoll_ctl), without the Go runtime's (futex,
			// nanosleep) that syscalls/msg includes.
			b.ReportMetric(float64(n)/float64(b.N), "backend-syscalls/msg")
		}
	}
	b.ReportMetric(float64(b.N)/u0.cpu(u1).Seconds(), "msgs/server-cpu-s")
	// The split: user time is the server's own code (library, runtime),
	// system time the kernel's socket and poll work on its behalf.
	b.ReportMetric(float64(u1.utime-u0.utime)/float64(b.N), "server-user-ns/msg")
	b.ReportMetric(float64(u1.stime-u0.stime)/float64(b.N), "server-sys-ns/msg")
	b.ReportMetric(float64(u1.mallocs-u0.mallocs)/float64(b.N), "server-allocs/msg")
	if syscalls >= 0 {
		b.ReportMetric(float64(syscalls)/float64(b.N), "syscalls/msg")
	}
	benchReportStall(b, stall0, stall1)
	benchReportOffLoop(b, thr0, thr1)
}

// benchEpollSyscalls sums the syscalls rt's epoll workers made (0 on
// io_uring).
func benchEpollSyscalls(rt *Runtime) uint64 {
	var n uint64
	for _, w := range rt.workers {
		if eb, ok := w.be.(*epollBackend); ok {
			n += eb.syscalls()
		}
	}
	return n
}

// benchThreadTicks reads the CPU time (utime+stime, clock ticks) of each
// thread of process pid.
func benchThreadTicks(pid int) map[int]int64 {
	m := map[int]int64{}
	dir := fmt.Sprintf("/proc/%d/task/", pid)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		data, err := os.ReadFile(dir + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after the parenthesised comm: state is field 3, utime 14.
		rest := string(data)
		if i := strings.LastIndexByte(rest, ')'); i >= 0 {
			rest = rest[i+1:]
		}
		f := strings.Fields(rest)
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		tid, _ := strconv.Atoi(e.Name())
		m[tid] = u + st
	}
	return m
}

// benchReportOffLoop reports server-offloop-%: the share of the server
// process's CPU time over the window spent on threads other than the
// busiest one. For a server with one event loop that is the CPU its
// runtime spends beside the loop (sysmon, GC workers, timers, thread
// hand-offs). Per-thread times have clock-tick (10 ms) resolution, and a
// loop goroutine that is not locked to its thread may move between
// threads, which shows here too.
func benchReportOffLoop(b *testing.B, a, z map[int]int64) {
	var total, busiest int64
	for tid, t := range z {
		d := t - a[tid]
		total += d
		busiest = max(busiest, d)
	}
	if total > 0 {
		b.ReportMetric(100*float64(total-busiest)/float64(total), "server-offloop-%")
	}
}

// benchCPUStall reads the machine's cumulative CPU pressure stall
// ("some" line of /proc/pressure/cpu, µs): time in which some runnable task
// waited for a CPU. -1 when PSI is unavailable.
func benchCPUStall() int64 {
	data, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return -1
	}
	for _, f := range strings.Fields(string(data)) {
		if v, ok := strings.CutPrefix(f, "total="); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return -1
			}
			return n // the first total= is the "some" line's
		}
	}
	return -1
}

// benchReportStall reports cpu-stall-%: the share of the timed window in
// which some task on the machine was runnable but waiting for a CPU. With
// the server and the client pinned to their own CPUs it stays near 0 on a
// quiet machine; a high value flags a run that shared its CPUs with other
// work, whose time-based figures (msgs/s, msgs/server-cpu-s, latency)
// are then suspect.
func benchReportStall(b *testing.B, stall0, stall1 int64) {
	if stall0 >= 0 && stall1 >= stall0 {
		b.ReportMetric(100*float64(stall1-stall0)/float64(b.Elapsed().Microseconds()), "cpu-stall-%")
	}
}

// benchPerf counts a process's syscalls with perf stat, when perf is there.
type benchPerf struct {
	cmd *exec.Cmd
	out string
}

func benchStartPerf(b *testing.B, pid int) *benchPerf {
	if os.Getenv(benchPerfEnv) == "0" {
		return nil
	}
	path, err := exec.LookPath("perf")
	if err != nil {
		return nil
	}
	out := filepath.Join(b.TempDir(), "perf.csv")
	cmd := exec.Command(path, "stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p", strconv.Itoa(pid), "-o", out)
	if err := cmd.Start(); err != nil {
		return nil
	}
	time.Sleep(300 * time.Millisecond) // let it attach
	return &benchPerf{cmd: cmd, out: out}
}

// stop ends the count and returns it, or -1 when there is none.
func (p *benchPerf) stop() int64 {
	if p == nil {
		return -1
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
		return -1
	}
	data, err := os.ReadFile(p.out)
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Split(line, ",")
		if len(f) >= 3 && strings.Contains(line, "raw_syscalls:sys_enter") {
			if v, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				return v
			}
		}
	}
	return -1
}

// benchAllowedCPUs lists the CPUs this process may run on.
func benchAllowedCPUs() []int {
	var set unix.CPUSet
	if unix.SchedGetaffinity(0, &set) != nil {
		return nil
	}
	var cpus []int
	for i := 0; i < 1024; i++ {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	return cpus
}

// benchPinProcess pins every thread of this process to cpu (threads made
// later inherit it from their creator) and returns a func that restores the
// previous affinity.
func benchPinProcess(cpu int) (restore func()) {
	var old, one unix.CPUSet
	if unix.SchedGetaffinity(0, &old) != nil {
		return func() {}
	}
	one.Set(cpu)
	setAll := func(s *unix.CPUSet) {
		ents, _ := os.ReadDir("/proc/self/task")
		for _, e := range ents {
			if tid, err := strconv.Atoi(e.Name()); err == nil {
				_ = unix.SchedSetaffinity(tid, s)
			}
		}
	}
	setAll(&one)
	return func() { setAll(&old) }
}

// ---------------------------------------------------------------------------
// Ping-pong latency

// benchPingSize is the ping-pong message size.
const benchPingSize = 64

// BenchmarkPingPongLatency: conns connections, each with one 64-byte
// message in flight: the client writes it, reads the echo, checks it and
// writes the next. b.N is the total number of round trips; ns/op is the
// mean round trip; p50-us, p99-us and p999-us are percentiles of every
// round trip of the run, timed by the client.
//
// The client is a child process pinned to the second CPU, the server runs
// in this process pinned to the first, as for BenchmarkPipelinedEcho. The
// client uses blocking sockets (SO_RCVTIMEO/SO_SNDTIMEO of 5 s, so a lost
// echo fails instead of hanging), one locked OS thread per connection:
// write(2), then read(2) until the echo is whole. Its own share of a round
// trip is then two syscalls and one wake-up, with no Go netpoller, and is
// the same for every server; an in-process client would share CPU 0, or
// the Go scheduler, with the server and measure that contention instead.
func BenchmarkPingPongLatency(b *testing.B) {
	_, _ = benchGnetBinary() // built before any CPU pinning; gnet rows report an error
	for _, conns := range []int{1, 8} {
		cs := fmt.Sprintf("conns=%d", conns)
		for _, be := range availableBackends() {
			s := benchServerSpec{be: be, h: echoNowaitTask}
			b.Run(be.String()+"/"+cs+"/handler=nowait", func(b *testing.B) { benchPingPong(b, s, conns) })
		}
		b.Run("gnet/"+cs, func(b *testing.B) { benchPingPong(b, benchServerSpec{peer: peerGnet}, conns) })
		b.Run("gonet/"+cs, func(b *testing.B) { benchPingPong(b, benchServerSpec{peer: peerGoNet}, conns) })
	}
}

func benchPingPong(b *testing.B, s benchServerSpec, conns int) {
	clientCPU, restore := benchPinServer()
	defer restore()
	srv, undo := benchStartServer(b, s)
	defer undo()

	ch := benchStartChild(b, "pingclient", fmt.Sprintf("%s %d %d %d", srv.addr, conns, b.N, clientCPU),
		60*time.Second+time.Duration(b.N)*time.Millisecond/10)
	defer ch.wait()
	if s := ch.next(); s != "ready" {
		b.Fatalf("client: %s", s)
	}
	var before WorkerStats
	if srv.rt != nil {
		before = benchSettledStats(srv.rt)
	}
	thr0 := benchThreadTicks(srv.pid) // outside the allocation count
	u0, err := srv.usage()
	if err != nil {
		b.Fatal(err)
	}
	stall0 := benchCPUStall()
	b.ResetTimer()
	if _, err := io.WriteString(ch.stdin, "go\n"); err != nil {
		b.Fatal(err)
	}
	res := ch.next()
	b.StopTimer()
	stall1 := benchCPUStall()
	u1, err := srv.usage()
	if err != nil {
		b.Fatal(err)
	}
	thr1 := benchThreadTicks(srv.pid)
	var p50, p99, p999 int64
	if _, err := fmt.Sscanf(res, "done %d %d %d", &p50, &p99, &p999); err != nil {
		b.Fatalf("client: %s", res)
	}
	ch.wait()
	if srv.rt != nil {
		d := benchStatsDelta(before, benchSettledStats(srv.rt))
		if want := uint64(b.N * benchPingSize); d.BytesIn != want || d.BytesOut != want {
			b.Fatalf("server counted %d bytes in, %d out; want %d each", d.BytesIn, d.BytesOut, want)
		}
		b.ReportMetric(float64(d.LoopIterations)/float64(b.N), "loops/rt")
	}
	b.ReportMetric(float64(p50)/1e3, "p50-us")
	b.ReportMetric(float64(p99)/1e3, "p99-us")
	b.ReportMetric(float64(p999)/1e3, "p999-us")
	b.ReportMetric(float64(u0.cpu(u1).Nanoseconds())/1e3/float64(b.N), "server-cpu-us/rt")
	b.ReportMetric(float64(u1.mallocs-u0.mallocs)/float64(b.N), "server-allocs/rt")
	benchReportStall(b, stall0, stall1)
	benchReportOffLoop(b, thr0, thr1)
}

// benchPingConn is a blocking client socket with 5 s send/receive timeouts.
func benchPingConn(addr string) (int, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return -1, err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	tv := unix.NsecToTimeval(int64(5 * time.Second))
	for _, opt := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := sockConnect(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// benchPingRun makes n round trips on fd, recording each in ns into rtt
// (which must hold n), message i being benchPingSize bytes of byte(seq+i).
func benchPingRun(fd int, n int, seq int, rtt []int64) error {
	var msg, got [benchPingSize]byte
	for i := 0; i < n; i++ {
		v := byte(seq + i)
		for j := range msg {
			msg[j] = v
		}
		t0 := time.Now()
		for off := 0; off < len(msg); {
			w, err := unix.Write(fd, msg[off:])
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return fmt.Errorf("write: %w", err)
			}
			off += w
		}
		for off := 0; off < len(got); {
			r, err := unix.Read(fd, got[off:])
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return fmt.Errorf("read (EAGAIN is the 5 s timeout): %w", err)
			}
			if r == 0 {
				return io.ErrUnexpectedEOF
			}
			off += r
		}
		if rtt != nil {
			rtt[i] = int64(time.Since(t0))
		}
		if got != msg {
			return fmt.Errorf("round trip %d: echo mismatch", i)
		}
	}
	return nil
}

// benchPingClientMain is the "pingclient" role: connect, warm up, print
// "ready", wait for "go", run, print "done P50 P99 P999" (ns).
func benchPingClientMain() error {
	var addr string
	var conns, total, cpu int
	if _, err := fmt.Sscan(os.Getenv(benchArgsEnv), &addr, &conns, &total, &cpu); err != nil {
		return fmt.Errorf("bad %s: %w", benchArgsEnv, err)
	}
	if cpu >= 0 {
		benchPinProcess(cpu)
	}
	// A P to spare while every connection's thread blocks in read(2), so
	// the scheduler never hands a P off mid-syscall.
	runtime.GOMAXPROCS(conns + 1)
	fds := make([]int, conns)
	for i := range fds {
		fd, err := benchPingConn(addr)
		if err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		defer unix.Close(fd)
		fds[i] = fd
		if err := benchPingRun(fd, 100, 0, nil); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	rtt := make([]int64, total)
	for i := range rtt {
		rtt[i] = 0 // touch the pages before timing
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() || in.Text() != "go" {
		return errors.New("no go from the benchmark")
	}
	var wg sync.WaitGroup
	errs := make([]error, conns)
	for i, fd := range fds {
		lo, hi := total*i/conns, total*(i+1)/conns
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			errs[i] = benchPingRun(fd, hi-lo, lo, rtt[lo:hi])
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		fmt.Println("fail:", err)
		return err
	}
	slices.Sort(rtt)
	pct := func(p float64) int64 { return rtt[min(len(rtt)-1, int(p*float64(len(rtt))))] }
	fmt.Println("done", pct(0.50), pct(0.99), pct(0.999))
	return nil
}

// ---------------------------------------------------------------------------
// Idle-connection RSS

const benchIdleConns = 10000

// BenchmarkIdleConnRSS measures the server RSS that idle connections cost.
// Each server runs as a separate process (the fd limit would not hold 10k
// connections at both ends in one process): examples/echo with -workers 1
// on each available backend, and, as the peer, a Go net echo server with a
// goroutine per connection under GOMAXPROCS=1. The benchmark reads the
// server's VmRSS from /proc, opens 10,000 connections, echoes one byte on
// each (so every connection has been accepted and its handler has run),
// lets the server settle, reads VmRSS again and reports the difference per
// connection. ns/op is the wall time of one whole run (server start, 10,000
// connections opened and echoed, settling, measuring): not a figure to
// compare, the per-connection metrics are.
func BenchmarkIdleConnRSS(b *testing.B) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < benchIdleConns+256 {
		b.Skipf("RLIMIT_NOFILE %d is too low for %d connections", lim.Cur, benchIdleConns)
	}

	type server struct {
		name string
		argv []string
		env  []string
	}
	var servers []server
	echoBin, err := benchBuildEcho(b)
	if err != nil {
		// Without the ringline servers the comparison means nothing.
		b.Fatalf("examples/echo did not build: %v", err)
	}
	for _, be := range availableBackends() {
		servers = append(servers, server{name: "ringline-" + be.String(),
			argv: []string{echoBin, "-addr", "127.0.0.1:0", "-workers", "1", "-backend", be.String()}})
		// The same with an idle-timeout read deadline on every connection
		// (armed, never firing): what a deadline costs per connection.
		servers = append(servers, server{name: "ringline-" + be.String() + "-idle-timeout",
			argv: []string{echoBin, "-addr", "127.0.0.1:0", "-workers", "1", "-backend", be.String(), "-idle-timeout", "1h"}})
	}
	servers = append(servers, server{name: "gonet-goroutine-per-conn",
		argv: []string{os.Args[0], "-test.run=^$", "-test.bench=^$"},
		env:  []string{benchRoleEnv + "=netecho", "GOMAXPROCS=1"}})
	// gnet with one event loop (bench/gnetecho, which serves until its
	// stdin ends: benchIdleRun keeps it open).
	if g, err := benchGnetBinary(); err == nil {
		servers = append(servers, server{name: "gnet", argv: []string{g}, env: []string{"GOMAXPROCS=1"}})
	} else {
		b.Logf("gnet not measured: %v", err)
	}

	for _, s := range servers {
		b.Run(s.name, func(b *testing.B) {
			var perConn, base, fds float64
			for range b.N {
				r := benchIdleRun(b, s.argv, s.env)
				perConn += r.kibPerConn
				base += r.baseKiB
				fds += r.fds
			}
			n := float64(b.N)
			b.ReportMetric(perConn/n, "KiB/conn")
			b.ReportMetric(base/n/1024, "base-RSS-MiB")
			b.ReportMetric(fds/n, "server-fds")
		})
	}
}

// benchBuildEcho builds examples/echo into a temporary directory.
func benchBuildEcho(b *testing.B) (string, error) {
	out := filepath.Join(b.TempDir(), "echo")
	cmd := exec.Command(benchGoTool(), "build", "-o", out, "./examples/echo")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%v: %s", err, msg)
	}
	return out, nil
}

type benchIdleResult struct {
	kibPerConn, baseKiB, fds float64
}

var benchListenRE = regexp.MustCompile(`listening on (\S+)`)

func benchIdleRun(b *testing.B, argv, env []string) benchIdleResult {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	// Held open for the run: a server that serves until its stdin ends
	// (bench/gnetecho) stays up.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	defer stdin.Close()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	var conns []net.Conn
	defer func() {
		// Server first, so the TIME_WAITs land on its side.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		for _, c := range conns {
			c.Close()
		}
	}()
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sent := false
		for sc.Scan() {
			if m := benchListenRE.FindStringSubmatch(sc.Text()); m != nil && !sent {
				addrc <- strings.TrimSuffix(m[1], ",")
				sent = true
			}
		}
		_ = cmd.Wait()
		close(exited)
	}()
	var addr string
	select {
	case addr = <-addrc:
	case <-exited:
		b.Fatal("server exited before listening")
	case <-time.After(10 * time.Second):
		b.Fatal("server did not report its address within 10s")
	}
	pid := cmd.Process.Pid

	time.Sleep(300 * time.Millisecond)
	rss0 := benchRSS(b, pid)

	conns = make([]net.Conn, benchIdleConns)
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 64)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			one := []byte{'x'}
			for {
				i := int(next.Add(1)) - 1
				if i >= benchIdleConns {
					return
				}
				c, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err != nil {
					errc <- fmt.Errorf("dial %d: %w", i, err)
					return
				}
				conns[i] = c
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write(one); err != nil {
					errc <- fmt.Errorf("conn %d write: %w", i, err)
					return
				}
				if _, err := io.ReadFull(c, one); err != nil {
					errc <- fmt.Errorf("conn %d echo: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		b.Fatal(err)
	}
	// Idle now; let the server finish what the last echoes started.
	time.Sleep(500 * time.Millisecond)
	rss1 := benchRSS(b, pid)
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if len(fds) < benchIdleConns {
		b.Fatalf("server holds %d fds, want at least %d", len(fds), benchIdleConns)
	}
	return benchIdleResult{
		kibPerConn: float64(rss1-rss0) / benchIdleConns,
		baseKiB:    float64(rss0),
		fds:        float64(len(fds)),
	}
}

// benchRSS returns a process's VmRSS in KiB.
func benchRSS(b *testing.B, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				v, err := strconv.ParseInt(f[0], 10, 64)
				if err == nil {
					return v
				}
			}
		}
	}
	b.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// benchNetEchoBuf is the Go net peer's per-connection read buffer.
const benchNetEchoBuf = 512

// benchNetEchoMain is the "netecho" role: Go's net, one goroutine per
// connection, echoing through a small per-connection buffer.
func benchNetEchoMain() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Printf("netecho: listening on %s with GOMAXPROCS=%d\n", ln.Addr(), runtime.GOMAXPROCS(0))
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			buf := make([]byte, benchNetEchoBuf)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}
