//go:build unix

package pgsecrets_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets"
)

// hangGuard is how long a call that must not block may take before the
// test gives up on it: a guard against hanging the test binary, not a
// timing requirement.
const hangGuard = 10 * time.Second

// returns runs f and fails the test if it has not returned within the hang
// guard (f is then left blocked: there is no way to unblock it).
func returns(t *testing.T, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(hangGuard):
		t.Fatalf("%s has not returned after %s: it is blocked", what, hangGuard)
		return nil
	}
}

// fileOnlyDSN is a file-provider DSN for tests that never reach a database.
func fileOnlyDSN(path string) string {
	return "host=127.0.0.1 sslmode=disable secret_provider=file secret_id=" + path
}

// writeMode writes content to path atomically with exactly mode (umask
// does not apply).
func writeMode(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func mkdirMode(t *testing.T, dir string, mode os.FileMode) {
	t.Helper()
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
}

func mkfifo(t *testing.T, path string) {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skipf("cannot make a named pipe here: %v", err)
	}
}

// A named pipe where the secret file should be: Refresh fails at once with
// an error naming the path and what it is, and Close returns. Opening a
// pipe without O_NONBLOCK waits for a writer that never comes.
func TestFileFIFOIsRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir string) (secretID, pipe string)
	}{
		{"file", func(t *testing.T, dir string) (string, string) {
			p := filepath.Join(dir, "db.json")
			mkfifo(t, p)
			return p, p
		}},
		{"symlink to a pipe", func(t *testing.T, dir string) (string, string) {
			p := filepath.Join(dir, "pipe")
			mkfifo(t, p)
			link := filepath.Join(dir, "db.json")
			if err := os.Symlink("pipe", link); err != nil {
				t.Fatal(err)
			}
			return link, link
		}},
		{"password file of a directory", func(t *testing.T, dir string) (string, string) {
			writeMode(t, filepath.Join(dir, "username"), "app", 0o600)
			p := filepath.Join(dir, "password")
			mkfifo(t, p)
			return dir, p
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			secretID, pipe := tc.setup(t, t.TempDir())
			c, err := pgsecrets.NewConnector(fileOnlyDSN(secretID), pgsecrets.WithLogger(slog.New(slog.DiscardHandler)))
			if err != nil {
				t.Fatal(err)
			}
			err = returns(t, "Refresh with a named pipe as the secret file", func() error {
				_, err := c.Refresh(context.Background())
				return err
			})
			if !errors.Is(err, pgsecrets.ErrMalformedSecret) || !strings.Contains(err.Error(), pipe) ||
				!strings.Contains(err.Error(), "named pipe") {
				t.Errorf("got %v, want a malformed secret naming %s and saying it is a named pipe", err, pipe)
			}
			returns(t, "Close", c.Close)
		})
	}
}

// A writer swaps a named pipe and a regular file at the path as fast as it
// can, so that some reads find the pipe where their stat saw a file. Every
// Fetch returns: what was opened is judged by its descriptor.
func TestFileFIFOSwappedIn(t *testing.T) {
	useDefaultLogger(t, slog.New(slog.DiscardHandler)) // EventFileUnusable for each pipe caught
	dir := t.TempDir()
	path := filepath.Join(dir, "db.json")
	good := rdsSecret("u", "pw-file", nil)
	writeMode(t, path, good, 0o600)
	p, _, err := pgsecrets.NewProviderForTest("secret_provider=file secret_id=" + path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Fetch(context.Background(), "AWSCURRENT"); err != nil {
		t.Fatal(err)
	}

	stop, swapped := make(chan struct{}), make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				// The regular file back, renamed over the pipe: writing
				// through the path would wait for a reader of the pipe.
				err := os.WriteFile(path+".file", []byte(good), 0o600)
				if err == nil {
					err = os.Rename(path+".file", path)
				}
				swapped <- err
				return
			default:
			}
			if err := os.WriteFile(path+".file", []byte(good), 0o600); err != nil {
				swapped <- err
				return
			}
			if err := syscall.Mkfifo(path+".pipe", 0o600); err != nil {
				swapped <- err
				return
			}
			// The file is in place only between these two renames.
			_ = os.Rename(path+".file", path)
			_ = os.Rename(path+".pipe", path)
		}
	}()

	const fetches = 50000 // before the fix, one blocked within the first few thousand
	progress, done := make(chan struct{}, 1), make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < fetches; i++ {
			_, _ = p.Fetch(context.Background(), "AWSCURRENT")
			select {
			case progress <- struct{}{}:
			default:
			}
		}
	}()
	guard := time.NewTimer(hangGuard)
	defer guard.Stop()
	for running := true; running; {
		select {
		case <-done:
			running = false
		case <-progress:
			guard.Reset(hangGuard)
		case <-guard.C:
			close(stop)
			t.Fatalf("a Fetch has not returned after %s: blocked opening a named pipe", hangGuard)
		}
	}
	close(stop)
	if err := <-swapped; err != nil {
		t.Fatal(err)
	}
	c, err := p.Fetch(context.Background(), "AWSCURRENT")
	if err != nil || c.Password.Reveal() != "pw-file" {
		t.Errorf("with the file back: %+v %v", c, err)
	}
}

