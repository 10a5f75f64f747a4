package ringline

// The receive side: data arrives in provided buffers; a buffer is lent to
// the task's closure when nothing is accumulated (zero copy), otherwise its
// bytes are appended to the connection's accumulator and the buffer goes
// straight back to the ring. Buffers that arrive while one is lent wait
// behind it (lentq, up to lentQMax) for the closure to take in turn, so a
// task that consumes whole buffers (an echo, a proxy) reads a burst
// without a copy; a closure that needs bytes across buffers gets them
// joined in the accumulator.

// buffered reports how many unread bytes the connection holds.
func (cn *conn) buffered() int {
	n := len(cn.acc) - cn.accOff
	if cn.lent >= 0 {
		n += int(cn.lentEnd-cn.lentOff) + cn.lentqBytes
	}
	return n
}

// lentQMax bounds the buffers one connection keeps queued behind its lent
// one: a quarter of the ring (at least 8). They go back to the ring (their
// unread bytes to the accumulator) by the end of the task's resume at the
// latest, so the bound only matters within one loop iteration.
func (w *worker) lentQMax() int { return max(8, w.cfg.BufferCount/4) }

// lentBuf is a received buffer waiting behind the lent one.
type lentBuf struct {
	bid uint16
	n   uint32
}

// promoteLent lends the next queued buffer once the lent one is consumed.
func (cn *conn) promoteLent() {
	if cn.lentqHead == len(cn.lentq) {
		return
	}
	// A head index, not a shift: a connection may have lentQMax queued.
	b := cn.lentq[cn.lentqHead]
	cn.lentqHead++
	if cn.lentqHead == len(cn.lentq) {
		cn.lentq, cn.lentqHead = cn.lentq[:0], 0
	}
	cn.lentqBytes -= int(b.n)
	cn.lent, cn.lentOff, cn.lentEnd = int32(b.bid), 0, b.n
}

// dropLent gives every lent buffer back to the ring, unread bytes and all
// (the connection is gone).
func (cn *conn) dropLent() {
	for cn.lent >= 0 {
		cn.w.recycle(uint16(cn.lent))
		cn.lent = -1
		cn.promoteLent()
	}
}

func (cn *conn) lentData() []byte {
	b := cn.w.be.buffer(uint16(cn.lent))
	return b[cn.lentOff:cn.lentEnd:cn.lentEnd]
}

// spillLent copies the unread part of the lent buffers into the
// accumulator, in front of what it holds (bytes that came after them),
// and gives the buffers back to the ring.
func (cn *conn) spillLent() {
	if cn.lent < 0 {
		return
	}
	if cn.accOff < len(cn.acc) {
		cn.prependLent()
		return
	}
	for cn.lent >= 0 {
		if cn.lentOff < cn.lentEnd {
			cn.appendAcc(cn.lentData())
		}
		cn.w.recycle(uint16(cn.lent))
		cn.lent = -1
		cn.promoteLent()
	}
}

// prependLent is spillLent when the accumulator holds bytes that came
// after the lent ones (a burst longer than the lent queue): they move up
// in place when no retained Bytes can point at them and the array has
// room, otherwise into a fresh array.
func (cn *conn) prependLent() {
	lentN := int(cn.lentEnd-cn.lentOff) + cn.lentqBytes
	unread := len(cn.acc) - cn.accOff
	need := lentN + unread
	var na []byte
	if !cn.accShared && cap(cn.acc) >= need {
		na = cn.acc[:need]
		copy(na[lentN:], cn.acc[cn.accOff:]) // overlapping: copy moves
	} else {
		na = make([]byte, need, (need+63)&^63)
		copy(na[lentN:], cn.acc[cn.accOff:])
	}
	k := 0
	for cn.lent >= 0 {
		k += copy(na[k:], cn.lentData())
		cn.w.recycle(uint16(cn.lent))
		cn.lent = -1
		cn.promoteLent()
	}
	cn.acc, cn.accOff, cn.accShared = na, 0, false
}

