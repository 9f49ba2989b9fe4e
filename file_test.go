package pgsecrets_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets"
)

// fileDSN reaches the shared cluster over verified TLS with the
// credentials in path.
func fileDSN(r *rig, path, extra string) string {
	return fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=verify-full sslrootcert=%s secret_provider=file secret_id=%s %s",
		r.pg.Host(), r.pg.Port(), r.pg.CAFile(), path, extra)
}

// writeAtomic replaces path the way careful writers do: a temporary file
// in the same directory, renamed over it.
func writeAtomic(t testing.TB, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// k8sUpdate does what the kubelet does to a Secret volume: the new files
// in a fresh timestamped directory, ..data swapped to it by renaming a
// symlink over it, the top-level names linked through ..data, the old
// directory removed.
func k8sUpdate(t testing.TB, dir, ts, old string, files map[string]string) {
	t.Helper()
	if err := os.Mkdir(filepath.Join(dir, ts), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, ts, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for name := range files {
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); errors.Is(err, os.ErrNotExist) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
			t.Fatal(err)
		}
	}
}

// useDefaultLogger makes l the default logger for the test: the file
// provider logs through slog.Default.
func useDefaultLogger(t *testing.T, l *slog.Logger) {
	prev := slog.Default()
	slog.SetDefault(l)
	t.Cleanup(func() { slog.SetDefault(prev) })
}

// noneLogged fails the test at its end if the rig's logs hold any of the
// passwords (the rig itself checks only its latest).
func noneLogged(t *testing.T, r *rig, passwords *[]string) {
	t.Cleanup(func() {
		logs := r.logs.String()
		for _, pw := range *passwords {
			if strings.Contains(logs, pw) {
				t.Errorf("a log line contains a password")
			}
		}
	})
}

