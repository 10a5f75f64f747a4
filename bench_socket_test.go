//go:build linux && cgo && !ringline_epoll

package ringline

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// opSocket is csrc's RL_OP_SOCKET (fd = domain, len = type, aux =
// protocol): only this measurement uses it.
const opSocket = 13

// BenchmarkSocketCreate measures how Connect should make its socket: a
// plain socket(2), or IORING_OP_SOCKET through the ring. The ring cannot
// link the connect to a socket op that returns an ordinary fd (the connect
// must name the fd, which only the completion tells), so an op costs a
// loop turn, one enter, before the connect can be staged; that is what
// iouring-op times (one op per enter). iouring-op-batch32 puts 32 socket
// ops in one enter, the best case of a burst of connects. (A socket made
// straight into the fixed-file table could be linked, but has no ordinary
// fd for TCP_NODELAY or PeerAddr.) The sockets are closed outside the
// timed part, 32 at a time, so only their creation is measured.
func BenchmarkSocketCreate(b *testing.B) {
	var fds []int
	closeAll := func(b *testing.B) {
		b.StopTimer()
		for _, fd := range fds {
			unix.Close(fd)
		}
		fds = fds[:0]
		b.StartTimer()
	}
	b.Run("syscall", func(b *testing.B) {
		for range b.N {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				b.Fatal(err)
			}
			if fds = append(fds, fd); len(fds) == 32 {
				closeAll(b)
			}
		}
		closeAll(b)
	})
	for _, batch := range []int{1, 32} {
		name := "iouring-op"
		if batch > 1 {
			name = "iouring-op-batch32"
		}
		b.Run(name, func(b *testing.B) {
			if err := uringUnusable(); err != nil {
				b.Skip(err)
			}
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			be, err := newURing(backendConfig{ringEntries: 64, bufCount: 8, bufSize: 4096, maxConns: 64, plainFDs: true})
			if err != nil {
				b.Fatal(err)
			}
			defer be.close()
			b.ResetTimer()
			for done := 0; done < b.N; {
				n := min(batch, b.N-done)
				for i := range n {
					be.stage(sqOp{code: opSocket, fd: unix.AF_INET, len: unix.SOCK_STREAM | unix.SOCK_CLOEXEC, ud: packUD(udConnect, uint32(i), 0, 0)})
				}
				for got := 0; got < n; {
					cq, err := be.enter(true, -1)
					if err != nil {
						b.Fatal(err)
					}
					for _, e := range cq {
						if udKind(e.ud) != udConnect {
							continue
						}
						if e.res < 0 {
							b.Fatalf("IORING_OP_SOCKET: %v", unix.Errno(-e.res))
						}
						fds = append(fds, int(e.res))
						got++
					}
				}
				done += n
				if len(fds) >= 32 {
					closeAll(b)
				}
			}
			closeAll(b)
		})
	}
}
