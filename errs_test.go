package ringline

import "syscall"

var errAddrInUse = syscall.EADDRINUSE
