package ringline

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrIOUringUnavailable is wrapped by every error that explains why the
// io_uring backend cannot run: Launch with Config.Backend = IOUring returns
// it (together with the kernel's syscall.Errno when the kernel refused, so
// errors.Is(err, syscall.EPERM) works), and ProbeResult.AutoReason wraps it
// when Auto would fall back to epoll.
var ErrIOUringUnavailable = errors.New("ringline: io_uring unavailable")

// Ring setup flags as the C layer reports them (RL_SETUP_* in csrc/rl.h;
// uring_select.go checks the values at compile time). Config.ringFlagMask
// is a set of these: a flag outside a non-zero mask is treated as refused.
const (
	setupSingleIssuer = 1 << 0
	setupDeferTaskrun = 1 << 1
	setupCoopTaskrun  = 1 << 2
	setupCQSize       = 1 << 3
	setupTaskrunFlag  = 1 << 4
)

var setupFlagNames = []struct {
	bit  uint32
	name string
}{{setupSingleIssuer, "SINGLE_ISSUER"}, {setupDeferTaskrun, "DEFER_TASKRUN"},
	{setupCoopTaskrun, "COOP_TASKRUN"}, {setupTaskrunFlag, "TASKRUN_FLAG"}, {setupCQSize, "CQSIZE"}}

// Features the C layer compiled out because the liburing it was built
// against is older than the pinned one (RL_OUT_* in csrc/buildinfo.h;
// uring_select.go checks the values at compile time).
const outMinTimeout = 1 << 0

var compiledOutNames = []struct {
	bit  uint32
	name string
}{{outMinTimeout, "min-timeout batch waits"}}

// uringOpNames names the io_uring operations behind ringline's op codes
// (the kernel's IORING_OP_ names without the prefix).
//
//lint:ignore U1000 used by uring_select.go; builds without io_uring have no use for it
var uringOpNames = map[int]string{opAcceptMulti: "ACCEPT", opRecvMulti: "RECV", opSend: "SEND", opSendmsg: "SENDMSG",
	opCancel: "ASYNC_CANCEL", opClose: "CLOSE", opFilesUpdate: "FILES_UPDATE", opRead: "READ",
	opShutdown: "SHUTDOWN", opConnect: "CONNECT", opTimeout: "TIMEOUT", opLinkTimeout: "LINK_TIMEOUT"}

// uringRequiredOps are the operations the io_uring backend cannot run
// without; the others are used by features that degrade or come later.
var uringRequiredOps = []string{"ACCEPT", "RECV", "SEND", "SENDMSG", "ASYNC_CANCEL", "CLOSE", "READ"}

// kernelProbe is what the build and the kernel offer, as found by a real
// ring setup (probeKernel, in uring_select.go or uring_off.go).
type kernelProbe struct {
	compiled    bool          // io_uring backend compiled into this build
	liburing    int           // liburing version built against, major*100+minor
	compiledOut uint32        // out* features missing from this build
	setupErr    syscall.Errno // io_uring_setup refused (0: a ring was set up)
	setupFlags  uint32        // setup* flags accepted
	bufRingErr  syscall.Errno // provided buffer ring registration refused
	recvMulti   int           // 1 supported, 0 refused, <0 -errno of the check itself
	acceptMulti int
	sendZC      bool
	sendmsgZC   bool
	// One real SEND_ZC over TCP loopback: the first completion's res,
	// whether a notification followed and said the kernel copied, or why
	// the check could not run (-errno).
	zcRes, zcSetupErr int
	zcNotif, zcCopied bool
	ops               map[string]bool
}

// usable reports nil when the io_uring backend can run, otherwise an error
// wrapping ErrIOUringUnavailable (and the kernel's errno) saying what is
// missing.
func (kp *kernelProbe) usable() error {
	if !kp.compiled {
		return fmt.Errorf("%w: the io_uring backend is not compiled in (built with CGO_ENABLED=0 or -tags ringline_epoll)",
			ErrIOUringUnavailable)
	}
	if kp.setupErr != 0 {
		return fmt.Errorf("%w: io_uring_setup: %s (%w)%s", ErrIOUringUnavailable,
			unix.ErrnoName(kp.setupErr), kp.setupErr, setupHint(kp.setupErr))
	}
	var missing []string
	var errno error
	for _, name := range uringRequiredOps {
		if !kp.ops[name] {
			missing = append(missing, "IORING_OP_"+name)
		}
	}
	if kp.bufRingErr != 0 {
		missing = append(missing, "provided buffer rings (register: "+unix.ErrnoName(kp.bufRingErr)+")")
		errno = kp.bufRingErr
	}
	if kp.recvMulti != 1 {
		missing = append(missing, "multishot recv"+probeDetail(kp.recvMulti))
	}
	if kp.acceptMulti != 1 {
		missing = append(missing, "multishot accept"+probeDetail(kp.acceptMulti))
	}
	if len(missing) == 0 {
		return nil
	}
	if errno != nil {
		return fmt.Errorf("%w: the kernel lacks %s: %w", ErrIOUringUnavailable, strings.Join(missing, ", "), errno)
	}
	return fmt.Errorf("%w: the kernel lacks %s", ErrIOUringUnavailable, strings.Join(missing, ", "))
}

