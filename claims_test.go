package ringline

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// Claims the README makes, each with a test that fails when the claim
// stops being true.

// "If registration fails the runtime uses plain fds": a fixed-file table
// the kernel refuses leaves every connection on its plain fd, and a table
// smaller than the connection count puts the rest on plain fds; both serve.
// io_uring only: the epoll backend has no fixed-file table.
func TestFixedFilesFallbackToPlainFDs(t *testing.T) {
	onIOUring(t, func(t *testing.T) {
		type connFixed struct {
			idx   int
			fixed bool
		}
		run := func(t *testing.T, tableSize func(int) int, conns int) (*Runtime, []connFixed) {
			if tableSize != nil {
				testHookFixedFiles = tableSize
				defer func() { testHookFixedFiles = nil }()
			}
			got := make(chan connFixed, conns)
			rt := serve(t, testConfig(IOUring), func(c ConnCtx) {
				got <- connFixed{c.Index(), c.get().opFlags&opFFixed != 0}
				echoTask(c)
			})
			var out []connFixed
			for i := 0; i < conns; i++ {
				c := dial(t, rt) // held open: each takes its own slot
				msg := pattern(10<<10, byte(i))
				require.True(t, bytes.Equal(msg, roundTrip(t, c, msg)), "connection %d echoes", i)
				select {
				case cf := <-got:
					out = append(out, cf)
				case <-time.After(5 * time.Second):
					t.Fatal("task did not report")
				}
			}
			return rt, out
		}
		t.Run("default", func(t *testing.T) {
			rt, cs := run(t, nil, 3)
			require.Contains(t, rt.Features(), "fixed files", "the default registers a table: the fallback cases below mean something")
			for _, cf := range cs {
				require.True(t, cf.fixed, "connection %d on a fixed file", cf.idx)
			}
		})
		t.Run("refused", func(t *testing.T) {
			// Beyond IORING_MAX_FIXED_FILES: the kernel says EMFILE.
			rt, cs := run(t, func(int) int { return 1 << 30 }, 3)
			require.Contains(t, rt.Features(), "plain fds")
			require.NotContains(t, rt.Features(), "fixed files")
			for _, cf := range cs {
				require.False(t, cf.fixed, "connection %d must use its plain fd", cf.idx)
			}
		})
		t.Run("smaller than the slab", func(t *testing.T) {
			rt, cs := run(t, func(int) int { return 2 }, 4)
			require.Contains(t, rt.Features(), "fixed files")
			for _, cf := range cs {
				require.Equal(t, cf.idx < 2, cf.fixed, "connection %d: fixed only inside the 2-slot table", cf.idx)
			}
		})
	})
}

// "The soft limit is raised to the hard one at Launch."
func TestLaunchRaisesNofile(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		var orig unix.Rlimit
		require.NoError(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &orig))
		defer func() { require.NoError(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &orig)) }()
		low := orig
		low.Cur = uint64(allFDs(t) + 64)
		if low.Cur >= low.Max {
			t.Skipf("hard limit %d leaves no room to lower the soft limit", low.Max)
		}
		require.NoError(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &low))
		rt := serve(t, testConfig(be), echoTask)
		var now unix.Rlimit
		require.NoError(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &now))
		require.Equal(t, orig.Max, now.Cur, "soft limit after Launch")
		c := dial(t, rt)
		require.Equal(t, []byte("nofile"), roundTrip(t, c, []byte("nofile")))
	})
}

// "MaxConnections: connections per worker; accepts beyond it are closed at
// once" and counted in Rejected, while the connections within the limit
// keep working, and a freed slot serves a new connection.
func TestMaxConnections(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.MaxConnections = 4
		rt := serve(t, cfg, echoTask)
		var held []*net.TCPConn
		for i := 0; i < 4; i++ {
			c := dial(t, rt)
			require.Equal(t, []byte("in"), roundTrip(t, c, []byte("in")))
			held = append(held, c)
		}
		for i := 0; i < 2; i++ {
			c := dial(t, rt) // the kernel completes the handshake; the worker closes it
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			var b [1]byte
			n, err := c.Read(b[:])
			require.Zero(t, n)
			if !errors.Is(err, io.EOF) {
				require.ErrorIs(t, err, syscall.ECONNRESET, "over the limit: closed, not left waiting")
			}
		}
		require.True(t, settle(5*time.Second, func() bool { return Total(rt.Stats()).Rejected == 2 }),
			"Rejected = %d, want 2", Total(rt.Stats()).Rejected)
		for i, c := range held {
			p := pattern(1000, byte(i))
			require.Equal(t, p, roundTrip(t, c, p), "connection %d within the limit", i)
		}
		require.NoError(t, held[0].Close())
		require.True(t, settle(5*time.Second, func() bool { return Total(rt.Stats()).Closed == 1 }))
		c := dial(t, rt)
		require.Equal(t, []byte("again"), roundTrip(t, c, []byte("again")), "a freed slot serves a new connection")
		st := Total(rt.Stats())
		require.Equal(t, uint64(5), st.Accepted)
		require.Equal(t, uint64(2), st.Rejected)
	})
}

