package testdb

import "syscall"

// setParentDeathSignal makes the kernel send SIGQUIT (PostgreSQL's immediate
// shutdown) to the server when the thread that started it exits, so a test
// binary that crashes or times out does not leave a server behind. The
// server is started from a goroutine locked to its OS thread until the
// server exits (see startServer), which ties that thread's life to ours.
func setParentDeathSignal(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGQUIT }
