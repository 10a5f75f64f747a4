//go:build linux && cgo && !ringline_epoll

package ringline

/*
// Which liburing: go puts CGO_CFLAGS/CGO_LDFLAGS before these flags, so
// the first -I and -L that has liburing wins: the caller's (the pinned
// build from cmd/ringline-liburing), then this checkout's pinned build
// (make), then the system's (liburing-dev). A directory that does not
// exist is skipped. csrc/compat.h adapts rl.c to liburing 2.3 to 2.9.
#cgo CFLAGS: -O2 -Wall -I${SRCDIR}/csrc -I${SRCDIR}/third_party/liburing/install/include
#cgo LDFLAGS: -L${SRCDIR}/third_party/liburing/install/lib -luring
#include "rl.h"
*/
import "C"

import (
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	cqBatch   = 1024 // completions copied out per enter
	bufGroup0 = 0
	// batchWaitNr is how many completions a batch wait hopes for before
	// its minimum wait runs out.
	batchWaitNr = 32
)

// Compile-time checks that the Go mirrors match the C layout.
var (
	_ [unsafe.Sizeof(sqOp{}) - C.sizeof_struct_rl_op]struct{}
	_ [C.sizeof_struct_rl_op - unsafe.Sizeof(sqOp{})]struct{}
	_ [unsafe.Sizeof(cqEntry{}) - C.sizeof_struct_rl_cqe]struct{}
	_ [C.sizeof_struct_rl_cqe - unsafe.Sizeof(cqEntry{})]struct{}
)

// testHookCQEntries, when set by a test, replaces the completion queue size
// (normally 4x RingEntries) of rings set up afterwards, e.g. to make the CQ
// as small as the SQ and force it to overflow.
var testHookCQEntries uint32

// testHookNoGrow, when set by a test, makes the staging area's growth fail
// as if out of memory, to exercise the degraded mode (submitNow).
var testHookNoGrow bool

// probeCgoCalls counts the cgo calls made by feature probes (Probe, and the
// check Launch runs before any worker exists), which belong to no worker.
var probeCgoCalls atomic.Uint64

// zcProbes counts the zero-copy send checks probes ran (tests).
var zcProbes atomic.Uint64

// uringBackend drives one worker's io_uring. Staged ops and copied-out
// completions live in mmap'd regions, so one cgo call per enter moves a
// whole batch without cgo pointer checks or copies.
type uringBackend struct {
	ring   *C.struct_rl_ring
	status *C.struct_rl_status // the C layer's, read in place on this thread
	final  C.struct_rl_status  // its last value, kept when the ring is freed
	flags  uint32              // RL_SETUP_* accepted

	// Staged ops. The area grows instead of being flushed early, so one
	// rl_tick per loop iteration carries them all, whatever their number
	// (rl_tick submits them in SQ-sized chunks); ops the kernel did not
	// take stay here, in order, for the next enter.
	opsMem    region
	ops       []sqOp
	nops      int
	iterOps   int // ops staged since the last enter
	maxStaged int // most ops staged between two enters (tests)

	cqMem region
	cqes  []cqEntry

	// Provided buffers: bufMem holds bufCount buffers of bufSize bytes;
	// br is the kernel-shared io_uring_buf_ring Go appends returns to.
	bufMem   region
	bufSize  uint32
	bufCount uint32
	br       unsafe.Pointer
	brMask   uint16
	brTail   uint16 // local tail; published to the ring at enter
	held     int    // buffers the kernel handed us and we have not returned

	fixed  bool
	fixedN uint32 // fixed-file table size
	fdsMem region // int32 per connection slot: FILES_UPDATE source

	wakeFd  int
	wakeMem region // 8-byte eventfd read target

	// Batch wait (Config.BatchWait): a blocking enter waits up to
	// batchWaitUs for batchNr completions; batchNr is 1 when off.
	batchNr     uint32
	batchWaitUs uint32

	// nCgo counts every call this backend makes into the C layer:
	// setup, one rl_tick per enter (two for an enter that holds), and
	// the ring's release.
	nCgo uint64

	// hold is Config.HoldWait (0: off, or BatchWait on); ringFd, cqHead,
	// cqTail and holdArg serve holdEnter (kept here so that they do not
	// escape per call). nHeld and nHoldTimeouts count held waits and
	// those that timed out.
	hold                 time.Duration
	mode                 waitMode
	runnable             readyCheck
	ringFd               int
	cqHead, cqTail       *uint32
	holdArg              geteventsArg
	holdTS               kernelTimespec
	nHeld, nHoldTimeouts uint64
	log                  *slog.Logger
}

