package ringline

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// TLS with crypto/tls, on both backends, with no goroutine per connection.
//
// A tls.Conn runs over tlsConn, an internal net.Conn ("the raw view") whose
// Read hands crypto/tls the ciphertext the kernel delivered and whose Write
// copies sealed records into the send pool. The rest of ringline sees only
// plaintext: received records are decrypted into the connection's
// accumulator (or its recv sink), so WithData, WithBytes, TryWithData,
// RecvReady, Readable and the sink work unchanged, and SendNowait and Send
// encrypt through tls.Conn.Write.
//
// Where the work happens:
//   - The handshake runs inside the connection's task (server: before
//     OnAccept; client: in TLSConnectFuture.Await). The raw view's Read
//     suspends that task until ciphertext arrives; the read deadline is
//     the handshake timeout.
//   - After the handshake, records are decrypted eagerly on the worker
//     loop as each receive completes (onRecv), never in a task: the raw
//     view's Read then never suspends. When the buffered ciphertext holds
//     no complete record it returns a temporary net.Error, which crypto/tls
//     passes up without marking the connection broken, keeping the partial
//     record in its own buffer for the next receive.
//
// HAZARD, the reason for that split: crypto/tls.Conn holds sync.Mutexes
// (handshakeMutex and in during a handshake, in during Read, out during
// Write) across its calls into the raw view. A task suspended inside one of
// them, and then any other code of the same worker calling into the same
// tls.Conn, would block the worker's only thread on that mutex for ever.
// So:
//   - the raw view's Write never suspends: it only copies into the send
//     pool, and backpressure happens outside tls.Conn (Send's future is
//     awaited after tls.Conn.Write returned);
//   - the raw view's Read suspends only during the handshake, only in the
//     task running it (hsTask), and the handshake completes before the
//     connection is visible to any other task. Until then every path into
//     tls.Conn refuses: sends return ErrTLSHandshakePending (a send by
//     ConnToken can name the connection early), TLSInfo reports false,
//     Close only wakes the handshaking task, and received ciphertext is
//     buffered (in), not decrypted;
//   - post-handshake messages (TLS 1.3 KeyUpdate, NewSessionTicket) are
//     handled inside the loop's tls.Conn.Read and may write: fine with a
//     Write that does not suspend. SendNowait inside a parse closure
//     (tls.Conn.Write) does not suspend either.
//
// Copies: ciphertext arrives in provided buffers; crypto/tls copies it into
// its record buffer (the raw view's Read), decrypts in place and copies the
// plaintext into the accumulator (tls.Conn.Read). Sending, crypto/tls seals
// each record into its own pooled buffer and hands it to the raw view's
// Write, which copies it into the send pool: one copy more than a
// plaintext SendNowait, because crypto/tls has no API to seal into memory
// it does not own.
//
// Pool exhaustion: tls.Conn.Write marks the session broken for good when
// the underlying Write fails half-way through a write (the records sealed
// so far have consumed sequence numbers). So a send first checks that the
// pool and the connection's MaxSendQueue have room for every record the
// write can produce (sealedBound) and refuses the whole send, with
// ErrSendPoolExhausted or ErrSendQueueFull and the session untouched, like
// a plaintext send. If tls.Conn.Write fails anyway, the connection fails
// (Err wraps the cause) and is closed: its stream cannot continue.

var (
	// ErrTLSTruncated is what Err reports for a TLS connection whose peer
	// closed the TCP connection (FIN) without sending close_notify first:
	// the stream may have been cut short by an attacker or a crash. A
	// clean TLS close (close_notify) reports nil. errors.Is(err,
	// io.ErrUnexpectedEOF) holds. Receives return 0 as after any EOF, and
	// the connection can still send (the peer may only have half-closed).
	ErrTLSTruncated error = tlsTruncatedError{}
	// ErrTLSHandshakePending is returned by sends on a TLS connection
	// whose handshake has not completed. Only a send by ConnToken
	// (Runtime.Send) can meet it: the handshake completes before OnAccept
	// or TLSConnectFuture.Await returns the connection.
	ErrTLSHandshakePending = errors.New("ringline: TLS handshake not complete")
)

type tlsTruncatedError struct{}

func (tlsTruncatedError) Error() string {
	return "ringline: TLS peer closed the connection without close_notify (truncated)"
}
func (tlsTruncatedError) Is(target error) bool { return target == io.ErrUnexpectedEOF }

