package pgsecrets_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/smtest"
)

// Fail fast, say why: a persistent problem answers with its own error, and
// a caller whose context ends learns what it was waiting for.

// waitedFor checks that err is a *SecretError naming the rig's secret that
// wraps want (a context error), with no password in any printed form, and
// returns it.
func waitedFor(t *testing.T, r *rig, err error, want error) *pgsecrets.SecretError {
	t.Helper()
	var se *pgsecrets.SecretError
	if !errors.As(err, &se) || !errors.Is(err, want) || se.SecretID != r.secretID ||
		!strings.Contains(err.Error(), r.secretID) {
		t.Fatalf("got %v (%T), want a *SecretError naming %q that wraps %v", err, err, r.secretID, want)
	}
	noPassword(t, r, err)
	return se
}

// noPassword fails if err prints the rig's password, whatever the verb.
func noPassword(t *testing.T, r *rig, err error) {
	t.Helper()
	if strings.Contains(fmt.Sprintf("%v %+v %#v %s", err, err, err, err), r.password) {
		t.Errorf("error prints the password: %v", err)
	}
}

// A role pg_hba.conf refuses (28000): the server's answer at once, not a
// retry window.
func TestPgHbaRefusalFailsFast(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	if err := r.pg.SetHostSSLOnly(ctx, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.pg.SetHostSSLOnly(ctx, false) })
	db, c := r.openC(fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=disable secret_id=%s secret_endpoint=%s",
		r.pg.Host(), r.pg.Port(), r.secretID, r.sm.URL()), pgsecrets.WithBreakerOpenInterval(time.Hour))
	// Well inside the default 30 s retry window: waiting for a rotation
	// would end in DeadlineExceeded.
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	err := db.PingContext(pctx)
	var pqErr *pq.Error
	if !errors.Is(err, pgsecrets.ErrAuthFailed) || errors.Is(err, context.DeadlineExceeded) ||
		!errors.As(err, &pqErr) || pqErr.Code != "28000" {
		t.Fatalf("got %v, want ErrAuthFailed wrapping lib/pq's 28000", err)
	}
	for _, want := range []string{r.secretID, "28000", "pg_hba.conf", r.role} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not mention %q", err, want)
		}
	}
	noPassword(t, r, err)
	t.Logf("error: %v", err)
	// The breaker's answer repeats the server's message.
	err = db.PingContext(pctx)
	if !errors.Is(err, pgsecrets.ErrCircuitOpen) || !strings.Contains(err.Error(), "no pg_hba.conf entry") {
		t.Errorf("second ping: %v, want ErrCircuitOpen with the server's message", err)
	}
	if st := c.Stats(); st.AuthFailures != 1 {
		t.Errorf("%d rejected logins, want 1: %+v", st.AuthFailures, st)
	}
}

// The store down with nothing cached: every caller gets the store's error
// at once, one call per backoff interval probes, and the first Connect
// after the store heals succeeds.
func TestStoreDownColdFailsFast(t *testing.T) {
	r := newRig(t)
	remove := r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Fail})
	db := r.open(r.kv(""))
	db.SetMaxIdleConns(0)
	start := time.Now()
	const pings = 50
	for i := 0; i < pings; i++ {
		err := db.Ping()
		var se *pgsecrets.SecretError
		if !errors.Is(err, pgsecrets.ErrStoreUnavailable) || !errors.As(err, &se) || se.SecretID != r.secretID ||
			!strings.Contains(err.Error(), "InternalServiceError") {
			t.Fatalf("ping %d: %v, want ErrStoreUnavailable naming the secret and the store's error", i, err)
		}
		if i == pings-1 {
			noPassword(t, r, err)
			t.Logf("error: %v", err)
		}
	}
	elapsed := time.Since(start)
	// The first call, then at most one per backoff interval (≥ 400 ms).
	calls := r.sm.Calls("GetSecretValue")
	if limit := 1 + int(elapsed/(400*time.Millisecond)) + 1; calls > limit {
		t.Errorf("%d store calls for %d pings in %s, want ≤ %d", calls, pings, elapsed, limit)
	}
	t.Logf("%d pings in %s cost %d store calls", pings, elapsed.Round(time.Millisecond), calls)
	// The store heals: the next probe gets through.
	remove()
	var healed time.Time
	eventually(t, "a ping after the store heals", func() bool {
		if db.Ping() == nil {
			healed = time.Now()
			return true
		}
		return false
	})
	t.Logf("first successful ping %s after the store healed", healed.Sub(start.Add(elapsed)).Round(time.Millisecond))
}