func probeDetail(res int) string {
	if res < 0 {
		return " (check failed: " + unix.ErrnoName(syscall.Errno(-res)) + ")"
	}
	return ""
}

func setupHint(e syscall.Errno) string {
	switch e {
	case syscall.EPERM:
		return "; denied by a seccomp profile (Docker's default forbids io_uring) or by sysctl kernel.io_uring_disabled"
	case syscall.ENOSYS:
		return "; the kernel has no io_uring (older than 5.1, or built without it)"
	case syscall.ENOMEM:
		return "; RLIMIT_MEMLOCK may be too low for the ring"
	}
	return ""
}

// uringUsable reports nil when the io_uring backend can run with cfg's ring
// size and flag mask, otherwise why not (see kernelProbe.usable). It sets
// up, exercises and tears down a real ring, so a seccomp filter or a
// disabled io_uring is caught here rather than in a worker.
func uringUsable(cfg *Config) error {
	entries := uint32(cfg.RingEntries)
	if entries == 0 {
		entries = 1024
	}
	mask := cfg.ringFlagMask
	if mask == 0 {
		mask = ^uint32(0)
	}
	// Without the zero-copy check: a worker learns that from its first
	// zero-copy send, and the check costs a TCP connection.
	kp := probeKernel(entries, mask, false)
	return kp.usable()
}

// ProbeResult reports what this build and the running kernel offer
// ringline, and which backend Config.Backend = Auto would pick.
type ProbeResult struct {
	// IOUringCompiled is false in builds made with CGO_ENABLED=0 or
	// -tags ringline_epoll; every io_uring field is then zero.
	IOUringCompiled bool
	// Liburing is the version of the liburing headers the io_uring
	// backend was compiled against, e.g. "2.9" (the pinned build) or
	// "2.3" (Debian 12's liburing-dev). Empty when io_uring is not
	// compiled in.
	Liburing string
	// CompiledOut names what this build cannot do, whatever the kernel
	// offers, because its liburing is older than 2.9: "min-timeout batch
	// waits" (liburing before 2.8; Config.BatchWait then has no effect).
	// Empty with the pinned liburing.
	CompiledOut []string
	// RingSetup is nil when an io_uring instance could be created;
	// otherwise it wraps ErrIOUringUnavailable and, when the kernel
	// refused, its syscall.Errno (EPERM under a seccomp profile that
	// forbids io_uring, ENOSYS on kernels without it).
	RingSetup error
	// SetupFlags lists the ring setup flags the kernel accepted on the
	// most capable rung of the setup ladder, e.g. SINGLE_ISSUER,
	// DEFER_TASKRUN, COOP_TASKRUN, TASKRUN_FLAG, CQSIZE.
	SetupFlags []string
	// Opcodes maps the io_uring operations ringline uses or may use, by
	// their IORING_OP_ name without the prefix (ACCEPT, RECV, SEND,
	// SENDMSG, ASYNC_CANCEL, CLOSE, FILES_UPDATE, READ, SHUTDOWN,
	// CONNECT, TIMEOUT, SEND_ZC, SENDMSG_ZC), to whether the kernel
	// supports them. Empty when no ring could be set up.
	Opcodes map[string]bool
	// ProvidedBufferRings reports that a provided buffer ring could be
	// registered.
	ProvidedBufferRings bool
	// MultishotAccept and MultishotRecv report that the kernel kept a
	// multishot accept and a multishot recv armed after their first
	// completion (tested on AF_UNIX sockets).
	MultishotAccept, MultishotRecv bool
	// SendZC and SendmsgZC report the zero-copy send opcodes.
	SendZC, SendmsgZC bool
	// ZeroCopy is nil when a real zero-copy send (SEND_ZC asking for a
	// usage report, over a TCP loopback connection) completed and was
	// notified as the kernel specifies, so the io_uring backend sends
	// zero-copy above Config.SendZCThreshold. Otherwise it says why not,
	// wrapping the kernel's syscall.Errno where it refused (EINVAL before
	// Linux 6.2, which has SEND_ZC but no usage reports): workers then
	// fall back to copied sends on their first attempt.
	ZeroCopy error
	// ZeroCopyLoopbackCopies reports that the kernel said it copied that
	// send after all, as it always does for loopback (and veth) peers,
	// whose receive path copies. A worker falls back to copied sends for
	// good at the first such report (WorkerStats.ZeroCopyFallbacks), so a
	// worker serving loopback clients pays for one zero-copy send.
	ZeroCopyLoopbackCopies bool
	// Auto is the backend Launch picks for Config.Backend = Auto with the
	// default Config.
	Auto Backend
	// AutoReason is nil when Auto picks io_uring; otherwise the reason it
	// falls back to epoll, wrapping ErrIOUringUnavailable.
	AutoReason error
}

