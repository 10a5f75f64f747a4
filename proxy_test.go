package ringline

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// The proxy example (examples/proxy), built and run as a program per
// backend: it relays 1 MiB each way with a half-close in the middle, over
// TCP and over Unix sockets, closes both sides when one fails, and passes
// redis-benchmark through to redis-server.

// buildExample builds ./examples/name into a temporary directory, the
// way this test binary was built (io_uring compiled in or not).
func buildExample(t *testing.T, name string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	bin := filepath.Join(t.TempDir(), name)
	args := []string{"build", "-o", bin}
	if !uringCompiled {
		args = append(args, "-tags", "ringline_epoll")
	}
	out, err := exec.Command(goBin, append(args, "./examples/"+name)...).CombinedOutput()
	require.NoError(t, err, "build examples/%s: %s", name, out)
	return bin
}

// child is a running example program whose stdout is read line by line.
type child struct {
	cmd     *exec.Cmd
	lines   chan string
	exited  chan struct{}
	waitErr error
	stderr  logSink
}

func startChild(t *testing.T, bin string, args ...string) *child {
	t.Helper()
	c := &child{cmd: exec.Command(bin, args...), lines: make(chan string, 64), exited: make(chan struct{})}
	stdout, err := c.cmd.StdoutPipe()
	require.NoError(t, err)
	c.cmd.Stderr = &c.stderr
	require.NoError(t, c.cmd.Start())
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
		c.waitErr = c.cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-c.exited:
		default: // a failed test leaves no process behind
			_ = c.cmd.Process.Kill()
			for range c.lines {
			}
			<-c.exited
		}
	})
	return c
}

func (c *child) next(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-c.lines:
		require.True(t, ok, "%s ended early; stderr: %s", c.cmd.Path, c.stderr.String())
		return l
	case <-time.After(20 * time.Second):
		t.Fatalf("no output from %s; stderr: %s", c.cmd.Path, c.stderr.String())
	}
	return ""
}

// stop interrupts the program, and returns the lines it printed after
// that once it has exited with status 0.
func (c *child) stop(t *testing.T) []string {
	t.Helper()
	require.NoError(t, c.cmd.Process.Signal(syscall.SIGINT))
	return c.wait(t)
}

func (c *child) wait(t *testing.T) []string {
	t.Helper()
	var rest []string
	timeout := time.After(60 * time.Second)
	for {
		select {
		case l, ok := <-c.lines:
			if ok {
				rest = append(rest, l)
				continue
			}
		case <-timeout:
			t.Fatalf("%s did not exit; stderr: %s", c.cmd.Path, c.stderr.String())
		}
		break
	}
	<-c.exited
	require.NoError(t, c.waitErr, "exit status of %s; stderr: %s", c.cmd.Path, c.stderr.String())
	return rest
}

// startProxy runs the proxy example on backend be in front of upstream and
// returns it with the address it listens on.
// extra are more flags.
func startProxy(t *testing.T, bin string, be Backend, listen, upstream string, extra ...string) (*child, string) {
	t.Helper()
	args := append([]string{"-listen", listen, "-upstream", upstream, "-workers", "2", "-backend", be.String(), "-connect-timeout", "5s"}, extra...)
	p := startChild(t, bin, args...)
	first := p.next(t)
	m := regexp.MustCompile(`^proxy: listening on (\S+), upstream (\S+), 2 workers; backend (\w+)`).FindStringSubmatch(first)
	require.NotNil(t, m, "first line: %q", first)
	require.Equal(t, be.String(), m[3])
	return p, m[1]
}

// halfCloseUpstream accepts one connection and plays the server side of
// the half-close exchange; first says which side half-closes first.
func halfCloseUpstream(ln net.Listener, clientFirst bool, a, b []byte) <-chan error {
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(15 * time.Second))
		errc <- halfCloseSide(c, clientFirst, false, b, a)
	}()
	return errc
}

// halfCloseSide sends out and reads in, over a connection where one side
// half-closes in the middle of the other's stream: the side that goes
// first sends everything and shuts its write side, then reads the other's
// stream to EOF; the other side sends half of its stream, reads the first
// side's stream to EOF, and only then sends the rest. So every byte after
// the midpoint crosses a half-closed connection.
func halfCloseSide(c net.Conn, clientFirst, isClient bool, out, in []byte) error {
	first := clientFirst == isClient
	readAll := func() error {
		got, err := io.ReadAll(c)
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if !bytes.Equal(got, in) {
			return fmt.Errorf("read %d bytes, want %d intact", len(got), len(in))
		}
		return nil
	}
	closeWrite := func() error {
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			return cw.CloseWrite()
		}
		return errors.New("no CloseWrite")
	}
	if first {
		// Reading concurrently keeps a full socket buffer on our side from
		// stalling the other's first half.
		rerr := make(chan error, 1)
		go func() { rerr <- readAll() }()
		if _, err := c.Write(out); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		if err := closeWrite(); err != nil {
			return err
		}
		return <-rerr
	}
	half := len(out) / 2
	if _, err := c.Write(out[:half]); err != nil {
		return fmt.Errorf("write first half: %w", err)
	}
	if err := readAll(); err != nil { // EOF: the other side half-closed
		return err
	}
	if _, err := c.Write(out[half:]); err != nil {
		return fmt.Errorf("write second half: %w", err)
	}
	return closeWrite()
}