// The provider on its own: an unchanged file is stat'ed, not read, and
// yields the same *Credentials; bad content never replaces good content.
func TestFileProviderFetch(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	logs := &syncBuffer{}
	useDefaultLogger(t, slog.New(slog.NewTextHandler(logs, nil)))
	ctx := context.Background()

	p, cfg, err := pgsecrets.NewProviderForTest("secret_provider=file secret_id=db.json")
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs("db.json")
	if k, ok := p.(pgsecrets.CacheKeyer); !ok || k.CacheKey() != abs {
		t.Errorf("cache key: %v, want %q", p, abs)
	}
	if _, ok := p.(pgsecrets.Staged); ok {
		t.Error("file provider claims a pending stage")
	}
	// The provider declares its default; its factory leaves the Config
	// alone, and the connector applies the default unless the DSN set one.
	if d, ok := p.(pgsecrets.TTLDefaulter); !ok || d.DefaultTTL() != time.Second || cfg.TTL != pgsecrets.DefaultTTL {
		t.Errorf("file provider's default ttl: declared %v, Config edited to %s", ok, cfg.TTL)
	}
	for dsn, want := range map[string]time.Duration{"": time.Second, " secret_ttl=5m": 5 * time.Minute} {
		c, err := pgsecrets.NewConnector("secret_provider=file secret_id=db.json" + dsn)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.Config().TTL; got != want {
			t.Errorf("%q: connector's ttl %s, want %s", dsn, got, want)
		}
		c.Close()
	}

	// No file yet, then a half-written one with nothing before it.
	if _, err := p.Fetch(ctx, "AWSCURRENT"); !errors.Is(err, pgsecrets.ErrSecretNotFound) || !strings.Contains(err.Error(), abs) {
		t.Errorf("missing file: %v", err)
	}
	const badPW = "pw-half-never-print"
	bad := `{"username":"u","password":"` + badPW + `"`
	writeAtomic(t, "db.json", bad)
	_, err = p.Fetch(ctx, "AWSCURRENT")
	var se *pgsecrets.SecretError
	if !errors.Is(err, pgsecrets.ErrMalformedSecret) || !errors.As(err, &se) || strings.Contains(err.Error(), badPW) ||
		!strings.Contains(err.Error(), abs) {
		t.Errorf("bad JSON: %v", err)
	}

	good := rdsSecret("alice", "pw-good-1", map[string]any{"port": 6543})
	writeAtomic(t, "db.json", good)
	reads := pgsecrets.FileReads()
	c1, err := p.Fetch(ctx, "AWSCURRENT")
	if err != nil {
		t.Fatal(err)
	}
	if c1.Username != "alice" || c1.Password.Reveal() != "pw-good-1" || c1.Port != 6543 ||
		c1.VersionID != pgsecrets.FileVersionID(good) || len(c1.VersionID) != 12 || c1.CreatedAt.IsZero() {
		t.Errorf("credentials %+v", c1)
	}
	for i := 0; i < 5; i++ {
		if c, err := p.Fetch(ctx, "AWSCURRENT"); err != nil || c != c1 {
			t.Fatalf("unchanged file: %p %v, want the same %p", c, err, c1)
		}
	}
	if n := pgsecrets.FileReads() - reads; n != 1 {
		t.Errorf("unchanged file read %d times, want 1", n)
	}

	// Caught half written in place (same inode): the previous credentials,
	// one warning, and no second read while it stays so.
	f, err := os.OpenFile("db.json", os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	next := rdsSecret("alice", "pw-good-2", nil)
	if _, err := f.WriteString(next[:len(next)/2]); err != nil {
		t.Fatal(err)
	}
	reads = pgsecrets.FileReads()
	for i := 0; i < 3; i++ {
		if c, err := p.Fetch(ctx, "AWSCURRENT"); err != nil || c != c1 {
			t.Fatalf("half-written file: %p %v, want the previous %p", c, err, c1)
		}
	}
	if n := pgsecrets.FileReads() - reads; n != 1 {
		t.Errorf("unchanged bad file read %d times, want 1", n)
	}
	if n := logs.count(pgsecrets.EventFileUnusable); n != 1 {
		t.Errorf("%q logged %d times, want 1:\n%s", pgsecrets.EventFileUnusable, n, logs)
	}
	if _, err := f.WriteString(next[len(next)/2:]); err != nil {
		t.Fatal(err)
	}
	f.Close()
	c2, err := p.Fetch(ctx, "AWSCURRENT")
	if err != nil || c2.Password.Reveal() != "pw-good-2" || c2.VersionID != pgsecrets.FileVersionID(next) {
		t.Fatalf("completed file: %+v %v", c2, err)
	}
	if strings.Contains(logs.String(), badPW) || strings.Contains(logs.String(), "pw-good") {
		t.Errorf("logs hold a password:\n%s", logs)
	}

	// Too big for a secret.
	writeAtomic(t, "huge.json", `{"username":"u","password":"`+strings.Repeat("x", 70000)+`"}`)
	hp, _, _ := pgsecrets.NewProviderForTest("secret_provider=file secret_id=huge.json")
	if _, err := hp.Fetch(ctx, "AWSCURRENT"); !errors.Is(err, pgsecrets.ErrMalformedSecret) {
		t.Errorf("huge file: %v", err)
	}
}

// Concurrent Fetches while the file is replaced again and again: every
// answer is one of the versions written, never an error (run with -race).
func TestFileProviderConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db.json")
	writeAtomic(t, path, rdsSecret("u", "pw-0", nil))
	p, _, err := pgsecrets.NewProviderForTest("secret_provider=file secret_id=" + path)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := p.Fetch(context.Background(), "AWSCURRENT")
				if err == nil && !strings.HasPrefix(c.Password.Reveal(), "pw-") {
					err = fmt.Errorf("unexpected credentials %+v", c)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i := 1; i <= 50; i++ {
		writeAtomic(t, path, rdsSecret("u", fmt.Sprintf("pw-%d", i), nil))
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	c, err := p.Fetch(context.Background(), "AWSCURRENT")
	if err != nil || c.Password.Reveal() != "pw-50" {
		t.Errorf("after the last write: %+v %v", c, err)
	}
}

// Many connections with the file unchanged: one read; a change: one more.
func TestFileJSONReadsOnlyOnChange(t *testing.T) {
	r := newRig(t)
	useDefaultLogger(t, r.logger)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db.json")
	content := rdsSecret(r.role, r.password, nil)
	writeAtomic(t, path, content)
	reads := pgsecrets.FileReads()

	db, c := r.openC(fileDSN(r, path, ""))
	db.SetMaxIdleConns(0) // every ping logs in
	if got := currentUser(t, db); got != r.role {
		t.Fatalf("logged in as %q", got)
	}
	if ttl := c.Config().TTL; ttl != time.Second {
		t.Errorf("ttl %s, want the file provider's 1s", ttl)
	}
	for i := 0; i < 4; i++ { // each a store call: a stat of the file
		if v, err := c.Refresh(ctx); err != nil || v != pgsecrets.FileVersionID(content) {
			t.Fatalf("refresh: %q %v", v, err)
		}
	}
	for i := 0; i < 30; i++ {
		if err := db.Ping(); err != nil {
			t.Fatal(err)
		}
	}
	st := c.Stats()
	if st.StoreCalls < 5 {
		t.Errorf("%d store calls, want at least 5", st.StoreCalls)
	}
	if n := pgsecrets.FileReads() - reads; n != 1 {
		t.Errorf("unchanged file read %d times over %d store calls, want 1", n, st.StoreCalls)
	}

	changed := rdsSecret(r.role, r.password, map[string]any{"dbname": "postgres"})
	writeAtomic(t, path, changed)
	for i := 0; i < 2; i++ {
		if v, err := c.Refresh(ctx); err != nil || v != pgsecrets.FileVersionID(changed) {
			t.Fatalf("refresh after the change: %q %v", v, err)
		}
	}
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	if n := pgsecrets.FileReads() - reads; n != 2 {
		t.Errorf("file read %d times, want 2 (once per content)", n)
	}
}

// Three rotations in both orders and a half-written file, under the
// standard load: no query fails, and the half-written content is never
// used.
func TestFileRotationUnderLoad(t *testing.T) {
	r := newRig(t)
	useDefaultLogger(t, r.logger)
	passwords := []string{r.password}
	noneLogged(t, r, &passwords)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db.json")
	writeAtomic(t, path, rdsSecret(r.role, r.password, nil))
	// secret_ttl=1s is the file provider's default; set here so that this
	// test does not depend on it (TestFileDefaultTTL does).
	db, c := r.openC(fileDSN(r, path, "secret_ttl=1s"))
	rotationPool(db)
	l := startLoad(t, db, 16)
	l.waitQueries(t, 200)

	inUse := func(content string) {
		t.Helper()
		v := pgsecrets.FileVersionID(content)
		eventually(t, "version "+v+" in use", func() bool { return c.Stats().VersionID == v })
	}
	setDB := func(pw string) {
		t.Helper()
		if err := r.pg.SetPassword(ctx, r.role, pw); err != nil {
			t.Fatal(err)
		}
	}
	for i, dbFirst := range []bool{true, false, true} {
		pw := randomPassword()
		passwords = append(passwords, pw)
		content := rdsSecret(r.role, pw, map[string]any{"rotation": i})
		if dbFirst {
			setDB(pw)
			writeAtomic(t, path, content) // recovery is waiting for this
			inUse(content)
		} else {
			writeAtomic(t, path, content)
			inUse(content) // picked up by a ttl check; new logins now wait for the database
			setDB(pw)
		}
		r.password = pw
		l.waitQueries(t, 200)
	}
	before := c.Stats().VersionID

	// A writer caught halfway, in place, with a new password (file first).
	pw := randomPassword()
	passwords = append(passwords, pw)
	full := rdsSecret(r.role, pw, map[string]any{"rotation": "half"})
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(full[:len(full)/2]); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the half-written file to be noticed", func() bool { return r.logs.count(pgsecrets.EventFileUnusable) > 0 })
	// A check may have caught the file truncated but not yet written (a
	// bad content of its own): count from a check that began after the
	// write, once it is over.
	fetches := pgsecrets.FileFetches()
	eventually(t, "two more checks of the file", func() bool { return pgsecrets.FileFetches() >= fetches+2 })
	warned, reads, fetches := r.logs.count(pgsecrets.EventFileUnusable), pgsecrets.FileReads(), pgsecrets.FileFetches()
	eventually(t, "three more checks of the file", func() bool { return pgsecrets.FileFetches() >= fetches+3 })
	if n := pgsecrets.FileReads() - reads; n != 0 {
		t.Errorf("unchanged half-written file read %d more times", n)
	}
	if n := r.logs.count(pgsecrets.EventFileUnusable); n != warned {
		t.Errorf("%q logged %d times for one content, want %d", pgsecrets.EventFileUnusable, n, warned)
	}
	if v := c.Stats().VersionID; v != before {
		t.Errorf("version %s in use while the file is half written, want the previous %s", v, before)
	}
	l.waitQueries(t, 200) // still logging in with the previous credentials
	if _, err := f.WriteString(full[len(full)/2:]); err != nil {
		t.Fatal(err)
	}
	inUse(full)
	setDB(pw)
	r.password = pw
	l.waitQueries(t, 200)

	l.assertNoFailures(t)
	st := c.Stats()
	t.Logf("queries ok=%d failed=%d; db login failures=%d; file reads=%d; stats %+v",
		l.ok.Load(), l.failed.Load(), r.pg.AuthFailures(r.role), pgsecrets.FileReads(), st)
	if st.AuthRecovered == 0 {
		t.Errorf("no recovery although the database changed first: %+v", st)
	}
	if got := currentUser(t, db); got != r.role {
		t.Errorf("logged in as %q", got)
	}
}

// A Kubernetes Secret volume, updated by swapping ..data after the
// database's password changed: pings keep working, the version changes.
func TestFileKubernetesDirSwap(t *testing.T) {
	r := newRig(t)
	useDefaultLogger(t, r.logger)
	passwords := []string{r.password}
	noneLogged(t, r, &passwords)
	ctx := context.Background()
	dir := t.TempDir()
	// Trailing newlines, as `kubectl create secret --from-file` keeps them.
	k8sUpdate(t, dir, "..2026_12_01_a", "", map[string]string{"username": r.role + "\n", "password": r.password + "\n"})

	db, c := r.openC(fileDSN(r, dir, "secret_ttl=1h")) // only recovery reads again
	db.SetMaxIdleConns(0)
	if got := currentUser(t, db); got != r.role {
		t.Fatalf("logged in as %q", got)
	}
	versions := []string{c.Stats().VersionID}
	old := "..2026_12_01_a"
	for i, eol := range []string{"\r\n", ""} {
		pw := randomPassword()
		passwords = append(passwords, pw)
		if err := r.pg.SetPassword(ctx, r.role, pw); err != nil {
			t.Fatal(err)
		}
		ts := fmt.Sprintf("..2026_12_0%d_b", i+2)
		k8sUpdate(t, dir, ts, old, map[string]string{"username": r.role, "password": pw + eol, "dbname": "postgres\n"})
		old = ts
		r.password = pw
		for j := 0; j < 3; j++ {
			if err := db.Ping(); err != nil {
				t.Fatalf("after swap %d: %v", i+1, err)
			}
		}
		v := c.Stats().VersionID
		if v == "" || v == versions[len(versions)-1] {
			t.Errorf("after swap %d the version is %q, previous %q", i+1, v, versions[len(versions)-1])
		}
		versions = append(versions, v)
	}
	if st := c.Stats(); st.AuthRecovered != 2 {
		t.Errorf("%d recoveries, want one per swap: %+v", st.AuthRecovered, st)
	}
	if n := r.logs.count(pgsecrets.EventRotationPickedUp); n != 2 {
		t.Errorf("%q logged %d times, want 2", pgsecrets.EventRotationPickedUp, n)
	}
}

// An authentication failure reads the file again at once, whatever the
// ttl.
func TestFileAuthFailureRereadsAtOnce(t *testing.T) {
	r := newRig(t)
	useDefaultLogger(t, r.logger)
	passwords := []string{r.password}
	noneLogged(t, r, &passwords)
	path := filepath.Join(t.TempDir(), "db.json")
	writeAtomic(t, path, rdsSecret(r.role, r.password, nil))
	db, c := r.openC(fileDSN(r, path, "secret_ttl=1h"))
	db.SetMaxIdleConns(0)
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	for i, dbFirst := range []bool{true, false} {
		pw := randomPassword()
		passwords = append(passwords, pw)
		content := rdsSecret(r.role, pw, nil)
		if !dbFirst {
			writeAtomic(t, path, content)
		}
		if err := r.pg.SetPassword(context.Background(), r.role, pw); err != nil {
			t.Fatal(err)
		}
		if dbFirst {
			writeAtomic(t, path, content)
		}
		r.password = pw
		if err := db.Ping(); err != nil {
			t.Fatalf("change %d: %v", i+1, err)
		}
		st := c.Stats()
		if st.AuthRecovered != int64(i+1) || st.VersionID != pgsecrets.FileVersionID(content) {
			t.Errorf("change %d: recovered %d times, version %s (want %s)", i+1, st.AuthRecovered, st.VersionID,
				pgsecrets.FileVersionID(content))
		}
	}
}

// Without secret_ttl, a rewritten file reaches new connections within
// about a second, with no authentication failure to trigger a read.
func TestFileDefaultTTL(t *testing.T) {
	r := newRig(t)
	useDefaultLogger(t, r.logger)
	path := filepath.Join(t.TempDir(), "db.json")
	writeAtomic(t, path, rdsSecret(r.role, r.password, nil))
	db, c := r.openC(fileDSN(r, path, ""))
	if ttl := c.Config().TTL; ttl != time.Second {
		t.Errorf("ttl %s, want 1s", ttl)
	}
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	// Same password, new content: only a ttl check can notice.
	changed := rdsSecret(r.role, r.password, map[string]any{"note": "rewritten"})
	writeAtomic(t, path, changed)
	v := pgsecrets.FileVersionID(changed)
	deadline := time.Now().Add(15 * time.Second) // far beyond 1s, far below the 10m DefaultTTL
	db.SetMaxIdleConns(0)
	for c.Stats().VersionID != v {
		if time.Now().After(deadline) {
			t.Fatalf("rewritten file not picked up without secret_ttl (connector ttl %s): still version %s",
				c.Config().TTL, c.Stats().VersionID)
		}
		if err := db.Ping(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // polling state that has no event
	}
	if st := c.Stats(); st.AuthFailures != 0 {
		t.Errorf("picked up through an authentication failure, not the ttl: %+v", st)
	}
}

// Errors name the path and the field, never a value, and the provider
// waits for a file that is not there yet.
func TestFileErrors(t *testing.T) {
	r := newRig(t)
	useDefaultLogger(t, r.logger)
	dir := t.TempDir()
	const leak = "pw-leak-never-print"
	check := func(t *testing.T, path string, kind error, field string) {
		t.Helper()
		db := r.open(fileDSN(r, path, "")) // NewConnector does no I/O: it must not fail here
		err := db.Ping()
		var se *pgsecrets.SecretError
		if !errors.Is(err, kind) || !errors.As(err, &se) || se.Field != field || !strings.Contains(err.Error(), path) {
			t.Fatalf("got %v, want %v naming %s and field %q", err, kind, path, field)
		}
		msg := fmt.Sprintf("%v %+v %#v", err, err, err)
		if strings.Contains(msg, leak) || strings.Contains(msg, r.password) {
			t.Errorf("error prints a password: %s", msg)
		}
	}
	t.Run("missing file", func(t *testing.T) {
		path := filepath.Join(dir, "later.json")
		check(t, path, pgsecrets.ErrSecretNotFound, "")
		db := r.open(fileDSN(r, path, ""))
		writeAtomic(t, path, rdsSecret(r.role, r.password, nil))
		eventually(t, "the file to be found once written", func() bool { return db.Ping() == nil })
	})
	t.Run("bad JSON", func(t *testing.T) {
		path := filepath.Join(dir, "bad.json")
		writeAtomic(t, path, `{"username":"`+r.role+`","password":"`+leak+`"`)
		check(t, path, pgsecrets.ErrMalformedSecret, "")
	})
	t.Run("no password field", func(t *testing.T) {
		path := filepath.Join(dir, "nopw.json")
		writeAtomic(t, path, `{"username":"`+r.role+`","passwd":"`+leak+`"}`)
		check(t, path, pgsecrets.ErrMalformedSecret, "password")
	})
	t.Run("directory without password", func(t *testing.T) {
		d := filepath.Join(dir, "k8s")
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		k8sUpdate(t, d, "..2026_a", "", map[string]string{"username": r.role})
		check(t, d, pgsecrets.ErrMalformedSecret, "password")
	})
	t.Run("permission denied", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("root reads files whatever their mode")
		}
		path := filepath.Join(dir, "locked.json")
		writeAtomic(t, path, rdsSecret(r.role, r.password, nil))
		if err := os.Chmod(path, 0); err != nil {
			t.Fatal(err)
		}
		check(t, path, pgsecrets.ErrAccessDenied, "")
	})
	if strings.Contains(r.logs.String(), leak) {
		t.Error("a log line contains a password")
	}
}
