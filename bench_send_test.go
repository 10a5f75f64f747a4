package ringline

// Benchmarks for the send path's figures (issue 10): large-message
// pipelined echo with each way of sending, against gnet, Go's net and a
// plain-C epoll server; zero-copy sends against copied ones over loopback
// and over a veth pair. Like bench_test.go's, they run only under -bench:
//
//	go test -run '^$' -bench LargeEcho -benchtime 20000x .
//	go test -run '^$' -bench ZeroCopySend -benchtime 5000x .
//
// The C peer is bench/cepoll/cepoll.c, built with the C compiler into the
// user's cache directory once per run (RINGLINE_BENCH_CEPOLL=/path uses a
// prebuilt one; `make bench` builds bin/cepoll). The veth rows need root
// (they create a network namespace and a veth pair, and delete them at the
// end) and are skipped without it.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Send modes of the large-message echo.
const (
	sendModeCopy    = "copy"    // WithData + SendNowait: one copy into the send pool
	sendModeForward = "forward" // WithData + ForwardRecvBuf: the received buffer itself
	sendModeParts   = "parts"   // a cache: SendParts, 64 bytes copied + the value referenced
)

// benchSendTask is the server task of a send mode for messages of size
// bytes.
func benchSendTask(mode string, size int) func(ConnCtx) {
	switch mode {
	case sendModeForward:
		return echoForwardTask
	case sendModeParts:
		return benchPartsTask(size)
	}
	return echoNowaitTask
}

// echoForwardTask echoes by forwarding the received buffers, never
// waiting for send completions (like echoNowaitTask).
func echoForwardTask(c ConnCtx) {
	for c.WithData(func(b []byte) ParseResult {
		if c.ForwardRecvBuf(b) != nil {
			c.Close()
			return Consumed(0)
		}
		return Consumed(len(b))
	}) > 0 {
	}
}

// benchValues are the "cached values" of the parts mode: value v is size
// bytes of byte v, which is what the load's message v is, so the reply is
// the echo the client checks.
var benchValues struct {
	sync.Mutex
	bySize map[int]*[256][]byte
}

func benchValuesFor(size int) *[256][]byte {
	benchValues.Lock()
	defer benchValues.Unlock()
	if benchValues.bySize == nil {
		benchValues.bySize = map[int]*[256][]byte{}
	}
	vs := benchValues.bySize[size]
	if vs == nil {
		vs = new([256][]byte)
		for v := range vs {
			vs[v] = make([]byte, size)
			for i := range vs[v] {
				vs[v][i] = byte(v)
			}
		}
		benchValues.bySize[size] = vs
	}
	return vs
}

// benchPartsTask answers each message of size bytes (its first byte names
// the value) with SendParts: a 64-byte header copied and the rest of the
// value referenced: the cache use case, where a small response header is
// built per request and the large value is sent from where it lives.
func benchPartsTask(size int) func(ConnCtx) {
	vals := benchValuesFor(size)
	return func(c ConnCtx) {
		off := 0 // position in the current message
		for c.WithData(func(b []byte) ParseResult {
			for i := 0; i < len(b); {
				if off == 0 {
					v := vals[b[i]]
					if c.SendParts().Copy(v[:64]).Ref(v[64:], nil).Submit() != nil {
						c.Close()
						return Consumed(0)
					}
				}
				take := min(len(b)-i, size-off)
				i += take
				off = (off + take) % size
			}
			return Consumed(len(b))
		}) > 0 {
		}
	}
}