// geteventsArg mirrors struct io_uring_getevents_arg (IORING_ENTER_EXT_ARG).
type geteventsArg struct {
	sigmask     uint64
	sigmaskSz   uint32
	minWaitUsec uint32
	ts          uint64
}

const (
	enterGetevents = 1 << 0 // IORING_ENTER_GETEVENTS
	enterExtArg    = 1 << 3 // IORING_ENTER_EXT_ARG
	featExtArg     = 1 << 8 // IORING_FEAT_EXT_ARG (5.11)
)

func (b *uringBackend) setLog(l *slog.Logger) { b.log = l }

func newURingBackend(cfg backendConfig) (_ *uringBackend, err error) {
	b := &uringBackend{wakeFd: -1, bufSize: cfg.bufSize, bufCount: cfg.bufCount, batchNr: 1}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	var ring *C.struct_rl_ring
	mask := C.uint(0xffffffff)
	if cfg.ringFlagMask != 0 {
		mask = C.uint(cfg.ringFlagMask)
	}
	// The C layer clamps the CQ to the kernel's maximum (65536).
	cq := cfg.ringEntries * 4
	if testHookCQEntries != 0 {
		cq = testHookCQEntries
	}
	b.nCgo++
	if rc := C.rl_ring_init(&ring, C.uint(cfg.ringEntries), C.uint(cq), mask); rc < 0 {
		return nil, fmt.Errorf("ringline: io_uring_setup: %w", syscall.Errno(-rc))
	}
	b.ring = ring
	b.nCgo++
	b.status = C.rl_ring_status(ring)
	b.flags = uint32(b.status.setup_flags)
	if cfg.batchWait > 0 {
		b.nCgo++
		if C.rl_has_min_timeout(ring) != 0 {
			b.batchNr = batchWaitNr
			b.batchWaitUs = uint32(max(cfg.batchWait/time.Microsecond, 1))
		}
	}

	if b.batchWaitUs == 0 && cfg.hold > 0 && b.status.features&featExtArg != 0 {
		b.nCgo += 3
		b.hold, b.ringFd, b.mode, b.runnable = cfg.hold, int(C.rl_ring_fd(ring)), newWaitMode(), newReadyCheck()
		b.cqHead, b.cqTail = (*uint32)(unsafe.Pointer(C.rl_cq_khead(ring))), (*uint32)(unsafe.Pointer(C.rl_cq_ktail(ring)))
		b.holdArg.sigmaskSz = 8 // _NSIG/8; no mask is passed
	}

	if err = b.growOps(int(cfg.ringEntries)); err != nil {
		return nil, err
	}
	if b.cqMem, err = mapRegion(cqBatch * int(unsafe.Sizeof(cqEntry{}))); err != nil {
		return nil, err
	}
	b.cqes = unsafe.Slice((*cqEntry)(b.cqMem.ptr(0)), cqBatch)

	if b.bufMem, err = mapRegion(int(cfg.bufCount) * int(cfg.bufSize)); err != nil {
		return nil, err
	}
	var cerr C.int
	b.nCgo++
	br := C.rl_buf_ring_setup(ring, C.uint(cfg.bufCount), bufGroup0, b.bufMem.ptr(0), C.uint(cfg.bufSize), &cerr)
	if br == nil {
		return nil, fmt.Errorf("ringline: register provided buffer ring: %w", syscall.Errno(-cerr))
	}
	b.br = br
	b.brMask = uint16(cfg.bufCount - 1)
	b.brTail = uint16(cfg.bufCount)

	// A sparse fixed-file table, one slot per connection index. Failure
	// is not fatal: sockets then run on plain fds.
	if b.fdsMem, err = mapRegion(int(cfg.maxConns) * 4); err != nil {
		return nil, err
	}
	// Sized from RLIMIT_NOFILE: a table larger than the hard limit is
	// refused (EMFILE) on some kernels; connections past it use plain fds.
	n := int(cfg.maxConns)
	if lim := nofileHard(); lim > 0 && lim < n {
		n = lim
	}
	if testHookFixedFiles != nil {
		n = testHookFixedFiles(n)
	}
	if !cfg.plainFDs {
		b.nCgo++
		if rc := C.rl_files_sparse(ring, C.uint(n)); rc == 0 {
			b.fixed = true
			b.fixedN = uint32(n)
		}
	}

	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("ringline: eventfd: %w", err)
	}
	b.wakeFd = fd
	if b.wakeMem, err = mapRegion(8); err != nil {
		return nil, err
	}
	b.armWake()
	return b, nil
}