// TLSHandshakeError is a failed TLS handshake, as TLSConnectFuture.Await
// reports it (a server's failed handshakes are counted and closed, not
// reported to a handler). Err is crypto/tls's error (a
// *tls.CertificateVerificationError for a certificate the client refused,
// a tls.AlertError the peer sent, ...) or a timeout satisfying
// errors.Is(err, os.ErrDeadlineExceeded).
type TLSHandshakeError struct {
	Err error
}

func (e *TLSHandshakeError) Error() string { return "ringline: TLS handshake: " + e.Err.Error() }
func (e *TLSHandshakeError) Unwrap() error { return e.Err }

// errTLSHandshakeTimeout ends a handshake that ran past its deadline.
var errTLSHandshakeTimeout error = &net.OpError{Op: "tls handshake", Net: "tcp", Err: os.ErrDeadlineExceeded}

// tlsWouldBlock is the raw view's answer, after the handshake, when no
// ciphertext is buffered: a temporary net.Error, which crypto/tls returns
// without recording it as the connection's failure.
type tlsWouldBlock struct{}

func (tlsWouldBlock) Error() string   { return "ringline: no ciphertext buffered" }
func (tlsWouldBlock) Timeout() bool   { return false }
func (tlsWouldBlock) Temporary() bool { return true }

var errTLSWouldBlock error = tlsWouldBlock{}

// tlsConn is a connection's TLS session and the raw view crypto/tls runs
// over (it implements net.Conn). Only the worker's goroutine touches it.
type tlsConn struct {
	cn  *conn
	gen uint32 // the connection's generation: a raw view that outlived it refuses
	tc  *tls.Conn

	// hsTask is the task running the handshake (nil otherwise): the only
	// one the raw view's Read may suspend.
	hsTask     *task
	hsDone     bool // handshake completed: decrypt and send
	failed     bool // handshake failed: drop what arrives
	hsTimedOut bool

	// in holds ciphertext received during the handshake, in[inOff:]
	// unread; feed is the receive being decrypted after it.
	in    []byte
	inOff int
	feed  []byte

	// Record framing of the received stream, to know without asking
	// crypto/tls whether it holds a complete record (see decrypt):
	// complete counts records whose last byte has arrived, consumed is a
	// lower bound of those crypto/tls has taken (exact once synced).
	hdr                [5]byte
	hdrN, recLeft      int
	complete, consumed uint64
	synced             bool
	inputLeft          bool // the last Read filled dst: crypto/tls may hold more plaintext

	readDone   bool // no more plaintext: close_notify, a TLS error or EOF
	peerClosed bool // the peer's close_notify came
	rawEOF     bool // the TCP stream ended (FIN or error)
	truncated  bool // FIN without close_notify (Err: ErrTLSTruncated)
	notifySent bool // our close_notify is queued
	// awaitPeer: closed by this side, close_notify sent; the socket stays
	// open until the peer's close_notify or FIN, or closeT.
	awaitPeer bool
	closeT    timerNode

	dynOff bool // Config.DynamicRecordSizingDisabled: full-size records from the start
}

// newTLS attaches a TLS session to cn (server or client side).
func newTLS(cn *conn, cfg *tls.Config, server bool) *tlsConn {
	t := &tlsConn{cn: cn, gen: cn.gen, dynOff: cfg.DynamicRecordSizingDisabled}
	t.closeT = timerNode{kind: tmTLSClose, conn: cn}
	if server {
		t.tc = tls.Server(t, cfg)
	} else {
		t.tc = tls.Client(t, cfg)
	}
	cn.tls = t
	return t
}

// newTLSServer makes an accepted connection a TLS server; its task runs
// the handshake before OnAccept.
func (w *worker) newTLSServer(cn *conn) { newTLS(cn, w.cfg.TLS, true) }

// startTLSClient makes an established connection a TLS client (ConnectTLS);
// the caller then runs handshake in the connection's owning task.
func (cn *conn) startTLSClient(cfg *tls.Config) *tlsConn {
	t := newTLS(cn, cfg, false)
	// Bytes the peer sent before the handshake began are its first
	// handshake bytes (or garbage the handshake will refuse).
	cn.spillLent()
	if k := len(cn.acc) - cn.accOff; k > 0 {
		t.in = append(t.in, cn.acc[cn.accOff:]...)
		cn.consumeAcc(k)
	}
	return t
}

