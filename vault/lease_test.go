package vault_test

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

// staleSessions returns the pids of sessions of lease roles that PostgreSQL
// no longer accepts logins for: the role is gone (revoked) or its VALID
// UNTIL has passed.
func staleSessions(t *testing.T, admin *sql.DB) map[int]string {
	t.Helper()
	rows, err := admin.Query(`SELECT a.pid, a.usename FROM pg_stat_activity a
		LEFT JOIN pg_roles r ON r.rolname = a.usename
		WHERE a.usename LIKE 'v-token-%' AND (r.rolname IS NULL OR r.rolvaliduntil < now())`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int]string{}
	for rows.Next() {
		var pid int
		var user string
		if err := rows.Scan(&pid, &user); err != nil {
			t.Fatal(err)
		}
		out[pid] = user
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// leaseRoles counts the roles of the server's leases still in pg_roles.
func leaseRoles(t *testing.T, admin *sql.DB, vs *vaulttest.Server) int {
	t.Helper()
	n := 0
	for _, l := range vs.Leases() {
		var exists bool
		if err := admin.QueryRow("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", l.Username).Scan(&exists); err != nil {
			t.Fatal(err)
		}
		if exists {
			n++
		}
	}
	return n
}

// The load test: leases of 3 s (12 s max) for 20 s under 16
// workers, with no SetConnMaxLifetime at all.
func TestDynamicLeasesUnderLoad(t *testing.T) {
	r := newVRig(t)
	admin := r.pg.DB()
	r.vs.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: admin, TTL: 3 * time.Second, MaxTTL: 12 * time.Second})
	c, err := pgsecrets.NewConnector(r.dsn("database/creds/app", ""), pgsecrets.WithLogger(r.logger))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c) // no SetConnMaxLifetime: the leases alone must retire connections
	db.SetMaxIdleConns(16)
	l := startLoad(t, db, 16)
	l.WaitQueries(t, 100)

	// A session is stale only if it shows up in two samples in a row: a
	// backend whose client just closed may linger for a moment.
	var violations []string
	prev := map[int]string{}
	testkit.During(20*time.Second, 100*time.Millisecond, func() {
		cur := staleSessions(t, admin)
		for pid, user := range cur {
			if prev[pid] == user {
				violations = append(violations, user)
			}
		}
		prev = cur
	})
	l.AssertNoFailures(t)
	if len(violations) > 0 {
		t.Errorf("sessions stayed open on roles past their lease: %v", violations)
	}
	st := c.Stats()
	leases := r.vs.Leases()
	t.Logf("%d queries, %d leases issued, stats %+v", l.OK(), len(leases), st)
	// Renew first: a lease is renewed up to its max_ttl (12 s) and only
	// then replaced, so about one lease per max_ttl, not one per two
	// thirds of the TTL (11 in this test before).
	if len(leases) < 2 || len(leases) > 4 {
		t.Errorf("%d leases issued in 20 s of 3 s leases renewable to 12 s, want 2 to 4", len(leases))
	}
	if st.ConnsRetired == 0 {
		t.Error("no connection was retired for its lease, yet none has a lifetime")
	}
	if st.LeaseRevocations == 0 {
		t.Error("no superseded lease was revoked while serving")
	}
	if st.AuthFailures != 0 {
		t.Errorf("%d logins rejected: a lease was used past its end", st.AuthFailures)
	}

	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if n := r.vs.ActiveLeases(); n != 0 {
		t.Errorf("%d leases still active after db.Close()", n)
	}
	if n := leaseRoles(t, admin, r.vs); n != 0 {
		t.Errorf("%d lease roles left in pg_roles after db.Close()", n)
	}
}

// A lease still in use is renewed rather than left to expire, up to its
// maximum; its connections then retire before that maximum.
func TestLeaseRenewedWhileInUse(t *testing.T) {
	r := newVRig(t)
	admin := r.pg.DB()
	r.vs.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: admin, TTL: 2 * time.Second, MaxTTL: 5 * time.Second})
	db, c := r.open(r.dsn("database/creds/app", ""))
	conn, err := db.Conn(context.Background()) // held: the lease is in use all along
	if err != nil {
		t.Fatal(err)
	}
	var user string
	if err := conn.QueryRowContext(context.Background(), "SELECT current_user").Scan(&user); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "a renewal capped at the max TTL", func() bool {
		for _, l := range r.vs.Leases() {
			if l.Username == user && l.Renewals > 0 && !l.MaxExpires.IsZero() && !l.Expires.Before(l.MaxExpires) {
				return true
			}
		}
		return false
	})
	// The server records the cap before its answer reaches the driver.
	testkit.Eventually(t, "a log line saying the lease reached its max TTL", func() bool {
		return strings.Contains(r.logs.String(), pgsecrets.EventLeaseCapped)
	})
	// Back in the pool, the connection is retired before the lease's
	// capped end: at once if that is near, else when it comes.
	conn.Close()
	testkit.Eventually(t, "the connection of the capped lease retired", func() bool { return c.Stats().ConnsRetired > 0 })
	if c.Stats().LeaseRenewals == 0 {
		t.Error("Stats counts no renewal")
	}
}

