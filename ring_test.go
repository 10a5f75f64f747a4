//go:build linux && cgo && !ringline_epoll

package ringline

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
	"golang.org/x/sys/unix"
)

// Ring-level tests of the io_uring backend: the setup flag ladder, the
// probe, the CQ size, submit errors, an overflowed CQ and the cgo
// crossings per loop iteration. They need a kernel with io_uring; where
// there is none they skip, visibly, unless RINGLINE_REQUIRE_IOURING=1.

// ladderRungs is the setup ladder of csrc/rl.h, most capable first.
var ladderRungs = []uint32{
	setupSingleIssuer | setupDeferTaskrun | setupCQSize,
	setupSingleIssuer | setupDeferTaskrun,
	setupCoopTaskrun | setupTaskrunFlag | setupCQSize,
	setupCoopTaskrun | setupTaskrunFlag,
	setupCoopTaskrun | setupCQSize,
	setupCoopTaskrun,
	setupCQSize,
	0,
}

// rungMask is the Config.ringFlagMask that lands the ladder on rung f: its
// own flags (a mask of only a bit no flag uses allows none; 0 would mean
// "no restriction").
func rungMask(f uint32) uint32 {
	if f == 0 {
		return 1 << 31
	}
	return f
}

func flagNames(f uint32) string {
	var s []string
	for _, x := range setupFlagNames {
		if f&x.bit != 0 {
			s = append(s, x.name)
		}
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, "|")
}

// needRing skips the test where io_uring cannot run, or fails it when the
// environment says io_uring is required.
func needRing(t *testing.T) {
	t.Helper()
	cfg := DefaultConfig()
	if err := uringUsable(&cfg); err != nil {
		if os.Getenv("RINGLINE_REQUIRE_IOURING") == "1" {
			t.Fatalf("io_uring is required (RINGLINE_REQUIRE_IOURING=1) but unusable: %v", err)
		}
		t.Skipf("SKIP: io_uring unusable on this host: %v", err)
	}
}

// launch starts a runtime whose shutdown the test drives itself (stop);
// the cleanup only makes sure it ends.
func launch(t *testing.T, cfg Config) *Runtime {
	t.Helper()
	rt, err := New(cfg).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
	require.NoError(t, err)
	t.Cleanup(func() { rt.Shutdown(); <-rt.Done() })
	return rt
}

// yieldsOf is how many holds of be first let ready goroutines run.
func yieldsOf(be backend) uint64 { _, _, y := be.holds(); return y }

func uringOf(t *testing.T, rt *Runtime) *uringBackend {
	t.Helper()
	require.Equal(t, IOUring, rt.Backend())
	return rt.workers[0].be.(*uringBackend)
}

// echoLoad runs conns clients at once, each doing rounds round trips of
// size bytes with its own pattern, and checks every byte that comes back.
// Errors are collected, not raised from the client goroutines.
func echoLoad(t *testing.T, rt *Runtime, conns, rounds, size int) {
	t.Helper()
	require.NoError(t, echoLoadErr(rt, conns, rounds, size))
}

// echoLoadErr is echoLoad for goroutines other than the test's: it reports
// the first error instead of failing the test.
func echoLoadErr(rt *Runtime, conns, rounds, size int) error {
	errs := make(chan error, conns)
	var wg sync.WaitGroup
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs <- echoClient(rt.Addr().String(), i, rounds, size)
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func echoClient(addr string, id, rounds, size int) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	got := make([]byte, size)
	for r := 0; r < rounds; r++ {
		msg := pattern(size, byte(id*31+r))
		werr := make(chan error, 1)
		go func() { _, err := c.Write(msg); werr <- err }()
		if _, err := io.ReadFull(c, got); err != nil {
			return fmt.Errorf("client %d round %d: read: %w", id, r, err)
		}
		if err := <-werr; err != nil {
			return fmt.Errorf("client %d round %d: write: %w", id, r, err)
		}
		if !bytes.Equal(msg, got) {
			return fmt.Errorf("client %d round %d: echoed bytes differ", id, r)
		}
	}
	return nil
}

