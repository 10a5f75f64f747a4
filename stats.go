package ringline

import "sync/atomic"

// counters are a worker's plain counters, written only by its goroutine.
type counters struct {
	accepted, rejected, closed   uint64
	bytesIn, bytesOut            uint64
	loops, resumes               uint64
	enobufs, poolExhausted       uint64
	taskPanics, limitCloses      uint64
	taskGoexits                  uint64
	acceptErrors, acceptRefused  uint64
	drainTimeouts, sendQueueFull uint64
	bytesCopied, sendWaits       uint64
	zcSends, zcCopied            uint64
	zcFallbacks, zcLeaked        uint64
	forwarded, forwardCopies     uint64
	connects, connectErrors      uint64
	// TLS (tls.go)
	tlsHandshakes, tlsHandshakeErrors, tlsHandshakeTimeouts uint64
}

// publishedCounters are the same, copied once per loop iteration so other
// goroutines can read them without racing the worker.
type publishedCounters struct {
	accepted, rejected, closed, bytesIn, bytesOut, loops, resumes atomic.Uint64
	enobufs, poolExhausted, taskPanics, limitCloses               atomic.Uint64
	taskGoexits, acceptErrors, acceptRefused                      atomic.Uint64
	drainTimeouts, sendQueueFull                                  atomic.Uint64
	bytesCopied, sendWaits, zcSends, zcCopied, zcFallbacks        atomic.Uint64
	zcLeaked                                                      atomic.Uint64
	forwarded, forwardCopies                                      atomic.Uint64
	connects, connectErrors                                       atomic.Uint64
	tlsHandshakes, tlsHandshakeErrors, tlsHandshakeTimeouts       atomic.Uint64
	cgoCalls, enters, held, holdTimeouts                          atomic.Uint64
	poolInUse                                                     atomic.Uint64
	// stalls is written by the watchdog goroutine, not by publish.
	stalls atomic.Uint64
}

func (w *worker) publish() {
	p := &w.pub
	p.set(&w.st)
	pub(&p.poolInUse, uint64(w.pool.inUse()))
	pub(&p.cgoCalls, w.be.cgoCalls())
	pub(&p.enters, w.be.enters())
	held, timeouts, _ := w.be.holds()
	pub(&p.held, held)
	pub(&p.holdTimeouts, timeouts)
}

// set publishes the counters of s.
func (p *publishedCounters) set(s *counters) {
	pub(&p.accepted, s.accepted)
	pub(&p.rejected, s.rejected)
	pub(&p.closed, s.closed)
	pub(&p.bytesIn, s.bytesIn)
	pub(&p.bytesOut, s.bytesOut)
	pub(&p.loops, s.loops)
	pub(&p.resumes, s.resumes)
	pub(&p.enobufs, s.enobufs)
	pub(&p.poolExhausted, s.poolExhausted)
	pub(&p.taskPanics, s.taskPanics)
	pub(&p.limitCloses, s.limitCloses)
	pub(&p.taskGoexits, s.taskGoexits)
	pub(&p.acceptErrors, s.acceptErrors)
	pub(&p.acceptRefused, s.acceptRefused)
	pub(&p.drainTimeouts, s.drainTimeouts)
	pub(&p.sendQueueFull, s.sendQueueFull)
	pub(&p.bytesCopied, s.bytesCopied)
	pub(&p.sendWaits, s.sendWaits)
	pub(&p.zcSends, s.zcSends)
	pub(&p.zcCopied, s.zcCopied)
	pub(&p.zcFallbacks, s.zcFallbacks)
	pub(&p.zcLeaked, s.zcLeaked)
	pub(&p.forwarded, s.forwarded)
	pub(&p.forwardCopies, s.forwardCopies)
	pub(&p.connects, s.connects)
	pub(&p.connectErrors, s.connectErrors)
	pub(&p.tlsHandshakes, s.tlsHandshakes)
	pub(&p.tlsHandshakeErrors, s.tlsHandshakeErrors)
	pub(&p.tlsHandshakeTimeouts, s.tlsHandshakeTimeouts)
}

// pub stores v into a published counter only when it changed: an atomic
// store is a full barrier on amd64 (XCHG) and publish runs before every
// blocking wait, while most counters change rarely; a load is a plain
// move.
func pub(a *atomic.Uint64, v uint64) {
	if a.Load() != v {
		a.Store(v)
	}
}