// handshake runs the TLS handshake in the calling task, which must own the
// connection, until it completes, fails or deadline passes (zero: the
// Config.TLSHandshakeTimeout from now). On failure it is counted and
// logged at debug level, and the connection is left for the caller to
// close.
func (t *tlsConn) handshake(deadline time.Time) error {
	cn := t.cn
	w := cn.w
	if deadline.IsZero() {
		deadline = time.Now().Add(w.cfg.TLSHandshakeTimeout)
	}
	t.hsTask = w.cur
	tm := cn.timers()
	cn.setDeadline(&tm.rdDeadline, &tm.rdT, tmReadDeadline, deadline)
	err := t.tc.Handshake() // no context: crypto/tls starts no goroutine
	t.hsTask = nil
	tm.rdDeadline, cn.rdTimedOut = 0, false
	w.timers.remove(&tm.rdT)
	if err != nil {
		t.failed = true
		t.in, t.inOff = nil, 0
		w.st.tlsHandshakeErrors++
		if t.hsTimedOut {
			w.st.tlsHandshakeTimeouts++
			err = fmt.Errorf("no handshake within %v: %w", w.cfg.TLSHandshakeTimeout, errTLSHandshakeTimeout)
		}
		w.tlsHandshakeFailed(cn, err)
		return &TLSHandshakeError{Err: err}
	}
	t.hsDone = true
	w.st.tlsHandshakes++
	// Ciphertext that came behind the handshake (a client's first request
	// rides with its Finished) is in `in` and in crypto/tls's own buffer:
	// no receive may come for it, so decrypt it now.
	t.feed = t.in[t.inOff:]
	t.in, t.inOff = nil, 0
	t.decrypt()
	if t.rawEOF && !t.readDone {
		t.readDone = true
		if !cn.closeWanted {
			t.truncated = true
		}
	}
	return nil
}

// tlsHandshakeFailed logs a failed handshake at debug level only: a port
// scanner or a plaintext client must not flood the log (the counter says
// how many). Out of line: its frame stays off the task stacks.
//
//go:noinline
func (w *worker) tlsHandshakeFailed(cn *conn, err error) {
	if !w.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	peer := ""
	if a, ok := (ConnCtx{w: w, idx: cn.idx, gen: cn.gen}).PeerAddr(); ok {
		peer = a.String()
	}
	w.log.Debug("ringline: TLS handshake failed; connection closed", "worker", w.id, "conn", cn.idx, "peer", peer, "err", err)
}

// recv takes ciphertext the kernel delivered in a provided buffer (which
// goes back to the ring when recv returns).
func (t *tlsConn) recv(data []byte) {
	cn := t.cn
	t.frame(data)
	switch {
	case t.hsDone:
		t.feed = data
		t.decrypt()
	case t.failed:
		// The handshake failed: what follows is dropped.
	default:
		if t.inOff == len(t.in) {
			t.in, t.inOff = t.in[:0], 0
		}
		t.in = append(t.in, data...)
		cn.task.wake(waitRecv)
		if len(t.in)-t.inOff >= cn.w.cfg.MaxRecvAccumulator {
			cn.pauseRecv() // the handshake's reads resume it
		}
	}
}

// tlsReadChunk is the accumulator room each decrypt offers: a record's
// plaintext beyond it stays in crypto/tls's buffer for the next call.
const tlsReadChunk = 4096

// frame follows the record framing (5-byte headers carrying the length)
// over newly received ciphertext.
func (t *tlsConn) frame(b []byte) {
	for len(b) > 0 {
		if t.recLeft > 0 {
			k := min(t.recLeft, len(b))
			t.recLeft -= k
			b = b[k:]
			if t.recLeft == 0 {
				t.complete++
			}
			continue
		}
		k := copy(t.hdr[t.hdrN:], b)
		t.hdrN += k
		b = b[k:]
		if t.hdrN == len(t.hdr) {
			t.hdrN = 0
			if t.recLeft = int(t.hdr[3])<<8 | int(t.hdr[4]); t.recLeft == 0 {
				t.complete++
			}
		}
	}
}