// The store holds requests without answering, then recovers: callers
// meanwhile learn what they wait for, and the hung request does not hold
// anyone up once the store answers again.
func TestStoreHangsThenHeals(t *testing.T) {
	r := newRig(t)
	remove := r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.HangUntilCancel})
	db := r.open(r.kv(""))
	db.SetMaxIdleConns(0)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	err := db.PingContext(ctx)
	cancel()
	waitedFor(t, r, err, context.DeadlineExceeded)
	if !strings.Contains(err.Error(), "had not answered") {
		t.Errorf("%q does not say the store had not answered", err)
	}
	t.Logf("error: %v", err)
	remove()
	// The request sent during the hang is still out (smtest holds it until
	// the client gives up, storeTimeout = 10 s). A fresh request must reach
	// the healed store long before that.
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	healed := time.Now()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("ping after the store healed: %v", err)
	}
	t.Logf("ping through %s after the store healed; %d store requests", time.Since(healed).Round(time.Millisecond),
		r.sm.Calls("GetSecretValue"))
}

// A rotation in progress (credentials that worked are rejected, the store
// has nothing newer yet): a caller whose deadline ends gets the rejection
// it was waiting out, with the SQLSTATE and lib/pq's error.
func TestRecoveryWaitSaysWhy(t *testing.T) {
	r := newRig(t)
	db := r.open(r.kv(""))
	db.SetMaxIdleConns(0)
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	pw := randomPassword()
	if err := r.pg.SetPassword(context.Background(), r.role, pw); err != nil {
		t.Fatal(err)
	}
	// Room for the rejected login itself on a loaded machine; the wait
	// for the recovery takes the rest.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	err := db.PingContext(ctx)
	cancel()
	se := waitedFor(t, r, err, context.DeadlineExceeded)
	var pqErr *pq.Error
	if se.SQLState != "28P01" || !errors.As(err, &pqErr) || pqErr.Code != "28P01" ||
		!strings.Contains(err.Error(), "recovery") {
		t.Errorf("got %v, want the 28P01 rejection the recovery was waiting out", err)
	}
	if errors.Is(err, pgsecrets.ErrAuthFailed) || errors.Is(err, pgsecrets.ErrCircuitOpen) {
		t.Errorf("a caller giving up is not a verdict on the credentials: %v", err)
	}
	t.Logf("error: %v", err)
	// The store catches up; the same DB recovers.
	if _, err := r.sm.PutSecretValue(r.secretID, rdsSecret(r.role, pw, nil)); err != nil {
		t.Fatal(err)
	}
	r.password = pw
	if err := db.Ping(); err != nil {
		t.Fatalf("after the store caught up: %v", err)
	}
}

// The password changes after the process has been serving and the store is
// fixed only 10 s later: callers whose deadline is longer than the gap see
// no failure.
func TestRotationStoreFixedLate(t *testing.T) {
	r := newRig(t)
	db, c := r.openC(r.kv("secret_ttl=1h secret_retry_window=30s"))
	rotationPool(db)
	l := startLoadDeadline(t, db, 16, 20*time.Second)
	l.waitQueries(t, 200)
	v := r.wrongOrder(t, 10*time.Second)
	eventually(t, "the new version in use", func() bool { return c.Stats().VersionID == v })
	l.waitQueries(t, 200)
	l.assertNoFailures(t)
	t.Logf("queries ok=%d failed=%d; stats %+v", l.ok.Load(), l.failed.Load(), c.Stats())
}

