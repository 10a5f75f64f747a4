package ringline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
	"golang.org/x/sys/unix"
)

// Backend selection: Probe, Config.Backend, the build tags, and the
// fallback under a seccomp profile that forbids io_uring.

func TestProbe(t *testing.T) {
	p := Probe()
	t.Logf("Probe():\n%s", p)
	assert.Equal(t, uringCompiled, p.IOUringCompiled)
	cfg := DefaultConfig()
	usable := uringUsable(&cfg)
	if usable == nil {
		assert.Equal(t, IOUring, p.Auto)
		assert.NoError(t, p.AutoReason)
		assert.NoError(t, p.RingSetup)
		assert.Contains(t, p.String(), "Auto picks: iouring")
	} else {
		assert.Equal(t, Epoll, p.Auto)
		assert.ErrorIs(t, p.AutoReason, ErrIOUringUnavailable)
		assert.Contains(t, p.String(), "Auto picks: epoll")
	}
	if !uringCompiled {
		// CGO_ENABLED=0 or -tags ringline_epoll: nothing to probe.
		assert.ErrorIs(t, p.RingSetup, ErrIOUringUnavailable)
		assert.Contains(t, p.AutoReason.Error(), "not compiled in")
		assert.Empty(t, p.SetupFlags)
		assert.Empty(t, p.Opcodes)
		return
	}
	if p.RingSetup != nil {
		// A kernel or policy without io_uring: the reason carries the errno.
		var errno syscall.Errno
		assert.True(t, errors.As(p.RingSetup, &errno), "ring setup error wraps the errno: %v", p.RingSetup)
		return
	}
	// A ring was set up: the kernel answered every question.
	assert.NotEmpty(t, p.SetupFlags)
	for _, op := range uringRequiredOps {
		assert.Contains(t, p.Opcodes, op)
	}
	assert.Contains(t, p.Opcodes, "SEND_ZC")
	assert.Contains(t, p.Opcodes, "SENDMSG_ZC")
	assert.Equal(t, p.Opcodes["SEND_ZC"], p.SendZC)
	if usable == nil {
		// What Auto needs is there, and said so.
		assert.True(t, p.ProvidedBufferRings)
		assert.True(t, p.MultishotAccept)
		assert.True(t, p.MultishotRecv)
		assert.True(t, p.Opcodes["RECV"] && p.Opcodes["ACCEPT"])
	}
}

func echoOnce(t *testing.T, rt *Runtime) {
	t.Helper()
	c := dial(t, rt)
	msg := pattern(10<<10, 42)
	require.True(t, bytes.Equal(msg, roundTrip(t, c, msg)), "echo round trip")
}

func TestBackendEpollServesEcho(t *testing.T) {
	rt := serve(t, testConfig(Epoll), echoTask)
	assert.Equal(t, Epoll, rt.Backend())
	assert.True(t, strings.HasPrefix(rt.Features(), "epoll ("), "features: %s", rt.Features())
	echoOnce(t, rt)
	st := Total(rt.Stats())
	assert.Zero(t, st.CgoCalls, "the epoll backend makes no cgo calls")
	assert.NotZero(t, st.RingEnters, "epoll_wait calls are counted as enters")
}

// Auto picks what Probe says it picks, and says why when that is epoll.
func TestBackendAutoFollowsProbe(t *testing.T) {
	cfg := testConfig(Auto)
	logs := captureLog(&cfg)
	rt := serve(t, cfg, echoTask)
	p := Probe()
	assert.Equal(t, p.Auto, rt.Backend())
	echoOnce(t, rt)
	if p.Auto == Epoll {
		assert.Contains(t, logs.String(), "epoll")
		assert.Contains(t, logs.String(), p.AutoReason.Error())
	} else {
		assert.NotContains(t, logs.String(), "epoll", "no fallback note when io_uring runs")
	}
}

