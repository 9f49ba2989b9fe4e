//go:build unix && !linux

package testdb

import "syscall"

// setParentDeathSignal is a no-op where the OS has no parent-death signal;
// Stop must be called to end the server.
func setParentDeathSignal(*syscall.SysProcAttr) {}