func (b *uringBackend) kind() Backend { return IOUring }

func (b *uringBackend) armWake() {
	b.stage(sqOp{code: opRead, fd: int32(b.wakeFd), ud: packUD(udWake, 0, 0, 0), addr: b.wakeMem.addr(0), len: 8})
}

func (b *uringBackend) stage(op sqOp) {
	if b.nops == len(b.ops) && b.growOps(2*len(b.ops)) != nil {
		// No memory for a bigger area: submit what is staged now, at
		// the cost of a second crossing this iteration.
		b.submitNow()
		if b.nops == len(b.ops) {
			// Dropping an op (a close, a send) would leak or corrupt.
			panic("ringline: io_uring staging area full and cannot grow")
		}
	}
	b.ops[b.nops] = op
	b.nops++
	b.iterOps++
}

// submitNow pushes the staged ops without waiting or copying completions
// out (they stay in the CQ for the next enter). A failure is reported by
// the next enter, which meets the same condition. A trailing linked op
// waits for the op it links to.
func (b *uringBackend) submitNow() {
	n := b.nops
	if n > 0 && b.ops[n-1].flags&opFLink != 0 {
		n--
	}
	b.nCgo++
	C.rl_tick(b.ring, (*C.struct_rl_op)(b.opsMem.ptr(0)), C.uint(n), nil, 0, 0, -1, 0, C.int32_t(b.brTail))
	b.keepUntaken()
}

// keepUntaken drops the ops the last rl_tick took and keeps, in order, the
// ones it did not (refused for now by EAGAIN or EBUSY, or left by a
// failure) for the next enter.
func (b *uringBackend) keepUntaken() {
	if taken := int(b.status.taken); taken < b.nops {
		b.nops = copy(b.ops, b.ops[taken:b.nops])
	} else {
		b.nops = 0
	}
}

// growOps moves the staging area to a region for at least n ops (keeping
// the staged ones); it runs between enters, when C holds no pointer to it.
func (b *uringBackend) growOps(n int) error {
	if testHookNoGrow && b.ops != nil {
		return syscall.ENOMEM
	}
	m, err := mapRegion(n * int(unsafe.Sizeof(sqOp{})))
	if err != nil {
		return err
	}
	ops := unsafe.Slice((*sqOp)(m.ptr(0)), len(m.b)/int(unsafe.Sizeof(sqOp{})))
	copy(ops, b.ops[:b.nops])
	b.opsMem.unmap()
	b.opsMem, b.ops = m, ops
	return nil
}

func (b *uringBackend) enter(wait bool, timeout time.Duration) ([]cqEntry, error) {
	if !wait || b.hold == 0 || timeout == 0 {
		return b.tick(wait, timeout)
	}
	// A worker whose waits are long holds its P for the first HoldWait of
	// each (waitMode); its short waits are ordinary ones, which wake as
	// fast and need no timer.
	t0 := time.Now()
	cq, err := b.waitHeld(t0, timeout)
	b.mode.recordWait(time.Since(t0))
	return cq, err
}

