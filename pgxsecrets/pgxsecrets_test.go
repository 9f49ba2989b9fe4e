package pgxsecrets_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/pgxsecrets"
	"github.com/pgsecrets/pgsecrets/smtest"
)

func TestMain(m *testing.M) {
	restore := smtest.IsolateEnv()
	code := testdb.RunMain(m, testdb.Options{})
	restore()
	os.Exit(code)
}

var seq atomic.Int64

// rig is a role with a random password and its secret in a Secrets
// Manager of the test's own.
type rig struct {
	t        testing.TB
	pg       *testdb.Cluster
	sm       *smtest.Server
	role     string
	password string
	secretID string
	logs     *testkit.SyncBuffer
	logger   *slog.Logger
	seen     []string
}

func newRig(t testing.TB) *rig {
	t.Helper()
	r := &rig{t: t, pg: testdb.Shared(t), sm: smtest.Start(t), logs: &testkit.SyncBuffer{}}
	r.logger = slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r.role = fmt.Sprintf("pgx_%d_%d", os.Getpid(), seq.Add(1))
	r.password = testkit.RandomPassword()
	r.seen = append(r.seen, r.password)
	if err := r.pg.CreateRole(context.Background(), r.role, r.password); err != nil {
		t.Fatal(err)
	}
	r.secretID = "test/" + r.role
	r.sm.CreateSecret(r.secretID, secretJSON(r.role, r.password))
	t.Cleanup(func() {
		for _, pw := range r.seen {
			if strings.Contains(r.logs.String(), pw) {
				t.Error("a log line contains a password")
			}
		}
	})
	return r
}

func secretJSON(user, pw string) string {
	b, _ := json.Marshal(map[string]any{"username": user, "password": pw, "engine": "postgres"})
	return string(b)
}

// dsn is a key=value DSN for the shared cluster over verified TLS.
func (r *rig) dsn(extra string) string {
	return fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=verify-full sslrootcert=%s secret_id=%s secret_endpoint=%s secret_ttl=1h %s",
		r.pg.Host(), r.pg.Port(), r.pg.CAFile(), r.secretID, r.sm.URL(), extra)
}

func (r *rig) pool(extra string) *pgxsecrets.Pool {
	r.t.Helper()
	p, err := pgxsecrets.NewPool(context.Background(), r.dsn(extra), pgsecrets.WithLogger(r.logger))
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(p.Close)
	return p
}

func (r *rig) sqlDB(extra string) *sql.DB {
	r.t.Helper()
	c, err := pgsecrets.NewConnector(r.dsn(extra), pgsecrets.WithLogger(r.logger))
	if err != nil {
		r.t.Fatal(err)
	}
	db := sql.OpenDB(c)
	r.t.Cleanup(func() { db.Close() })
	return db
}

// The standard load: 16 workers of SELECT 1, connections living 250 ms.
const poolLoad = "pool_max_conns=16 pool_max_conn_lifetime=250ms pool_max_conn_lifetime_jitter=50ms"

// startLoad runs query from 16 workers, once it answers.
func startLoad(t *testing.T, query func(ctx context.Context) error) *testkit.Load {
	l := testkit.Start(t, 16, query)
	l.WaitQueries(t, 100)
	return l
}

// rotations under test, each run against a load.
func (r *rig) fourStep(t *testing.T) {
	pw := testkit.RandomPassword()
	r.seen = append(r.seen, pw)
	pending, err := r.sm.PutSecretValue(r.secretID, secretJSON(r.role, pw), "AWSPENDING")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.pg.SetPassword(context.Background(), r.role, pw); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // AWSCURRENT lags behind, as between setSecret and finishSecret
	if err := r.sm.FinishRotation(r.secretID, pending); err != nil {
		t.Fatal(err)
	}
}

func (r *rig) wrongOrder(t *testing.T) {
	pw := testkit.RandomPassword()
	r.seen = append(r.seen, pw)
	if err := r.pg.SetPassword(context.Background(), r.role, pw); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the store is updated a second later
	if _, err := r.sm.PutSecretValue(r.secretID, secretJSON(r.role, pw)); err != nil {
		t.Fatal(err)
	}
}

