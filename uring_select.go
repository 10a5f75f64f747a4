//go:build linux && cgo && !ringline_epoll

package ringline

/*
#include "rl.h"
#include "buildinfo.h"
*/
import "C"

import "syscall"

// uringCompiled reports whether the io_uring backend is in this build.
const uringCompiled = true

// The Go mirrors of RL_SETUP_* must match the C layer.
var (
	_ [setupSingleIssuer - C.RL_SETUP_SINGLE_ISSUER]struct{}
	_ [C.RL_SETUP_SINGLE_ISSUER - setupSingleIssuer]struct{}
	_ [setupDeferTaskrun - C.RL_SETUP_DEFER_TASKRUN]struct{}
	_ [C.RL_SETUP_DEFER_TASKRUN - setupDeferTaskrun]struct{}
	_ [setupCoopTaskrun - C.RL_SETUP_COOP_TASKRUN]struct{}
	_ [C.RL_SETUP_COOP_TASKRUN - setupCoopTaskrun]struct{}
	_ [setupCQSize - C.RL_SETUP_CQSIZE]struct{}
	_ [C.RL_SETUP_CQSIZE - setupCQSize]struct{}
	_ [setupTaskrunFlag - C.RL_SETUP_TASKRUN_FLAG]struct{}
	_ [C.RL_SETUP_TASKRUN_FLAG - setupTaskrunFlag]struct{}
	_ [outMinTimeout - C.RL_OUT_MIN_TIMEOUT]struct{}
	_ [C.RL_OUT_MIN_TIMEOUT - outMinTimeout]struct{}
	// The zero-copy send ops and flags.
	_ [opSendZC - C.RL_OP_SEND_ZC]struct{}
	_ [C.RL_OP_SEND_ZC - opSendZC]struct{}
	_ [opSendmsgZC - C.RL_OP_SENDMSG_ZC]struct{}
	_ [C.RL_OP_SENDMSG_ZC - opSendmsgZC]struct{}
	_ [cqeFMore - C.RL_CQE_F_MORE]struct{}
	_ [C.RL_CQE_F_MORE - cqeFMore]struct{}
	_ [cqeFNotif - C.RL_CQE_F_NOTIF]struct{}
	_ [C.RL_CQE_F_NOTIF - cqeFNotif]struct{}
	_ [zcReportUsage - C.RL_SEND_ZC_REPORT_USAGE]struct{}
	_ [C.RL_SEND_ZC_REPORT_USAGE - zcReportUsage]struct{}
	_ [zcUsageCopied - C.RL_NOTIF_USAGE_ZC_COPIED]struct{}
	_ [C.RL_NOTIF_USAGE_ZC_COPIED - zcUsageCopied]struct{}
	_ [opConnect - C.RL_OP_CONNECT]struct{}
	_ [C.RL_OP_CONNECT - opConnect]struct{}
	_ [opLinkTimeout - C.RL_OP_LINK_TIMEOUT]struct{}
	_ [C.RL_OP_LINK_TIMEOUT - opLinkTimeout]struct{}
)

func newURing(bc backendConfig) (backend, error) {
	b, err := newURingBackend(bc)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// probeKernel runs the C layer's feature probe: a real ring set up under
// mask with entries SQEs, then torn down; with zc, a real zero-copy send
// too. Its cgo calls (the probe, the two build-info queries, one per
// opcode looked up) are counted in probeCgoCalls.
func probeKernel(entries, mask uint32, zc bool) kernelProbe {
	var info C.struct_rl_probe_info
	var opts C.uint
	if zc {
		opts = C.RL_PROBE_SEND_ZC
	}
	probeCgoCalls.Add(3)
	C.rl_probe(&info, C.uint(entries), C.uint(mask), opts)
	kp := kernelProbe{compiled: true, liburing: int(C.rl_liburing_version()), compiledOut: uint32(C.rl_compiled_out())}
	if info.setup_err < 0 {
		kp.setupErr = syscall.Errno(-info.setup_err)
		return kp
	}
	kp.setupFlags = uint32(info.setup_flags)
	if info.buf_ring_err < 0 {
		kp.bufRingErr = syscall.Errno(-info.buf_ring_err)
	}
	kp.recvMulti = int(info.recv_multishot)
	kp.acceptMulti = int(info.accept_multishot)
	kp.sendZC = info.send_zc != 0
	kp.sendmsgZC = info.sendmsg_zc != 0
	kp.zcRes, kp.zcNotif, kp.zcCopied = int(info.zc_res), info.zc_notif != 0, info.zc_copied != 0
	kp.zcSetupErr = int(info.zc_setup_err)
	if info.zc_probed != 0 {
		zcProbes.Add(1)
	}
	kp.ops = make(map[string]bool, len(uringOpNames)+2)
	for op, name := range uringOpNames {
		probeCgoCalls.Add(1)
		k := int(C.rl_kernel_opcode(C.int(op)))
		kp.ops[name] = k >= 0 && k < len(info.ops) && info.ops[k] != 0
	}
	kp.ops["SEND_ZC"] = kp.sendZC
	kp.ops["SENDMSG_ZC"] = kp.sendmsgZC
	return kp
}
