package ringline

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// region is anonymous memory mapped outside the Go heap: the kernel and the
// C layer may keep pointers into it, and the garbage collector never moves
// or scans it. Pages are touched lazily, so an idle region costs address
// space, not RSS.
type region struct {
	b []byte
}

func mapRegion(size int) (region, error) {
	if size <= 0 {
		return region{}, nil
	}
	size = (size + pageSize - 1) &^ (pageSize - 1)
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return region{}, fmt.Errorf("ringline: mmap %d bytes: %w", size, err)
	}
	return region{b: b}, nil
}

func (r *region) ptr(off int) unsafe.Pointer { return unsafe.Pointer(&r.b[off]) }

func (r *region) addr(off int) uint64 { return uint64(uintptr(unsafe.Pointer(&r.b[off]))) }

func (r *region) unmap() {
	if r.b != nil {
		_ = unix.Munmap(r.b)
		r.b = nil
	}
}

var pageSize = unix.Getpagesize()