func (r *rig) alternating(t *testing.T) {
	other := r.role + "_b"
	pw := testkit.RandomPassword()
	r.seen = append(r.seen, pw)
	if err := r.pg.CreateRole(context.Background(), other, pw); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.pg.DropRole(context.Background(), other) })
	if _, err := r.sm.PutSecretValue(r.secretID, secretJSON(other, pw)); err != nil {
		t.Fatal(err)
	}
	// The old user's password changes later, as in the next rotation.
	if err := r.pg.SetPassword(context.Background(), r.role, testkit.RandomPassword()); err != nil {
		t.Fatal(err)
	}
}

func TestRotationsThroughPool(t *testing.T) {
	for name, rotate := range map[string]func(*rig, *testing.T){
		"four-step": (*rig).fourStep, "wrong-order": (*rig).wrongOrder, "alternating": (*rig).alternating,
	} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t)
			p := r.pool(poolLoad)
			l := startLoad(t, func(ctx context.Context) error {
				var one int
				return p.QueryRow(ctx, "SELECT 1").Scan(&one)
			})
			rotate(r, t)
			// Connections live 250 ms: new ones meet the rotation soon.
			deadline := time.Now().Add(time.Minute)
			for p.Connector().Stats().AuthRecovered == 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond) // polling a counter
			}
			l.WaitQueries(t, 500)
			l.AssertNoFailures(t)
			st := p.Connector().Stats()
			if st.AuthRecovered == 0 {
				t.Error("no login was recovered: the rotation was not exercised")
			}
			t.Logf("%d queries; %s", l.OK(), st)
		})
	}
}

func TestRotationsThroughSQLOverPgx(t *testing.T) {
	for name, rotate := range map[string]func(*rig, *testing.T){
		"four-step": (*rig).fourStep, "wrong-order": (*rig).wrongOrder, "alternating": (*rig).alternating,
	} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t)
			db := r.sqlDB("secret_driver=pgx")
			db.SetConnMaxLifetime(250 * time.Millisecond)
			db.SetMaxIdleConns(4)
			l := startLoad(t, func(ctx context.Context) error {
				var one int
				return db.QueryRowContext(ctx, "SELECT 1").Scan(&one)
			})
			rotate(r, t)
			l.WaitQueries(t, 500)
			l.AssertNoFailures(t)
		})
	}
}

