package vaulttest_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/lib/pq"

	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

func TestMain(m *testing.M) {
	// The client must not pick up a real Vault from this machine's
	// environment.
	for _, k := range []string{"VAULT_ADDR", "VAULT_TOKEN", "VAULT_NAMESPACE", "VAULT_AGENT_ADDR", "VAULT_MAX_RETRIES", "VAULT_CLIENT_TIMEOUT"} {
		os.Unsetenv(k)
	}
	os.Exit(testdb.RunMain(m, testdb.Options{}))
}

// adminDB opens a superuser pool of the shared cluster for one test.
func adminDB(t *testing.T) (*testdb.Cluster, *sql.DB) {
	t.Helper()
	cl := testdb.Shared(t)
	db, err := sql.Open("postgres", cl.AdminDSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return cl, db
}

// client is the real Vault client pointed at s, with retries off so that
// every call is one request.
func client(t *testing.T, s *vaulttest.Server, token string) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = s.URL()
	cfg.MaxRetries = 0
	cfg.Timeout = 30 * time.Second
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(token)
	return c
}

// responseError asserts err is a Vault error with the given status and
// returns it.
func responseError(t *testing.T, err error, status int) *api.ResponseError {
	t.Helper()
	var re *api.ResponseError
	if !errors.As(err, &re) {
		t.Fatalf("error = %v (%T), want *api.ResponseError with status %d", err, err, status)
	}
	if re.StatusCode != status {
		t.Fatalf("status = %d (%v), want %d", re.StatusCode, re.Errors, status)
	}
	return re
}

func wantErrorText(t *testing.T, re *api.ResponseError, want string) {
	t.Helper()
	for _, e := range re.Errors {
		if strings.Contains(e, want) {
			return
		}
	}
	t.Fatalf("errors = %q, want one containing %q", re.Errors, want)
}

// login opens a session as user and runs a query, returning the error of
// the login.
func login(t *testing.T, cl *testdb.Cluster, user, password string) error {
	t.Helper()
	db, err := sql.Open("postgres", cl.DSN(user, password, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var who string
	if err := db.QueryRowContext(ctx, "SELECT current_user").Scan(&who); err != nil {
		return err
	}
	if who != user {
		t.Fatalf("logged in as %q, want %q", who, user)
	}
	return nil
}

func mustLogin(t *testing.T, cl *testdb.Cluster, user, password string) {
	t.Helper()
	if err := login(t, cl, user, password); err != nil {
		t.Fatalf("login as %s: %v", user, err)
	}
}

// wantLoginRefused asserts a login fails with SQLSTATE 28P01 (bad password
// or no such role, which PostgreSQL does not tell apart).
func wantLoginRefused(t *testing.T, cl *testdb.Cluster, user, password string) {
	t.Helper()
	err := login(t, cl, user, password)
	var pqErr *pq.Error
	if !errors.As(err, &pqErr) || pqErr.Code != "28P01" {
		t.Fatalf("login as %s: error = %v, want SQLSTATE 28P01", user, err)
	}
}

func roleExists(t *testing.T, db *sql.DB, name string) bool {
	t.Helper()
	var ok bool
	if err := db.QueryRowContext(t.Context(), "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", name).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

func validUntil(t *testing.T, db *sql.DB, name string) time.Time {
	t.Helper()
	var v sql.NullTime
	if err := db.QueryRowContext(t.Context(), "SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1", name).Scan(&v); err != nil {
		t.Fatalf("rolvaliduntil of %s: %v", name, err)
	}
	if !v.Valid {
		t.Fatalf("role %s has no VALID UNTIL", name)
	}
	return v.Time
}

// wantNear asserts got is within tol of want; both come from the same
// computation, so tol only absorbs the rounding to seconds.
func wantNear(t *testing.T, what string, got, want time.Time, tol time.Duration) {
	t.Helper()
	if d := got.Sub(want); d < -tol || d > tol {
		t.Fatalf("%s = %v, want %v ± %v (off by %v)", what, got, want, tol, d)
	}
}

var seq atomic.Int64

// unique returns a name no other test uses.
func unique(prefix string) string {
	return fmt.Sprintf("%s_%d_%d", prefix, os.Getpid(), seq.Add(1))
}

func waitCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func lease(t *testing.T, s *vaulttest.Server, id string) vaulttest.Lease {
	t.Helper()
	l, ok := s.Lease(id)
	if !ok {
		t.Fatalf("no lease %q", id)
	}
	return l
}

func creds(t *testing.T, c *api.Client, path string) (*api.Secret, string, string) {
	t.Helper()
	sec, err := c.Logical().ReadWithContext(t.Context(), path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	if sec == nil {
		t.Fatalf("read %s: no secret", path)
	}
	user, _ := sec.Data["username"].(string)
	pw, _ := sec.Data["password"].(string)
	if user == "" || pw == "" {
		t.Fatalf("read %s: data = %v, want username and password", path, sec.Data)
	}
	return sec, user, pw
}

// openAs opens a pool logged in as user, checking the login.
func openAs(cl *testdb.Cluster, user, password string) (*sql.DB, error) {
	db, err := sql.Open("postgres", cl.DSN(user, password, ""))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}