// WorkerStats is a snapshot of one worker's counters. A worker publishes
// them whenever it is about to wait in the kernel and every 64 loop
// iterations while busy, so a snapshot lags at most that much.
type WorkerStats struct {
	Worker int
	// Accepted and Closed count connections; Rejected counts accepts
	// refused because MaxConnections was reached.
	Accepted, Rejected, Closed uint64
	// Connected counts outbound connections established (Connect);
	// ConnectErrors counts connects that failed (refused, timed out,
	// cancelled, or refused before starting: ErrConnLimit, no fds).
	// Closed counts established connections of both kinds whose slots
	// were released (a closed connection keeps its slot while its task
	// runs; see ConnCtx.Close), so Accepted+Connected-Closed is how many
	// hold a slot: the ones open, and those closed whose task has not
	// returned (nor, for outbound ones, connected again).
	Connected, ConnectErrors uint64
	// BytesIn and BytesOut count payload bytes received and sent.
	BytesIn, BytesOut uint64
	// LoopIterations counts backend enters made by the loop; TaskResumes
	// counts coroutine resumes.
	LoopIterations, TaskResumes uint64
	// CgoCalls counts every call this worker made into the C layer (0 on
	// epoll): a few to set its ring up, one per loop iteration however
	// many operations it carries (a second only if the staging area could
	// not grow for lack of memory), and two at shutdown (the last submit
	// and the ring's release). The feature probe that Launch and Probe
	// run outside any worker is not counted here. RingEnters counts
	// io_uring_enter calls (on epoll: epoll_wait calls); one call into C
	// may enter more than once, e.g. to submit more operations than the
	// SQ holds or to drain an overflowed CQ.
	CgoCalls, RingEnters uint64
	// HeldWaits counts the loop's blocking waits that kept the worker's P
	// (Config.HoldWait); HoldTimeouts those of them that ran out (the
	// hold's time passed with nothing to do) and went on to wait the
	// ordinary way, letting Go lend the P. A hold a signal cuts short also
	// goes on to the ordinary wait but is not a timeout. Held waits count
	// in RingEnters too.
	HeldWaits, HoldTimeouts uint64
	// ENOBUFS counts receives that found no provided buffer and parked.
	ENOBUFS uint64
	// SendPoolExhausted counts sends refused with ErrSendPoolExhausted.
	SendPoolExhausted uint64
	// SendSlotsInUse is how many send pool slots hold queued bytes (a
	// gauge, not a counter: Total sums it over workers).
	SendSlotsInUse uint64
	// SendQueueFull counts sends refused with ErrSendQueueFull.
	SendQueueFull uint64
	// BytesCopied counts bytes copied into the send pool (SendNowait,
	// Send, SendWait, SendBuilder.Copy, ForwardRecvBuf when it copies):
	// divided by messages, the user-space copying a benchmark pays.
	BytesCopied uint64
	// SendWaits counts SendWait calls that had to wait for room.
	SendWaits uint64
	// ZeroCopySends counts zero-copy sends submitted (io_uring, sends of
	// at least Config.SendZCThreshold); ZeroCopyCopied counts their
	// notifications that said the kernel copied anyway;
	// ZeroCopyFallbacks counts workers that turned zero copy off (the
	// kernel refused it or copied): at most one per worker.
	ZeroCopySends, ZeroCopyCopied, ZeroCopyFallbacks uint64
	// ZeroCopyRefsLeaked counts SendBuilder.Ref parts whose zero-copy
	// notification had not come when the worker stopped: the kernel may
	// still send from them, so they were kept pinned and reachable for
	// the life of the process and their release was not called (see
	// SendBuilder.Ref). Shutdown resets such connections first, so this
	// stays 0 unless the kernel is slow to let go.
	ZeroCopyRefsLeaked uint64
	// ForwardedBuffers counts ForwardRecvBuf calls that queued the
	// received buffer itself; ForwardCopies those that queued a copy (the
	// bytes were not in a lent buffer, the forwarding bounds were reached,
	// or the connection is TLS). A call that returned an error queued
	// nothing and counts in neither: the two are the forwards queued.
	ForwardedBuffers, ForwardCopies uint64
	// TaskPanics counts tasks that panicked and TaskGoexits tasks that
	// called runtime.Goexit (each closed its connection only);
	// LimitCloses counts connections closed for exceeding
	// MaxRecvAccumulator.
	TaskPanics, TaskGoexits, LimitCloses uint64
	// AcceptErrors counts failed accepts (logged at most once a second);
	// AcceptRefused counts clients accepted and reset at once because
	// the process had no file descriptor left for them (EMFILE/ENFILE).
	AcceptErrors, AcceptRefused uint64
	// DrainTimeouts counts closed connections reset because their peer
	// did not take the queued bytes within Config.CloseDrainTimeout.
	DrainTimeouts uint64
	// Wakeups counts the times another goroutine had to wake the worker
	// (an eventfd write): wakes coalesce, so a burst of posts costs a
	// few.
	Wakeups uint64
	// ForeignCalls counts ConnCtx calls refused with ErrNotInWorker.
	ForeignCalls uint64
	// Stalls counts the times the watchdog saw a task (or a release
	// callback) run longer than Config.StallThreshold without yielding:
	// one that blocks.
	Stalls uint64
	// TLSHandshakes counts TLS handshakes completed (server and client);
	// TLSHandshakeErrors counts those that failed (a plaintext or broken
	// client, a refused certificate, a timeout: each closed only its
	// connection and is logged at debug level only), of which
	// TLSHandshakeTimeouts ran past Config.TLSHandshakeTimeout.
	TLSHandshakes, TLSHandshakeErrors, TLSHandshakeTimeouts uint64
}