func TestProxyExample(t *testing.T) {
	bin := buildExample(t, "proxy")
	a, b := pattern(1<<20, 11), pattern(1<<20, 12)
	forEachBackend(t, func(t *testing.T, be Backend) {
		// forward (ForwardRecvBuf) is the proxy's default; copy (Send)
		// runs over TCP.
		for _, run := range []struct{ network, mode string }{{"tcp", "forward"}, {"unix", "forward"}, {"tcp", "copy"}} {
			network := run.network
			t.Run(network+"/"+run.mode, func(t *testing.T) {
				var up net.Listener
				var err error
				listen, upAddr := "127.0.0.1:0", ""
				if network == "unix" {
					dir := t.TempDir()
					up, err = net.Listen("unix", filepath.Join(dir, "up.sock"))
					listen, upAddr = "unix:"+filepath.Join(dir, "proxy.sock"), "unix:"+up.Addr().String()
				} else {
					up, err = net.Listen("tcp", "127.0.0.1:0")
					upAddr = up.Addr().String()
				}
				require.NoError(t, err)
				defer up.Close()
				p, addr := startProxy(t, bin, be, listen, upAddr, "-mode", run.mode)

				for _, clientFirst := range []bool{true, false} {
					errc := halfCloseUpstream(up, clientFirst, a, b)
					c, err := net.DialTimeout(network, addr, 5*time.Second)
					require.NoError(t, err)
					_ = c.SetDeadline(time.Now().Add(15 * time.Second))
					require.NoError(t, halfCloseSide(c, clientFirst, true, a, b), "client, clientFirst=%v", clientFirst)
					require.NoError(t, <-errc, "upstream, clientFirst=%v", clientFirst)
					c.Close()
				}

				// The upstream resets mid-stream: the proxy closes the
				// client's side too.
				go func() {
					c, err := up.Accept()
					if err != nil {
						return
					}
					_, _ = c.Write([]byte("partial"))
					_, _ = io.ReadFull(c, make([]byte, 5))
					if tc, ok := c.(*net.TCPConn); ok {
						_ = tc.SetLinger(0)
					}
					c.Close()
				}()
				c, err := net.DialTimeout(network, addr, 5*time.Second)
				require.NoError(t, err)
				_ = c.SetDeadline(time.Now().Add(15 * time.Second))
				_, err = c.Write([]byte("hello"))
				require.NoError(t, err)
				got, err := io.ReadAll(c)
				assert.True(t, err == nil || errors.Is(err, syscall.ECONNRESET), "read: %v", err)
				assert.Equal(t, "partial", string(got), "what the upstream sent arrives, then the close")
				c.Close()

				rest := p.stop(t)
				require.NotEmpty(t, rest)
				last := rest[len(rest)-1]
				assertMatch(t, `^proxy: stopped; accepted 3, upstream connects 3, failed 0, `, last)
				m := regexp.MustCompile(`buffers forwarded (\d+), bytes copied (\d+)$`).FindStringSubmatch(last)
				require.NotNil(t, m, "last line: %q", last)
				fwd, _ := strconv.Atoi(m[1])
				copied, _ := strconv.Atoi(m[2])
				if run.mode == "forward" {
					assert.Greater(t, fwd, 0, "-mode forward forwards receive buffers: %q", last)
				} else {
					assert.Zero(t, fwd, "-mode copy forwards nothing: %q", last)
					assert.GreaterOrEqual(t, copied, 2<<20, "-mode copy copies what it relays: %q", last)
				}
				if network == "unix" {
					_, err := os.Lstat(strings.TrimPrefix(listen, "unix:"))
					assert.ErrorIs(t, err, os.ErrNotExist, "the proxy's socket file is removed")
				}
			})
		}

		// No upstream: the client is closed at once, and counted.
		dead := closedPort(t)
		p, addr := startProxy(t, bin, be, "127.0.0.1:0", dead.String())
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		require.NoError(t, err)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(make([]byte, 1))
		assert.Zero(t, n)
		assert.True(t, errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET), "read: %v", err)
		c.Close()
		rest := p.stop(t)
		require.NotEmpty(t, rest)
		assertMatch(t, `failed 1, `, rest[len(rest)-1])
	})
}