// appendAcc appends b to the accumulator. Unread bytes are moved to the
// front only when no retained Bytes can point at them; otherwise a fresh
// array is allocated so retained slices stay intact.
func (cn *conn) appendAcc(b []byte) {
	cn.growAcc(len(b))
	cn.acc = append(cn.acc, b...)
}

// accSpace returns the accumulator's free tail, at least n bytes, for a
// producer that writes in place (TLS decrypts into it) and then extends
// acc by what it wrote. Bytes past len(acc) are never visible to a
// retained Bytes, whose capacity is clipped.
func (cn *conn) accSpace(n int) []byte {
	cn.growAcc(n)
	return cn.acc[len(cn.acc):cap(cn.acc)]
}

// growAcc makes room for n more bytes behind the unread ones.
func (cn *conn) growAcc(n int) {
	if cn.accOff > 0 && cn.accOff == len(cn.acc) && !cn.accShared {
		cn.acc = cn.acc[:0]
		cn.accOff = 0
	}
	if len(cn.acc)+n > cap(cn.acc) {
		unread := len(cn.acc) - cn.accOff
		need := unread + n
		if !cn.accShared && cn.accOff > 0 && need <= cap(cn.acc) {
			copy(cn.acc, cn.acc[cn.accOff:])
			cn.acc = cn.acc[:unread]
		} else {
			nc := 2 * cap(cn.acc)
			if nc < need {
				nc = need
			}
			if nc < 4096 && !cn.accShared && cap(cn.acc) > 0 {
				nc = 4096
			}
			// A fresh array after a retained one (or the first) is sized
			// to the data, rounded to 64: a small message retained from
			// WithBytes then pins a small array, not 4 KiB. The copy is
			// the one WithBytes makes anyway.
			nc = (nc + 63) &^ 63
			na := make([]byte, unread, nc)
			copy(na, cn.acc[cn.accOff:])
			cn.acc = na
			cn.accShared = false
		}
		cn.accOff = 0
	}
}

// consumeAcc drops n read bytes from the accumulator.
func (cn *conn) consumeAcc(n int) {
	cn.accOff += n
	if cn.accOff == len(cn.acc) {
		if cn.accShared {
			cn.acc, cn.accOff, cn.accShared = nil, 0, false
		} else {
			cn.acc, cn.accOff = cn.acc[:0], 0
		}
	}
}

// onRecv handles one recv completion with data (res > 0) in buffer bid.
func (cn *conn) onRecv(bid uint16, n int) {
	w := cn.w
	w.st.bytesIn += uint64(n)
	data := w.be.buffer(bid)[:n]
	if cn.tls != nil {
		// Ciphertext: decrypted into the accumulator (or the sink), never
		// lent (tls.go).
		cn.tls.recv(data)
		w.recycle(bid)
		return
	}
	// Sink first: the task asked for the bytes to land in its buffer.
	if cn.sink != nil && cn.sinkN < len(cn.sink) && cn.buffered() == 0 {
		k := copy(cn.sink[cn.sinkN:], data)
		cn.sinkN += k
		data = data[k:]
		if len(data) == 0 {
			w.recycle(bid)
			cn.task.wake(waitRecv)
			return
		}
	}
	waiting := cn.task != nil && cn.task.waiting&waitRecv != 0
	if waiting && cn.lent < 0 && len(cn.acc) == cn.accOff && cn.sink == nil {
		// Lend the kernel buffer itself to the closure: zero copy. It is
		// reclaimed when the task next suspends.
		cn.lent = int32(bid)
		cn.lentOff = uint32(n - len(data))
		cn.lentEnd = uint32(n)
	} else if waiting && cn.lent >= 0 && len(cn.acc) == cn.accOff && len(cn.lentq)-cn.lentqHead < w.lentQMax() && cn.sink == nil {
		// Behind the lent one, for the closure's next run.
		if cn.lentq == nil {
			cn.lentq = make([]lentBuf, 0, 8)
		} else if cn.lentqHead > 0 && len(cn.lentq) == cap(cn.lentq) {
			cn.lentq = cn.lentq[:copy(cn.lentq, cn.lentq[cn.lentqHead:])]
			cn.lentqHead = 0
		}
		cn.lentq = append(cn.lentq, lentBuf{bid: bid, n: uint32(n)})
		cn.lentqBytes += n
	} else {
		// Accumulated behind whatever is lent (the lent bytes come
		// first: spillLent puts them in front).
		cn.appendAcc(data)
		w.recycle(bid)
	}
	cn.task.wake(waitRecv)
	if cn.buffered() >= w.cfg.MaxRecvAccumulator {
		cn.pauseRecv()
	}
}

