package ringline

import (
	"errors"
	"io"
	"net"
	"time"
)

// NetConn returns a net.Conn view of the connection, for libraries written
// against net.Conn, io.Reader or io.Writer (bufio, net/textproto,
// net/http.ReadRequest, encoding/binary, encoding/json's Decoder...), run
// inside the connection's task. On a TLS connection it carries plaintext,
// like every receive and send method.
//
// It is not a goroutine-safe net.Conn: like every ConnCtx method, its
// methods work only on the connection's worker (elsewhere they return
// ErrNotInWorker), and they suspend the calling task instead of blocking
// a thread:
//   - Read is reserved to the task that owns the connection (other tasks
//     get an error). It suspends the task until bytes arrive (through
//     WithData), copies up to len(p) of them into p and returns; at the
//     end of the stream it returns io.EOF after a clean close (FIN, or a
//     TLS close_notify), ErrTLSTruncated after a TLS peer's FIN without
//     close_notify, net.ErrClosed once the connection was closed by this
//     side, or the connection's failure (Err).
//   - Write queues p (copied into the send pool, or sealed into TLS
//     records) and returns once it is queued and the connection has at
//     most 64 KiB still waiting for the kernel: past that it awaits the
//     send, which is the backpressure a peer that does not read exerts. A
//     write larger than 256 KiB (or a quarter of the send pool or of
//     Config.MaxSendQueue) is queued in pieces; concurrent Writes by
//     different tasks may interleave at piece boundaries only. When the
//     worker's send pool is held by other connections, a piece waits for
//     room in SendWait's first-come-first-served line. Any task of the
//     worker may write.
//   - SetDeadline, SetReadDeadline and SetWriteDeadline are the
//     connection's deadlines: a Read or Write that waits past one returns
//     an error satisfying errors.Is(err, os.ErrDeadlineExceeded) whose
//     Timeout() is true, and the connection stays usable. A Write whose
//     deadline has passed queues nothing; one that times out returns how
//     many bytes of p it had queued, which will still go out: all of p
//     when the last piece was queued and it was awaiting the kernel, the
//     pieces before when it was waiting for room for the next.
//   - Close is ConnCtx.Close (queued bytes drain first).
//
// Neither Read nor Write may be called inside a parse closure (they may
// suspend, which panics there).
//
// What it costs compared with WithData: Read copies every byte once more
// (from the kernel buffer or the accumulator into p; WithData can show the
// kernel's buffer itself), and a consumer such as bufio.Reader then holds
// its own buffer per connection. Write is Send plus, only when more than
// 64 KiB are queued, a wait: neither allocates. NetConn itself allocates
// the small view once; keep it for the connection's life.
func (c ConnCtx) NetConn() net.Conn { return &netConn{c: c} }

// viewHighWater is how many queued bytes a Write of the view leaves behind
// without waiting for the kernel.
const viewHighWater = 64 << 10

// viewMaxPiece bounds what one Write queues at a time.
const viewMaxPiece = 256 << 10

type netConn struct {
	c             ConnCtx
	local, remote net.Addr
}

// errViewNotOwner is Read's answer for a task that does not own the
// connection.
var errViewNotOwner = errors.New("ringline: net.Conn view: Read must be called from the task that owns the connection")

func (v *netConn) Read(p []byte) (int, error) {
	cn, err := v.c.own("NetConn.Read")
	if err != nil {
		return 0, viewErr(err)
	}
	if cn.task == nil || cn.task != cn.w.cur {
		return 0, errViewNotOwner
	}
	if len(p) == 0 {
		return 0, nil
	}
	n := v.c.WithData(func(b []byte) ParseResult { return Consumed(copy(p, b)) })
	if n > 0 {
		return n, nil
	}
	return 0, v.readEnd()
}

// readEnd says why a receive returned nothing.
func (v *netConn) readEnd() error {
	cn := v.c.get()
	switch {
	case cn == nil:
		return net.ErrClosed
	case cn.err != nil:
		return viewErr(cn.err)
	case cn.rdTimedOut:
		return errReadDeadline
	case cn.tls != nil && cn.tls.truncated:
		return ErrTLSTruncated
	case cn.closeWanted || cn.state != connOpen:
		return net.ErrClosed
	}
	return io.EOF
}

// viewErr maps ringline's closed-connection errors to net.ErrClosed, which
// net.Conn users test for.
func viewErr(err error) error {
	if errors.Is(err, ErrClosed) {
		return net.ErrClosed
	}
	return err
}

func (v *netConn) Write(p []byte) (int, error) {
	cn, err := v.c.own("NetConn.Write")
	if err != nil {
		return 0, viewErr(err)
	}
	w := cn.w
	if w.cur == nil {
		return 0, ErrNotInTask
	}
	if cn.writeExpired() {
		return 0, errWriteDeadline
	}
	// A piece, with its TLS record overhead, fits an empty queue and a
	// quarter of the pool, so a Write always makes progress.
	piece := max(1, min(viewMaxPiece, w.cfg.SendPoolSlots*w.cfg.SendSlotSize/4, w.cfg.MaxSendQueue/4))
	done := 0
	for done < len(p) {
		if err := cn.sendable(); err != nil {
			return done, viewErr(err)
		}
		b := p[done:]
		if len(b) > piece {
			b = b[:piece]
		}
		switch err := cn.queueSend(b); err {
		case nil:
			done += len(b)
			if err := v.drainTo(cn, viewHighWater); err != nil {
				return done, err
			}
		case ErrSendQueueFull, ErrSendPoolExhausted:
			if cn.queued != cn.sent {
				// Room comes back as this connection's bytes go out.
				if err := v.drainTo(cn, 0); err != nil {
					return done, err
				}
				continue
			}
			// Nothing of ours is queued: other connections hold the
			// pool. Wait in SendWait's first-come-first-served line,
			// woken when the slots are set aside for this piece (or at
			// the write deadline, a close, shutdown).
			if err := v.c.SendWait(b); err != nil {
				return done, viewErr(err)
			}
			done += len(b)
			if err := v.drainTo(cn, viewHighWater); err != nil {
				return done, err
			}
		default:
			return done, viewErr(err)
		}
	}
	return done, nil
}

// drainTo waits until at most hw of the connection's bytes await the
// kernel.
func (v *netConn) drainTo(cn *conn, hw uint64) error {
	if cn.queued-cn.sent <= hw {
		return nil
	}
	f := SendFuture{c: v.c, mark: cn.queued - hw}
	if _, err := f.Await(); err != nil {
		return viewErr(err)
	}
	return nil
}

func (v *netConn) Close() error {
	if _, err := v.c.own("NetConn.Close"); err != nil {
		return viewErr(err)
	}
	v.c.Close()
	return nil
}

func (v *netConn) LocalAddr() net.Addr {
	if v.local == nil {
		if cn, err := v.c.own("NetConn.LocalAddr"); err == nil && cn.fd >= 0 {
			v.local = sockAddr(int(cn.fd), false)
		}
	}
	return v.local
}

func (v *netConn) RemoteAddr() net.Addr {
	if v.remote == nil {
		if cn, err := v.c.own("NetConn.RemoteAddr"); err == nil && cn.fd >= 0 {
			v.remote = sockAddr(int(cn.fd), true)
		}
	}
	return v.remote
}

func (v *netConn) SetDeadline(t time.Time) error      { return viewErr(v.c.SetDeadline(t)) }
func (v *netConn) SetReadDeadline(t time.Time) error  { return viewErr(v.c.SetReadDeadline(t)) }
func (v *netConn) SetWriteDeadline(t time.Time) error { return viewErr(v.c.SetWriteDeadline(t)) }