// database/sql connections are pgx's when secret_driver=pgx.
func TestSQLOverPgxConn(t *testing.T) {
	r := newRig(t)
	db := r.sqlDB("secret_driver=pgx")
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Raw(func(dc any) error {
		if got := fmt.Sprintf("%T", dc); got != "*stdlib.Conn" {
			return fmt.Errorf("driver conn is %s, want pgx's *stdlib.Conn", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var user string
	if err := conn.QueryRowContext(context.Background(), "SELECT current_user").Scan(&user); err != nil || user != r.role {
		t.Fatalf("current_user %q, %v", user, err)
	}
}

// A lib/pq *sql.DB and a pgx pool on one secret share one cache: one
// store call for both.
func TestPoolSharesCacheWithLibPQ(t *testing.T) {
	r := newRig(t)
	db := r.sqlDB("")
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	p := r.pool("")
	if err := p.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := r.sm.Calls("GetSecretValue"); n != 1 {
		t.Errorf("%d store calls for a lib/pq pool and a pgx pool on one secret, want 1", n)
	}
	// A refresh through one is seen by the other.
	if _, err := p.Connector().Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := r.sm.Calls("GetSecretValue"); n != 2 {
		t.Errorf("%d store calls after one refresh, want 2", n)
	}
}

// A wrong secret from the start: the pool's call fails fast with
// ErrAuthFailed wrapping pgx's *pgconn.PgError, then the breaker answers.
func TestPoolWrongPasswordFailsFast(t *testing.T) {
	r := newRig(t)
	bad := testkit.RandomPassword()
	r.seen = append(r.seen, bad)
	if _, err := r.sm.PutSecretValue(r.secretID, secretJSON(r.role, bad)); err != nil {
		t.Fatal(err)
	}
	p := r.pool("")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := p.Exec(ctx, "SELECT 1")
	var pgErr *pgconn.PgError
	if !errors.Is(err, pgsecrets.ErrAuthFailed) || !errors.As(err, &pgErr) || pgErr.Code != "28P01" || ctx.Err() != nil {
		t.Fatalf("first call: %v", err)
	}
	if _, err := p.Exec(ctx, "SELECT 1"); !errors.Is(err, pgsecrets.ErrCircuitOpen) {
		t.Errorf("next call: %v, want ErrCircuitOpen", err)
	}
	for _, pw := range r.seen {
		if strings.Contains(err.Error(), pw) {
			t.Error("the error shows a password")
		}
	}
}

// The store down with nothing cached: the pool's calls fail fast with
// ErrStoreUnavailable naming the secret, and work once the store answers.
func TestPoolStoreDownCold(t *testing.T) {
	r := newRig(t)
	remove := r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Fail})
	p := r.pool("")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := 0; i < 20; i++ {
		_, err := p.Exec(ctx, "SELECT 1")
		if !errors.Is(err, pgsecrets.ErrStoreUnavailable) || !strings.Contains(err.Error(), r.secretID) || ctx.Err() != nil {
			t.Fatalf("call %d with the store down: %v", i, err)
		}
	}
	if n := r.sm.Calls("GetSecretValue"); n > 4 {
		t.Errorf("%d store calls for 20 failing calls", n)
	}
	remove()
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := p.Exec(ctx, "SELECT 1")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never healed: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // the backoff decides when the store is tried again
	}
}

// ParseConfig returns a *pgxpool.Config; hooks set on it run after
// pgsecrets' own, and pgxpool's keys keep working.
func TestParseConfigHooksAndPoolKeys(t *testing.T) {
	r := newRig(t)
	cfg, err := pgxsecrets.ParseConfig(r.dsn("pool_max_conns=3 pool_max_conn_lifetime=7m"), pgsecrets.WithLogger(r.logger))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxConns != 3 || cfg.MaxConnLifetime != 7*time.Minute {
		t.Errorf("pool keys: max conns %d, lifetime %s", cfg.MaxConns, cfg.MaxConnLifetime)
	}
	if pgxsecrets.Connector(cfg) == nil {
		t.Fatal("no connector for the configuration")
	}
	var mine atomic.Int64
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error { mine.Add(1); return nil }
	p, err := pgxsecrets.NewPoolWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var user string
	if err := p.QueryRow(context.Background(), "SELECT current_user").Scan(&user); err != nil || user != r.role {
		t.Fatalf("current_user %q, %v", user, err)
	}
	if mine.Load() != 1 {
		t.Errorf("the user's AfterConnect ran %d times", mine.Load())
	}
	if _, err := pgxsecrets.NewPoolWithConfig(context.Background(), cfg); err == nil {
		t.Error("a configuration was used twice")
	}
	if _, err := pgxsecrets.NewPool(context.Background(), r.dsn("secret_typo=1")); !errors.Is(err, pgsecrets.ErrInvalidDSN) {
		t.Errorf("bad DSN: %v", err)
	}
}

// A wrong password from the start, 100 concurrent calls on a pool of 16:
// as with lib/pq, at most 4 rejected logins and 4 store calls, and every
// call fails fast with ErrAuthFailed or ErrCircuitOpen.
func TestPoolWrongPasswordColdBurst(t *testing.T) {
	r := newRig(t)
	bad := testkit.RandomPassword()
	r.seen = append(r.seen, bad)
	if _, err := r.sm.PutSecretValue(r.secretID, secretJSON(r.role, bad)); err != nil {
		t.Fatal(err)
	}
	p := r.pool("pool_max_conns=16")
	var wg sync.WaitGroup
	var auth, open atomic.Int64
	start := make(chan struct{})
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			switch _, err := p.Exec(ctx, "SELECT 1"); {
			case errors.Is(err, pgsecrets.ErrAuthFailed):
				auth.Add(1)
			case errors.Is(err, pgsecrets.ErrCircuitOpen):
				open.Add(1)
			default:
				t.Errorf("unexpected: %v", err)
			}
		}()
	}
	close(start)
	wg.Wait()
	logins := r.pg.AuthFailures(r.role)
	t.Logf("100 calls: %d auth errors, %d circuit-open; %d rejected logins, %d store calls", auth.Load(), open.Load(), logins, r.sm.Calls("GetSecretValue"))
	if logins > 4 {
		t.Errorf("%d rejected logins, want ≤ 4", logins)
	}
	if n := r.sm.Calls("GetSecretValue"); n > 4 {
		t.Errorf("%d store calls, want ≤ 4", n)
	}
}