// waitHeld is a blocking enter, begun at t0, of a worker that holds its P
// while its waits are long (Config.HoldWait).
func (b *uringBackend) waitHeld(t0 time.Time, timeout time.Duration) ([]cqEntry, error) {
	if b.mode.long {
		// Held: the C layer places the staged ops in the SQ (or, with
		// completions already there, takes them as a tick without a wait
		// does), and the wait is a raw io_uring_enter from here that also
		// submits them: a cgo call is a system call to the scheduler, and
		// its P would be taken like any other's. Then one more crossing
		// takes what the wait brought, or, when the hold ran out, waits
		// on the ordinary way.
		left := timeout // of the wait, from t0 (negative: no limit)
		if b.runnable.waiting() {
			// Goroutines ready to run go first (readyCheck), after what
			// this turn staged is submitted: replies do not wait for them.
			cq, err := b.tick(false, 0)
			if err != nil || len(cq) > 0 {
				return cq, err // no hold: the goroutines' turn comes at the next
			}
			b.runnable.yield()
			left = timeLeft(timeout, time.Since(t0))
		}
		b.maxStaged, b.iterOps = max(b.maxStaged, b.iterOps), 0
		b.nCgo++
		rc := C.rl_tick_prep(b.ring, (*C.struct_rl_op)(b.opsMem.ptr(0)), C.uint(b.nops),
			(*C.struct_rl_cqe)(b.cqMem.ptr(0)), cqBatch, C.int32_t(b.brTail))
		b.keepUntaken()
		if rc != 0 {
			return b.completions(rc)
		}
		d, whole := b.hold, left >= 0 && left <= b.hold
		if whole {
			d = left
		}
		switch b.holdEnter(uint32(b.status.pending), d, whole) {
		case holdDone:
			return b.tick(false, 0)
		case holdBadr:
			return nil, fmt.Errorf("ringline: io_uring enter: %w (the kernel dropped completions: CQ overflow without memory)", syscall.EBADR)
		case holdRanOut, holdCut:
			timeout = timeLeft(timeout, time.Since(t0))
		}
		// holdRanOut, holdCut or holdRefused: the ordinary wait for the
		// time left (which retries a refused submission after a pause).
	}
	return b.tick(true, timeout)
}

// How a held enter ended.
const (
	holdDone    = iota // completions, or the caller's whole wait over
	holdRanOut         // the hold passed with nothing: wait on the ordinary way
	holdRefused        // the kernel refused for now (EAGAIN, EBUSY), or holding is off from now on
	holdBadr           // the kernel dropped completions (EBADR, reported once)
	// holdCut: a signal ended the hold (EINTR), which is none of the
	// things the wait is for: wait on the ordinary way. Not another hold:
	// the runtime's preemption signal comes back while the goroutine
	// seems to run on, and a hold renewed after each would keep the P for
	// the whole wait.
	holdCut
)

// holdEnter waits up to d for a completion in an io_uring_enter made as a
// raw system call (the scheduler sees a running goroutine, so sysmon does
// not take the P), and says how it ended.
//
// It submits the toSubmit SQEs rl_tick_prep left in the SQ; any the
// kernel does not take (it refused them for now, or a signal came first)
// stay there for the next rl_tick to submit. When it submits any, the
// kernel returns their count and not how the wait ended, so whether
// completions came is read off the CQ ring itself.
func (b *uringBackend) holdEnter(toSubmit uint32, d time.Duration, whole bool) int {
	b.holdTS = toKernelTimespec(d)
	b.holdArg.ts = uint64(uintptr(unsafe.Pointer(&b.holdTS)))
	start := time.Now()
	var e syscall.Errno
	if testHookHoldErrno != nil {
		e = testHookHoldErrno()
	}
	if e == 0 {
		_, _, e = unix.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(b.ringFd), uintptr(toSubmit), 1, enterGetevents|enterExtArg,
			uintptr(unsafe.Pointer(&b.holdArg)), unsafe.Sizeof(b.holdArg))
	}
	b.nHeld++
	ready := atomic.LoadUint32(b.cqTail) != atomic.LoadUint32(b.cqHead)
	switch {
	case e == unix.EBADR:
		return holdBadr
	case ready:
		return holdDone
	case e == unix.EINTR:
		return holdCut
	case e == 0 && time.Since(start) < d:
		// It submitted, so the kernel returned the count submitted and
		// not how the wait ended; with nothing in the CQ before the
		// hold's time, a signal ended it.
		return holdCut
	case (e == unix.ETIME || e == 0) && whole:
		return holdDone
	case e == unix.ETIME || e == 0:
		b.nHoldTimeouts++
		return holdRanOut
	case e == unix.EAGAIN || e == unix.EBUSY:
		return holdRefused
	}
	// Anything else (EINVAL, EPERM: the kernel or a seccomp profile will
	// not take this enter): wait the ordinary way from now on.
	b.hold = 0
	if b.log != nil {
		b.log.Warn(holdUnavailable, "err", fmt.Errorf("io_uring_enter: %w", e))
	}
	return holdRefused
}

