// Command proxy is a TCP and Unix-socket proxy on ringline. Each accepted
// connection's task connects to the upstream (with a timeout), then copies
// both directions itself: it owns both connections, so one task drives
// them, waiting with Select for whichever side has data or has taken the
// last send.
//
// Backpressure: each direction has at most one Send in flight, and the
// task reads that direction's source again only once the destination's
// kernel has taken the previous bytes (SendFuture). Meanwhile the source's
// bytes wait in its receive buffer, which stops receiving when full, so a
// slow reader throttles its writer through TCP instead of growing memory.
//
// Half-close: when one side finishes sending (EOF), the proxy shuts down
// the write side of the other (ShutdownWrite: a FIN after the last byte)
// and keeps copying the other direction until it ends too. An error on
// either side (a reset, a failed send) closes both.
//
// Forwarding (-mode forward, the default): the bytes go out of the receive
// buffer they arrived in (ForwardRecvBuf), which is reused only once the
// destination's kernel has taken them; no copy into the send pool. Where
// that cannot be done (bytes the receive accumulated, a TLS side, a
// connection holding its share of buffers already) ringline copies
// instead. -mode copy always copies (Send). A send refused because the
// worker's send pool is full waits for room (SendWait) rather than
// dropping the client.
//
// TLS: with -tls-cert/-tls-key (or -tls-self-signed) the proxy terminates
// TLS from its clients; with -upstream-tls it originates TLS to the
// upstream, verifying the upstream's certificate against -upstream-ca (or
// the system roots) for -upstream-server-name (default: the -upstream
// host). Either, both or neither; the relay is the same plaintext code.
//
// Usage:
//
//	proxy -listen 127.0.0.1:7879 -upstream 127.0.0.1:6379
//	proxy -listen unix:/run/proxy.sock -upstream unix:/run/app.sock
//	proxy -listen :7443 -tls-cert cert.pem -tls-key key.pem -upstream 127.0.0.1:6379
//	proxy -listen 127.0.0.1:7879 -upstream db.example:6380 -upstream-tls -upstream-ca ca.pem
//
// Flags: -listen, -upstream (host:port or unix:PATH), -workers (0: one
// per CPU), -backend auto|iouring|epoll, -mode forward|copy,
// -connect-timeout, -grace, -tls-cert, -tls-key, -tls-self-signed,
// -upstream-tls, -upstream-server-name, -upstream-ca.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ringline-go/ringline"
	"github.com/ringline-go/ringline/examples/internal/stop"
	"github.com/ringline-go/ringline/examples/internal/tlsflags"
)

// upstream is where each client is relayed to: a TCP address or a Unix
// socket path; over TLS to serverName when tls is set (TCP only).
type upstream struct {
	tcp        netip.AddrPort
	unix       string
	timeout    time.Duration
	tls        bool
	serverName string
}

// proxy is one worker's handler.
type proxy struct {
	up      upstream
	forward bool // ForwardRecvBuf rather than Send
	// failed counts clients dropped because the upstream connect failed;
	// lastLog rate-limits the log line (one worker's tasks only).
	failed  *atomic.Uint64
	lastLog time.Time
}

func (p *proxy) OnAccept(client ringline.ConnCtx) {
	up, err := p.connect(client)
	if err != nil {
		p.failed.Add(1)
		if time.Since(p.lastLog) > time.Second {
			p.lastLog = time.Now()
			log.Printf("proxy: upstream connect failed: %v", err)
		}
		return // closes the client
	}
	relay(client, up, p.forward)
	// Returning closes both connections (after their queued sends).
}

// connect opens the upstream connection for client's task: over TLS with
// the handshake done, when asked.
func (p *proxy) connect(client ringline.ConnCtx) (ringline.ConnCtx, error) {
	switch {
	case p.up.unix != "":
		fut, err := client.ConnectUnix(p.up.unix)
		if err != nil {
			return ringline.ConnCtx{}, err
		}
		return fut.Await()
	case p.up.tls:
		fut, err := client.ConnectTLSWithTimeout(p.up.tcp, p.up.serverName, p.up.timeout)
		if err != nil {
			return ringline.ConnCtx{}, err
		}
		return fut.Await()
	}
	fut, err := client.ConnectWithTimeout(p.up.tcp, p.up.timeout)
	if err != nil {
		return ringline.ConnCtx{}, err
	}
	return fut.Await()
}