// pauseRecv stops receiving while the task is not draining its
// accumulator, so a fast peer is throttled by TCP instead of growing memory.
func (cn *conn) pauseRecv() {
	if cn.recvPaused || !cn.recvArmed || cn.state != connOpen {
		return
	}
	cn.recvPaused = true
	cn.w.be.stage(sqOp{code: opCancel, ud: packUD(udCancel, cn.idx, cn.gen, 0), addr: packUD(udRecv, cn.idx, cn.gen, 0)})
	cn.pending++
}

// resumeRecv re-arms a paused recv once the task has made room.
func (cn *conn) resumeRecv() {
	if cn.recvPaused && cn.buffered() < cn.w.cfg.MaxRecvAccumulator {
		cn.recvPaused = false
		cn.armRecv()
	}
}

func (cn *conn) armRecv() {
	if cn.recvArmed || cn.recvPaused || cn.parked || cn.eof || cn.state != connOpen {
		return
	}
	if cn.w.be.buffersFree() == 0 {
		cn.park()
		return
	}
	cn.stageRecv()
}

func (cn *conn) stageRecv() {
	cn.recvArmed = true
	cn.pending++
	cn.w.be.stage(sqOp{code: opRecvMulti, fd: cn.opFd, flags: cn.opFlags, ud: packUD(udRecv, cn.idx, cn.gen, 0)})
}

func (cn *conn) park() {
	if cn.parked {
		return
	}
	cn.parked = true
	cn.w.parked = append(cn.w.parked, cn.idx)
}

// WithData runs f over the connection's unread bytes and returns how many
// f consumed. When nothing is buffered, or f returned NeedMore, Consumed(0)
// or NeedAtLeast, the task suspends until more bytes arrive and f runs again
// over all unread bytes. It returns 0 when the peer closed (FIN or reset)
// with nothing more to read, when the connection is closed, when the
// handle is stale, or when the read deadline passed; Err then tells which
// (nil for a clean close, the failure, or an error satisfying
// errors.Is(err, os.ErrDeadlineExceeded), after which the connection is
// still usable).
//
// The slice f sees is valid only during the call: it may be the kernel's
// receive buffer itself. Use WithBytes to keep received bytes. When
// several receive buffers are waiting, f may be shown the first one only
// (so a task that consumes whole buffers reads them without a copy); when
// f consumes nothing from it, f runs again at once over all unread bytes.
// So a run of f that consumes nothing must have no effects (no sends, no
// ForwardRecvBuf): the same bytes come again, at once or when more
// arrive. f runs synchronously and must not suspend: calling Await,
// SendWait, WithData or RecvReady inside it panics (closing only this
// connection), as does parsing the same connection again from inside it.
// It may send (SendNowait, Send without Await), Close, and SetRecvSink
// (which takes effect once f's Consumed has been applied).
//
// WithData must be called by the task that owns the connection; from any
// other task, or off the worker, it returns 0 without calling f or
// touching the connection's bytes.
func (c ConnCtx) WithData(f func([]byte) ParseResult) int {
	return c.withData(f, nil)
}

