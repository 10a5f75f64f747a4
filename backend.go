package ringline

import (
	"strconv"
	"time"
)

// Backend names the I/O mechanism a runtime drives its sockets with.
type Backend int

const (
	// Auto probes io_uring and the features ringline needs and falls back
	// to epoll, logging why, when they are missing.
	Auto Backend = iota
	// IOUring requires io_uring; Launch fails with an error naming what is
	// missing when the kernel, seccomp policy or build cannot provide it.
	IOUring
	// Epoll forces the pure-Go epoll backend.
	Epoll
)

// String returns "auto", "iouring" or "epoll".
func (b Backend) String() string {
	switch b {
	case Auto:
		return "auto"
	case IOUring:
		return "iouring"
	case Epoll:
		return "epoll"
	}
	return "Backend(" + strconv.Itoa(int(b)) + ")"
}

// Operation codes; the values are shared with csrc/rl.h.
const (
	opNop         = 0
	opAcceptMulti = 1  // fd = listener; one completion per accepted fd, cqeFMore while armed
	opRecvMulti   = 2  // fd; data in provided buffers; cqeFMore while armed
	opSend        = 3  // fd, addr/len
	opSendmsg     = 4  // fd, addr = *msghdr
	opCancel      = 5  // addr = target user_data
	opClose       = 6  // fd (plain)
	opCloseDirect = 7  // aux = fixed-file index
	opFilesUpdate = 8  // addr = *int32 fds, len = count, aux = table offset
	opRead        = 9  // fd, addr/len
	opShutdown    = 10 // fd, aux = how
	opConnect     = 11 // fd, addr = *sockaddr, len = addrlen
	opTimeout     = 12 // addr = *timespec
	opSendZC      = 14 // fd, addr/len, aux = zero-copy flags (zcReportUsage); io_uring only
	opSendmsgZC   = 15 // fd, addr = *msghdr, aux = zero-copy flags; io_uring only
	// opLinkTimeout bounds the op staged just before it, which carries
	// opFLink: when the time (addr = *timespec) passes first, that op
	// completes with -ECANCELED and this one with -ETIME; otherwise this
	// one completes with -ECANCELED. io_uring's IORING_OP_LINK_TIMEOUT, so
	// a timed op costs no extra enter; epoll emulates it.
	opLinkTimeout = 20
)

// Op flags; shared with csrc/rl.h.
const (
	opFFixed = 1 << 0 // fd is a fixed-file index
	opFLink  = 1 << 1 // the next op runs only if this one succeeds
)

// Completion flags, with io_uring's values so the uring backend passes them
// through untouched and the epoll backend synthesises the same.
const (
	cqeFBuffer     = 1 << 0 // upper 16 bits carry a provided buffer id
	cqeFMore       = 1 << 1 // the multishot op stays armed; on a zero-copy send, a notification follows
	cqeFNotif      = 1 << 3 // a zero-copy send's notification: the kernel no longer reads its memory
	cqeBufferShift = 16
)

// Zero-copy send flags and notification results, the kernel's values
// (checked against csrc/rl.h in uring_select.go).
const (
	zcReportUsage = 1 << 3  // IORING_SEND_ZC_REPORT_USAGE: the notification says whether the kernel copied
	zcUsageCopied = 1 << 31 // IORING_NOTIF_USAGE_ZC_COPIED, in a notification's res
)

// sqOp is one staged operation. Layout matches struct rl_op.
type sqOp struct {
	code     uint8
	flags    uint8
	bufGroup uint16 //lint:ignore U1000 read by C (struct rl_op.buf_group); unused in builds without io_uring
	fd       int32
	ud       uint64
	addr     uint64
	len      uint32
	aux      uint32
}

// cqEntry is one completion. Layout matches struct rl_cqe.
type cqEntry struct {
	ud    uint64
	res   int32
	flags uint32
}

// backend is what the core asks of an I/O mechanism: take operations, give
// back completions. Everything above it (connections, tasks, accumulators,
// send ordering, close rules) is shared, so the two backends can't drift.
//
// All methods except wake are called only from the worker's goroutine.
type backend interface {
	kind() Backend
	// stage queues op for the next enter; it never fails (a full staging
	// area grows).
	stage(op sqOp)
	// enter submits staged ops and, when wait is set, blocks until at
	// least one completion or until timeout (negative: no limit) or a
	// wake. The returned slice is valid until the next enter.
	enter(wait bool, timeout time.Duration) ([]cqEntry, error)
	// buffer returns provided buffer bid (its full capacity).
	buffer(bid uint16) []byte
	// recycle gives buffer bid back to the kernel.
	recycle(bid uint16)
	// buffersFree reports how many provided buffers the kernel may use.
	buffersFree() int
	// fixedFiles reports whether connection sockets are registered in a
	// fixed-file table indexed by connection index.
	fixedFiles() bool
	// wake makes a blocked enter return; safe from any goroutine.
	wake()
	// counters
	cgoCalls() uint64
	enters() uint64
	// holds counts the blocking waits that held the worker's P
	// (Config.HoldWait), those of them that timed out and went on to
	// wait the ordinary way, and those that first let goroutines ready to
	// run have the P (readyCheck).
	holds() (waits, timeouts, yields uint64)
	// describe names the features in use, for logs and the examples.
	describe() string
	close() error
}

// backendConfig is what a backend needs to know at setup.
type backendConfig struct {
	ringEntries uint32
	bufCount    uint32
	bufSize     uint32
	maxConns    uint32
	// ringFlagMask restricts which ring setup flags may be tried (tests).
	ringFlagMask uint32
	// plainFDs: do not register a fixed-file table.
	plainFDs bool
	// batchWait: Config.BatchWait.
	batchWait time.Duration
	// hold: Config.HoldWait, 0 when off.
	hold time.Duration
}

// testHookFixedFiles, when set by a test, replaces the size of the
// fixed-file table the io_uring backend asks the kernel for (a size the
// kernel refuses forces the plain-fd fallback; a small one mixes fixed
// and plain connections).
//
//lint:ignore U1000 read by the io_uring backend, which some builds leave out
var testHookFixedFiles func(n int) int

// userdata layout: kind (8 bits) | generation (16) | index (24) | payload (16).
const (
	udKindShift = 56
	udGenShift  = 40
	udIdxShift  = 16
	udIdxMask   = 1<<24 - 1
	udGenMask   = 1<<16 - 1
)

// Completion kinds carried in user_data.
const (
	udAccept uint64 = iota + 1
	udRecv
	udSend
	udCancel
	udClose
	udFilesUpdate
	udWake
	udShutdown
	// udSendZC is a zero-copy send; its payload is the low 16 bits of the
	// connection's zero-copy sequence number, and its notification
	// completes with the same user_data.
	udSendZC
	udConnect     // an outbound connection's connect
	udLinkTimeout // the timeout linked to that connect
)

// packUD keeps the low 16 bits of the generation: a completion is never
// 65,536 generations late, because a slot is reused only once no operation
// on it is left in the kernel.
func packUD(kind uint64, idx uint32, gen uint32, payload uint16) uint64 {
	return kind<<udKindShift | uint64(uint16(gen))<<udGenShift | uint64(idx&udIdxMask)<<udIdxShift | uint64(payload)
}

func udKind(ud uint64) uint64 { return ud >> udKindShift }
func udIdx(ud uint64) uint32  { return uint32(ud>>udIdxShift) & udIdxMask }
func udGen(ud uint64) uint16  { return uint16(ud >> udGenShift) }
func udPayload(ud uint64) uint16 {
	return uint16(ud)
}
