package vault_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	_ "github.com/pgsecrets/pgsecrets/vault"
	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

func TestMain(m *testing.M) {
	// The provider must not find this machine's Vault settings.
	for _, k := range []string{"VAULT_ADDR", "VAULT_TOKEN", "VAULT_NAMESPACE", "VAULT_CACERT", "VAULT_CAPATH",
		"VAULT_SKIP_VERIFY", "VAULT_SECRET_ID", "VAULT_AGENT_ADDR", "VAULT_MAX_RETRIES"} {
		os.Unsetenv(k)
	}
	os.Exit(testdb.RunMain(m, testdb.Options{}))
}

// vrig is one test's world: the shared PostgreSQL, a Vault of its own, and
// a log buffer checked for secrets at the end.
type vrig struct {
	t      *testing.T
	pg     *testdb.Cluster
	vs     *vaulttest.Server
	logs   *syncBuffer
	logger *slog.Logger
	// secrets the logs must never contain
	mu      sync.Mutex
	secrets []string
}

var seq atomic.Int64

func newVRig(t *testing.T) *vrig {
	t.Helper()
	r := &vrig{t: t, pg: testdb.Shared(t), vs: vaulttest.Start(t), logs: &syncBuffer{}}
	r.logger = slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r.hide(r.vs.RootToken())
	t.Setenv("VAULT_TOKEN", r.vs.RootToken())
	t.Cleanup(func() {
		out := r.logs.String()
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, s := range r.secrets {
			if s != "" && strings.Contains(out, s) {
				t.Errorf("a log line contains a secret (%d bytes)", len(s))
			}
		}
	})
	return r
}

// hide adds a value the logs and errors must never contain.
func (r *vrig) hide(s string) {
	r.mu.Lock()
	r.secrets = append(r.secrets, s)
	r.mu.Unlock()
}

// noSecret fails if err's message carries a hidden value.
func (r *vrig) noSecret(err error) {
	r.t.Helper()
	if err == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.secrets {
		if s != "" && strings.Contains(err.Error(), s) {
			r.t.Errorf("error %q contains a secret", err)
		}
	}
}

// dsn is a pgsecrets DSN for a Vault path, reaching the shared cluster over
// verified TLS.
func (r *vrig) dsn(path, extra string) string {
	return fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=verify-full sslrootcert=%s secret_provider=vault secret_id=%s secret_endpoint=%s %s",
		r.pg.Host(), r.pg.Port(), r.pg.CAFile(), path, r.vs.URL(), extra)
}

func (r *vrig) open(dsn string) (*sql.DB, *pgsecrets.Connector) {
	r.t.Helper()
	c, err := pgsecrets.NewConnector(dsn, pgsecrets.WithLogger(r.logger))
	if err != nil {
		r.t.Fatal(err)
	}
	db := sql.OpenDB(c)
	r.t.Cleanup(func() { db.Close() })
	return db, c
}

// role creates a login role with a random password in the shared cluster.
func (r *vrig) role() (name, password string) {
	name = fmt.Sprintf("vapp_%d_%d", os.Getpid(), seq.Add(1))
	password = randomPassword()
	if err := r.pg.CreateRole(context.Background(), name, password); err != nil {
		r.t.Fatal(err)
	}
	r.hide(password)
	r.t.Cleanup(func() { _ = r.pg.DropRole(context.Background(), name) })
	return name, password
}

func randomPassword() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "pw-" + hex.EncodeToString(b)
}

// load runs SELECT 1 in a loop from n goroutines.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	firstErrs  []string
	stop       chan struct{}
	wg         sync.WaitGroup
}

func startLoad(t *testing.T, db *sql.DB, n int) *load {
	l := &load{stop: make(chan struct{})}
	for i := 0; i < n; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				var one int
				if err := db.QueryRow("SELECT 1").Scan(&one); err != nil {
					l.failed.Add(1)
					l.mu.Lock()
					if len(l.firstErrs) < 5 {
						l.firstErrs = append(l.firstErrs, err.Error())
					}
					l.mu.Unlock()
					continue
				}
				l.ok.Add(1)
			}
		}()
	}
	t.Cleanup(l.halt)
	return l
}

func (l *load) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// waitQueries blocks until the load has run n more successful queries.
func (l *load) waitQueries(t *testing.T, n int64) {
	t.Helper()
	target := l.ok.Load() + n
	deadline := time.Now().Add(time.Minute)
	for l.ok.Load() < target {
		if time.Now().After(deadline) {
			l.mu.Lock()
			defer l.mu.Unlock()
			t.Fatalf("the load made no progress; errors: %s", strings.Join(l.firstErrs, "\n"))
		}
		time.Sleep(5 * time.Millisecond) // polling a counter; no event to wait on
	}
}

func (l *load) assertNoFailures(t *testing.T) {
	t.Helper()
	l.halt()
	if f := l.failed.Load(); f != 0 {
		t.Errorf("%d failed queries (of %d); first errors:\n%s", f, f+l.ok.Load(), strings.Join(l.firstErrs, "\n"))
	}
	if l.ok.Load() == 0 {
		t.Error("no query succeeded")
	}
}

// during runs the load for d while polling every step with fn.
func during(d, step time.Duration, fn func()) {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		fn()
		time.Sleep(step) // sampling at an interval is the point
	}
}

// eventually polls cond until it holds, failing after a minute.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling state that has no event
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func currentUserOf(t *testing.T, db *sql.DB) string {
	t.Helper()
	var u string
	if err := db.QueryRow("SELECT current_user").Scan(&u); err != nil {
		t.Fatal(err)
	}
	return u
}