// WithBytes is WithData for closures that keep what they are given: the
// Bytes may be retained and sliced after f returns, and its memory is never
// overwritten. It costs a copy out of the kernel buffer, and what is
// retained keeps its whole receive array alive (see Bytes).
func (c ConnCtx) WithBytes(f func(Bytes) ParseResult) int {
	return c.withData(nil, f)
}

func (c ConnCtx) withData(f func([]byte) ParseResult, fb func(Bytes) ParseResult) int {
	// The owner check comes before anything is parsed: a closure run over
	// another connection's bytes would consume them.
	cn := c.owned("WithData")
	if cn == nil {
		return 0
	}
	want := 1
	for {
		if cn.closeWanted || cn.state != connOpen {
			return cn.stopped()
		}
		if avail := cn.buffered(); avail >= want {
			r, n := cn.runParse(f, fb)
			if n > 0 {
				cn.rdTimedOut = false
				return n
			}
			want = avail + 1
			if r.need > want {
				want = r.need
			}
		}
		// Checked whatever the parser asked for: a NeedAtLeast beyond
		// the limit must not leave the task asleep on a paused recv.
		if cn.buffered() >= cn.w.cfg.MaxRecvAccumulator {
			cn.limitClose()
			return 0
		}
		if cn.eof {
			return cn.stopped()
		}
		if cn.readExpired() {
			return 0 // Err reports the deadline; the connection stays usable
		}
		cn.resumeRecv()
		cn.task.suspend(waitRecv)
		// The slot cannot be reused while its task lives, so cn is still
		// this connection.
	}
}

// limitClose closes a connection whose unparsed bytes reached
// MaxRecvAccumulator. Kept out of line: the log call's frame would
// otherwise sit on every task stack that waits in WithData, and task stacks
// start at 2 KiB (doubling one costs 2 KiB per idle connection).
//
//go:noinline
func (cn *conn) limitClose() {
	avail := cn.buffered()
	cn.fail(ErrRecvLimit)
	cn.w.log.Warn("ringline: closing connection", "worker", cn.w.id, "conn", cn.idx,
		"reason", "receive accumulator limit reached without parse progress", "buffered", avail, "limit", cn.w.cfg.MaxRecvAccumulator)
	cn.w.st.limitCloses++
	cn.requestClose()
}

// stopped is what a receive returns at EOF. While the worker shuts down it
// tells the task once, then guards against a spin (task.spinGuard).
func (cn *conn) stopped() int {
	if cn == nil {
		return 0
	}
	if t := cn.w.cur; t != nil {
		t.spinGuard()
	}
	return 0
}

// runParse shows the unread bytes to f (or fb) once and consumes what it
// reports. While f runs the receive state is frozen: f must not suspend
// (the task would let the loop recycle the buffer f is reading), must not
// parse the same connection again, and a SetRecvSink it makes takes effect
// once its consumed count has been applied.
func (cn *conn) runParse(f func([]byte) ParseResult, fb func(Bytes) ParseResult) (ParseResult, int) {
	if cn.parsing {
		panic("ringline: WithData, WithBytes or TryWithData called from inside a parse closure of the same connection")
	}
	w := cn.w
	var r ParseResult
	var n int
	cn.parsing = true
	w.parsing = appendConn(w.parsing, cn)
	lentDone := false
	if f != nil && cn.lent >= 0 {
		data := cn.lentData()
		r = f(data)
		n = clampConsumed(r.consumed, len(data))
		// Nothing consumed with more bytes behind (queued buffers, the
		// accumulator): f needs bytes across them, and runs again below
		// over them joined.
		if lentDone = n > 0 || len(cn.lentq) == cn.lentqHead && cn.accOff == len(cn.acc); lentDone {
			if !w.heldBuf(uint16(cn.lent)) { // forwarded bytes are still to be sent
				poison(data[:n])
			}
			cn.lentOff += uint32(n)
			if cn.lentOff == cn.lentEnd {
				w.recycle(uint16(cn.lent))
				cn.lent = -1
				cn.promoteLent()
			}
		}
	}
	if !lentDone {
		cn.spillLent()
		data := cn.acc[cn.accOff:len(cn.acc):len(cn.acc)]
		if f != nil {
			r = f(data)
		} else {
			cn.accShared = true
			r = fb(Bytes(data))
		}
		n = clampConsumed(r.consumed, len(data))
		if f != nil && !cn.accShared {
			poison(data[:n])
		}
		if n > 0 {
			cn.consumeAcc(n)
		}
	}
	w.parsing = w.parsing[:len(w.parsing)-1]
	cn.parsing = false
	if cn.sinkPending {
		cn.sinkPending = false
		cn.fillSink()
	}
	if n > 0 {
		cn.resumeRecv()
	}
	return r, n
}