// "Queued sends coalesce into one sendmsg; at most one send is in flight
// per connection." Counted under the core: 100 SendNowaits in one task
// turn leave as one send operation; sends queued while one is in the
// kernel wait for it, and every byte arrives in order.
func TestSendsCoalesceOneInFlight(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		ops := countOps(t)
		const chunk, chunks = 16 << 10, 40
		cfg := testConfig(be)
		cfg.SendPoolSlots = 1024 // 4 MiB: room for everything queued below
		tokens := make(chan ConnToken, 1)
		rt, err := New(cfg).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler {
			return handlerFunc(func(c ConnCtx) {
				tokens <- c.Token()
				// Phase 1: one turn, 100 sends.
				if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
					return
				}
				for i := 0; i < 100; i++ {
					if err := c.SendNowait([]byte(fmt.Sprintf("msg-%03d;", i))); err != nil {
						panic(err)
					}
				}
				// Phase 2: one chunk per byte received, while the client
				// does not read, so earlier sends are still in the kernel.
				for {
					n := c.WithData(func(b []byte) ParseResult {
						for range b {
							if err := c.SendNowait(pattern(chunk, byte(c.Index()))); err != nil {
								panic(err)
							}
						}
						return Consumed(len(b))
					})
					if n == 0 {
						return
					}
				}
			})
		})
		require.NoError(t, err)
		defer func() { rt.Shutdown(); rt.Wait() }()
		// Accepted sockets inherit a small send buffer from the listener,
		// so a send stays in the kernel while the client does not read.
		require.NoError(t, unix.SetsockoptInt(rt.workers[0].lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, 8<<10))

		d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
			return rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 16<<10) })
		}}
		nc, err := d.Dial("tcp", rt.Addr().String())
		require.NoError(t, err)
		cl := nc.(*net.TCPConn)
		defer cl.Close()
		_ = cl.SetDeadline(time.Now().Add(30 * time.Second))
		var tok ConnToken
		select {
		case tok = <-tokens:
		case <-time.After(5 * time.Second):
			t.Fatal("no connection task")
		}
		sendUD := packUD(udSend, tok.Index, tok.Generation, 0)

		_, err = cl.Write([]byte("go"))
		require.NoError(t, err)
		got := make([]byte, 800)
		_, err = io.ReadFull(cl, got)
		require.NoError(t, err)
		var want strings.Builder
		for i := 0; i < 100; i++ {
			fmt.Fprintf(&want, "msg-%03d;", i)
		}
		require.Equal(t, want.String(), string(got))

		// One byte per write, with a pause, while nothing is read: each
		// queues a chunk behind a send that cannot finish yet.
		for i := 0; i < chunks; i++ {
			_, err := cl.Write([]byte{'x'})
			require.NoError(t, err)
			time.Sleep(2 * time.Millisecond)
		}
		data := make([]byte, chunks*chunk)
		_, err = io.ReadFull(cl, data)
		require.NoError(t, err)
		p := pattern(chunk, byte(tok.Index))
		for i := 0; i < chunks; i++ {
			require.True(t, bytes.Equal(p, data[i*chunk:(i+1)*chunk]), "chunk %d in order and intact", i)
		}
		require.NoError(t, cl.SetReadDeadline(time.Now().Add(50*time.Millisecond)))
		n, _ := cl.Read(make([]byte, 1))
		require.Zero(t, n, "nothing beyond the queued bytes")
		cl.Close()
		rt.Shutdown()
		rt.Wait()
		oc := ops()[0]
		lens := oc.sendLens[sendUD]
		t.Logf("send operations (bytes each): %v; most in flight at once: %d", lens, oc.maxSendsIn)
		require.NotEmpty(t, lens)
		assert.Equal(t, uint64(800), lens[0], "100 SendNowaits of one turn leave as one send")
		assert.Equal(t, 1, oc.maxSendsIn, "at most one send in flight per connection")
		// Chunks queued behind a send in the kernel leave together: some
		// send asks for more than one chunk's bytes. (How many sends there
		// are depends on how much each short send gets into the socket.)
		var total, most uint64
		for _, n := range lens {
			total += n
			most = max(most, n)
		}
		assert.Greater(t, most, uint64(chunk), "queued sends coalesce into one send")
		assert.GreaterOrEqual(t, total, uint64(800+chunks*chunk))
	})
}