// decrypt runs tls.Conn.Read over the ciphertext in feed (and any partial
// record crypto/tls kept) until no complete record is left, putting the
// plaintext in the sink or the accumulator, and wakes the task. On the
// worker loop (or the task that just finished the handshake); the raw
// view's Read does not suspend here.
//
// Each time crypto/tls has to read from the raw view it allocates (a
// small reader, &atLeastReader, escapes), so decrypt avoids asking for a
// record that is not there: it stops once every complete record received
// has been taken (complete == consumed), the last Read drained
// crypto/tls's plaintext and the receive is absorbed. consumed counts one
// record per Read that started with no plaintext pending (such a Read
// takes at least one record), a lower bound, so stopping is never early;
// a Read that finds nothing (tlsWouldBlock) makes it exact again. That
// leaves about one allocation per receive completion (crypto/tls taking
// in the new ciphertext), as many as Go's net + crypto/tls makes per
// read(2).
func (t *tlsConn) decrypt() {
	cn := t.cn
	if t.readDone {
		t.feed = nil
		return
	}
	woke := false
	for {
		if t.synced && !t.inputLeft && len(t.feed) == 0 && t.consumed == t.complete {
			break
		}
		var dst []byte
		toSink := false
		switch {
		case cn.closeWanted:
			// Closing: read on only to see the peer's close_notify; the
			// plaintext is dropped (written past len(acc), never kept).
			dst = cn.accSpace(tlsReadChunk)
		case cn.sink != nil && cn.sinkN < len(cn.sink) && cn.buffered() == 0:
			dst, toSink = cn.sink[cn.sinkN:], true
		default:
			dst = cn.accSpace(tlsReadChunk)
		}
		n, err := t.tc.Read(dst)
		if n > 0 {
			if !t.inputLeft {
				t.consumed++
			}
			t.inputLeft = n == len(dst)
			if !cn.closeWanted {
				if toSink {
					cn.sinkN += n
				} else {
					cn.acc = cn.acc[:len(cn.acc)+n]
				}
				woke = true
			}
		}
		if err == nil {
			continue
		}
		if err == errTLSWouldBlock {
			// Nothing complete is left anywhere: the count is exact.
			t.consumed, t.synced, t.inputLeft = t.complete, true, false
			break
		}
		t.readDone = true
		woke = true
		if err == io.EOF {
			// The raw view never reports EOF after the handshake, so this
			// is the peer's close_notify.
			t.peerClosed = true
		} else if !cn.closeWanted {
			cn.fail(fmt.Errorf("ringline: TLS: %w", err))
		}
		cn.eof = true
		t.releaseClose()
		break
	}
	t.feed = nil
	if woke {
		cn.task.wake(waitRecv)
	}
	if cn.buffered() >= cn.w.cfg.MaxRecvAccumulator {
		cn.pauseRecv()
	}
}

// tlsRecordOverhead bounds what sealing adds to one record: the header
// (5), an explicit nonce or CBC IV (at most 16), a MAC or AEAD tag (at
// most 32, HMAC-SHA256) and CBC padding (at most 16; TLS 1.3 adds one
// content-type byte instead).
const tlsRecordOverhead = 5 + 16 + 32 + 16

// sealedBound is the most bytes tls.Conn.Write(b) can hand the raw view
// for n bytes of plaintext. crypto/tls's dynamic record sizing starts a
// connection with records of about one TCP segment (more than 1100 bytes
// of payload for every suite it supports), growing to 16 KiB; 1024 bounds
// the record count from below whatever its state. Two records more cover
// TLS 1.0's 1/n-1 split. If crypto/tls ever made smaller records than
// this, a send near pool exhaustion would fail the connection (write),
// not corrupt it.
func (t *tlsConn) sealedBound(n int) int {
	per := 1024
	if t.dynOff {
		per = 16 << 10
	}
	return n + (n/per+2)*tlsRecordOverhead
}

// queueSend queues b for the peer: copied into the send pool, or on a TLS
// connection sealed into records that are. Every path that queues bytes
// for the peer must come through here (or through tlsConn.write) so that
// a TLS connection never sends plaintext: a gathered send seals its parts
// as one write, a forwarded receive buffer holds plaintext already copied
// out of the kernel (a TLS connection is never lent one) and is sealed
// like any bytes, and a half-close sends close_notify (tls.Conn.CloseWrite)
// before its FIN.
func (cn *conn) queueSend(b []byte) error {
	if cn.tls != nil {
		return cn.tls.write(b)
	}
	return cn.enqueue(b)
}

// write seals b into records queued on the connection, all or nothing,
// counting a refusal like enqueue.
func (t *tlsConn) write(b []byte) error {
	err := t.tryWrite(b)
	switch err {
	case ErrSendPoolExhausted:
		t.cn.w.st.poolExhausted++
	case ErrSendQueueFull:
		t.cn.w.st.sendQueueFull++
	}
	return err
}

