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
	"strings"
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

// uringBackend drives one worker's io_uring. Staged ops and copied-out
// completions live in mmap'd regions, so one cgo call per enter moves a
// whole batch without cgo pointer checks or copies.
type uringBackend struct {
	ring      *C.struct_rl_ring
	entersPtr *C.uint64_t
	flags     uint32 // RL_SETUP_* accepted

	opsMem region
	ops    []sqOp
	nops   int

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

	nCgo    uint64
	errWait error
}

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
	b.nCgo++
	if rc := C.rl_ring_init(&ring, C.uint(cfg.ringEntries), C.uint(cfg.ringEntries*4), mask); rc < 0 {
		return nil, fmt.Errorf("ringline: io_uring_setup: %w", syscall.Errno(-rc))
	}
	b.ring = ring
	b.entersPtr = C.rl_ring_enters_ptr(ring)
	b.flags = uint32(C.rl_ring_setup_flags(ring))
	if cfg.batchWait > 0 && C.rl_has_min_timeout(ring) != 0 {
		b.batchNr = batchWaitNr
		b.batchWaitUs = uint32(max(cfg.batchWait/time.Microsecond, 1))
	}

	if b.opsMem, err = mapRegion(int(cfg.ringEntries) * int(unsafe.Sizeof(sqOp{}))); err != nil {
		return nil, err
	}
	b.ops = unsafe.Slice((*sqOp)(b.opsMem.ptr(0)), cfg.ringEntries)
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
	if b.nops == len(b.ops) {
		b.flush()
	}
	b.ops[b.nops] = op
	b.nops++
}

// flush pushes staged ops to the kernel without waiting; completions it
// reaps stay in the CQ ring for the next enter (cap 0 copies none).
func (b *uringBackend) flush() {
	b.publishBuffers()
	b.nCgo++
	rc := C.rl_tick(b.ring, (*C.struct_rl_op)(b.opsMem.ptr(0)), C.uint(b.nops), nil, 0, 0, -1, 0)
	if rc < 0 {
		b.errWait = fmt.Errorf("ringline: io_uring submit: %w", syscall.Errno(-rc))
	}
	b.nops = 0
}

func (b *uringBackend) enter(wait bool, timeout time.Duration) ([]cqEntry, error) {
	if b.errWait != nil {
		err := b.errWait
		b.errWait = nil
		return nil, err
	}
	waitNr := C.uint(0)
	if wait {
		waitNr = C.uint(b.batchNr)
	}
	b.publishBuffers()
	b.nCgo++
	rc := C.rl_tick(b.ring, (*C.struct_rl_op)(b.opsMem.ptr(0)), C.uint(b.nops),
		(*C.struct_rl_cqe)(b.cqMem.ptr(0)), cqBatch, waitNr, C.int64_t(timeout), C.uint(b.batchWaitUs))
	b.nops = 0
	if rc < 0 {
		return nil, fmt.Errorf("ringline: io_uring enter: %w", syscall.Errno(-rc))
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

func (b *uringBackend) recycle(bid uint16) {
	e := (*ioURingBuf)(unsafe.Add(b.br, uintptr(b.brTail&b.brMask)*unsafe.Sizeof(ioURingBuf{})))
	e.addr = b.bufMem.addr(int(bid) * int(b.bufSize))
	e.len = b.bufSize
	e.bid = bid
	b.brTail++
	b.held--
}

// publishBuffers makes recycled buffers visible to the kernel. It runs just
// before the cgo call, which orders the entry stores before the tail store
// for the kernel (x86-64 TSO; the call is a compiler barrier).
func (b *uringBackend) publishBuffers() {
	tail := (*uint16)(unsafe.Add(b.br, 14))
	*tail = b.brTail
}

func (b *uringBackend) buffersFree() int { return int(b.bufCount) - b.held }

func (b *uringBackend) fixedFiles() bool { return b.fixed }

// attach stages the registration of fd in the fixed-file slot idx, linked
// to the op staged next, and returns the fd and flags that op must use.
func (b *uringBackend) attach(idx uint32, fd int32, gen uint32) (int32, uint8) {
	if !b.fixed || idx >= b.fixedN {
		return fd, 0
	}
	if b.nops+2 > len(b.ops) {
		b.flush() // never split the link from its recv across submits
	}
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
	if b.ring == nil {
		return 0
	}
	// Read in place: publish runs every loop iteration, and a cgo call
	// there would double the loop's cgo cost. Same thread as the writer.
	return uint64(*b.entersPtr)
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
	if b.ring != nil {
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