// direction is one way of the copy.
type direction struct {
	src, dst ringline.ConnCtx
	fut      ringline.SendFuture // the send in flight to dst
	inflight bool
	retry    []byte // bytes a send refused for lack of room, for SendWait
	done     bool   // src ended cleanly; dst's write side was shut down
}

// relay copies a to b and b to a until both directions have ended, or
// either fails; with forward, by forwarding the receive buffers.
func relay(a, b ringline.ConnCtx, forward bool) {
	dirs := [2]direction{{src: a, dst: b}, {src: b, dst: a}}
	var fs [2]ringline.Future
	for !dirs[0].done || !dirs[1].done {
		for i := range dirs {
			d := &dirs[i]
			switch {
			case d.done:
				fs[i] = nil
			case d.inflight:
				fs[i] = d.fut
			default:
				fs[i] = d.src.Readable()
			}
		}
		i, err := ringline.Select(fs[0], fs[1])
		if err != nil {
			return
		}
		d := &dirs[i]
		if d.inflight {
			d.inflight = false
			if _, err := d.fut.Await(); err != nil { // resolved: returns at once
				return
			}
			continue
		}
		// The source has bytes (or ended): WithData does not wait here.
		// What it shows goes out at once: forwarded, then Send(nil) for a
		// future that resolves once all of it is sent (the backpressure);
		// or copied by one Send. A send refused for lack of room (the
		// worker's send pool, or the destination's queue) keeps a copy
		// of the bytes and waits for room with SendWait once the closure
		// has returned (it may not wait inside it); any other refusal
		// ends the relay.
		var serr error
		n := d.src.WithData(func(buf []byte) ringline.ParseResult {
			if forward {
				if serr = d.dst.ForwardRecvBuf(buf); serr == nil {
					d.fut, serr = d.dst.Send(nil)
				}
			} else {
				d.fut, serr = d.dst.Send(buf)
			}
			if errors.Is(serr, ringline.ErrSendPoolExhausted) || errors.Is(serr, ringline.ErrSendQueueFull) {
				d.retry = append(d.retry[:0], buf...)
				serr = nil
			}
			return ringline.Consumed(len(buf))
		})
		if serr != nil {
			return // the destination failed: close both
		}
		if len(d.retry) > 0 {
			serr = d.dst.SendWait(d.retry)
			d.retry = d.retry[:0]
			if serr == nil {
				d.fut, serr = d.dst.Send(nil)
			}
			if serr != nil {
				return
			}
		}
		if n == 0 {
			if d.src.Err() != nil {
				return // reset or failed: close both
			}
			// A clean EOF: pass the half-close on and keep copying the
			// other way.
			if err := d.dst.ShutdownWrite(); err != nil {
				return
			}
			d.done = true
			continue
		}
		d.inflight = true
	}
}

// tlsNote says which sides speak TLS, for the start-up line.
func tlsNote(clients, upstream bool) string {
	switch {
	case clients && upstream:
		return "; TLS from clients and to the upstream"
	case clients:
		return "; TLS from clients"
	case upstream:
		return "; TLS to the upstream"
	}
	return ""
}

// parseAddr reads "host:port" or "unix:PATH".
func parseAddr(s string) (tcp string, unixPath string) {
	if p, ok := strings.CutPrefix(s, "unix:"); ok {
		return "", p
	}
	return s, ""
}

