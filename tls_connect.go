package ringline

import (
	"crypto/tls"
	"errors"
	"net/netip"
	"time"
)

// Client TLS: ConnectTLS opens an outbound TCP connection with Connect
// (connect.go) and runs the client handshake in the calling task, which
// owns the connection, before the future resolves.

// TLSConnectFuture is the pending result of ConnectTLS or
// ConnectTLSWithTimeout. It belongs to the task that called ConnectTLS.
// It is not a Future for Select: the handshake runs inside Await, in the
// calling task, so only Await completes it (bound it with
// ConnectTLSWithTimeout).
type TLSConnectFuture struct {
	w          *worker
	dial       tlsTCPDial
	serverName string
	deadline   time.Time // zero: Config.TLSHandshakeTimeout for the handshake
}

// ConnectTLS starts connecting to addr like Connect and returns a future
// for the connection secured by TLS: Await suspends the calling task until
// the TCP connection is established and the client handshake has
// completed, with a clone of Config.TLSClient (crypto/tls's defaults when
// nil: the system roots) whose ServerName is serverName, the name sent as
// SNI and verified against the server's certificate ("" uses addr's IP
// address). The handshake is bounded by Config.TLSHandshakeTimeout. The
// connection belongs to the calling task, as with Connect; after Await,
// WithData and the send methods carry plaintext, like on an accepted TLS
// connection, and TLSInfo describes the session. Errors are Connect's.
func (t TaskCtx) ConnectTLS(addr netip.AddrPort, serverName string) (TLSConnectFuture, error) {
	return t.connectTLS(addr, serverName, 0)
}

// ConnectTLSWithTimeout is ConnectTLS bounded by d, which covers both the
// TCP connect and the TLS handshake: past it, Await reports an error
// satisfying errors.Is(err, os.ErrDeadlineExceeded) and the connection is
// closed. d <= 0 means no bound but Config.TLSHandshakeTimeout's on the
// handshake.
func (t TaskCtx) ConnectTLSWithTimeout(addr netip.AddrPort, serverName string, d time.Duration) (TLSConnectFuture, error) {
	return t.connectTLS(addr, serverName, d)
}

func (t TaskCtx) connectTLS(addr netip.AddrPort, serverName string, d time.Duration) (TLSConnectFuture, error) {
	var start time.Time
	if d > 0 {
		start = time.Now()
	}
	dial, err := t.dialTCP(addr, d)
	if err != nil {
		return TLSConnectFuture{}, err
	}
	if serverName == "" {
		serverName = addr.Addr().Unmap().WithZone("").String()
	}
	f := TLSConnectFuture{w: t.w, dial: dial, serverName: serverName}
	if d > 0 {
		f.deadline = start.Add(d)
	}
	return f, nil
}

// Await suspends the calling task until the connection is established
// and its TLS handshake has completed, and returns the connection. On
// failure the connection is closed and the error says which step failed:
// Connect's errors for the TCP connect, a *TLSHandshakeError for the
// handshake (a certificate the client refused: errors.As(err,
// new(*tls.CertificateVerificationError)); the timeout: errors.Is(err,
// os.ErrDeadlineExceeded)). Only the task that called ConnectTLS may await
// it, once.
func (f TLSConnectFuture) Await() (ConnCtx, error) {
	if f.w == nil {
		return ConnCtx{}, ErrStale
	}
	c, err := f.dial.await()
	if err != nil {
		return ConnCtx{}, err
	}
	if err := c.clientHandshake(f.clientConfig(), f.deadline); err != nil {
		c.Close()
		return ConnCtx{}, err
	}
	return c, nil
}

// clientConfig is Config.TLSClient for this connection: a clone, with the
// server name set.
func (f TLSConnectFuture) clientConfig() *tls.Config {
	var cfg *tls.Config
	if tmpl := f.w.cfg.TLSClient; tmpl != nil {
		cfg = tmpl.Clone()
	} else {
		cfg = &tls.Config{}
	}
	cfg.ServerName = f.serverName
	return cfg
}

// clientHandshake makes the connection, which the calling task owns, a
// TLS client and runs its handshake (deadline zero:
// Config.TLSHandshakeTimeout). The connection stays open on failure.
func (c ConnCtx) clientHandshake(cfg *tls.Config, deadline time.Time) error {
	cn, err := c.own("TLS handshake")
	if err != nil {
		return err
	}
	if cn.task == nil || cn.task != cn.w.cur {
		return errNotOwnerTLS
	}
	if cn.tls != nil {
		return errAlreadyTLS
	}
	if err := cn.sendable(); err != nil {
		return err
	}
	return cn.startTLSClient(cfg).handshake(deadline)
}

var (
	errNotOwnerTLS = errors.New("ringline: a TLS handshake must run in the task that owns the connection")
	errAlreadyTLS  = errors.New("ringline: the connection already runs TLS")
)

// tlsTCPDial is the TCP connect under a ConnectTLS.
type tlsTCPDial struct{ f ConnectFuture }

func (t TaskCtx) dialTCP(addr netip.AddrPort, d time.Duration) (tlsTCPDial, error) {
	var f ConnectFuture
	var err error
	if d > 0 {
		f, err = t.ConnectWithTimeout(addr, d)
	} else {
		f, err = t.Connect(addr)
	}
	return tlsTCPDial{f: f}, err
}

func (d tlsTCPDial) await() (ConnCtx, error) { return d.f.Await() }

// ConnectTLS is TaskCtx.ConnectTLS for the calling task (c.Task().ConnectTLS).
func (c ConnCtx) ConnectTLS(addr netip.AddrPort, serverName string) (TLSConnectFuture, error) {
	return c.Task().ConnectTLS(addr, serverName)
}

// ConnectTLSWithTimeout is TaskCtx.ConnectTLSWithTimeout for the calling
// task.
func (c ConnCtx) ConnectTLSWithTimeout(addr netip.AddrPort, serverName string, d time.Duration) (TLSConnectFuture, error) {
	return c.Task().ConnectTLSWithTimeout(addr, serverName, d)
}