// A ring setup that refuses a flag is retried without it: with
// DEFER_TASKRUN treated as refused, the ladder lands on
// COOP_TASKRUN|TASKRUN_FLAG|CQSIZE, the probe on that ring passes and the
// runtime serves. Where io_uring runs unmasked, the masked rung must run
// too (ring_test.go walks every rung). Builds without io_uring refuse
// IOUring outright.
func TestBackendRefusedRingFlagRetried(t *testing.T) {
	cfg := testConfig(IOUring)
	cfg.ringFlagMask = ^uint32(setupDeferTaskrun)
	if !uringCompiled {
		_, err := New(cfg).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		require.ErrorIs(t, err, ErrIOUringUnavailable)
		assert.Contains(t, err.Error(), "not compiled in")
		return
	}
	unmasked := testConfig(IOUring)
	if err := uringUsable(&unmasked); err != nil {
		// No io_uring on this host at all: the error must say why.
		_, lerr := New(cfg).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		require.ErrorIs(t, lerr, ErrIOUringUnavailable)
		if os.Getenv("RINGLINE_REQUIRE_IOURING") == "1" {
			t.Fatalf("io_uring is required (RINGLINE_REQUIRE_IOURING=1) but unusable: %v", err)
		}
		t.Skipf("SKIP: io_uring unusable on this host, the retry path untested: %v", err)
	}
	require.NoError(t, uringUsable(&cfg), "io_uring runs unmasked, so the rung below DEFER_TASKRUN must too")
	full := serve(t, unmasked, echoTask)
	assert.Contains(t, full.Features(), "DEFER_TASKRUN", "unmasked, the first rung is taken")

	rt := serve(t, cfg, echoTask)
	assert.Equal(t, IOUring, rt.Backend())
	assert.NotContains(t, rt.Features(), "DEFER_TASKRUN")
	assert.NotContains(t, rt.Features(), "SINGLE_ISSUER")
	assert.Contains(t, rt.Features(), "COOP_TASKRUN")
	assert.Contains(t, rt.Features(), "TASKRUN_FLAG")
	assert.Contains(t, rt.Features(), "CQSIZE")
	echoOnce(t, rt)
}

const seccompChildEnv = "RINGLINE_SECCOMP_CHILD"

// Under a seccomp filter that denies io_uring_setup with EPERM (as Docker's
// default profile does), Auto serves on epoll and IOUring fails with an
// error naming EPERM. The filter is installed in a child process (the test
// binary re-executed), since seccomp filters cannot be removed.
func TestSeccompDeniesIOUring(t *testing.T) {
	if os.Getenv(seccompChildEnv) == "1" {
		seccompChild(t)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestSeccompDeniesIOUring$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), seccompChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	t.Logf("child output:\n%s", out)
	require.NoError(t, err, "child failed")
	assert.Contains(t, string(out), "seccomp child: Auto served on epoll")
	assert.Contains(t, string(out), "--- PASS: TestSeccompDeniesIOUring")
}

func seccompChild(t *testing.T) {
	require.NoError(t, denyIOUringSetup())

	// The filter works: io_uring_setup itself is refused with EPERM.
	var params [120]byte
	_, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, 4, uintptr(unsafe.Pointer(&params[0])), 0)
	require.Equal(t, syscall.EPERM, e, "io_uring_setup under the filter")

	p := Probe()
	assert.Equal(t, Epoll, p.Auto)
	require.Error(t, p.AutoReason)
	if uringCompiled {
		assert.ErrorIs(t, p.RingSetup, syscall.EPERM)
	}

	// Auto: falls back, says why, serves.
	cfg := testConfig(Auto)
	logs := captureLog(&cfg)
	rt := serve(t, cfg, echoTask)
	require.Equal(t, Epoll, rt.Backend())
	echoOnce(t, rt)
	t.Logf("seccomp child: Auto served on epoll (%s); log: %s", rt.Features(), logs.String())
	if uringCompiled {
		assert.Contains(t, logs.String(), "falling back to epoll")
		assert.Contains(t, logs.String(), "EPERM")
	}

	// IOUring: a clear error.
	_, err := New(testConfig(IOUring)).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
	require.Error(t, err)
	t.Logf("IOUring under the filter: %v", err)
	assert.ErrorIs(t, err, ErrIOUringUnavailable)
	if uringCompiled {
		assert.ErrorIs(t, err, syscall.EPERM)
		assert.Contains(t, err.Error(), "EPERM")
		assert.Contains(t, err.Error(), "seccomp")
	} else {
		assert.Contains(t, err.Error(), "not compiled in")
	}
}

// denyIOUringSetup installs, on every thread of the process, a seccomp
// filter that fails io_uring_setup with EPERM and allows everything else.
func denyIOUringSetup() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return err
	}
	var arch uint32
	switch runtime.GOARCH {
	case "amd64":
		arch = unix.AUDIT_ARCH_X86_64
	case "arm64":
		arch = unix.AUDIT_ARCH_AARCH64
	}
	const (
		offNr   = 0 // offsetof(struct seccomp_data, nr)
		offArch = 4 // offsetof(struct seccomp_data, arch)
	)
	var filter []unix.SockFilter
	if arch != 0 {
		filter = append(filter,
			unix.SockFilter{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: offArch},
			unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 1, Jf: 0, K: arch},
			unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW}, // another ABI
		)
	}
	filter = append(filter,
		unix.SockFilter{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: offNr},
		unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: unix.SYS_IO_URING_SETUP},
		unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	)
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	// TSYNC: the Go runtime runs on many threads, and the workers' threads
	// may be created from any of them.
	r, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC,
		uintptr(unsafe.Pointer(&prog)))
	runtime.KeepAlive(filter)
	if e != 0 {
		return e
	}
	if r != 0 {
		return fmt.Errorf("seccomp: thread %d could not take the filter", r)
	}
	return nil
}