// BenchmarkLargeEcho: pipelined echo of 16 KiB and 64 KiB messages, 16
// connections with 8 messages in flight each, one worker; the client is a
// child process pinned to the second CPU (as in BenchmarkPipelinedEcho).
// ringline runs each send mode on each backend: copy (SendNowait), forward
// (ForwardRecvBuf), parts (SendParts: 64 bytes copied, the rest
// referenced); beside it gnet (one event loop), Go's net (goroutine per
// connection, GOMAXPROCS=1) and bench/cepoll (plain C, edge-triggered
// epoll, 64 KiB reads). Zero copy is at its default (64 KiB threshold; a
// loopback worker falls back after its first zero-copy send). At 16 KiB
// each mode runs twice: with the default 16 KiB receive buffers, and with
// 64 KiB ones (",buf=64k"), the C server's read size, where each receive
// completion, parse and forward carries four messages.
//
// Per message: msgs/server-cpu-s, syscalls/msg (perf), cgo-calls/msg,
// bytes-copied/msg (into the send pool), fwd-bufs/msg and fwd-copies/msg
// (ForwardRecvBuf forwarding or copying), zc-sends/msg.
func BenchmarkLargeEcho(b *testing.B) {
	_, _ = benchGnetBinary() // built before any CPU pinning
	_, _ = benchCEpollBinary()
	for _, size := range []int{16 << 10, 64 << 10} {
		l := benchPipeLoad{Conns: 16, Depth: 8, Size: size}
		prefix := fmt.Sprintf("size=%dk/", size>>10)
		for _, be := range availableBackends() {
			for _, mode := range []string{sendModeCopy, sendModeForward, sendModeParts} {
				spec := benchServerSpec{be: be, h: benchSendTask(mode, size)}
				b.Run(prefix+be.String()+"/mode="+mode, func(b *testing.B) { benchPipelinedSubproc(b, spec, l) })
				if size == 16<<10 {
					// 64 KiB receive buffers: the C server's read size.
					spec.cfg = func(c *Config) { c.BufferSize = 64 << 10 }
					b.Run(prefix+be.String()+"/mode="+mode+",buf=64k", func(b *testing.B) { benchPipelinedSubproc(b, spec, l) })
				}
			}
		}
		b.Run(prefix+"cepoll", func(b *testing.B) { benchPipelinedSubproc(b, benchServerSpec{peer: peerCEpoll}, l) })
		b.Run(prefix+"gnet", func(b *testing.B) { benchPipelinedSubproc(b, benchServerSpec{peer: peerGnet}, l) })
		b.Run(prefix+"gonet", func(b *testing.B) { benchPipelinedSubproc(b, benchServerSpec{peer: peerGoNet}, l) })
	}
}

// BenchmarkZeroCopySend: SEND_ZC against copied sends on io_uring, at 4,
// 16, 64 and 256 KiB replies, with the parts server (a 64-byte header
// copied, the value referenced: each reply is one sendmsg), 8 connections
// with 4 messages in flight. zc=off disables zero copy; zc=on sends every
// reply zero-copy and keeps doing so although the kernel reports that it
// copied (it always does over loopback and veth: the receiving socket's
// path copies the pages, so zero copy there costs its notification and
// page pinning on top of a copy: expect it to lose); zc=default is the
// default Config (64 KiB threshold; the worker falls back to copies at the
// first copied notification).
//
// link=loopback runs over 127.0.0.1; link=veth over a veth pair whose
// other end is in a network namespace the benchmark creates (the client
// runs there; needs root, skipped otherwise). Over veth the TCP stack
// segments at a 1500-byte MTU with software GSO, like a real NIC path,
// but the receiver is still local, so the kernel still copies.
func BenchmarkZeroCopySend(b *testing.B) {
	if uringUnusable() != nil {
		b.Skipf("io_uring: %v", uringUnusable())
	}
	links := []string{"loopback", "veth"}
	for _, link := range links {
		var bind, netns string
		if link == "veth" {
			var err error
			bind, netns, err = benchVeth(b)
			if err != nil {
				b.Run("link=veth", func(b *testing.B) { b.Skipf("veth pair: %v", err) })
				continue
			}
		}
		for _, size := range []int{4 << 10, 16 << 10, 64 << 10, 256 << 10} {
			l := benchPipeLoad{Conns: 8, Depth: 4, Size: size}
			for _, zc := range []string{"off", "on", "default"} {
				spec := benchServerSpec{be: IOUring, h: benchPartsTask(size), bind: bind, netns: netns}
				switch zc {
				case "off":
					spec.cfg = func(c *Config) { c.SendZCThreshold = -1 }
				case "on":
					spec.cfg = func(c *Config) { c.SendZCThreshold = 1; c.zcKeepCopied = true }
				}
				b.Run(fmt.Sprintf("link=%s/size=%dk/zc=%s", link, size>>10, zc), func(b *testing.B) { benchPipelinedSubproc(b, spec, l) })
			}
		}
	}
}

