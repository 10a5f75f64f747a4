// Package nettestconn runs golang.org/x/net/nettest.TestConn against
// ringline's net.Conn view (ConnCtx.NetConn), plaintext and TLS, on both
// backends. It lives in the bench/ module so that golang.org/x/net stays
// out of ringline's own module graph.
//
// nettest drives a net.Conn from many goroutines at once (concurrent
// Reads, Writes, deadline changes and Close). The view is not that: its
// methods run only inside a task of the connection's worker, Read only in
// the task that owns the connection. So the tests drive it through a
// bridge (bridgeConn) that marshals each call onto the worker with
// ringline's public doors: Reads go, through a Mailbox, to the owning task,
// which performs them one after another with the view's Read (suspending
// the task, not a thread); Writes, deadlines and Close are posted
// (Runtime.Post) as tasks of their own that call the view. Every one of
// nettest's cases then applies and runs against the view's code; what the
// bridge adds is only the hop to the worker and back.
package nettestconn

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/nettest"

	"github.com/ringline-go/ringline"
)

// result is a bridged call's outcome.
type result struct {
	n   int
	err error
}

// readOp is a Read for the owning task to perform into p.
type readOp struct {
	p     []byte
	reply chan result
}

// bridgeConn is a goroutine-safe net.Conn over a connection's view.
type bridgeConn struct {
	rt            *ringline.Runtime
	worker        int
	tok           ringline.ConnToken
	reads         *ringline.Mailbox[readOp]
	local, remote net.Addr
}

func (b *bridgeConn) Read(p []byte) (int, error) {
	reply := make(chan result, 1)
	if err := b.reads.Put(readOp{p: p, reply: reply}); err != nil {
		return 0, net.ErrClosed
	}
	r := <-reply
	return r.n, r.err
}

// do runs f on the connection's worker as a task of its own and returns
// its result.
func (b *bridgeConn) do(f func(v net.Conn) result) result {
	reply := make(chan result, 1)
	err := b.rt.Post(b.worker, func(tc ringline.TaskCtx) { reply <- f(tc.Conn(b.tok).NetConn()) })
	if err != nil {
		return result{0, net.ErrClosed}
	}
	return <-reply
}

func (b *bridgeConn) Write(p []byte) (int, error) {
	r := b.do(func(v net.Conn) result { n, err := v.Write(p); return result{n, err} })
	return r.n, r.err
}

func (b *bridgeConn) Close() error {
	return b.do(func(v net.Conn) result { return result{0, v.Close()} }).err
}

func (b *bridgeConn) SetDeadline(t time.Time) error {
	return b.do(func(v net.Conn) result { return result{0, v.SetDeadline(t)} }).err
}

func (b *bridgeConn) SetReadDeadline(t time.Time) error {
	return b.do(func(v net.Conn) result { return result{0, v.SetReadDeadline(t)} }).err
}

func (b *bridgeConn) SetWriteDeadline(t time.Time) error {
	return b.do(func(v net.Conn) result { return result{0, v.SetWriteDeadline(t)} }).err
}

func (b *bridgeConn) LocalAddr() net.Addr  { return b.local }
func (b *bridgeConn) RemoteAddr() net.Addr { return b.remote }

// server is a one-worker runtime whose connections are handed out as
// bridges.
type server struct {
	rt       *ringline.Runtime
	accepted chan *bridgeConn
}

func startServer(t *testing.T, be ringline.Backend, tc *tls.Config) *server {
	s := &server{accepted: make(chan *bridgeConn, 16)}
	var rtp atomic.Pointer[ringline.Runtime]
	handler := handlerFunc(func(c ringline.ConnCtx) {
		v := c.NetConn()
		reads, err := ringline.NewMailbox[readOp](rtp.Load(), c.WorkerID(), 1024)
		if err != nil {
			return
		}
		s.accepted <- &bridgeConn{rt: rtp.Load(), worker: c.WorkerID(), tok: c.Token(), reads: reads,
			local: v.LocalAddr(), remote: v.RemoteAddr()}
		// The owning task performs the Reads, one after another.
		for {
			op, err := reads.Recv()
			if err != nil {
				return // the pipe was stopped: returning closes the connection
			}
			n, err := v.Read(op.p)
			op.reply <- result{n, err}
		}
	})
	cfg := ringline.Config{Workers: 1, Backend: be, TLS: tc}
	rt, err := ringline.New(cfg).Bind("127.0.0.1:0").Launch(func(int) ringline.AsyncEventHandler { return handler })
	if err != nil {
		if be == ringline.IOUring && os.Getenv("RINGLINE_REQUIRE_IOURING") != "1" {
			t.Skipf("io_uring not tested: %v", err)
		}
		t.Fatalf("launch on %v: %v", be, err)
	}
	rtp.Store(rt)
	t.Cleanup(func() {
		rt.Shutdown()
		select {
		case <-rt.Done():
		case <-time.After(10 * time.Second):
			t.Errorf("runtime did not stop within 10s")
		}
	})
	s.rt = rt
	return s
}

type handlerFunc func(c ringline.ConnCtx)

func (f handlerFunc) OnAccept(c ringline.ConnCtx) { f(c) }

// pipe makes nettest's MakePipe: c1 is the bridged view of the accepted
// connection, c2 a Go client (a crypto/tls client when cc is set).
func (s *server) pipe(cc *tls.Config) nettest.MakePipe {
	return func() (c1, c2 net.Conn, stop func(), err error) {
		raw, err := net.DialTimeout("tcp", s.rt.Addr().String(), 5*time.Second)
		if err != nil {
			return nil, nil, nil, err
		}
		c2 = raw
		if cc != nil {
			tc := tls.Client(raw, cc)
			if err := tc.Handshake(); err != nil {
				raw.Close()
				return nil, nil, nil, err
			}
			c2 = tc
		}
		var b *bridgeConn
		select {
		case b = <-s.accepted:
		case <-time.After(10 * time.Second):
			c2.Close()
			return nil, nil, nil, errors.New("the server did not accept within 10s")
		}
		stop = func() {
			b.Close()
			c2.Close()
			b.reads.Close()
		}
		return b, c2, stop, nil
	}
}

// TestConn: nettest.TestConn against the view, per backend, plaintext and
// TLS 1.3.
func TestConn(t *testing.T) {
	for _, be := range []ringline.Backend{ringline.IOUring, ringline.Epoll} {
		t.Run(be.String(), func(t *testing.T) {
			t.Run("plain", func(t *testing.T) {
				s := startServer(t, be, nil)
				nettest.TestConn(t, s.pipe(nil))
			})
			t.Run("tls", func(t *testing.T) {
				sc, cc := tlsConfigs(t)
				s := startServer(t, be, sc)
				nettest.TestConn(t, s.pipe(cc))
			})
		})
	}
}

// tlsConfigs makes a throwaway self-signed ECDSA P-256 certificate and the
// server and client configurations that use and trust it.
func tlsConfigs(t *testing.T) (server, client *tls.Config) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	client = &tls.Config{RootCAs: pool, ServerName: "localhost"}
	return server, client
}