// "A task that is not reading pauses its connection's receive instead, so
// a fast peer is throttled by TCP, never buffered without bound." The task
// here is busy awaiting a send to a client that does not read, while that
// client writes as fast as it can: the connection's unread bytes stop near
// MaxRecvAccumulator, the server socket's receive queue fills, and the
// client's writes block. Once the task reads again every byte arrives.
func TestNonReadingTaskPausesReceive(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		const total = 2 << 20 // what the client tries to write
		cfg := testConfig(be)
		cfg.MaxRecvAccumulator = 64 << 10
		cfg.SendPoolSlots = 1024
		type report struct {
			err       error
			unread    int // unread bytes once the task stopped awaiting
			paused    bool
			readLater int // every byte read once reading resumed
		}
		fdc := make(chan int32, 1)
		out := make(chan report, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			fdc <- c.get().fd
			var r report
			// 1 MiB the client will not read for now: the task waits in
			// Await and reads nothing meanwhile.
			chunk := pattern(64<<10, 3)
			var last SendFuture
			for i := 0; i < 16; i++ {
				if last, r.err = c.Send(chunk); r.err != nil {
					out <- r
					return
				}
			}
			if _, r.err = last.Await(); r.err != nil {
				out <- r
				return
			}
			cn := c.get()
			r.unread, r.paused = cn.buffered(), cn.recvPaused
			for {
				n := c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
				if n == 0 {
					break
				}
				r.readLater += n
			}
			out <- r
		})
		// Small buffers at both ends, so the 1 MiB cannot be taken by the
		// kernel and the client's own writes soon find the server full.
		require.NoError(t, unix.SetsockoptInt(rt.workers[0].lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, 16<<10))
		d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
			return rc.Control(func(fd uintptr) {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 16<<10)
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 16<<10)
			})
		}}
		nc, err := d.Dial("tcp", rt.Addr().String())
		require.NoError(t, err)
		cl := nc.(*net.TCPConn)
		defer cl.Close()
		_ = cl.SetDeadline(time.Now().Add(30 * time.Second))
		var fd int32
		select {
		case fd = <-fdc:
		case <-time.After(5 * time.Second):
			t.Fatal("no connection task")
		}

		var written atomic.Int64
		werr := make(chan error, 1)
		go func() {
			buf := pattern(64<<10, 4)
			var err error
			for off := 0; off < total && err == nil; off += len(buf) {
				var n int
				n, err = cl.Write(buf)
				written.Add(int64(n))
			}
			if err == nil {
				err = cl.CloseWrite()
			}
			werr <- err
		}()
		// Wait until the client's writes stop making progress.
		var last int64 = -1
		stable := 0
		for deadline := time.Now().Add(15 * time.Second); stable < 4 && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
			if w := written.Load(); w == last {
				stable++
			} else {
				last, stable = w, 0
			}
		}
		w := written.Load()
		inq, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		require.NoError(t, err)
		t.Logf("client wrote %d of %d bytes before blocking; server socket receive queue %d bytes", w, total, inq)
		require.Less(t, w, int64(total), "the client's writes must block: the server stopped taking bytes")
		require.Greater(t, inq, 0, "the unread bytes wait in the socket's receive queue")

		// Read the 1 MiB: the task's Await returns and it reports what it
		// had buffered while not reading, then reads everything.
		got := make([]byte, 16*64<<10)
		_, err = io.ReadFull(cl, got)
		require.NoError(t, err)
		require.NoError(t, <-werr)
		var r report
		select {
		case r = <-out:
		case <-time.After(20 * time.Second):
			t.Fatal("task did not finish")
		}
		require.NoError(t, r.err)
		t.Logf("unread bytes held by the connection while not reading: %d (limit %d); paused: %v", r.unread, cfg.MaxRecvAccumulator, r.paused)
		assert.True(t, r.paused, "receive paused while the task was not reading")
		// Bytes the kernel had already put in provided buffers when the
		// pause took effect may land too: at most the buffer ring.
		assert.LessOrEqual(t, r.unread, cfg.MaxRecvAccumulator+cfg.BufferCount*cfg.BufferSize, "bounded by the limit")
		assert.GreaterOrEqual(t, r.unread, cfg.MaxRecvAccumulator, "paused at the limit, not before")
		assert.Equal(t, total, r.readLater, "nothing lost across the pause")
		assert.Zero(t, Total(rt.Stats()).LimitCloses, "a task that is not reading is paused, not closed")
	})
}