// Who else may change or read the secret file: EventFileWritable and
// EventFileReadable once per connector (two reads of the file each), with
// the path and mode and never the content; no warning for a private file,
// a sticky directory or a Kubernetes Secret volume's default 0644.
func TestFilePermissionWarnings(t *testing.T) {
	const pw = "pw-never-logged"
	content := func(i int) string { return rdsSecret("app", pw, map[string]any{"n": i}) }
	// kube lays out a Secret volume as the kubelet does: the root 1777,
	// each version in a "..<time>" directory (0755) that ..data names,
	// the visible names linked through ..data; files with the default
	// mode 0644.
	kube := func(t *testing.T, root string, version int, files map[string]string) {
		t.Helper()
		ts := fmt.Sprintf("..2026_12_0%d_00_00_00.000000001", version)
		old := ""
		if version > 1 {
			old = fmt.Sprintf("..2026_12_0%d_00_00_00.000000001", version-1)
		}
		k8sUpdate(t, root, ts, old, files)
		if err := os.Chmod(filepath.Join(root, ts), 0o755); err != nil {
			t.Fatal(err)
		}
		for name := range files {
			if err := os.Chmod(filepath.Join(root, ts, name), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		name string
		// setup writes version 1 and returns the secret_id and what makes
		// version 2.
		setup              func(t *testing.T, base string) (secretID string, next func())
		writable, readable int
		want               []string // in each warning line
		sameContent        bool     // version 2 changes the mode only
	}{
		{
			name: "private file",
			setup: func(t *testing.T, base string) (string, func()) {
				path := filepath.Join(base, "db.json")
				writeMode(t, path, content(1), 0o600)
				return path, func() { writeMode(t, path, content(2), 0o600) }
			},
		},
		{
			name: "group-writable file",
			setup: func(t *testing.T, base string) (string, func()) {
				path := filepath.Join(base, "db.json")
				writeMode(t, path, content(1), 0o660)
				return path, func() { writeMode(t, path, content(2), 0o660) }
			},
			writable: 1, want: []string{"mode=0660"},
		},
		{
			name: "world-writable file",
			setup: func(t *testing.T, base string) (string, func()) {
				path := filepath.Join(base, "db.json")
				writeMode(t, path, content(1), 0o666)
				return path, func() { writeMode(t, path, content(2), 0o666) }
			},
			writable: 1, readable: 1, want: []string{"mode=0666"},
		},
		{
			name: "made writable after the first read",
			setup: func(t *testing.T, base string) (string, func()) {
				path := filepath.Join(base, "db.json")
				writeMode(t, path, content(1), 0o600)
				return path, func() {
					if err := os.Chmod(path, 0o620); err != nil {
						t.Fatal(err)
					}
				}
			},
			writable: 1, want: []string{"mode=0620"}, sameContent: true,
		},
		{
			name: "writable directory",
			setup: func(t *testing.T, base string) (string, func()) {
				dir := filepath.Join(base, "shared")
				mkdirMode(t, dir, 0o777)
				path := filepath.Join(dir, "db.json")
				writeMode(t, path, content(1), 0o600)
				return path, func() { writeMode(t, path, content(2), 0o600) }
			},
			writable: 1, want: []string{"mode=0600", "/shared dir_mode=0777"},
		},
		{
			name: "sticky directory",
			setup: func(t *testing.T, base string) (string, func()) {
				dir := filepath.Join(base, "tmp")
				mkdirMode(t, dir, 0o777|os.ModeSticky)
				path := filepath.Join(dir, "db.json")
				writeMode(t, path, content(1), 0o600)
				return path, func() { writeMode(t, path, content(2), 0o600) }
			},
		},
		{
			name: "world-readable file",
			setup: func(t *testing.T, base string) (string, func()) {
				path := filepath.Join(base, "db.json")
				writeMode(t, path, content(1), 0o644)
				return path, func() { writeMode(t, path, content(2), 0o644) }
			},
			readable: 1, want: []string{"mode=0644"},
		},
		{
			name: "world-readable Kubernetes directory",
			setup: func(t *testing.T, base string) (string, func()) {
				root := filepath.Join(base, "secret")
				mkdirMode(t, root, 0o777|os.ModeSticky)
				kube(t, root, 1, map[string]string{"username": "app", "password": pw})
				return root, func() { kube(t, root, 2, map[string]string{"username": "app", "password": pw, "dbname": "x"}) }
			},
		},
		{
			name: "world-readable Kubernetes JSON file",
			setup: func(t *testing.T, base string) (string, func()) {
				root := filepath.Join(base, "secret")
				mkdirMode(t, root, 0o777|os.ModeSticky)
				kube(t, root, 1, map[string]string{"db.json": content(1)})
				return filepath.Join(root, "db.json"), func() { kube(t, root, 2, map[string]string{"db.json": content(2)}) }
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			base := t.TempDir()
			if err := os.Chmod(base, 0o700); err != nil {
				t.Fatal(err)
			}
			secretID, next := tc.setup(t, base)
			logs := &syncBuffer{}
			c, err := pgsecrets.NewConnector(fileOnlyDSN(secretID), pgsecrets.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			v1, err := c.Refresh(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			next()
			v2, err := c.Refresh(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if !tc.sameContent && v1 == v2 {
				t.Fatalf("version %s after the change: the file was not read again", v2)
			}
			out := logs.String()
			if n := logs.count(pgsecrets.EventFileWritable); n != tc.writable {
				t.Errorf("%q logged %d times, want %d:\n%s", pgsecrets.EventFileWritable, n, tc.writable, out)
			}
			if n := logs.count(pgsecrets.EventFileReadable); n != tc.readable {
				t.Errorf("%q logged %d times, want %d:\n%s", pgsecrets.EventFileReadable, n, tc.readable, out)
			}
			for _, line := range strings.Split(out, "\n") {
				if !strings.Contains(line, pgsecrets.EventFileWritable) && !strings.Contains(line, pgsecrets.EventFileReadable) {
					continue
				}
				for _, w := range append([]string{"path=" + base}, tc.want...) {
					if !strings.Contains(line, w) {
						t.Errorf("warning lacks %q: %s", w, line)
					}
				}
			}
			if strings.Contains(out, pw) {
				t.Errorf("a log line holds the password:\n%s", out)
			}
		})
	}
}