// The store failing for 3 s while credentials are cached and past their
// TTL: both paths keep serving (stale within max_stale), 0 failed queries.
func TestStoreOutageBothPaths(t *testing.T) {
	for _, path := range []string{"pool", "sql-pgx"} {
		t.Run(path, func(t *testing.T) {
			r := newRig(t)
			var query func(ctx context.Context) error
			var stats func() pgsecrets.Stats
			if path == "pool" {
				p := r.pool(poolLoad + " secret_ttl=1s")
				query = func(ctx context.Context) error { var one int; return p.QueryRow(ctx, "SELECT 1").Scan(&one) }
				stats = p.Connector().Stats
			} else {
				c, err := pgsecrets.NewConnector(r.dsn("secret_driver=pgx secret_ttl=1s"), pgsecrets.WithLogger(r.logger))
				if err != nil {
					t.Fatal(err)
				}
				db := sql.OpenDB(c)
				t.Cleanup(func() { db.Close() })
				db.SetConnMaxLifetime(250 * time.Millisecond)
				query = func(ctx context.Context) error { var one int; return db.QueryRowContext(ctx, "SELECT 1").Scan(&one) }
				stats = c.Stats
			}
			l := startLoad(t, query)
			remove := r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Fail})
			time.Sleep(3 * time.Second) // the outage lasts past the 1 s TTL
			remove()
			l.WaitQueries(t, 200)
			l.AssertNoFailures(t)
			if st := stats(); st.StaleServes == 0 {
				t.Errorf("no stale serve during a 3 s outage with a 1 s TTL: %s", st)
			}
		})
	}
}

// pg_hba.conf refuses (28000) through both pgx paths: one round, then
// ErrAuthFailed wrapping pgx's *pgconn.PgError, then the breaker, as with
// lib/pq; well inside the 30 s retry window.
func TestPgHbaRefusalBothPaths(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	if err := r.pg.SetHostSSLOnly(ctx, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.pg.SetHostSSLOnly(ctx, false) })
	dsn := fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=disable secret_id=%s secret_endpoint=%s",
		r.pg.Host(), r.pg.Port(), r.secretID, r.sm.URL())
	check := func(path string, call func(context.Context) error) {
		pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		err := call(pctx)
		var pgErr *pgconn.PgError
		if !errors.Is(err, pgsecrets.ErrAuthFailed) || errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &pgErr) || pgErr.Code != "28000" {
			t.Fatalf("%s: %v, want ErrAuthFailed wrapping pgx's 28000", path, err)
		}
		if !strings.Contains(err.Error(), "pg_hba.conf") {
			t.Errorf("%s: %q does not point at pg_hba.conf", path, err)
		}
		if err := call(pctx); !errors.Is(err, pgsecrets.ErrCircuitOpen) {
			t.Errorf("%s, second call: %v, want ErrCircuitOpen", path, err)
		}
	}
	p, err := pgxsecrets.NewPool(ctx, dsn, pgsecrets.WithLogger(r.logger), pgsecrets.WithBreakerOpenInterval(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	check("pool", func(ctx context.Context) error { _, err := p.Exec(ctx, "SELECT 1"); return err })
	p.Close()

	c, err := pgsecrets.NewConnector(dsn+" secret_driver=pgx secret_region=us-east-1 application_name=pgx", pgsecrets.WithLogger(r.logger),
		pgsecrets.WithBreakerOpenInterval(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	check("sql-pgx", db.PingContext)
}
