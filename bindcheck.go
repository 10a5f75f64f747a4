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
// bind with SO_REUSEPORT and share the port silently: in one group, each
// taking part of the connections, or, on overlapping addresses (0.0.0.0
// and 127.0.0.1, [::] and 0.0.0.0), the more specific one taking all of
// the connections it matches. So, once its own listeners are listening,
// Bind asks the kernel (NETLINK_SOCK_DIAG) for every TCP listener on the
// port, and fails if one that is not its own overlaps its address, as the
// probe would have failed had it come later. Of two servers that race, at
// least the one that lists second sees the other and fails (both may, when
// each lists after both listen; connections already queued on a failing
// server's listeners are reset as it closes them); a server that passes
// keeps the port alone.

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
// and inode (each 32 bits). Attributes (struct rtattr) follow it.
const inetDiagMsgLen = 4 + 48 + 5*4

// inetDiagSKV6Only is INET_DIAG_SKV6ONLY, the attribute (one byte) the
// kernel adds to every AF_INET6 socket's answer: IPV6_V6ONLY.
const inetDiagSKV6Only = 11

// tcpListenState is TCP_LISTEN (include/net/tcp_states.h).
const tcpListenState = 10

// diagTimeout bounds the wait for the kernel's answer.
const diagTimeout = 2 * time.Second

// diagListener is one TCP listening socket as the kernel describes it.
type diagListener struct {
	addr   netip.Addr // IPv4 for AF_INET, IPv6 (possibly v4-mapped) for AF_INET6
	v6only bool       // AF_INET6 only: it takes no IPv4 connections
	inode  uint64
}

// diagUnavailable reports whether err, from creating or writing the
// netlink socket, means the kernel cannot be asked at all (rather than a
// shortage, which Bind reports).
func diagUnavailable(err error) bool {
	switch err {
	case unix.EAFNOSUPPORT, unix.EPROTONOSUPPORT, unix.EPERM, unix.EACCES, unix.ENOENT, unix.EOPNOTSUPP, unix.ENOSYS:
		return true
	}
	return false
}

// portListeners returns the TCP sockets of both families listening on
// port in this network namespace, or errDiagUnavailable when the kernel
// cannot be asked.
func portListeners(port int) ([]diagListener, error) {
	var all []diagListener
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		ls, err := dumpListeners(family, port)
		if err != nil {
			return nil, err
		}
		all = append(all, ls...)
	}
	return all, nil
}

func dumpListeners(family uint8, port int) ([]diagListener, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		if diagUnavailable(err) {
			return nil, errDiagUnavailable
		}
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(diagTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}

	req := inetDiagReq{family: family, protocol: unix.IPPROTO_TCP, states: 1 << tcpListenState}
	binary.BigEndian.PutUint16(req.id.sport[:], uint16(port)) // the kernel's dump of listeners filters on it
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
		if diagUnavailable(err) {
			return nil, errDiagUnavailable
		}
		return nil, fmt.Errorf("sock_diag request: %w", err)
	}

	var found []diagListener
	buf := make([]byte, 32<<10) // the kernel's largest dump message
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return nil, fmt.Errorf("sock_diag: no answer within %v: %w", diagTimeout, unix.ETIMEDOUT)
		case err != nil:
			return nil, fmt.Errorf("sock_diag: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, fmt.Errorf("sock_diag: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE, unix.NLMSG_ERROR:
				// Both may carry an errno (negative); NLMSG_DONE does when
				// the dump failed part way.
				if len(m.Data) >= 4 {
					if errno := unix.Errno(-int32(binary.NativeEndian.Uint32(m.Data))); errno != 0 {
						if diagUnavailable(errno) {
							return nil, errDiagUnavailable // no inet_diag for TCP
						}
						return nil, fmt.Errorf("sock_diag: %w", errno)
					}
				}
				if m.Header.Type == unix.NLMSG_DONE {
					return found, nil
				}
				return nil, errors.New("sock_diag: unexpected acknowledgement")
			case unix.SOCK_DIAG_BY_FAMILY:
			default:
				continue
			}
			d := m.Data
			if len(d) < inetDiagMsgLen || d[0] != family || d[1] != tcpListenState ||
				int(binary.BigEndian.Uint16(d[4:6])) != port {
				continue
			}
			if binary.NativeEndian.Uint32(d[40:44]) != 0 {
				// Bound to a device (SO_BINDTODEVICE): in another VRF it
				// does not conflict with Bind's unbound listeners at all,
				// and outside one the probe bind already refused it; a
				// device-bound socket racing the probe is not caught.
				continue
			}
			l := diagListener{inode: uint64(binary.NativeEndian.Uint32(d[inetDiagMsgLen-4:]))}
			if family == unix.AF_INET {
				l.addr = netip.AddrFrom4([4]byte(d[8:12]))
			} else {
				l.addr = netip.AddrFrom16([16]byte(d[8:24]))
				l.v6only = diagV6Only(d[inetDiagMsgLen:])
			}
			found = append(found, l)
		}
	}
}