// requireRedisEnv makes missing redis-server/redis-benchmark binaries a
// test failure instead of a skip; `make test` sets it after installing
// them.
const requireRedisEnv = "RINGLINE_REQUIRE_REDIS"

// redisBenchN is how many requests of each test redis-benchmark makes;
// make test keeps it at 20,000 to stay short (RINGLINE_REDIS_BENCH_N=100000
// runs the full figure).
func redisBenchN() int {
	if n, err := strconv.Atoi(os.Getenv("RINGLINE_REDIS_BENCH_N")); err == nil && n > 0 {
		return n
	}
	return 20_000
}

func lookRedis(t *testing.T) (server, bench, cli string) {
	t.Helper()
	var missing []string
	find := func(name string) string {
		p, err := exec.LookPath(name)
		if err != nil {
			missing = append(missing, name)
		}
		return p
	}
	server, bench, cli = find("redis-server"), find("redis-benchmark"), find("redis-cli")
	if len(missing) > 0 {
		msg := fmt.Sprintf("%s not installed (Debian: apt-get install redis-server redis-tools; make test installs them)", strings.Join(missing, ", "))
		if os.Getenv(requireRedisEnv) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return server, bench, cli
}

var freePortMu sync.Mutex

// freeLoopbackPort returns a TCP port on 127.0.0.1 that was free a
// moment ago.
func freeLoopbackPort(t *testing.T) int {
	freePortMu.Lock()
	defer freePortMu.Unlock()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startRedis runs redis-server on a free loopback port without
// persistence, and stops it when the test ends.
func startRedis(t *testing.T, server, cli string) string {
	t.Helper()
	for attempt := 0; ; attempt++ {
		port := freeLoopbackPort(t)
		cmd := exec.Command(server, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--dir", t.TempDir(), "--protected-mode", "no")
		var out logSink
		cmd.Stdout, cmd.Stderr = &out, &out
		require.NoError(t, cmd.Start())
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		ok := settle(10*time.Second, func() bool {
			select {
			case <-exited:
				return true
			default:
			}
			r, err := exec.Command(cli, "-h", "127.0.0.1", "-p", strconv.Itoa(port), "PING").Output()
			return err == nil && strings.TrimSpace(string(r)) == "PONG"
		})
		select {
		case err := <-exited:
			// Lost the port to someone else between the check and the bind.
			require.Less(t, attempt, 3, "redis-server exited: %v: %s", err, out.String())
			continue
		default:
		}
		require.True(t, ok, "redis-server did not answer PING: %s", out.String())
		t.Cleanup(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		})
		return addr
	}
}

// The proxy in front of redis-server passes redis-benchmark (SET and GET)
// with no errors, and redis-cli round trips through it.
func TestProxyRedis(t *testing.T) {
	server, bench, cli := lookRedis(t)
	bin := buildExample(t, "proxy")
	redis := startRedis(t, server, cli)
	n := redisBenchN()
	forEachBackend(t, func(t *testing.T, be Backend) {
		p, addr := startProxy(t, bin, be, "127.0.0.1:0", redis)
		host, port, err := net.SplitHostPort(addr)
		require.NoError(t, err)

		big := strings.Repeat("v", 100_000) // several receive buffers each way
		out, err := exec.Command(cli, "-h", host, "-p", port, "SET", "ringline:"+be.String(), big).CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.Equal(t, "OK", strings.TrimSpace(string(out)))
		out, err = exec.Command(cli, "-h", host, "-p", port, "GET", "ringline:"+be.String()).CombinedOutput()
		require.NoError(t, err)
		require.Equal(t, big, strings.TrimSpace(string(out)))

		cmd := exec.Command(bench, "-h", host, "-p", port, "-t", "set,get", "-n", strconv.Itoa(n), "-q")
		var bout logSink
		cmd.Stdout, cmd.Stderr = &bout, &bout
		require.NoError(t, cmd.Start())
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err = <-done:
		case <-time.After(3 * time.Minute):
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("redis-benchmark did not finish: %s", bout.String())
		}
		res := bout.String()
		require.NoError(t, err, "redis-benchmark: %s", res)
		// -q prints progress lines separated by carriage returns; the
		// final one per test names the rate.
		for _, test := range []string{"SET", "GET"} {
			assertMatch(t, `(?m)`+test+`: [0-9.]+ requests per second`, res)
		}
		for _, bad := range []string{"rror", "refused", "closed", "Connection reset"} {
			assert.NotContains(t, res, bad)
		}
		rest := p.stop(t)
		require.NotEmpty(t, rest)
		assertMatch(t, `failed 0, `, rest[len(rest)-1])
		t.Logf("%d requests each, through the proxy on %s: %s", n, be, lastRates(res))
	})
}

// lastRates keeps redis-benchmark's summary lines.
func lastRates(s string) string {
	var out []string
	for _, l := range regexp.MustCompile(`[\r\n]+`).Split(s, -1) {
		if strings.Contains(l, "requests per second") {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return strings.Join(out, "; ")
}

// assertMatch reports s not matching the regular expression re.
func assertMatch(t *testing.T, re, s string) {
	t.Helper()
	if !regexp.MustCompile(re).MatchString(s) {
		t.Errorf("%q does not match %q", s, re)
	}
}

// writeServerFiles writes the PKI's server certificate and key as PEM
// files into dir.
func (p *testPKI) writeServerFiles(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	certFile = filepath.Join(dir, "server.pem")
	keyFile = filepath.Join(dir, "server.key")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.server.Certificate[0]}), 0o600))
	der, err := x509.MarshalPKCS8PrivateKey(p.server.PrivateKey)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))
	return certFile, keyFile
}