// Stats returns a snapshot of every worker's counters.
func (rt *Runtime) Stats() []WorkerStats {
	out := make([]WorkerStats, len(rt.workers))
	for i, w := range rt.workers {
		p := &w.pub
		out[i] = WorkerStats{Worker: i,
			Accepted: p.accepted.Load(), Rejected: p.rejected.Load(), Closed: p.closed.Load(),
			Connected: p.connects.Load(), ConnectErrors: p.connectErrors.Load(),
			BytesIn: p.bytesIn.Load(), BytesOut: p.bytesOut.Load(),
			LoopIterations: p.loops.Load(), TaskResumes: p.resumes.Load(),
			CgoCalls: p.cgoCalls.Load(), RingEnters: p.enters.Load(),
			HeldWaits: p.held.Load(), HoldTimeouts: p.holdTimeouts.Load(),
			ENOBUFS: p.enobufs.Load(), SendPoolExhausted: p.poolExhausted.Load(),
			SendSlotsInUse: p.poolInUse.Load(), SendQueueFull: p.sendQueueFull.Load(),
			BytesCopied: p.bytesCopied.Load(), SendWaits: p.sendWaits.Load(),
			ZeroCopySends: p.zcSends.Load(), ZeroCopyCopied: p.zcCopied.Load(), ZeroCopyFallbacks: p.zcFallbacks.Load(),
			ZeroCopyRefsLeaked: p.zcLeaked.Load(),
			ForwardedBuffers:   p.forwarded.Load(), ForwardCopies: p.forwardCopies.Load(),
			TaskPanics: p.taskPanics.Load(), TaskGoexits: p.taskGoexits.Load(), LimitCloses: p.limitCloses.Load(),
			AcceptErrors: p.acceptErrors.Load(), AcceptRefused: p.acceptRefused.Load(),
			DrainTimeouts: p.drainTimeouts.Load(), ForeignCalls: w.foreign.calls.Load(), Wakeups: w.wakeups.Load(), Stalls: p.stalls.Load(),
			TLSHandshakes: p.tlsHandshakes.Load(), TLSHandshakeErrors: p.tlsHandshakeErrors.Load(), TLSHandshakeTimeouts: p.tlsHandshakeTimeouts.Load()}
	}
	return out
}

// Total sums the counters of every worker (Worker is -1).
func Total(stats []WorkerStats) WorkerStats {
	t := WorkerStats{Worker: -1}
	for _, s := range stats {
		t.Accepted += s.Accepted
		t.Rejected += s.Rejected
		t.Closed += s.Closed
		t.Connected += s.Connected
		t.ConnectErrors += s.ConnectErrors
		t.BytesIn += s.BytesIn
		t.BytesOut += s.BytesOut
		t.LoopIterations += s.LoopIterations
		t.TaskResumes += s.TaskResumes
		t.CgoCalls += s.CgoCalls
		t.RingEnters += s.RingEnters
		t.HeldWaits += s.HeldWaits
		t.HoldTimeouts += s.HoldTimeouts
		t.ENOBUFS += s.ENOBUFS
		t.SendPoolExhausted += s.SendPoolExhausted
		t.SendSlotsInUse += s.SendSlotsInUse
		t.SendQueueFull += s.SendQueueFull
		t.BytesCopied += s.BytesCopied
		t.SendWaits += s.SendWaits
		t.ZeroCopySends += s.ZeroCopySends
		t.ZeroCopyCopied += s.ZeroCopyCopied
		t.ZeroCopyFallbacks += s.ZeroCopyFallbacks
		t.ZeroCopyRefsLeaked += s.ZeroCopyRefsLeaked
		t.ForwardedBuffers += s.ForwardedBuffers
		t.ForwardCopies += s.ForwardCopies
		t.TaskPanics += s.TaskPanics
		t.TaskGoexits += s.TaskGoexits
		t.LimitCloses += s.LimitCloses
		t.AcceptErrors += s.AcceptErrors
		t.AcceptRefused += s.AcceptRefused
		t.DrainTimeouts += s.DrainTimeouts
		t.ForeignCalls += s.ForeignCalls
		t.Wakeups += s.Wakeups
		t.Stalls += s.Stalls
		t.TLSHandshakes += s.TLSHandshakes
		t.TLSHandshakeErrors += s.TLSHandshakeErrors
		t.TLSHandshakeTimeouts += s.TLSHandshakeTimeouts
	}
	return t
}