// diagV6Only finds INET_DIAG_SKV6ONLY among the attributes.
func diagV6Only(attrs []byte) bool {
	for len(attrs) >= 4 {
		alen := int(binary.NativeEndian.Uint16(attrs[0:2]))
		if alen < 4 || alen > len(attrs) {
			return false
		}
		if binary.NativeEndian.Uint16(attrs[2:4]) == inetDiagSKV6Only && alen >= 5 {
			return attrs[4] != 0
		}
		next := (alen + 3) &^ 3
		if next >= len(attrs) {
			return false
		}
		attrs = attrs[next:]
	}
	return false
}

// overlaps reports whether a listener on a takes connections that a
// listener on b could take: the same address, or either the unspecified
// address of its family, where an IPv6 [::] that is not v6-only also takes
// IPv4 (and an IPv4-mapped IPv6 address is its IPv4 address).
func overlaps(a, b diagListener) bool {
	norm := func(l diagListener) diagListener {
		if l.addr.Is4In6() {
			l.addr = l.addr.Unmap()
		}
		return l
	}
	a, b = norm(a), norm(b)
	if a.addr.Is4() == b.addr.Is4() {
		return a.addr == b.addr || a.addr.IsUnspecified() || b.addr.IsUnspecified()
	}
	if a.addr.Is4() {
		a, b = b, a // a is the IPv6 one
	}
	return a.addr.IsUnspecified() && !a.v6only
}

// listPortListeners is portListeners; a test replaces it to take the paths
// where the kernel cannot be asked.
var listPortListeners = portListeners

// checkSoleListeners fails with an error wrapping EADDRINUSE when a TCP
// socket other than fds (all listening on ip:port) listens on an address
// that overlaps ip on port. Where the kernel cannot be asked it passes:
// the probe bind has already refused the address if it was taken before
// Bind began.
func checkSoleListeners(fds []int, ip netip.Addr, port int) error {
	all, err := listPortListeners(port)
	if errors.Is(err, errDiagUnavailable) {
		return nil
	}
	if err != nil {
		return err
	}
	self := diagListener{addr: ip}
	if ip.Is4In6() {
		self.addr = ip.Unmap()
	}
	if self.addr.Is6() {
		v6only, err := unix.GetsockoptInt(fds[0], unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
		if err != nil {
			return fmt.Errorf("getsockopt IPV6_V6ONLY: %w", err)
		}
		self.v6only = v6only != 0
	}
	ours := make(map[uint64]bool, len(fds))
	for _, fd := range fds {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return fmt.Errorf("fstat: %w", err)
		}
		ours[st.Ino] = true
	}
	for _, l := range all {
		if !ours[l.inode] && overlaps(self, l) {
			return fmt.Errorf("another socket (listening on %v) took the address while Bind was setting up its listeners (set Config.ReusePort to share it): %w",
				netip.AddrPortFrom(l.addr, uint16(port)), unix.EADDRINUSE)
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
