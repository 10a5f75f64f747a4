package server

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/ringline-go/ringline"
	"github.com/ringline-go/ringline/examples/cache/resp"
	"github.com/ringline-go/ringline/examples/cache/store"
)

// handler serves one worker's connections. Its tasks all run on the
// worker's goroutine, one at a time.
type handler struct {
	srv      *Server
	worker   int
	commands *atomic.Uint64
}

// expirePeriod is how often each worker's start task runs an active
// expiry cycle (redis's hz is 10).
const expirePeriod = 100 * time.Millisecond

// OnStart is the worker's start task: it reclaims expired keys nobody
// touches, also while no command arrives (under load, command batches run
// cycles too: Engine.Tick). The worker stops it at shutdown.
func (h *handler) OnStart(t ringline.TaskCtx) {
	for t.Sleep(expirePeriod) == nil {
		h.srv.eng.ExpireCycle(store.Now())
	}
}

// OnAccept is the connection's task.
func (h *handler) OnAccept(c ringline.ConnCtx) {
	s := &session{c: c, srv: h.srv, eng: h.srv.eng, commands: h.commands}
	s.p.MaxBulk = h.srv.maxBulk
	s.parseFn, s.fillFn = s.parse, s.fill
	s.eng.Opened()
	defer s.eng.Closed()
	s.run()
}

// session is one connection's state.
type session struct {
	c        ringline.ConnCtx
	srv      *Server
	eng      *Engine
	commands *atomic.Uint64
	p        resp.Parser
	cl       Client
	r        resp.Reply
	// The closures handed to WithData, made once (a method value
	// allocates each time it is taken).
	parseFn, fillFn func([]byte) ringline.ParseResult

	// Big mode: a request too large for ringline's receive accumulator is
	// copied into big as it arrives and parsed from there. big[bigOff:]
	// is unparsed; the parser waits for bigNeed bytes of it.
	big     []byte
	bigOff  int
	bigNeed int

	closing bool // send what is queued, then close

	// Backpressure: reply bytes queued since the kernel was last known
	// to have taken everything, and a future half-way through them.
	unacked int
	last    ringline.SendFuture
	mid     ringline.SendFuture
	midAt   int
	hasMid  bool
}

func (s *session) run() {
	for {
		var n int
		if s.big == nil {
			n = s.c.WithData(s.parseFn)
		} else if n = s.c.WithData(s.fillFn); n > 0 {
			s.processBig()
		}
		if n == 0 || !s.flush() || s.closing {
			return // returning closes the connection once sends drain
		}
	}
}

// parse runs in WithData over the received bytes (possibly the kernel's
// buffer itself): it executes every complete request, up to flushAt bytes
// of replies, and consumes them. Arguments are slices of data and are
// used only during the call.
func (s *session) parse(data []byte) ringline.ParseResult {
	now := store.Now()
	off, cmds := 0, 0
	for off < len(data) {
		args, n, need, perr := s.p.Next(data[off:])
		if perr != nil {
			s.r.B = perr.AppendReply(s.r.B)
			s.closing = true
			off = len(data)
			break
		}
		if n == 0 {
			if need > s.srv.bigFrame {
				// Too big to leave in ringline's accumulator (which must
				// stay small: it is also what a non-reading task lets
				// pile up). Take the partial frame over; the parser's
				// progress is relative to its start, which big keeps.
				s.enterBig(data[off:], need)
				off = len(data)
			} else if off == 0 {
				s.done(cmds, now)
				return ringline.NeedAtLeast(need)
			}
			break
		}
		off += n
		if len(args) > 0 {
			s.eng.Exec(&s.cl, args, &s.r, now)
			cmds++
			if s.cl.Quit || s.cl.Drop {
				s.closing = true
				break
			}
		}
		if s.r.Len() >= flushAt {
			break
		}
	}
	s.done(cmds, now)
	return ringline.Consumed(off)
}

func (s *session) done(cmds int, now int64) {
	if cmds > 0 {
		s.commands.Add(uint64(cmds))
		s.eng.Tick(now)
	}
	s.p.Shrink()
}

func (s *session) enterBig(partial []byte, need int) {
	s.big = append(make([]byte, 0, max(2*len(partial), min(need, 2*s.srv.bigFrame))), partial...)
	s.bigOff = 0
	s.bigNeed = need
}

// fill copies received bytes into big: what the parser waits for, or at
// least 16 KiB, so big also takes a pipeline's tail without trickling.
func (s *session) fill(data []byte) ringline.ParseResult {
	take := min(len(data), max(s.bigNeed-(len(s.big)-s.bigOff), 16<<10))
	if len(s.big)+take > cap(s.big) {
		unread := len(s.big) - s.bigOff
		c := max(2*cap(s.big), unread+take)
		if s.bigNeed > unread+take {
			c = min(c, s.bigNeed)
		}
		nb := make([]byte, unread, c)
		copy(nb, s.big[s.bigOff:])
		s.big, s.bigOff = nb, 0
	}
	s.big = append(s.big, data[:take]...)
	return ringline.Consumed(take)
}

