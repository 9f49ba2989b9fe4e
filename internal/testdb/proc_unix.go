//go:build unix

package testdb

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// runAs is the OS account the server runs as when this process is root
// (initdb and postgres refuse to run as root).
type runAs struct {
	name     string
	uid, gid uint32
}

// serverAccount returns nil when the server can run as the current user, or
// the account to switch to when running as root.
func serverAccount() (*runAs, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("testdb: running as root, but PostgreSQL refuses to run as root and there is no %q OS user to run it as "+
			"(installing the postgresql package creates it; or run the tests as a non-root user): %w", "postgres", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("testdb: uid of OS user postgres: %w", err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("testdb: gid of OS user postgres: %w", err)
	}
	return &runAs{name: u.Username, uid: uint32(uid), gid: uint32(gid)}, nil
}

// sysProcAttr makes a child run as acct (when not nil) and, where the OS
// supports it, die with this process.
func sysProcAttr(acct *runAs, dieWithParent bool) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{}
	if acct != nil {
		a.Credential = &syscall.Credential{Uid: acct.uid, Gid: acct.gid, Groups: []uint32{}}
	}
	if dieWithParent {
		setParentDeathSignal(a)
	}
	return a
}

// chownTree gives path (and everything under it) to acct; a no-op for nil.
func chownTree(path string, acct *runAs) error {
	if acct == nil {
		return nil
	}
	return filepath.WalkDir(path, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(acct.uid), int(acct.gid))
	})
}

// chown gives one file to acct; a no-op for nil.
func chown(path string, acct *runAs) error {
	if acct == nil {
		return nil
	}
	return os.Lchown(path, int(acct.uid), int(acct.gid))
}

// traversable reports whether acct can pass through every directory from dir
// up to the file system root (only the "others" bits are checked, which is
// what matters for a root-owned temp dir).
func traversable(dir string, acct *runAs) bool {
	if acct == nil {
		return true
	}
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return false
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		owned := ok && st.Uid == acct.uid
		if !owned && fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if d == filepath.Dir(d) {
			return true
		}
	}
}

// quitServer asks the postmaster for an immediate shutdown: it SIGQUITs its
// children, waits for them, and exits.
func quitServer(p *os.Process) error { return p.Signal(syscall.SIGQUIT) }

// processAlive reports whether a process with this pid exists (a process of
// another user counts as alive).
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