// The README's Config table is DefaultConfig(): every exported field is
// listed, and every listed default is what DefaultConfig fills in.
func TestConfigDefaultsMatchREADME(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	sec := string(readme)
	i := strings.Index(sec, "\n## Config\n")
	require.True(t, i >= 0, "README has a Config section")
	sec = sec[i+1:]
	if j := strings.Index(sec[3:], "\n## "); j >= 0 {
		sec = sec[:j+3]
	}
	documented := map[string]string{}
	for _, line := range strings.Split(sec, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue
		}
		names := strings.Split(cells[1], "×")
		vals := strings.Split(cells[2], "×")
		require.Equal(t, len(names), len(vals), "README row %q: as many defaults as fields", line)
		for k := range names {
			documented[strings.Trim(strings.TrimSpace(names[k]), "`")] = strings.TrimSpace(vals[k])
		}
	}
	d := DefaultConfig()
	v := reflect.ValueOf(d)
	for k := 0; k < v.NumField(); k++ {
		f := v.Type().Field(k)
		if !f.IsExported() {
			continue
		}
		doc, ok := documented[f.Name]
		if !assert.True(t, ok, "Config.%s has no row in the README's Config table", f.Name) {
			continue
		}
		delete(documented, f.Name)
		want, err := readmeDefault(f.Type, doc)
		if !assert.NoError(t, err, "Config.%s: README default %q", f.Name, doc) {
			continue
		}
		assert.Equal(t, want, v.Field(k).Interface(), "Config.%s: the README says %q", f.Name, doc)
	}
	assert.Empty(t, documented, "README rows for fields Config does not have")
}

// readmeDefault turns a default as the README writes it into the value of
// type typ it stands for.
func readmeDefault(typ reflect.Type, s string) (any, error) {
	note := ""
	if i := strings.Index(s, " ("); i >= 0 {
		s, note = strings.TrimSpace(s[:i]), s[i:]
	}
	s = strings.Trim(s, "`")
	switch typ {
	case reflect.TypeOf(Backend(0)):
		if b, ok := map[string]Backend{"Auto": Auto, "IOUring": IOUring, "Epoll": Epoll}[s]; ok {
			return b, nil
		}
	case reflect.TypeOf(time.Duration(0)):
		if s == "0" {
			return time.Duration(0), nil
		}
		return time.ParseDuration(s)
	case reflect.TypeOf(true):
		return strconv.ParseBool(s)
	case reflect.TypeOf((*slog.Logger)(nil)):
		if s == "slog.Default()" {
			return slog.Default(), nil
		}
	case reflect.TypeOf((*tls.Config)(nil)):
		if s == "nil" {
			return (*tls.Config)(nil), nil
		}
	case reflect.TypeOf(0):
		if s == "one per CPU" {
			return runtime.NumCPU(), nil
		}
		mult := 1
		for unit, m := range map[string]int{"KiB": 1 << 10, "MiB": 1 << 20} {
			if strings.HasSuffix(s, " "+unit) {
				s, mult = strings.TrimSuffix(s, " "+unit), m
			}
		}
		n, err := strconv.Atoi(s)
		if err != nil {
			return nil, err
		}
		n *= mult
		if strings.Contains(note, "RLIMIT_NOFILE hard") {
			if lim := nofileHard(); lim > 0 && lim < n {
				n = lim
			}
		}
		return n, nil
	}
	return nil, fmt.Errorf("this test does not understand %q for a %v (extend readmeDefault)", s, typ)
}