// tryWrite is write without counting a refusal (SendWait retries).
func (t *tlsConn) tryWrite(b []byte) error {
	if !t.hsDone {
		return ErrTLSHandshakePending
	}
	if err := t.room(t.sealedBound(len(b))); err != nil {
		return err
	}
	_, err := t.tc.Write(b)
	return t.sealed(err)
}

// room checks that n bytes of records fit the pool and MaxSendQueue.
func (t *tlsConn) room(n int) error {
	if !t.cn.poolRoom(n) {
		return ErrSendPoolExhausted
	}
	return t.cn.queueRoom(n)
}

// sealed handles tls.Conn.Write's outcome. The room was there for every
// record, so an error means crypto/tls refused (its session is broken) or
// the bound was wrong: some records may be queued, the rest never will
// be, and the session cannot continue. The connection fails rather than
// stay silently broken.
func (t *tlsConn) sealed(err error) error {
	if err == nil {
		return nil
	}
	err = fmt.Errorf("ringline: TLS write failed; connection closed: %w", err)
	t.cn.fail(err)
	t.cn.requestClose()
	return err
}

// trySend is tryEnqueue for any connection (SendWait): sealed on TLS.
func (cn *conn) trySend(b []byte) error {
	if cn.tls != nil {
		return cn.tls.tryWrite(b)
	}
	return cn.tryEnqueue(b)
}

// wireLen is what n bytes of plaintext may take in the send pool: the
// records' bound on a TLS connection.
func (cn *conn) wireLen(n int) int {
	if cn.tls != nil {
		return cn.tls.sealedBound(n)
	}
	return n
}

// tlsGatherMax is the most plaintext SendParts on a TLS connection gathers
// before sealing it: one full record.
const tlsGatherMax = 16 << 10

// submitTLS seals a SendParts batch on a TLS connection, all or nothing:
// its parts (copies already in pool slots, references in the caller's
// memory) are gathered into records of up to 16 KiB (a part that large is
// sealed on its own) and sealed as one send. The slots the copies took
// go back at once, and every Ref's release is due at once (the kernel
// never reads the caller's memory: what it sends are sealed copies); the
// releases run from the loop like any other.
func (sb *SendBuilder) submitTLS(cn *conn) (SendFuture, error) {
	t := cn.tls
	w := cn.w
	if !t.hsDone {
		return SendFuture{}, sb.refuse(ErrTLSHandshakePending)
	}
	// At most one tls.Conn.Write per part and one more, each adding two
	// records to sealedBound's count.
	bound := t.sealedBound(sb.bytes) + 2*(len(sb.segs)+1)*tlsRecordOverhead
	if err := t.room(bound); err != nil {
		if err == ErrSendPoolExhausted {
			w.st.poolExhausted++
		} else {
			w.st.sendQueueFull++
		}
		return SendFuture{}, sb.refuse(err)
	}
	buf := w.tlsGather[:0]
	var err error
	seal := func(p []byte) {
		if err == nil && len(p) > 0 {
			_, err = t.tc.Write(p)
		}
	}
	for _, s := range sb.segs {
		var p []byte
		if s.kind == segPool {
			p = w.pool.slot(s.id)[s.off:s.end]
		} else {
			p = sb.refs[s.id].b[s.off:s.end]
		}
		if len(buf)+len(p) > tlsGatherMax {
			seal(buf)
			buf = buf[:0]
		}
		if len(p) >= tlsGatherMax {
			seal(p)
			continue
		}
		buf = append(buf, p...)
	}
	seal(buf)
	clear(buf)
	w.tlsGather = buf[:0]
	if err = t.sealed(err); err != nil {
		return SendFuture{}, sb.refuse(err)
	}
	for _, s := range sb.segs {
		if s.kind == segPool {
			cn.putSlot(s.id) // the connection's copy tail may share it
		}
	}
	for i := range sb.refs {
		if f := sb.refs[i].release; f != nil {
			w.relq = append(w.relq, f)
			sb.refs[i].release = nil
		}
	}
	f := SendFuture{c: sb.c, mark: cn.queued, n: sb.bytes}
	sb.finish()
	return f, nil
}