// tick is one rl_tick: the staged ops, and a wait when wait is set.
func (b *uringBackend) tick(wait bool, timeout time.Duration) ([]cqEntry, error) {
	waitNr := C.uint(0)
	if wait {
		waitNr = C.uint(b.batchNr)
	}
	// One crossing: the buffer-ring tail (entries written by recycle),
	// every staged op and the wait.
	b.maxStaged, b.iterOps = max(b.maxStaged, b.iterOps), 0
	b.nCgo++
	rc := C.rl_tick(b.ring, (*C.struct_rl_op)(b.opsMem.ptr(0)), C.uint(b.nops),
		(*C.struct_rl_cqe)(b.cqMem.ptr(0)), cqBatch, waitNr, C.int64_t(timeout), C.uint(b.batchWaitUs),
		C.int32_t(b.brTail))
	b.keepUntaken()
	return b.completions(rc)
}

// completions turns what an rl_tick returned into the completions copied
// out, or the error.
func (b *uringBackend) completions(rc C.int) ([]cqEntry, error) {
	if rc < 0 {
		err := fmt.Errorf("ringline: io_uring enter: %w", syscall.Errno(-rc))
		if syscall.Errno(-rc) == syscall.EBADR {
			err = fmt.Errorf("%w (the kernel dropped completions: CQ overflow without memory)", err)
		}
		return nil, err
	}
	cq := b.cqes[:rc]
	for i := range cq {
		if cq[i].flags&cqeFBuffer != 0 {
			b.held++
		}
		if udKind(cq[i].ud) == udWake {
			// The read consumed the eventfd's count; the core coalesces
			// wakes, so a write made since shows up as the next read.
			b.armWake()
		}
	}
	return cq, nil
}

func (b *uringBackend) buffer(bid uint16) []byte {
	off := int(bid) * int(b.bufSize)
	return b.bufMem.b[off : off+int(b.bufSize) : off+int(b.bufSize)]
}

// ioURingBuf mirrors struct io_uring_buf.
type ioURingBuf struct {
	addr uint64
	len  uint32
	bid  uint16
	resv uint16 // bufs[0].resv is the ring tail
}

// recycle writes the buffer's entry; the kernel sees it once the next
// rl_tick publishes brTail with a release store (Go has no 16-bit atomic
// store, and a plain one would not order the entry before the tail on
// weakly ordered CPUs such as arm64).
func (b *uringBackend) recycle(bid uint16) {
	e := (*ioURingBuf)(unsafe.Add(b.br, uintptr(b.brTail&b.brMask)*unsafe.Sizeof(ioURingBuf{})))
	e.addr = b.bufMem.addr(int(bid) * int(b.bufSize))
	e.len = b.bufSize
	e.bid = bid
	b.brTail++
	b.held--
}

func (b *uringBackend) buffersFree() int { return int(b.bufCount) - b.held }

func (b *uringBackend) fixedFiles() bool { return b.fixed }

