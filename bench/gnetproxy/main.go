// Command gnetproxy is the gnet/v2 peer of ringline's proxy benchmark
// (BenchmarkProxy in the repository root starts it as a child process):
// the proxy of examples/proxy on gnet with one event loop. For each client
// it registers an upstream connection in the same event loop
// (EventLoop.Register, which dials on gnet's goroutine pool and enrolls
// the socket); bytes that arrive before the upstream is there wait in the
// client's inbound buffer. Traffic on either side is written to the other
// at once (gnet buffers what the socket does not take). gnet has no
// half-close, so the end of either side closes both. Run it with
// GOMAXPROCS=1, as the benchmark does.
//
// It prints "gnetproxy: listening on ADDR" once serving and exits when its
// stdin ends.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"
)

type proxy struct {
	gnet.BuiltinEventEngine
	eng      gnet.Engine
	upstream net.Addr
	addr     string
	err      error
	ready    chan struct{}
}

// side is a connection's context: its peer, once both exist.
type side struct {
	peer     gnet.Conn
	upstream bool
}

func (p *proxy) OnBoot(eng gnet.Engine) gnet.Action {
	defer close(p.ready)
	p.eng = eng
	fd, err := eng.Dup()
	if err != nil {
		p.err = err
		return gnet.Shutdown
	}
	defer unix.Close(fd)
	sa, err := unix.Getsockname(fd)
	if err != nil {
		p.err = err
		return gnet.Shutdown
	}
	a := sa.(*unix.SockaddrInet4)
	p.addr = net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
	return gnet.None
}

func (p *proxy) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	if client, ok := c.Context().(gnet.Conn); ok {
		// An upstream connection registered for client: pair them, and
		// flush what the client sent meanwhile.
		c.SetContext(&side{peer: client, upstream: true})
		client.SetContext(&side{peer: c})
		_ = client.Wake(nil)
		return nil, gnet.None
	}
	c.SetContext(&side{})
	if _, err := c.EventLoop().Register(gnet.NewContext(context.Background(), c), p.upstream); err != nil {
		return nil, gnet.Close
	}
	return nil, gnet.None
}

func (p *proxy) OnTraffic(c gnet.Conn) gnet.Action {
	s, _ := c.Context().(*side)
	if s == nil || s.peer == nil {
		return gnet.None // the upstream is not connected yet: keep the bytes
	}
	buf, _ := c.Next(-1)
	if _, err := s.peer.Write(buf); err != nil {
		return gnet.Close
	}
	return gnet.None
}

func (p *proxy) OnClose(c gnet.Conn, _ error) gnet.Action {
	if s, _ := c.Context().(*side); s != nil && s.peer != nil {
		_ = s.peer.Close()
	}
	return gnet.None
}

type logger struct{}

func (logger) Debugf(string, ...any)     {}
func (logger) Infof(string, ...any)      {}
func (logger) Warnf(f string, a ...any)  { fmt.Fprintf(os.Stderr, "gnet: "+f+"\n", a...) }
func (logger) Errorf(f string, a ...any) { fmt.Fprintf(os.Stderr, "gnet: "+f+"\n", a...) }
func (logger) Fatalf(f string, a ...any) { fmt.Fprintf(os.Stderr, "gnet: "+f+"\n", a...); os.Exit(1) }

func main() {
	upstream := flag.String("upstream", "", "upstream host:port")
	flag.Parse()
	up, err := net.ResolveTCPAddr("tcp", *upstream)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gnetproxy:", err)
		os.Exit(1)
	}
	p := &proxy{upstream: up, ready: make(chan struct{})}
	runErr := make(chan error, 1)
	go func() {
		runErr <- gnet.Run(p, "tcp://127.0.0.1:0",
			gnet.WithMulticore(false), gnet.WithNumEventLoop(1), gnet.WithLogger(logger{}))
	}()
	select {
	case <-p.ready:
	case err := <-runErr:
		fmt.Fprintln(os.Stderr, "gnetproxy: gnet.Run:", err)
		os.Exit(1)
	case <-time.After(10 * time.Second):
		fmt.Fprintln(os.Stderr, "gnetproxy: gnet did not boot within 10s")
		os.Exit(1)
	}
	if p.err != nil {
		fmt.Fprintln(os.Stderr, "gnetproxy:", p.err)
		os.Exit(1)
	}
	fmt.Printf("gnetproxy: listening on %s\n", p.addr)
	_, _ = io.Copy(io.Discard, os.Stdin)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = p.eng.Stop(ctx)
}