// closeWrite sends close_notify (ShutdownWrite): after it this side sends
// nothing more, and the FIN follows it.
func (t *tlsConn) closeWrite() {
	if t.hsDone && !t.failed && !t.notifySent && t.cn.err == nil {
		t.notifySent = true
		_ = t.tc.CloseWrite()
	}
}

// closing runs when the connection is asked to close (requestClose, before
// it is marked closing): close_notify is queued behind the bytes already
// queued, and unless the peer is already done the socket's close waits
// (awaitPeer) for its close_notify or FIN, at most Config.TLSCloseTimeout.
func (t *tlsConn) closing() {
	cn := t.cn
	if t.hsTask != nil {
		t.hsTask.wake(waitRecv) // the handshake's read gives up (closeWanted)
		return
	}
	if !t.hsDone || t.failed || cn.err != nil || cn.state != connOpen {
		return
	}
	if !t.notifySent {
		t.notifySent = true
		// Queued like any record (the raw view's Write); if the pool has
		// no room even for this alert the peer sees a truncation.
		_ = t.tc.CloseWrite()
	}
	// Nothing to wait for when the peer is done, or when this side no
	// longer receives (the runtime is shutting down: receives stopped).
	if t.readDone || t.rawEOF || cn.eof || cn.w.stopped || cn.w.cfg.TLSCloseTimeout < 0 {
		return
	}
	t.awaitPeer = true
	if cn.recvPaused {
		// The accumulator was full; from now on what arrives is dropped,
		// so receive again to see the peer's answer.
		cn.recvPaused = false
		cn.armRecv()
	}
	cn.w.timers.set(&t.closeT, cn.w.now()+int64(cn.w.cfg.TLSCloseTimeout))
}

// releaseClose ends the wait for the peer: the close proceeds once the
// send queue has drained.
func (t *tlsConn) releaseClose() {
	if !t.awaitPeer {
		return
	}
	t.awaitPeer = false
	cn := t.cn
	cn.w.timers.remove(&t.closeT)
	if cn.closeWanted && cn.closeReady() && cn.state == connOpen {
		cn.startClose()
	}
}

// tlsAwaitsPeer reports whether the connection's close waits for the TLS
// peer (its receives still count, its socket stays open).
// tlsAccepted runs an accepted connection's server handshake in its task,
// before the handler, and reports whether it succeeded.
//
//go:noinline
func (cn *conn) tlsAccepted() bool { return cn.tls.handshake(time.Time{}) == nil }

func (cn *conn) tlsAwaitsPeer() bool { return cn.tls != nil && cn.tls.awaitPeer }

// tlsEOF runs when the TCP stream ends (FIN, or a receive error): without
// the peer's close_notify that is a truncation, unless this side was
// closing anyway.
func (cn *conn) tlsEOF() {
	t := cn.tls
	if t == nil {
		return
	}
	t.rawEOF = true
	if t.hsDone && !t.readDone {
		t.readDone = true
		if !cn.closeWanted {
			t.truncated = true
		}
	}
	t.releaseClose()
}

// tlsCloseExpired is the closeT timer: the peer did not answer in time.
func (cn *conn) tlsCloseExpired() {
	if cn.tls != nil {
		cn.tls.releaseClose()
	}
}

// release drops the session when the connection's slot is freed.
func (t *tlsConn) release() {
	t.cn.w.timers.remove(&t.closeT)
	t.in, t.feed = nil, nil
}

// live reports whether the raw view still belongs to its connection (an
// error crypto/tls returned may keep the view, and its slot be reused).
func (t *tlsConn) live() bool {
	return t.cn.gen == t.gen && t.cn.state != connFree
}

// Read is the raw view's Read, called only by crypto/tls: it hands over
// buffered ciphertext; with none, it suspends the handshaking task (during
// the handshake) or returns tlsWouldBlock (after it).
func (t *tlsConn) Read(p []byte) (int, error) {
	for {
		if !t.live() {
			return 0, net.ErrClosed
		}
		if len(t.feed) > 0 {
			n := copy(p, t.feed)
			t.feed = t.feed[n:]
			return n, nil
		}
		if t.inOff < len(t.in) {
			n := copy(p, t.in[t.inOff:])
			t.inOff += n
			return n, nil
		}
		cn := t.cn
		if t.hsTask == nil || cn.w.cur != t.hsTask {
			return 0, errTLSWouldBlock
		}
		switch {
		case cn.err != nil:
			return 0, cn.err
		case cn.closeWanted || cn.state != connOpen:
			return 0, net.ErrClosed
		case cn.eof:
			return 0, io.EOF
		case cn.readExpired():
			t.hsTimedOut = true
			return 0, errTLSHandshakeTimeout
		}
		cn.resumeRecv()
		t.hsTask.suspend(waitRecv)
	}
}