// Every rung of the setup ladder, reached by masking the flags above it:
// the ring has exactly that rung's flags, the probe on it finds multishot
// accept and recv (the probe once read another op's completion on rings
// without DEFER_TASKRUN), probing leaks no descriptor, and the runtime
// serves on it.
func TestRingLadderEveryRung(t *testing.T) {
	needRing(t)
	for _, rung := range ladderRungs {
		t.Run(flagNames(rung), func(t *testing.T) {
			mask := rungMask(rung)
			fds := openFDs(t)
			for i := 0; i < 10; i++ {
				kp := probeKernel(256, mask, false)
				require.Zero(t, kp.setupErr)
				require.Equal(t, flagNames(rung), flagNames(kp.setupFlags), "probe ring flags")
				require.Zero(t, kp.bufRingErr)
				require.Equal(t, 1, kp.acceptMulti, "multishot accept on %s", flagNames(rung))
				require.Equal(t, 1, kp.recvMulti, "multishot recv on %s", flagNames(rung))
				require.NoError(t, kp.usable())
			}
			assert.Equal(t, fds, openFDs(t), "descriptors leaked by 10 probes")

			cfg := testConfig(IOUring)
			cfg.ringFlagMask = mask
			rt := launch(t, cfg)
			assert.Equal(t, flagNames(rung), flagNames(uringOf(t, rt).flags), "worker ring flags")
			for _, f := range setupFlagNames {
				if rung&f.bit != 0 {
					assert.Contains(t, rt.Features(), f.name)
				} else {
					assert.NotContains(t, rt.Features(), f.name)
				}
			}
			echoLoad(t, rt, 4, 3, 10<<10)
		})
	}
}

// RingEntries at its maximum asks for a CQ (4x) above the kernel's 65536:
// clamped, the ring keeps SINGLE_ISSUER|DEFER_TASKRUN|CQSIZE and serves.
func TestRingEntriesMaxKeepsFlags(t *testing.T) {
	needRing(t)
	cfg := testConfig(IOUring)
	cfg.RingEntries = 32768
	rt := launch(t, cfg)
	be := uringOf(t, rt)
	assert.Equal(t, flagNames(setupSingleIssuer|setupDeferTaskrun|setupCQSize), flagNames(be.flags))
	assert.Equal(t, uint32(65536), uint32(be.ringStatus().cq_entries))
	echoLoad(t, rt, 4, 3, 10<<10)
}

// With far more ops staged per iteration than the SQ holds (RingEntries=8,
// 64 busy connections), each loop iteration still crosses into C once
// (twice when it holds its wait, Config.HoldWait: the wait is then made
// from Go, between the two): rl_tick submits the staging area in SQ-sized
// chunks.
func TestRingOneCrossingPerIteration(t *testing.T) {
	needRing(t)
	cfg := testConfig(IOUring)
	cfg.RingEntries = 8
	rt := launch(t, cfg)
	be := uringOf(t, rt)
	echoLoad(t, rt, 64, 30, 2048)
	stop(t, rt)
	st := Total(rt.Stats())
	t.Logf("RingEntries=8: %d cgo calls over %d loop iterations (%.3f per iteration), %d ring enters, most ops staged in one iteration %d",
		st.CgoCalls, st.LoopIterations, float64(st.CgoCalls)/float64(st.LoopIterations), st.RingEnters, be.maxStaged)
	require.Greater(t, be.maxStaged, 8, "the load never staged more ops than the SQ holds")
	require.Greater(t, st.LoopIterations, uint64(100))
	// Setup (ring, status, ring fd, buffer ring, file table) and
	// teardown (last submit, ring release) are a constant; the rest is one
	// per iteration, one more per held wait, and one more per hold that
	// first let ready goroutines run (readyCheck: the test's clients).
	assert.LessOrEqual(t, st.CgoCalls, st.LoopIterations+st.HeldWaits+yieldsOf(be)+9)
}