// The echo example shuts down cleanly on SIGINT and on SIGTERM: built and
// run as a binary, it serves, and on the signal exits 0 after printing its
// final "echo: stopped; ..." line with the connection it served counted.
func TestEchoExampleSignals(t *testing.T) {
	bin := buildEchoExample(t)

	forEachBackend(t, func(t *testing.T, be Backend) {
		for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
			t.Run(unix.SignalName(sig), func(t *testing.T) {
				cmd := exec.Command(bin, "-addr", "127.0.0.1:0", "-workers", "1", "-backend", be.String())
				stdout, err := cmd.StdoutPipe()
				require.NoError(t, err)
				var stderr logSink
				cmd.Stderr = &stderr
				require.NoError(t, cmd.Start())
				exited := make(chan struct{})
				var waitErr error
				lines := make(chan string, 16)
				go func() {
					sc := bufio.NewScanner(stdout)
					for sc.Scan() {
						lines <- sc.Text()
					}
					close(lines)
					waitErr = cmd.Wait()
					close(exited)
				}()
				defer func() {
					select {
					case <-exited:
					default: // a failed test leaves no server behind
						_ = cmd.Process.Kill()
						for range lines {
						}
						<-exited
					}
				}()
				next := func() string {
					select {
					case l, ok := <-lines:
						require.True(t, ok, "echo ended early; stderr: %s", stderr.String())
						return l
					case <-time.After(10 * time.Second):
						t.Fatalf("no output from echo; stderr: %s", stderr.String())
					}
					return ""
				}
				first := next()
				m := regexp.MustCompile(`^echo: listening on (\S+) with 1 workers; backend (\w+)`).FindStringSubmatch(first)
				require.NotNil(t, m, "first line: %q", first)
				require.Equal(t, be.String(), m[2])

				c, err := dialTCP(m[1])
				require.NoError(t, err)
				defer c.Close()
				msg := pattern(5000, 1)
				require.Equal(t, msg, roundTrip(t, c, msg))

				require.NoError(t, cmd.Process.Signal(sig))
				var rest []string
				for l := range lines {
					rest = append(rest, l)
				}
				select {
				case <-exited:
					require.NoError(t, waitErr, "exit status; stderr: %s", stderr.String())
				case <-time.After(10 * time.Second):
					t.Fatal("echo did not exit after the signal")
				}
				require.NotEmpty(t, rest)
				assert.Contains(t, rest[0], "shutting down")
				assert.Equal(t, "echo: stopped; accepted 1, closed 1, bytes in 5000 out 5000, copied into the send pool 5000, buffers forwarded 0", rest[len(rest)-1])
				// Shutdown closed the connection: the client sees EOF.
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, err := c.Read(make([]byte, 1))
				assert.Zero(t, n)
				assert.True(t, errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET), "after shutdown: %v", err)
			})
		}
	})
}

// "Every test runs once per available backend", except the ones the
// README's Tests section names with the reason: every Test function of
// this package either runs its scenario through forEachBackend or
// forEachImpl, or is named in that section (and every name there exists).
func TestEveryTestRunsPerBackendOrIsListed(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	sec := string(readme)
	i := strings.Index(sec, "\n## Tests\n")
	require.True(t, i >= 0, "README has a Tests section")
	sec = sec[i+1:]
	if j := strings.Index(sec[3:], "\n## "); j >= 0 {
		sec = sec[:j+3]
	}
	listed := map[string]bool{}
	for _, m := range regexp.MustCompile("`(Test\\w+)`").FindAllStringSubmatch(sec, -1) {
		listed[m[1]] = true
	}

	files, err := filepath.Glob("*_test.go")
	require.NoError(t, err)
	fset := token.NewFileSet()
	perBackend := map[string]bool{"forEachBackend": true, "forEachImpl": true}
	var once []string
	all := map[string]bool{}
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, 0)
		require.NoError(t, err)
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Recv != nil || !strings.HasPrefix(fn.Name.Name, "Test") || fn.Body == nil {
				continue
			}
			all[fn.Name.Name] = true
			runs := false
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				if call, ok := n.(*ast.CallExpr); ok {
					if id, ok := call.Fun.(*ast.Ident); ok && perBackend[id.Name] {
						runs = true
					}
				}
				return !runs
			})
			if !runs {
				once = append(once, fn.Name.Name)
			}
		}
	}
	require.NotEmpty(t, all)
	for _, name := range once {
		assert.True(t, listed[name], "%s runs once (no forEachBackend/forEachImpl): name it, with the reason, in the README's Tests section, or run it per backend", name)
	}
	for name := range listed {
		assert.True(t, all[name], "the README's Tests section names %s, which does not exist", name)
	}
}