// Vault failing every request for 5 s while leases are valid: no query
// fails and the request rate stays bounded.
func TestVaultDownWhileLeasesValid(t *testing.T) {
	r := newVRig(t)
	admin := r.pg.DB()
	// 8 s leases: the renewal (at 4 s) falls in the outage, and with its
	// failure the fetch of a new lease, and the lease outlives it.
	r.vs.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: admin, TTL: 8 * time.Second, MaxTTL: time.Minute})
	db, c := r.open(r.dsn("database/creds/app", ""))
	db.SetConnMaxLifetime(250 * time.Millisecond) // new logins all the time
	db.SetMaxIdleConns(4)
	l := startLoad(t, db, 16)
	l.WaitQueries(t, 200)
	r.vs.ResetCalls()
	remove := r.vs.Inject(vaulttest.OpAny, vaulttest.Fault{Kind: vaulttest.FaultError, Status: 503})
	if _, err := c.Refresh(context.Background()); !errors.Is(err, pgsecrets.ErrStoreUnavailable) {
		t.Errorf("Refresh during the outage: %v, want ErrStoreUnavailable", err)
	} else if !strings.Contains(err.Error(), r.vs.URL()) || !strings.Contains(err.Error(), "database/creds/app") {
		t.Errorf("the error does not name the Vault address and path: %v", err)
	}
	start := l.OK()
	testkit.During(5*time.Second, 100*time.Millisecond, func() {})
	calls := r.vs.TotalCalls()
	remove()
	l.WaitQueries(t, 100)
	l.AssertNoFailures(t)
	if l.OK()-start < 100 {
		t.Errorf("only %d queries during the outage", l.OK()-start)
	}
	// Backoff: a handful of fetches and renewals per second at most.
	if calls > 40 {
		t.Errorf("%d requests to a failing Vault in 5 s", calls)
	}
	t.Logf("%d requests during the outage", calls)
}

// New connections past the last lease's end, with Vault down, fail fast
// with ErrStoreUnavailable naming the address and path.
func TestVaultDownPastLeaseFailsFast(t *testing.T) {
	r := newVRig(t)
	admin := r.pg.DB()
	r.vs.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: admin, TTL: 2 * time.Second, MaxTTL: 2 * time.Second})
	db, c := r.open(r.dsn("database/creds/app", ""))
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	r.vs.Inject(vaulttest.OpAny, vaulttest.Fault{Kind: vaulttest.FaultError, Status: 503})
	testkit.Eventually(t, "the lease to end", func() bool { return c.Stats().Expires.Before(time.Now()) })
	db.SetMaxIdleConns(0) // no pooled connection left to reuse
	err := db.Ping()
	if !errors.Is(err, pgsecrets.ErrStoreUnavailable) {
		t.Fatalf("ping past the lease with Vault down: %v, want ErrStoreUnavailable", err)
	}
	for _, want := range []string{r.vs.URL(), "database/creds/app"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	r.noSecret(err)
}

// Vault's rate limit quota (HTTP 429) is ErrThrottled, a kind of
// ErrStoreUnavailable: the lease in use keeps serving.
func TestVaultRateLimitedIsThrottled(t *testing.T) {
	r := newVRig(t)
	r.vs.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: r.pg.DB(), TTL: time.Minute, MaxTTL: time.Hour})
	db, c := r.open(r.dsn("database/creds/app", ""))
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	remove := r.vs.Inject(vaulttest.OpAny, vaulttest.Fault{Kind: vaulttest.FaultError, Status: 429})
	defer remove()
	_, err := c.Refresh(context.Background())
	if !errors.Is(err, pgsecrets.ErrThrottled) || !errors.Is(err, pgsecrets.ErrStoreUnavailable) || !strings.Contains(err.Error(), "rate limit") {
		t.Errorf("Refresh while Vault answers 429: %v", err)
	}
	if st := c.Stats(); st.StoreThrottled != 1 {
		t.Errorf("StoreThrottled = %d, want 1", st.StoreThrottled)
	}
	db.SetMaxIdleConns(0)
	if err := db.Ping(); err != nil {
		t.Errorf("a new connection while throttled: %v", err)
	}
}