// If the staging area cannot grow (no memory), a full area is submitted
// early: an extra crossing, counted, and nothing lost or split (a staged
// link waits for its partner).
func TestRingStagingCannotGrow(t *testing.T) {
	needRing(t)
	testHookNoGrow = true
	t.Cleanup(func() { testHookNoGrow = false })
	cfg := testConfig(IOUring)
	cfg.RingEntries = 8
	rt := launch(t, cfg)
	be := uringOf(t, rt)
	// The area fills when many connections' sends land in one iteration;
	// three rounds make that all but certain on a loaded machine too.
	for range 3 {
		echoLoad(t, rt, 200, 10, 512)
	}
	stop(t, rt)
	st := Total(rt.Stats())
	t.Logf("area of %d ops: %d cgo calls over %d loop iterations, most ops staged in one iteration %d",
		len(be.ops), st.CgoCalls, st.LoopIterations, be.maxStaged)
	require.Greater(t, be.maxStaged, len(be.ops), "the area never filled: the test did not test")
	assert.Greater(t, st.CgoCalls, st.LoopIterations+6, "the early submits are counted")
}

// The early submit of a full area never splits a link: the
// FILES_UPDATE that fills the area waits for its recv, so when the update
// fails (a bad fd) the recv is cancelled with it instead of running on an
// empty slot.
func TestRingSubmitNowKeepsLinks(t *testing.T) {
	needRing(t)
	runtime.LockOSThread() // the ring is SINGLE_ISSUER: one thread
	defer runtime.UnlockOSThread()
	testHookNoGrow = true
	t.Cleanup(func() { testHookNoGrow = false })
	b, err := newURingBackend(backendConfig{ringEntries: 8, bufCount: 4, bufSize: 4096, maxConns: 16})
	require.NoError(t, err)
	defer b.close()
	require.True(t, b.fixed)
	for b.nops < len(b.ops)-1 {
		b.stage(sqOp{code: opNop, ud: packUD(udCancel, 9, 0, 0)})
	}
	opFd, flags := b.attach(3, 1<<20, 0) // no such fd: the update fails
	require.Equal(t, uint8(opFFixed), flags)
	require.Equal(t, len(b.ops), b.nops, "the area is full")
	recvUD := packUD(udRecv, 3, 0, 0)
	b.stage(sqOp{code: opRecvMulti, fd: opFd, flags: flags, ud: recvUD})
	require.Equal(t, uint64(1), b.nCgo-4, "one early submit (after 4 setup calls)")
	// Copies: a completion slice lives only until the next enter.
	var upd, recv []cqEntry
	for deadline := time.Now().Add(10 * time.Second); (upd == nil || recv == nil) && time.Now().Before(deadline); {
		cq, err := b.enter(true, 100*time.Millisecond)
		require.NoError(t, err)
		for _, e := range cq {
			switch e.ud {
			case packUD(udFilesUpdate, 3, 0, 0):
				upd = append(upd, e)
			case recvUD:
				recv = append(recv, e)
			}
		}
	}
	require.Len(t, upd, 1)
	require.Len(t, recv, 1)
	assert.Equal(t, -int32(syscall.EBADF), upd[0].res, "the update of a bad fd")
	assert.Equal(t, -int32(syscall.ECANCELED), recv[0].res, "the linked recv (EBADF: the link was split)")
}

// WorkerStats.CgoCalls counts every crossing: over a runtime's whole life
// the process's cgo calls (runtime.NumCgoCall) are exactly the worker's
// CgoCalls plus the feature probe's, which Launch runs before any worker.
func TestRingCgoCallsCountEveryCrossing(t *testing.T) {
	needRing(t)
	cfg := testConfig(IOUring)
	cfg.BatchWait = time.Millisecond // one more setup call to count
	p0, n0 := probeCgoCalls.Load(), runtime.NumCgoCall()
	rt, err := New(cfg).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
	require.NoError(t, err)
	echoLoad(t, rt, 8, 5, 4096)
	stop(t, rt)
	n1, p1 := runtime.NumCgoCall(), probeCgoCalls.Load()
	st := Total(rt.Stats())
	require.NotZero(t, p1-p0, "Launch probed the kernel")
	assert.Equal(t, uint64(n1-n0), st.CgoCalls+(p1-p0),
		"cgo calls made: %d; counted: worker %d + probe %d", n1-n0, st.CgoCalls, p1-p0)
}

