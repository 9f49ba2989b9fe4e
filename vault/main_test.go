package vault_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
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
	logs   *testkit.SyncBuffer
	logger *slog.Logger
	// secrets the logs must never contain
	mu      sync.Mutex
	secrets []string
}

var seq atomic.Int64

func newVRig(t *testing.T) *vrig {
	t.Helper()
	r := &vrig{t: t, pg: testdb.Shared(t), vs: vaulttest.Start(t), logs: &testkit.SyncBuffer{}}
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

func (r *vrig) open(dsn string, opts ...pgsecrets.Option) (*sql.DB, *pgsecrets.Connector) {
	r.t.Helper()
	c, err := pgsecrets.NewConnector(dsn, append([]pgsecrets.Option{pgsecrets.WithLogger(r.logger)}, opts...)...)
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
	password = testkit.RandomPassword()
	if err := r.pg.CreateRole(context.Background(), name, password); err != nil {
		r.t.Fatal(err)
	}
	r.hide(password)
	r.t.Cleanup(func() { _ = r.pg.DropRole(context.Background(), name) })
	return name, password
}

// startLoad runs the standard load: SELECT 1 from n workers through db.
func startLoad(t *testing.T, db *sql.DB, n int) *testkit.Load {
	return testkit.Start(t, n, func(ctx context.Context) error {
		var one int
		return db.QueryRowContext(ctx, "SELECT 1").Scan(&one)
	})
}

func currentUserOf(t *testing.T, db *sql.DB) string {
	t.Helper()
	var u string
	if err := db.QueryRow("SELECT current_user").Scan(&u); err != nil {
		t.Fatal(err)
	}
	return u
}
