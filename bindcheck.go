package ringline

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Bind's exclusivity, after the fact; BindUnix's, by a lock.
//
// listenReusePort refuses an address another socket holds by first binding
// a probe socket without SO_REUSEPORT. That probe is closed before the
// workers' SO_REUSEPORT listeners are bound, and in between a second
// server of the same user making the same check passes it too; both then
// bind with SO_REUSEPORT and the kernel puts them in one group, silently
// splitting the connections. So, once its own listeners are listening,
// Bind asks the kernel (NETLINK_SOCK_DIAG) for every TCP socket listening
// on exactly that address and port: a group holds only sockets bound to
// the same address, so any listener there that is not one of ours has
// joined it. Of two servers that race, the one that lists second sees the
// other and fails; the first may pass, and then keeps the port alone.

// errDiagUnavailable reports that the kernel offers no socket
// diagnostics (no inet_diag, or a sandbox that forbids the netlink
// family): Bind then keeps the probe's answer alone.
var errDiagUnavailable = errors.New("socket diagnostics unavailable")

// inetDiagReq is struct inet_diag_req_v2 (linux/inet_diag.h).
type inetDiagReq struct {
	family   uint8
	protocol uint8
	ext      uint8
	pad      uint8
	states   uint32
	id       inetDiagSockID
}

// inetDiagSockID is struct inet_diag_sockid; ports and addresses are in
// network byte order.
type inetDiagSockID struct {
	sport  [2]byte
	dport  [2]byte
	src    [16]byte
	dst    [16]byte
	ifidx  uint32
	cookie [2]uint32
}

// inetDiagMsgLen is the size of struct inet_diag_msg: family, state,
// timer, retrans, the 48-byte sockid, then expires, rqueue, wqueue, uid
// and inode (each 32 bits).
const inetDiagMsgLen = 4 + 48 + 5*4

// tcpListenState is TCP_LISTEN (include/net/tcp_states.h).
const tcpListenState = 10

// listenerInodes returns the socket inodes of the TCP sockets in this
// network namespace listening on exactly ip:port (ip as listenReusePort
// binds it: IPv4 for IPv4 and IPv4-mapped addresses, IPv6 otherwise). It
// returns errDiagUnavailable when the kernel cannot be asked.
func listenerInodes(ip netip.Addr, port int) ([]uint64, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, errDiagUnavailable
	}
	defer unix.Close(fd)

	family, addr := uint8(unix.AF_INET6), ip.As16()
	if ip.Is4() || ip.Is4In6() {
		family = unix.AF_INET
		addr = [16]byte{}
		a4 := ip.Unmap().As4()
		copy(addr[:], a4[:])
	}
	req := inetDiagReq{family: family, protocol: unix.IPPROTO_TCP, states: 1 << tcpListenState}
	binary.BigEndian.PutUint16(req.id.sport[:], uint16(port)) // the kernel's dump filters on it
	const hdrLen = unix.SizeofNlMsghdr
	msg := make([]byte, hdrLen+int(unsafe.Sizeof(req)))
	*(*unix.NlMsghdr)(unsafe.Pointer(&msg[0])) = unix.NlMsghdr{
		Len:   uint32(len(msg)),
		Type:  unix.SOCK_DIAG_BY_FAMILY,
		Flags: unix.NLM_F_REQUEST | unix.NLM_F_DUMP,
		Seq:   1,
	}
	*(*inetDiagReq)(unsafe.Pointer(&msg[hdrLen])) = req
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, errDiagUnavailable
	}

	var inodes []uint64
	buf := make([]byte, 32<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("sock_diag: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, fmt.Errorf("sock_diag: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return inodes, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := -int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
						if unix.Errno(errno) == unix.ENOENT || unix.Errno(errno) == unix.EOPNOTSUPP {
							return nil, errDiagUnavailable // no inet_diag for TCP
						}
						return nil, fmt.Errorf("sock_diag: %w", unix.Errno(errno))
					}
				}
				continue
			case unix.SOCK_DIAG_BY_FAMILY:
			default:
				continue
			}
			d := m.Data
			if len(d) < inetDiagMsgLen || d[0] != family || d[1] != tcpListenState {
				continue
			}
			if int(binary.BigEndian.Uint16(d[4:6])) != port || [16]byte(d[8:24]) != addr {
				continue
			}
			inodes = append(inodes, uint64(binary.NativeEndian.Uint32(d[inetDiagMsgLen-4:])))
		}
	}
}

// listListeners is listenerInodes; a test replaces it to take the paths
// where the kernel cannot be asked.
var listListeners = listenerInodes

// checkSoleListeners fails with an error wrapping EADDRINUSE when a TCP
// socket other than fds listens on exactly ip:port. Where the kernel
// cannot be asked it passes: the probe bind has already refused the
// address if it was taken before Bind began.
func checkSoleListeners(fds []int, ip netip.Addr, port int) error {
	found, err := listListeners(ip, port)
	if errors.Is(err, errDiagUnavailable) {
		return nil
	}
	if err != nil {
		return err
	}
	ours := make(map[uint64]bool, len(fds))
	for _, fd := range fds {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return fmt.Errorf("fstat: %w", err)
		}
		ours[st.Ino] = true
	}
	for _, ino := range found {
		if !ours[ino] {
			return fmt.Errorf("another socket joined the address while Bind was setting up its listeners (set Config.ReusePort to share it): %w", unix.EADDRINUSE)
		}
	}
	return nil
}

// socketDirLockWait bounds how long BindUnix waits for the lock on the
// socket's directory before it goes on without it.
const socketDirLockWait = 2 * time.Second

// testHookUnixStale, when set by a test, runs after unixPathFree has found
// a stale socket file and before it removes it: the window in which
// another server can bind the path.
var testHookUnixStale func()

// lockSocketDir takes an exclusive flock(2) on the directory of the
// socket file at path and returns its release. BindUnix holds it from the
// check of the path to listen(2): otherwise two runtimes that both found a
// stale socket file there could both remove "it", the second removing the
// first one's new socket file, and both would start, the first unreachable.
// The lock is advisory and taken only by ringline runtimes; a directory
// that cannot be opened for reading, or whose lock is not free within
// socketDirLockWait (some other program holding it), is bound without it,
// as before.
func lockSocketDir(path string) (unlock func()) {
	fd, err := unix.Open(filepath.Dir(path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return func() {}
	}
	deadline := time.Now().Add(socketDirLockWait)
	for {
		switch err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); {
		case err == nil:
			return func() { unix.Close(fd) } // closing the last fd releases the lock
		case err == unix.EINTR:
		case err == unix.EWOULDBLOCK && time.Now().Before(deadline):
			time.Sleep(time.Millisecond)
		default:
			unix.Close(fd)
			return func() {}
		}
	}
}