// echoUpstream serves an echo on ln (over TLS with cfg) until it closes.
func echoUpstream(ln net.Listener, cfg *tls.Config) {
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

// TestProxyTLS: the proxy example terminates TLS from its clients
// (-tls-cert/-tls-key), originates it to the upstream (-upstream-tls,
// verified against -upstream-ca), or both, relaying 1 MiB each way in each
// mode; an upstream whose certificate the CA did not sign is refused, the
// client closed and the failure counted.
func TestProxyTLS(t *testing.T) {
	bin := buildExample(t, "proxy")
	pki := getPKI()
	dir := t.TempDir()
	caFile, _, _ := pki.writeFiles(t, dir)
	certFile, keyFile := pki.writeServerFiles(t, dir)
	rogueCA, _ := newCA("rogue CA")
	rogueFile := filepath.Join(dir, "rogue-ca.pem")
	require.NoError(t, os.WriteFile(rogueFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rogueCA.Raw}), 0o600))
	msg := pattern(1<<20, 21)
	forEachBackend(t, func(t *testing.T, be Backend) {
		for _, tc := range []struct {
			name                 string
			terminate, originate bool
			mode                 string
		}{
			{"terminate", true, false, "forward"},
			{"originate", false, true, "forward"},
			{"both", true, true, "forward"},
			{"both-copy", true, true, "copy"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				require.NoError(t, err)
				defer ln.Close()
				var upCfg *tls.Config
				args := []string{"-mode", tc.mode}
				if tc.originate {
					upCfg = pki.serverConfig()
					args = append(args, "-upstream-tls", "-upstream-ca", caFile, "-upstream-server-name", "localhost")
				}
				if tc.terminate {
					args = append(args, "-tls-cert", certFile, "-tls-key", keyFile)
				}
				go echoUpstream(ln, upCfg)
				p, addr := startProxy(t, bin, be, "127.0.0.1:0", ln.Addr().String(), args...)
				if tc.terminate {
					require.NoError(t, tlsEchoCheck(addr, pki.clientConfig(), msg))
				} else {
					c, err := net.DialTimeout("tcp", addr, 5*time.Second)
					require.NoError(t, err)
					_ = c.SetDeadline(time.Now().Add(20 * time.Second))
					werr := writeAsync(c, msg)
					got := make([]byte, len(msg))
					_, err = io.ReadFull(c, got)
					require.NoError(t, err)
					require.NoError(t, <-werr)
					assert.True(t, bytes.Equal(got, msg), "the 1 MiB came back unchanged")
					c.Close()
				}
				rest := p.stop(t)
				require.NotEmpty(t, rest)
				assertMatch(t, `^proxy: stopped; accepted 1, upstream connects 1, failed 0, `, rest[len(rest)-1])
			})
		}

		t.Run("bad-upstream-certificate", func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			defer ln.Close()
			go echoUpstream(ln, pki.serverConfig())
			p, addr := startProxy(t, bin, be, "127.0.0.1:0", ln.Addr().String(),
				"-upstream-tls", "-upstream-ca", rogueFile, "-upstream-server-name", "localhost")
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			require.NoError(t, err)
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			_, _ = c.Write([]byte("hello"))
			n, err := c.Read(make([]byte, 1))
			assert.Zero(t, n, "nothing relayed from an upstream that failed verification")
			assert.True(t, errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET), "read: %v", err)
			c.Close()
			rest := p.stop(t)
			require.NotEmpty(t, rest)
			assertMatch(t, `failed 1, `, rest[len(rest)-1])
			assert.Contains(t, p.stderr.String(), "certificate", "the log says why the upstream was refused")
		})
	})
}