// Write is the raw view's Write: it copies one sealed record (or a
// handshake flight, an alert) into the send pool. It never suspends (see
// the hazard above) and never checks MaxSendQueue: application data was
// checked for all its records before tls.Conn.Write, and the rest are
// small control records.
func (t *tlsConn) Write(p []byte) (int, error) {
	if !t.live() {
		return 0, net.ErrClosed
	}
	cn := t.cn
	if cn.err != nil {
		return 0, cn.err
	}
	if cn.state != connOpen {
		return 0, net.ErrClosed
	}
	if !cn.poolRoom(len(p)) {
		cn.w.st.poolExhausted++
		return 0, ErrSendPoolExhausted
	}
	cn.appendQueue(p)
	return len(p), nil
}

// Close is never called by ringline (the connection closes through
// ConnCtx.Close; close_notify through tls.Conn.CloseWrite).
func (t *tlsConn) Close() error { return nil }

// LocalAddr and RemoteAddr serve crypto/tls's callbacks
// (ClientHelloInfo.Conn).
func (t *tlsConn) LocalAddr() net.Addr {
	if !t.live() || t.cn.fd < 0 {
		return nil
	}
	return sockAddr(int(t.cn.fd), false)
}

func (t *tlsConn) RemoteAddr() net.Addr {
	if !t.live() || t.cn.fd < 0 {
		return nil
	}
	return sockAddr(int(t.cn.fd), true)
}

// The deadlines crypto/tls sets on the raw view (around close_notify) are
// meaningless for a Write that never waits.
func (t *tlsConn) SetDeadline(time.Time) error      { return nil }
func (t *tlsConn) SetReadDeadline(time.Time) error  { return nil }
func (t *tlsConn) SetWriteDeadline(time.Time) error { return nil }

// sockAddr is the socket's peer (getpeername) or local (getsockname)
// address, nil if the kernel has none.
func sockAddr(fd int, peer bool) net.Addr {
	var sa unix.Sockaddr
	var err error
	if peer {
		sa, err = unix.Getpeername(fd)
	} else {
		sa, err = unix.Getsockname(fd)
	}
	if err != nil {
		return nil
	}
	return sockaddrToAddr(sa)
}

// TLSInfo describes a connection's TLS session.
type TLSInfo struct {
	// Version is the protocol version (tls.VersionTLS12,
	// tls.VersionTLS13); tls.VersionName names it.
	Version uint16
	// CipherSuite is the negotiated suite (tls.CipherSuiteName names it).
	CipherSuite uint16
	// NegotiatedProtocol is the ALPN protocol agreed, "" for none.
	NegotiatedProtocol string
	// ServerName is the SNI name: the one the client asked for (server
	// side) or the one ConnectTLS verified (client side).
	ServerName string
	// PeerCertificates are the certificates the peer presented, leaf
	// first: the server's chain on a client connection, the client's (if
	// it sent one) on a server connection.
	PeerCertificates []*x509.Certificate
	// VerifiedChains are the chains verification built, when it ran.
	VerifiedChains [][]*x509.Certificate
	// DidResume reports a resumed session (no full handshake).
	DidResume bool
}

// TLSInfo reports the connection's TLS session: false for a plaintext
// connection, and while a handshake is still running (the handler never
// sees that: OnAccept and TLSConnectFuture.Await return after it). It
// allocates (crypto/tls copies its state); call it once per connection,
// not per message.
func (c ConnCtx) TLSInfo() (TLSInfo, bool) {
	cn, err := c.own("TLSInfo")
	if err != nil || cn.tls == nil || !cn.tls.hsDone {
		return TLSInfo{}, false
	}
	// Safe: the handshake is over, so no suspended task holds the
	// tls.Conn's handshake mutex that ConnectionState takes.
	st := cn.tls.tc.ConnectionState()
	return TLSInfo{Version: st.Version, CipherSuite: st.CipherSuite, NegotiatedProtocol: st.NegotiatedProtocol,
		ServerName: st.ServerName, PeerCertificates: st.PeerCertificates, VerifiedChains: st.VerifiedChains,
		DidResume: st.DidResume}, true
}