// attach stages the registration of fd in the fixed-file slot idx, linked
// to the op staged next, and returns the fd and flags that op must use.
func (b *uringBackend) attach(idx uint32, fd int32, gen uint32) (int32, uint8) {
	if !b.fixed || idx >= b.fixedN {
		return fd, 0
	}
	// rl_tick never splits the link from its recv across submissions.
	slot := (*int32)(b.fdsMem.ptr(int(idx) * 4))
	*slot = fd
	b.stage(sqOp{code: opFilesUpdate, flags: opFLink, ud: packUD(udFilesUpdate, idx, gen, 0),
		addr: b.fdsMem.addr(int(idx) * 4), len: 1, aux: idx})
	return int32(idx), opFFixed
}

// detach stages the close of a connection's socket (and its fixed slot)
// and returns how many completions with ud will follow.
func (b *uringBackend) detach(idx uint32, fd int32, fixed bool, ud uint64) int {
	n := 0
	if fixed {
		b.stage(sqOp{code: opCloseDirect, ud: ud, aux: idx})
		n++
	}
	b.stage(sqOp{code: opClose, fd: fd, ud: ud})
	return n + 1
}

func (b *uringBackend) wake() {
	var one = [8]byte{1}
	_, _ = unix.Write(b.wakeFd, one[:])
}

func (b *uringBackend) cgoCalls() uint64 { return b.nCgo }

func (b *uringBackend) enters() uint64 {
	// Read in place: publish runs every loop iteration, and a cgo call
	// there would double the loop's cgo cost. Same thread as the writer.
	return uint64(b.ringStatus().enters) + b.nHeld
}

func (b *uringBackend) holds() (uint64, uint64, uint64) {
	return b.nHeld, b.nHoldTimeouts, b.runnable.yields
}

// ringStatus is the C layer's status block: live while the ring exists,
// its last value after close.
func (b *uringBackend) ringStatus() *C.struct_rl_status {
	if b.status != nil {
		return b.status
	}
	return &b.final
}

// injectSubmitErrors makes the next n submissions of this ring fail with
// errno, as the kernel would fail them (tests only; safe from any
// goroutine, and not counted in cgoCalls, which is the worker's).
func (b *uringBackend) injectSubmitErrors(errno syscall.Errno, n int) {
	C.rl_test_fail_submits(b.ring, C.int(errno), C.uint(n))
}

func (b *uringBackend) describe() string {
	var f []string
	for _, x := range []struct {
		bit  uint32
		name string
	}{{C.RL_SETUP_SINGLE_ISSUER, "SINGLE_ISSUER"}, {C.RL_SETUP_DEFER_TASKRUN, "DEFER_TASKRUN"},
		{C.RL_SETUP_COOP_TASKRUN, "COOP_TASKRUN"}, {C.RL_SETUP_TASKRUN_FLAG, "TASKRUN_FLAG"}, {C.RL_SETUP_CQSIZE, "CQSIZE"}} {
		if b.flags&x.bit != 0 {
			f = append(f, x.name)
		}
	}
	f = append(f, "multishot accept", "multishot recv", fmt.Sprintf("provided buffers %dx%d", b.bufCount, b.bufSize))
	if b.batchNr > 1 {
		f = append(f, fmt.Sprintf("batch wait %dus", b.batchWaitUs))
	}
	if b.fixed {
		f = append(f, "fixed files")
	} else {
		f = append(f, "plain fds")
	}
	return "io_uring (" + strings.Join(f, ", ") + ")"
}

func (b *uringBackend) close() error {
	// Ops a refused submission left staged never reach the kernel now;
	// the sockets among them are closed here rather than leaked.
	for _, op := range b.ops[:b.nops] {
		if op.code == opClose && op.fd >= 0 {
			_ = unix.Close(int(op.fd))
		}
	}
	b.nops = 0
	if b.ring != nil {
		b.final = *b.status
		b.status = nil
		b.nCgo++
		C.rl_ring_free(b.ring)
		b.ring = nil
	}
	if b.wakeFd >= 0 {
		_ = unix.Close(b.wakeFd)
		b.wakeFd = -1
	}
	b.opsMem.unmap()
	b.cqMem.unmap()
	b.bufMem.unmap()
	b.fdsMem.unmap()
	b.wakeMem.unmap()
	return nil
}