func main() {
	listen := flag.String("listen", "127.0.0.1:7879", "listen address: host:port, or unix:PATH")
	upAddr := flag.String("upstream", "", "upstream address: host:port, or unix:PATH (required)")
	workers := flag.Int("workers", 0, "worker loops (0: one per CPU)")
	backend := flag.String("backend", "auto", "backend: auto, iouring or epoll")
	timeout := flag.Duration("connect-timeout", 5*time.Second, "upstream connect timeout (TCP)")
	grace := flag.Duration("grace", 5*time.Second, "on SIGINT/SIGTERM, how long to let connections finish before exiting anyway")
	mode := flag.String("mode", "forward", "how bytes are relayed: forward (ForwardRecvBuf) or copy (Send)")
	tlsFlags := tlsflags.RegisterServer(flag.CommandLine, "the proxy")
	upTLS := flag.Bool("upstream-tls", false, "connect to the upstream over TLS (TCP upstreams only)")
	upName := flag.String("upstream-server-name", "", "with -upstream-tls: the name the upstream's certificate must carry, sent as SNI (default: the -upstream host)")
	upCA := flag.String("upstream-ca", "", "with -upstream-tls: verify the upstream against these CA certificates (PEM) instead of the system roots")
	flag.Parse()
	if *upAddr == "" {
		log.Fatal("proxy: -upstream is required")
	}
	if *mode != "forward" && *mode != "copy" {
		log.Fatalf("proxy: unknown -mode %q", *mode)
	}

	up := upstream{timeout: *timeout, tls: *upTLS, serverName: *upName}
	if host, path := parseAddr(*upAddr); path != "" {
		if up.tls {
			log.Fatal("proxy: -upstream-tls needs a TCP upstream")
		}
		up.unix = path
	} else {
		if up.serverName == "" {
			if h, _, err := net.SplitHostPort(host); err == nil {
				up.serverName = h
			}
		}
		// Resolved once here: a task must not block on DNS.
		ta, err := net.ResolveTCPAddr("tcp", host)
		if err != nil {
			log.Fatalf("proxy: -upstream %q: %v", *upAddr, err)
		}
		up.tcp = ta.AddrPort()
	}

	cfg := ringline.Config{Workers: *workers}
	tlsCfg, note, err := tlsFlags.Config()
	if err != nil {
		log.Fatalf("proxy: %v", err)
	}
	cfg.TLS = tlsCfg
	if note != "" {
		fmt.Println("proxy: " + note)
	}
	if up.tls {
		cfg.TLSClient = &tls.Config{}
		if *upCA != "" {
			pem, err := os.ReadFile(*upCA)
			if err != nil {
				log.Fatalf("proxy: -upstream-ca: %v", err)
			}
			roots := x509.NewCertPool()
			if !roots.AppendCertsFromPEM(pem) {
				log.Fatalf("proxy: -upstream-ca %s: no PEM certificate in it", *upCA)
			}
			cfg.TLSClient.RootCAs = roots
		}
	} else if *upName != "" || *upCA != "" {
		log.Fatal("proxy: -upstream-server-name and -upstream-ca need -upstream-tls")
	}
	switch *backend {
	case "auto":
		cfg.Backend = ringline.Auto
	case "iouring":
		cfg.Backend = ringline.IOUring
	case "epoll":
		cfg.Backend = ringline.Epoll
	default:
		log.Fatalf("unknown -backend %q", *backend)
	}
	b := ringline.New(cfg)
	if host, path := parseAddr(*listen); path != "" {
		b = b.BindUnix(path)
	} else {
		b = b.Bind(host)
	}
	sig := stop.Signals()
	var failed atomic.Uint64
	rt, err := b.Launch(func(int) ringline.AsyncEventHandler {
		return &proxy{up: up, forward: *mode == "forward", failed: &failed}
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("proxy: listening on %s, upstream %s, %d workers; backend %s: %s; mode %s%s\n",
		rt.Addr(), *upAddr, rt.Workers(), rt.Backend(), rt.Features(), *mode, tlsNote(cfg.TLS != nil, up.tls))

	stop.Wait("proxy", sig, rt, *grace)
	t := ringline.Total(rt.Stats())
	fmt.Printf("proxy: stopped; accepted %d, upstream connects %d, failed %d, bytes in %d out %d, buffers forwarded %d, bytes copied %d\n",
		t.Accepted, t.Connected, failed.Load(), t.BytesIn, t.BytesOut, t.ForwardedBuffers, t.BytesCopied)
}