// A submission the kernel refuses for now (EAGAIN: no memory for requests;
// EBUSY: CQ backlog on older kernels) or interrupts (EINTR) neither stops
// the worker nor loses a staged op: with failures injected into the next
// 20 submissions, 16 clients echo correctly and 40 connections opened and
// closed leave no descriptor behind (their closes were staged ops).
func TestRingSubmitErrorsRecovered(t *testing.T) {
	needRing(t)
	for _, errno := range []syscall.Errno{syscall.EINTR, syscall.EAGAIN, syscall.EBUSY} {
		t.Run(unix.ErrnoName(errno), func(t *testing.T) {
			cfg := testConfig(IOUring)
			cfg.RingEntries = 8
			rt := launch(t, cfg)
			be := uringOf(t, rt)
			echoLoad(t, rt, 1, 1, 100)
			allClosed := func() bool {
				st := Total(rt.Stats())
				return st.Closed == st.Accepted
			}
			require.True(t, settle(10*time.Second, allClosed))
			fds := openFDs(t)
			const injected = 20
			be.injectSubmitErrors(errno, injected)
			loadErr := make(chan error, 1)
			go func() { loadErr <- echoLoadErr(rt, 16, 10, 4096) }()
			for i := 0; i < 40; i++ {
				c, err := net.DialTimeout("tcp", rt.Addr().String(), 5*time.Second)
				require.NoError(t, err)
				c.Close()
			}
			require.NoError(t, <-loadErr)
			select {
			case <-rt.Done():
				t.Fatalf("the worker stopped")
			default:
			}
			require.True(t, settle(10*time.Second, allClosed), "connections not all closed: %+v", Total(rt.Stats()))
			require.True(t, settle(10*time.Second, func() bool { return openFDs(t) == fds }),
				"descriptors: %d before, %d after", fds, openFDs(t))
			stop(t, rt)
			st := be.ringStatus()
			t.Logf("%s x%d injected: %d retries, %d enters", unix.ErrnoName(errno), injected, st.retries, st.enters)
			assert.GreaterOrEqual(t, uint64(st.retries), uint64(injected), "every injected failure was met")
		})
	}
}

// A CQ as small as the SQ (8) under 64 busy connections overflows; the
// kernel keeps the surplus in its overflow list and the ring drains it:
// every byte echoes, no completion is dropped.
func TestRingTinyCQOverflow(t *testing.T) {
	needRing(t)
	testHookCQEntries = 8
	t.Cleanup(func() { testHookCQEntries = 0 })
	cfg := testConfig(IOUring)
	cfg.RingEntries = 8
	rt := launch(t, cfg)
	be := uringOf(t, rt)
	require.Equal(t, uint32(8), uint32(be.ringStatus().cq_entries))
	echoLoad(t, rt, 64, 20, 2048)
	require.True(t, settle(10*time.Second, func() bool {
		st := Total(rt.Stats())
		return st.Closed == st.Accepted
	}))
	stop(t, rt)
	st := be.ringStatus()
	t.Logf("CQ of 8: %d overflow flushes, %d dropped, %d enters", st.overflow_flushes, st.cq_dropped, st.enters)
	assert.NotZero(t, uint64(st.overflow_flushes), "the CQ never overflowed: the test did not test")
	assert.Zero(t, uint32(st.cq_dropped))
}

// Launch checks that io_uring is usable without the zero-copy send check
// (a TCP connection and a SEND_ZC waited on to its notification, about a
// millisecond): whether zero copy works is learnt by each worker's first
// zero-copy send, so only Probe, which reports it, runs the check.
func TestRingLaunchSkipsZeroCopyProbe(t *testing.T) {
	needRing(t)
	z0 := zcProbes.Load()
	rt, err := New(testConfig(IOUring)).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
	require.NoError(t, err)
	echoLoad(t, rt, 2, 2, 64)
	stop(t, rt)
	assert.Equal(t, z0, zcProbes.Load(), "Launch ran no zero-copy check")
	p := Probe()
	assert.Equal(t, z0+1, zcProbes.Load(), "Probe runs it")
	assert.NoError(t, p.ZeroCopy, "Probe still reports zero copy (Linux 6.2+)")
	assert.True(t, p.ZeroCopyLoopbackCopies, "and that loopback copies")
}
