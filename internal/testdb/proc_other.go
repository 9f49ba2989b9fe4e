//go:build !unix

package testdb

import (
	"os"
	"syscall"
)

type runAs struct {
	name     string
	uid, gid uint32
}

func serverAccount() (*runAs, error) { return nil, nil }

func sysProcAttr(*runAs, bool) *syscall.SysProcAttr { return nil }

func chownTree(string, *runAs) error { return nil }

func chown(string, *runAs) error { return nil }

func traversable(string, *runAs) bool { return true }

func quitServer(p *os.Process) error { return p.Kill() }

// processAlive is conservative where it cannot tell: stale directories are
// then left alone.
func processAlive(int) bool { return true }