// processBig executes the requests in big; it runs outside WithData, so
// it may flush (and wait) between them. Once big is drained the
// connection goes back to parsing in place.
func (s *session) processBig() {
	now := store.Now()
	cmds := 0
	defer func() { s.done(cmds, now) }()
	for s.bigOff < len(s.big) {
		if len(s.big)-s.bigOff < s.bigNeed {
			return
		}
		args, n, need, perr := s.p.Next(s.big[s.bigOff:])
		if perr != nil {
			s.r.B = perr.AppendReply(s.r.B)
			s.closing = true
			return
		}
		if n == 0 {
			s.bigNeed = need
			if need > s.srv.maxQuery {
				s.srv.log.Warn("cache: closing client that reached max query buffer length",
					"worker", s.c.WorkerID(), "need", need, "limit", s.srv.maxQuery)
				s.closing = true
			}
			return
		}
		s.bigOff += n
		s.bigNeed = 0
		if len(args) > 0 {
			s.eng.Exec(&s.cl, args, &s.r, now)
			cmds++
			if s.cl.Quit || s.cl.Drop {
				s.closing = true
				return
			}
		}
		if s.r.Len() >= flushAt && !s.flush() {
			s.closing = true
			return
		}
	}
	s.big, s.bigOff, s.bigNeed = nil, 0, 0
}

// flush sends the batch's replies: copied bytes and referenced values in
// wire order. It may suspend the task (backpressure), so it never runs
// inside a parse closure. It reports false when the connection failed.
func (s *session) flush() bool {
	r := &s.r
	if s.cl.Drop {
		r.Reset()
		return true
	}
	ok := true
	prev := 0
	for _, ref := range r.Refs {
		if ok = s.sendRef(r.B[prev:ref.Off], ref.Val); !ok {
			break
		}
		prev = ref.Off
	}
	ok = ok && s.send(r.B[prev:])
	r.Reset()
	if cap(r.B) > replyKeep {
		r.B = nil
	}
	if cap(r.Refs) > 1024 {
		r.Refs = nil
	}
	return ok
}

// sendRef sends head copied and val referenced: the kernel reads the
// stored value itself, which the store never modifies once handed out (a
// write replaces it) and which the send keeps alive until the kernel is
// done with it. When the connection's queue or the pool has no room for
// it even once this connection's own sends went out (a value larger than
// Config.MaxSendQueue, or a pool other connections hold), both are copied
// in pieces instead, waiting for room.
func (s *session) sendRef(head, val []byte) bool {
	for {
		fut, err := s.c.SendParts().Copy(head).Ref(val, nil).Send()
		if err == nil {
			s.sent(fut, len(head)+len(val))
			return true
		}
		if !noRoom(err) {
			return false
		}
		if s.unacked == 0 {
			return s.send(head) && s.send(val)
		}
		if _, err := s.last.Await(); err != nil {
			return false
		}
		s.unacked, s.hasMid = 0, false
	}
}

// noRoom reports a send refused for want of room, which waiting can bring.
func noRoom(err error) bool {
	return errors.Is(err, ringline.ErrSendPoolExhausted) || errors.Is(err, ringline.ErrSendQueueFull)
}

// send queues a copy of b in pieces, waiting for room in the send pool
// when there is none (SendWait) and for the kernel whenever maxUnacked
// bytes are outstanding.
func (s *session) send(b []byte) bool {
	for len(b) > 0 {
		k := min(len(b), sendChunk)
		fut, err := s.c.Send(b[:k])
		if noRoom(err) {
			if err = s.c.SendWait(b[:k]); err == nil {
				fut, err = s.c.Send(nil) // resolves with the bytes SendWait queued
			}
		}
		if err != nil {
			return false
		}
		b = b[k:]
		if !s.sent(fut, k) {
			return false
		}
	}
	return true
}

// sent accounts for n bytes just queued with future fut and, once
// maxUnacked bytes are outstanding, waits for the older half of them, so
// the socket never runs dry while the task refills it. It reports false
// when the connection failed.
func (s *session) sent(fut ringline.SendFuture, n int) bool {
	s.last = fut
	s.unacked += n
	if !s.hasMid && s.unacked >= maxUnacked/2 {
		s.mid, s.midAt, s.hasMid = fut, s.unacked, true
	}
	if s.unacked >= maxUnacked {
		if _, err := s.mid.Await(); err != nil {
			return false
		}
		s.unacked -= s.midAt
		s.hasMid = false
		if s.unacked >= maxUnacked/2 {
			s.mid, s.midAt, s.hasMid = fut, s.unacked, true
		}
	}
	return true
}