// Probe inspects the build and the kernel: it sets up a real io_uring
// instance (so seccomp filters and kernel.io_uring_disabled are seen),
// reads the supported opcodes, registers a provided buffer ring and checks
// multishot recv and accept on AF_UNIX sockets, then tears everything
// down. It takes about a millisecond and is safe from any goroutine.
func Probe() ProbeResult {
	cfg := DefaultConfig()
	kp := probeKernel(uint32(cfg.RingEntries), ^uint32(0), true)
	r := ProbeResult{IOUringCompiled: kp.compiled}
	if kp.compiled {
		r.Liburing = fmt.Sprintf("%d.%d", kp.liburing/100, kp.liburing%100)
		for _, f := range compiledOutNames {
			if kp.compiledOut&f.bit != 0 {
				r.CompiledOut = append(r.CompiledOut, f.name)
			}
		}
	}
	if kp.compiled && kp.setupErr == 0 {
		for _, f := range setupFlagNames {
			if kp.setupFlags&f.bit != 0 {
				r.SetupFlags = append(r.SetupFlags, f.name)
			}
		}
		r.Opcodes = make(map[string]bool, len(kp.ops))
		for k, v := range kp.ops {
			r.Opcodes[k] = v
		}
		r.ProvidedBufferRings = kp.bufRingErr == 0
		r.MultishotAccept = kp.acceptMulti == 1
		r.MultishotRecv = kp.recvMulti == 1
		r.SendZC, r.SendmsgZC = kp.sendZC, kp.sendmsgZC
		r.ZeroCopy = kp.zeroCopy()
		r.ZeroCopyLoopbackCopies = kp.zcCopied
	} else {
		r.RingSetup = kp.usable()
	}
	r.Auto = IOUring
	if err := kp.usable(); err != nil {
		r.Auto, r.AutoReason = Epoll, err
	}
	return r
}

// zeroCopy says why zero-copy sends cannot be used, or nil.
func (kp *kernelProbe) zeroCopy() error {
	switch {
	case !kp.sendZC:
		return errors.New("ringline: the kernel lacks IORING_OP_SEND_ZC (Linux 6.0+)")
	case kp.zcSetupErr < 0:
		return fmt.Errorf("ringline: zero-copy check could not run: %w", syscall.Errno(-kp.zcSetupErr))
	case kp.zcRes < 0:
		return fmt.Errorf("ringline: the kernel refused a zero-copy send with a usage report (Linux 6.2+): %w", syscall.Errno(-kp.zcRes))
	case !kp.zcNotif:
		return errors.New("ringline: a zero-copy send was not notified")
	}
	return nil
}

// String renders the result on a few lines, for logs and the examples.
func (r ProbeResult) String() string {
	var b strings.Builder
	yes := func(v bool) string {
		if v {
			return "yes"
		}
		return "no"
	}
	fmt.Fprintf(&b, "io_uring compiled in: %s\n", yes(r.IOUringCompiled))
	if r.Liburing != "" {
		fmt.Fprintf(&b, "built against liburing %s", r.Liburing)
		if len(r.CompiledOut) > 0 {
			fmt.Fprintf(&b, ": %s unavailable", strings.Join(r.CompiledOut, ", "))
		}
		b.WriteString("\n")
	}
	if r.RingSetup != nil {
		fmt.Fprintf(&b, "io_uring ring setup: %v\n", r.RingSetup)
	} else if r.IOUringCompiled {
		fmt.Fprintf(&b, "io_uring setup flags: %s\n", strings.Join(r.SetupFlags, " "))
		var have, lack []string
		for name, ok := range r.Opcodes {
			if ok {
				have = append(have, name)
			} else {
				lack = append(lack, name)
			}
		}
		sort.Strings(have)
		sort.Strings(lack)
		fmt.Fprintf(&b, "io_uring opcodes: %s", strings.Join(have, " "))
		if len(lack) > 0 {
			fmt.Fprintf(&b, " (missing: %s)", strings.Join(lack, " "))
		}
		b.WriteString("\n")
		fmt.Fprintf(&b, "provided buffer rings: %s, multishot accept: %s, multishot recv: %s, SEND_ZC: %s, SENDMSG_ZC: %s\n",
			yes(r.ProvidedBufferRings), yes(r.MultishotAccept), yes(r.MultishotRecv), yes(r.SendZC), yes(r.SendmsgZC))
		if r.ZeroCopy != nil {
			fmt.Fprintf(&b, "zero-copy sends: no (%v)\n", r.ZeroCopy)
		} else if r.ZeroCopyLoopbackCopies {
			b.WriteString("zero-copy sends: yes (the kernel copies for loopback peers: a worker serving them falls back to copied sends)\n")
		} else {
			b.WriteString("zero-copy sends: yes\n")
		}
	}
	fmt.Fprintf(&b, "Auto picks: %s", r.Auto)
	if r.AutoReason != nil {
		fmt.Fprintf(&b, " (%v)", r.AutoReason)
	}
	return b.String()
}