func clampConsumed(n, max int) int {
	if n < 0 {
		return 0
	}
	if n > max {
		return max
	}
	return n
}

// TryWithData runs f over the unread bytes if there are any and never
// suspends. It reports false (and does not call f) when nothing is
// buffered; otherwise f's result, with the consumed bytes dropped. Like
// WithData it is reserved to the connection's owning task (false
// otherwise).
func (c ConnCtx) TryWithData(f func([]byte) ParseResult) (ParseResult, bool) {
	cn := c.owned("TryWithData")
	if cn == nil || cn.buffered() == 0 {
		return ParseResult{}, false
	}
	r, _ := cn.runParse(f, nil)
	return r, true
}

// SetRecvSink directs received bytes into buf: from now on they are copied
// straight from the kernel buffer into buf (up to len(buf)) instead of the
// accumulator. Bytes already buffered are moved into buf first. Await
// RecvReady for data, then TakeRecvSink to learn how much landed. buf is
// owned by the connection until TakeRecvSink.
func (c ConnCtx) SetRecvSink(buf []byte) {
	cn := c.owned("SetRecvSink")
	if cn == nil {
		return
	}
	cn.sink, cn.sinkN = buf, 0
	if cn.parsing {
		cn.sinkPending = true // after the closure's Consumed is applied
		return
	}
	cn.fillSink()
}

// fillSink moves already-buffered bytes into a newly set sink.
func (cn *conn) fillSink() {
	cn.spillLent()
	if unread := len(cn.acc) - cn.accOff; unread > 0 {
		k := copy(cn.sink[cn.sinkN:], cn.acc[cn.accOff:])
		cn.sinkN += k
		cn.consumeAcc(k)
	}
}

// TakeRecvSink detaches the sink set by SetRecvSink and returns how many
// bytes were written into it. Later bytes go to the accumulator again.
func (c ConnCtx) TakeRecvSink() int {
	cn := c.owned("TakeRecvSink")
	if cn == nil || cn.sink == nil {
		return 0
	}
	n := cn.sinkN
	cn.sink, cn.sinkN = nil, 0
	return n
}

// RecvReady suspends the task until the sink holds at least one byte (or,
// with no sink, until unread bytes are buffered), the peer closed, or the
// read deadline passed (Err then says so). It reports whether data is
// available.
func (c ConnCtx) RecvReady() bool {
	cn := c.owned("RecvReady")
	if cn == nil {
		return false
	}
	for {
		if cn.state == connFree {
			return false
		}
		if (cn.sink != nil && cn.sinkN > 0) || (cn.sink == nil && cn.buffered() > 0) {
			cn.rdTimedOut = false
			return true
		}
		if cn.eof {
			return cn.buffered() > 0
		}
		if cn.readExpired() {
			return false // Err reports the deadline
		}
		cn.resumeRecv()
		cn.task.suspend(waitRecv)
	}
}