// Refresh fetches now and returns the version it got.
func TestConnectorRefresh(t *testing.T) {
	r := newRig(t)
	db, c := r.openC(r.kv("secret_ttl=1h"))
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	v, err := r.sm.PutSecretValue(r.secretID, rdsSecret(r.role, r.password, nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.Stats().VersionID == v {
		t.Fatal("the new version is in use before Refresh")
	}
	got, err := c.Refresh(context.Background())
	if err != nil || got != v {
		t.Fatalf("Refresh = %q, %v; want %q", got, err, v)
	}
	if st := c.Stats(); st.VersionID != v {
		t.Errorf("stats show version %s after Refresh, want %s", st.VersionID, v)
	}
	// The store failing: Refresh says so, and the cached version stays.
	remove := r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Fail})
	if _, err := c.Refresh(context.Background()); !errors.Is(err, pgsecrets.ErrStoreUnavailable) {
		t.Errorf("Refresh with the store down = %v, want ErrStoreUnavailable", err)
	}
	remove()
	if err := db.Ping(); err != nil {
		t.Errorf("ping after a failed Refresh: %v", err)
	}
	c.Close()
	if _, err := c.Refresh(context.Background()); err == nil {
		t.Error("Refresh on a closed connector succeeded")
	}
}

// While a rotation is in progress, Refresh reads the configured stage,
// which still holds the version the database no longer accepts: the
// pending version recovery found working stays in use until the stage
// catches up, as Refresh's doc says.
func TestRefreshDuringRotationKeepsPending(t *testing.T) {
	r := newRig(t)
	db, c := r.openC(r.kv("secret_ttl=1h"))
	db.SetMaxIdleConns(0) // every ping logs in
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	current := c.Stats().VersionID
	oldPW, pw := r.password, randomPassword()
	pending, err := r.sm.PutSecretValue(r.secretID, rdsSecret(r.role, pw, nil), "AWSPENDING")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.pg.SetPassword(ctx, r.role, pw); err != nil {
		t.Fatal(err)
	}
	r.password = pw
	t.Cleanup(func() {
		if strings.Contains(r.logs.String(), oldPW) {
			t.Error("a log line contains the previous password")
		}
	})
	if err := db.Ping(); err != nil { // rejected, then recovered with AWSPENDING
		t.Fatal(err)
	}
	if st := c.Stats(); st.Stage != "AWSPENDING" || st.VersionID != pending {
		t.Fatalf("in use: %s %s, want the pending version %s", st.Stage, st.VersionID, pending)
	}
	failures := c.Stats().AuthFailures

	got, err := c.Refresh(ctx)
	if err != nil || got != current {
		t.Fatalf("Refresh = %q, %v; want the configured stage's %q", got, err, current)
	}
	if st := c.Stats(); st.Stage != "AWSPENDING" || st.VersionID != pending {
		t.Errorf("after Refresh, in use: %s %s, want still the pending version %s", st.Stage, st.VersionID, pending)
	}
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	if n := c.Stats().AuthFailures - failures; n != 0 {
		t.Errorf("%d logins rejected after Refresh: the version the database no longer accepts was used", n)
	}

	if err := r.sm.FinishRotation(r.secretID, pending); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Refresh(ctx); err != nil || got != pending {
		t.Fatalf("Refresh after the rotation = %q, %v; want %q", got, err, pending)
	}
	if st := c.Stats(); st.Stage != "AWSCURRENT" || st.VersionID != pending {
		t.Errorf("after the rotation, in use: %s %s, want AWSCURRENT %s", st.Stage, st.VersionID, pending)
	}
}

// median of ds, for logs.
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