// benchVeth creates a network namespace with one end of a veth pair in it
// (10.231.7.2) and the other here (10.231.7.1), removed when the benchmark
// ends. It returns the address for the server to bind and the namespace
// for the client.
func benchVeth(b *testing.B) (bind, netns string, err error) {
	ns := fmt.Sprintf("ringline-bench-%d", os.Getpid())
	host, peer := fmt.Sprintf("rlb%d", os.Getpid()%100000), fmt.Sprintf("rlp%d", os.Getpid()%100000)
	run := func(args ...string) error {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if err := run("netns", "add", ns); err != nil {
		return "", "", err
	}
	b.Cleanup(func() {
		_ = run("link", "del", host) // takes the peer with it
		_ = run("netns", "del", ns)
	})
	for _, args := range [][]string{
		{"link", "add", host, "type", "veth", "peer", "name", peer},
		{"link", "set", peer, "netns", ns},
		{"addr", "add", "10.231.7.1/24", "dev", host},
		{"link", "set", host, "up"},
		{"netns", "exec", ns, "ip", "addr", "add", "10.231.7.2/24", "dev", peer},
		{"netns", "exec", ns, "ip", "link", "set", peer, "up"},
		{"netns", "exec", ns, "ip", "link", "set", "lo", "up"},
	} {
		if err := run(args...); err != nil {
			return "", "", err
		}
	}
	return "10.231.7.1:0", ns, nil
}

var benchCEpollBin struct {
	once sync.Once
	path string
	err  error
}

// benchCEpollBinary returns the C epoll echo server: RINGLINE_BENCH_CEPOLL,
// or one compiled once per run from bench/cepoll/cepoll.c into the user's
// cache directory.
func benchCEpollBinary() (string, error) {
	if p := os.Getenv("RINGLINE_BENCH_CEPOLL"); p != "" {
		return p, nil
	}
	g := &benchCEpollBin
	g.once.Do(func() {
		cache, err := os.UserCacheDir()
		if err != nil {
			g.err = err
			return
		}
		g.path = filepath.Join(cache, "ringline", "bench", "cepoll")
		if err := os.MkdirAll(filepath.Dir(g.path), 0o755); err != nil {
			g.err = err
			return
		}
		cc := os.Getenv("CC")
		if cc == "" {
			cc = "cc"
		}
		cmd := exec.Command(cc, "-O2", "-Wall", "-o", g.path, "bench/cepoll/cepoll.c")
		if msg, err := cmd.CombinedOutput(); err != nil {
			g.err = fmt.Errorf("building bench/cepoll: %v: %s", err, msg)
		}
	})
	return g.path, g.err
}

// benchStartCEpoll starts the C epoll echo server as a child process (it
// speaks gnetecho's stdio protocol, so benchGnet drives it) and returns it
// once it listens; it stops in b.Cleanup.
func benchStartCEpoll(b *testing.B) *benchGnet {
	bin, err := benchCEpollBinary()
	if err != nil {
		b.Skipf("C epoll peer unavailable: %v", err)
	}
	cmd := exec.Command(bin)
	stdin, lines := benchSpawn(b, cmd)
	g := &benchGnet{cmd: cmd, stdin: stdin, lines: lines}
	b.Cleanup(func() {
		g.stdin.Close() // cepoll stops at the end of its stdin
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				b.Errorf("cepoll: %v", err)
			}
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			b.Errorf("cepoll did not stop within 10s")
		}
	})
	if !g.lines.Scan() {
		b.Fatal("cepoll exited before listening")
	}
	m := benchListenRE.FindStringSubmatch(g.lines.Text())
	if m == nil {
		b.Fatalf("cepoll: %q", g.lines.Text())
	}
	g.addr = m[1]
	return g
}
