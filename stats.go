package ringline

import "sync/atomic"

// counters are a worker's plain counters, written only by its goroutine.
type counters struct {
	accepted, rejected, closed uint64
	bytesIn, bytesOut          uint64
	loops, resumes             uint64
	enobufs, poolExhausted     uint64
	taskPanics, limitCloses    uint64
}

// publishedCounters are the same, copied once per loop iteration so other
// goroutines can read them without racing the worker.
type publishedCounters struct {
	accepted, rejected, closed, bytesIn, bytesOut, loops, resumes atomic.Uint64
	enobufs, poolExhausted, taskPanics, limitCloses               atomic.Uint64
	cgoCalls, enters                                              atomic.Uint64
}

func (w *worker) publish() {
	p, s := &w.pub, &w.st
	p.accepted.Store(s.accepted)
	p.rejected.Store(s.rejected)
	p.closed.Store(s.closed)
	p.bytesIn.Store(s.bytesIn)
	p.bytesOut.Store(s.bytesOut)
	p.loops.Store(s.loops)
	p.resumes.Store(s.resumes)
	p.enobufs.Store(s.enobufs)
	p.poolExhausted.Store(s.poolExhausted)
	p.taskPanics.Store(s.taskPanics)
	p.limitCloses.Store(s.limitCloses)
	p.cgoCalls.Store(w.be.cgoCalls())
	p.enters.Store(w.be.enters())
}

// WorkerStats is a snapshot of one worker's counters. They are published
// once per loop iteration, so a snapshot may lag by one iteration.
type WorkerStats struct {
	Worker int
	// Accepted and Closed count connections; Rejected counts accepts
	// refused because MaxConnections was reached.
	Accepted, Rejected, Closed uint64
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
	// ENOBUFS counts receives that found no provided buffer and parked.
	ENOBUFS uint64
	// SendPoolExhausted counts sends refused with ErrSendPoolExhausted.
	SendPoolExhausted uint64
	// TaskPanics counts tasks that panicked; LimitCloses counts
	// connections closed for exceeding MaxRecvAccumulator.
	TaskPanics, LimitCloses uint64
}

// Stats returns a snapshot of every worker's counters.
func (rt *Runtime) Stats() []WorkerStats {
	out := make([]WorkerStats, len(rt.workers))
	for i, w := range rt.workers {
		p := &w.pub
		out[i] = WorkerStats{Worker: i,
			Accepted: p.accepted.Load(), Rejected: p.rejected.Load(), Closed: p.closed.Load(),
			BytesIn: p.bytesIn.Load(), BytesOut: p.bytesOut.Load(),
			LoopIterations: p.loops.Load(), TaskResumes: p.resumes.Load(),
			CgoCalls: p.cgoCalls.Load(), RingEnters: p.enters.Load(),
			ENOBUFS: p.enobufs.Load(), SendPoolExhausted: p.poolExhausted.Load(),
			TaskPanics: p.taskPanics.Load(), LimitCloses: p.limitCloses.Load()}
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
		t.BytesIn += s.BytesIn
		t.BytesOut += s.BytesOut
		t.LoopIterations += s.LoopIterations
		t.TaskResumes += s.TaskResumes
		t.CgoCalls += s.CgoCalls
		t.RingEnters += s.RingEnters
		t.ENOBUFS += s.ENOBUFS
		t.SendPoolExhausted += s.SendPoolExhausted
		t.TaskPanics += s.TaskPanics
		t.LimitCloses += s.LimitCloses
	}
	return t
}
