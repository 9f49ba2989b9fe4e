package pgsecrets_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/smtest"
)

// load runs SELECT 1 in a loop from n goroutines through db.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	firstErrs  []string
	stop       chan struct{}
	wg         sync.WaitGroup
}

// rotationPool configures db as the rotation tests require: connections
// live 250 ms, so new logins happen all the time.
func rotationPool(db *sql.DB) {
	db.SetConnMaxLifetime(250 * time.Millisecond)
	db.SetMaxIdleConns(4)
}

func startLoad(t *testing.T, db *sql.DB, n int) *load {
	return startLoadDeadline(t, db, n, 0)
}

// startLoadDeadline is startLoad with a deadline of d on each query (none
// if d is 0).
func startLoadDeadline(t *testing.T, db *sql.DB, n int, d time.Duration) *load {
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
				ctx, cancel := context.Background(), context.CancelFunc(func() {})
				if d > 0 {
					ctx, cancel = context.WithTimeout(ctx, d)
				}
				var one int
				err := db.QueryRowContext(ctx, "SELECT 1").Scan(&one)
				cancel()
				if err != nil {
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

// waitQueries blocks until the load has run n more successful queries:
// proof that connections are being made again.
func (l *load) waitQueries(t *testing.T, n int64) {
	t.Helper()
	target := l.ok.Load() + n
	for l.ok.Load() < target {
		if l.failed.Load() > 100000 {
			l.mu.Lock()
			errs := strings.Join(l.firstErrs, "\n")
			l.mu.Unlock()
			t.Fatalf("load only fails: %s", errs)
		}
		time.Sleep(5 * time.Millisecond) // polling a counter; no event to wait on
	}
}

// eventually polls cond until it holds, failing the test after a minute.
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

func (l *load) assertNoFailures(t *testing.T) {
	t.Helper()
	l.halt()
	if f := l.failed.Load(); f != 0 {
		t.Errorf("%d failed queries (of %d); first errors:\n%s", f, f+l.ok.Load(), strings.Join(l.firstErrs, "\n"))
	}
}

const rotationDSN = "secret_ttl=1h"

// fourStep rotates like AWS's single-user rotation function: createSecret
// (AWSPENDING), setSecret (ALTER ROLE), testSecret, then after gap
// finishSecret (AWSCURRENT moves).
func (r *rig) fourStep(t *testing.T, user string, gap time.Duration) (version string) {
	t.Helper()
	ctx := context.Background()
	pw := randomPassword()
	version, err := r.sm.PutSecretValue(r.secretID, rdsSecret(user, pw, nil), "AWSPENDING")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.pg.SetPassword(ctx, user, pw); err != nil {
		t.Fatal(err)
	}
	// testSecret: the pending value logs in.
	test, err := sql.Open("postgres", r.pg.DSN(user, pw, ""))
	if err != nil {
		t.Fatal(err)
	}
	if err := test.Ping(); err != nil {
		t.Fatalf("testSecret: %v", err)
	}
	test.Close()
	time.Sleep(gap) // the window between setSecret and finishSecret, as a rotation has it
	if err := r.sm.FinishRotation(r.secretID, version); err != nil {
		t.Fatal(err)
	}
	if user == r.role {
		r.password = pw
	}
	return version
}

// wrongOrder rotates by hand in the wrong order: the database first, the
// store delay later.
func (r *rig) wrongOrder(t testing.TB, delay time.Duration) (version string) {
	t.Helper()
	pw := randomPassword()
	if err := r.pg.SetPassword(context.Background(), r.role, pw); err != nil {
		t.Fatal(err)
	}
	time.Sleep(delay) // the operator updates the store late
	version, err := r.sm.PutSecretValue(r.secretID, rdsSecret(r.role, pw, nil))
	if err != nil {
		t.Fatal(err)
	}
	r.password = pw
	return version
}

func TestRotationFourStep(t *testing.T) {
	r := newRig(t)
	db, c := r.openC(r.kv(rotationDSN))
	rotationPool(db)
	l := startLoad(t, db, 16)
	l.waitQueries(t, 200)
	var last string
	for i := 0; i < 3; i++ {
		last = r.fourStep(t, r.role, 2*time.Second)
		l.waitQueries(t, 200)
	}
	// After finishSecret, the driver goes back to AWSCURRENT by itself.
	eventually(t, "AWSCURRENT to catch up", func() bool {
		st := c.Stats()
		return st.Stage == "AWSCURRENT" && st.VersionID == last
	})
	l.assertNoFailures(t)
	st := c.Stats()
	t.Logf("queries ok=%d failed=%d; store calls=%d; db login failures=%d; stats %+v",
		l.ok.Load(), l.failed.Load(), r.sm.Calls("GetSecretValue"), r.pg.AuthFailures(r.role), st)
	if st.AuthRecovered < 3 || st.PendingUses == 0 {
		t.Errorf("rotations not recovered through the pending version: %+v", st)
	}
	if st.VersionID != last {
		t.Errorf("using version %s, want %s", st.VersionID, last)
	}
	if n := r.logs.count(pgsecrets.EventUsingPending); n != 3 {
		for _, l := range strings.Split(r.logs.String(), "\n") {
			if strings.Contains(l, "pending") || strings.Contains(l, "rotation") || strings.Contains(l, "recover") {
				t.Log(l)
			}
		}
		t.Errorf("%q logged %d times, want 3", pgsecrets.EventUsingPending, n)
	}
}

func TestRotationWrongOrder(t *testing.T) {
	r := newRig(t)
	db, c := r.openC(r.kv(rotationDSN))
	rotationPool(db)
	l := startLoad(t, db, 16)
	l.waitQueries(t, 200)
	for i := 0; i < 3; i++ {
		v := r.wrongOrder(t, 1500*time.Millisecond)
		eventually(t, "the new version in use", func() bool { return c.Stats().VersionID == v })
		l.waitQueries(t, 200)
	}
	l.assertNoFailures(t)
	st := c.Stats()
	t.Logf("queries ok=%d failed=%d; store calls=%d; db login failures=%d; stats %+v",
		l.ok.Load(), l.failed.Load(), r.sm.Calls("GetSecretValue"), r.pg.AuthFailures(r.role), st)
	if st.AuthRecovered < 3 {
		t.Errorf("expected recoveries: %+v", st)
	}
}

// Alternating users: each rotation sets a new password on the other role
// and the secret's username switches between them.
func TestRotationAlternatingUsers(t *testing.T) {
	r := newRig(t)
	clone := r.role + "_clone"
	if err := r.pg.CreateRole(context.Background(), clone, randomPassword()); err != nil {
		t.Fatal(err)
	}
	db, c := r.openC(r.kv(rotationDSN))
	rotationPool(db)
	l := startLoad(t, db, 16)
	l.waitQueries(t, 200)
	// The driver starts as r.role. Rotation 1 leaves r.role's password
	// alone (it stays valid); rotation 2 changes it, so the driver must
	// switch to the clone, and so on.
	users := []string{clone, r.role, clone, r.role}
	var versions []string
	for _, u := range users {
		versions = append(versions, r.fourStep(t, u, time.Second))
		l.waitQueries(t, 200)
	}
	l.assertNoFailures(t)
	st := c.Stats()
	t.Logf("queries ok=%d failed=%d; store calls=%d; login failures %s=%d %s=%d; stats %+v",
		l.ok.Load(), l.failed.Load(), r.sm.Calls("GetSecretValue"), r.role, r.pg.AuthFailures(r.role),
		clone, r.pg.AuthFailures(clone), st)
	// The last rotation left the previous version's user valid.
	if st.VersionID != versions[3] && st.VersionID != versions[2] {
		t.Errorf("using version %s, want one of the last two %v", st.VersionID, versions[2:])
	}
	if st.AuthRecovered < 3 {
		t.Errorf("expected the driver to follow the username switches: %+v", st)
	}
}

// Under steady use, refreshes run in the background before the TTL ends:
// no connection waits for the store after the cold start.
func TestBackgroundRefresh(t *testing.T) {
	r := newRig(t)
	db, c := r.openC(r.kv("secret_ttl=4s")) // refreshes start 0.8 s before expiry: room for a slow machine
	rotationPool(db)
	l := startLoad(t, db, 8)
	l.waitQueries(t, 100)
	waits := c.Stats().StoreWaits // the cold start: up to one per worker
	// A new version appears; the background refresh picks it up (the old
	// password still works, so only a refresh can notice).
	v, err := r.sm.PutSecretValue(r.secretID, rdsSecret(r.role, r.password, nil))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the refresh to pick up the new version", func() bool { return c.Stats().VersionID == v })
	eventually(t, "a second refresh", func() bool { return r.sm.Calls("GetSecretValue") >= 3 })
	l.assertNoFailures(t)
	st := c.Stats()
	t.Logf("store calls=%d stats %+v", r.sm.Calls("GetSecretValue"), st)
	if st.StoreWaits != waits {
		t.Errorf("%d connections waited for the store after the cold start", st.StoreWaits-waits)
	}
	if n := r.logs.count(pgsecrets.EventRotationPickedUp); n != 1 {
		t.Errorf("%q logged %d times", pgsecrets.EventRotationPickedUp, n)
	}
}

// callTimes records when each GetSecretValue reached the store.
func callTimes(sm *smtest.Server) func() []time.Time {
	var mu sync.Mutex
	var ts []time.Time
	sm.OnRequest(func(op, _ string) {
		if op == "GetSecretValue" {
			mu.Lock()
			ts = append(ts, time.Now())
			mu.Unlock()
		}
	})
	return func() []time.Time {
		mu.Lock()
		defer mu.Unlock()
		return append([]time.Time(nil), ts...)
	}
}

// maxPerSecond is the largest number of calls within any one-second window.
func maxPerSecond(ts []time.Time) int {
	best := 0
	for i := range ts {
		n := 0
		for j := i; j < len(ts) && ts[j].Sub(ts[i]) < time.Second; j++ {
			n++
		}
		best = max(best, n)
	}
	return best
}

func TestStoreOutage(t *testing.T) {
	r := newRig(t)
	times := callTimes(r.sm)
	db, c := r.openC(r.kv("secret_ttl=1s"))
	rotationPool(db)
	l := startLoad(t, db, 16)
	l.waitQueries(t, 200)

	before := len(times())
	remove := r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Fail})
	time.Sleep(10 * time.Second) // the outage lasts 10 s
	remove()
	during := times()[before:]
	l.waitQueries(t, 200)

	// Heal, then rotate in the wrong order: must be picked up.
	v := r.wrongOrder(t, 0)
	eventually(t, "the new version in use", func() bool { return c.Stats().VersionID == v })
	l.waitQueries(t, 200)
	l.assertNoFailures(t)

	st := c.Stats()
	t.Logf("queries ok=%d failed=%d; store calls during the 10 s outage=%d (max %d in 1 s); stats %+v",
		l.ok.Load(), l.failed.Load(), len(during), maxPerSecond(during), st)
	if len(during) == 0 || len(during) > 30 {
		t.Errorf("%d store calls during a 10 s outage, want 1..30", len(during))
	}
	if m := maxPerSecond(during); m > 3 {
		t.Errorf("%d store calls within one second during the outage, want ≤ 3", m)
	}
	if st.StaleServes == 0 {
		t.Error("no stale credential served during the outage")
	}
	if n := r.logs.count(pgsecrets.EventStoreUnavailable); n != 1 {
		t.Errorf("%q logged %d times, want once per outage", pgsecrets.EventStoreUnavailable, n)
	}
}

// Past secret_ttl + secret_max_stale, a cached credential is no longer used:
// Connect fails with the store's error.
func TestMaxStaleEnforced(t *testing.T) {
	r := newRig(t)
	db, c := r.openC(r.kv("secret_ttl=300ms secret_max_stale=700ms"))
	db.SetMaxIdleConns(0) // every ping is a new connection
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Fail})
	var err error
	eventually(t, "the cached credential to expire", func() bool {
		err = db.Ping()
		return err != nil
	})
	if !errors.Is(err, pgsecrets.ErrStoreUnavailable) || !strings.Contains(err.Error(), r.secretID) {
		t.Errorf("got %v, want ErrStoreUnavailable naming the secret", err)
	}
	if st := c.Stats(); st.StaleServes == 0 {
		t.Errorf("no stale serve before the credential expired: %+v", st)
	}
}

// A wrong password in the secret from the start (default retry window,
// callers with 2 s deadlines): bounded store calls and logins, clear errors
// naming the secret and SQLSTATE, then fail-fast; no caller waits for its
// deadline.
func TestWrongPasswordBreaker(t *testing.T) {
	r := newRig(t)
	const wrong = "pw-wrong-never-print"
	r.sm.PutSecretValue(r.secretID, rdsSecret(r.role, wrong, nil))
	times := callTimes(r.sm)
	const openFor = time.Second
	db, c := r.openC(r.kv(""), pgsecrets.WithBreakerOpenInterval(openFor))

	const run = 5 * time.Second
	var authErrs, openErrs, other atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var otherMsg atomic.Value
	var mu sync.Mutex
	var latencies []time.Duration // after the first second
	begin := time.Now()
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				start := time.Now()
				err := db.PingContext(ctx)
				took := time.Since(start)
				cancel()
				if start.Sub(begin) > time.Second {
					mu.Lock()
					latencies = append(latencies, took)
					mu.Unlock()
				}
				msg := fmt.Sprint(err)
				var pqErr *pq.Error
				switch {
				case strings.Contains(msg, wrong) || strings.Contains(msg, r.password):
					other.Add(1)
					otherMsg.Store("LEAK: " + msg)
				case errors.Is(err, context.DeadlineExceeded):
					other.Add(1)
					otherMsg.Store("waited for its deadline: " + msg)
				case errors.Is(err, pgsecrets.ErrCircuitOpen) && strings.Contains(msg, r.secretID) && strings.Contains(msg, "28P01") &&
					strings.Contains(msg, "password authentication failed"):
					openErrs.Add(1)
				case errors.Is(err, pgsecrets.ErrAuthFailed) && strings.Contains(msg, r.secretID) && strings.Contains(msg, "28P01") &&
					errors.As(err, &pqErr) && pqErr.Code == "28P01":
					authErrs.Add(1)
				default:
					other.Add(1)
					otherMsg.Store(msg)
				}
			}
		}()
	}
	time.Sleep(run) // the scenario's length
	close(stop)
	wg.Wait()

	calls := times()
	logins := r.pg.AuthFailures(r.role)
	st := c.Stats()
	t.Logf("5 s, 16 goroutines: auth errors=%d, circuit-open errors=%d, other=%d; store calls=%d (max %d in 1 s); db login failures=%d; median ping after 1 s %s; stats %+v",
		authErrs.Load(), openErrs.Load(), other.Load(), len(calls), maxPerSecond(calls), logins, median(latencies), st)
	if other.Load() != 0 {
		t.Errorf("%d unexpected errors, e.g. %v", other.Load(), otherMsg.Load())
	}
	if authErrs.Load() == 0 || openErrs.Load() == 0 {
		t.Error("expected both ErrAuthFailed and ErrCircuitOpen")
	}
	// Bounds from the settings: at most 4 concurrent logins with unproven
	// credentials (maxUnverifiedLogins), then one probe login per open
	// interval (a credential already rejected is not tried again inside a
	// recovery).
	probes := int(run/openFor) + 1
	if maxLogins := 4 + probes; logins > maxLogins {
		t.Errorf("%d failed logins, want ≤ %d", logins, maxLogins)
	}
	if m := maxPerSecond(calls); m > 4 {
		t.Errorf("%d store calls within one second, want ≤ 4", m)
	}
	// The first burst: the fetch and one recovery round (≤ 4 calls); then
	// each probe's login and its round (2 calls).
	if maxCalls := 4 + 2*probes; len(calls) > maxCalls {
		t.Errorf("%d store calls, want ≤ %d", len(calls), maxCalls)
	}
	if st.BreakerOpens == 0 {
		t.Error("breaker never opened")
	}
}

// A cold start with a wrong secret: 100 callers at once cost a handful of
// rejected logins, not 100.
func TestWrongPasswordColdBurst(t *testing.T) {
	r := newRig(t)
	r.sm.PutSecretValue(r.secretID, rdsSecret(r.role, "pw-wrong-burst", nil))
	db := r.open(r.kv(""), pgsecrets.WithBreakerOpenInterval(time.Hour))
	db.SetMaxOpenConns(0)
	start := make(chan struct{})
	var wg sync.WaitGroup
	var authErrs, openErrs atomic.Int64
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			switch err := db.Ping(); {
			case errors.Is(err, pgsecrets.ErrAuthFailed):
				authErrs.Add(1)
			case errors.Is(err, pgsecrets.ErrCircuitOpen):
				openErrs.Add(1)
			default:
				t.Errorf("unexpected: %v", err)
			}
		}()
	}
	close(start)
	wg.Wait()
	logins := r.pg.AuthFailures(r.role)
	t.Logf("100 callers: %d auth errors, %d circuit-open errors; %d rejected logins; %d store calls",
		authErrs.Load(), openErrs.Load(), logins, r.sm.Calls("GetSecretValue"))
	// At most maxUnverifiedLogins (4) logins with the unproven credentials,
	// and one recovery round for all of them.
	if logins > 4 {
		t.Errorf("%d rejected logins for a burst of 100, want ≤ 4", logins)
	}
	if calls := r.sm.Calls("GetSecretValue"); calls > 4 {
		t.Errorf("%d store calls for a burst of 100, want ≤ 4", calls)
	}
}

// Once open, the breaker fails Connect without touching the store or the
// database.
func TestBreakerFailsFast(t *testing.T) {
	r := newRig(t)
	r.sm.PutSecretValue(r.secretID, rdsSecret(r.role, "pw-wrong", nil))
	db, c := r.openC(r.kv(""), pgsecrets.WithBreakerOpenInterval(time.Hour))
	if err := db.Ping(); !errors.Is(err, pgsecrets.ErrAuthFailed) {
		t.Fatalf("first ping: %v", err)
	}
	calls, logins := r.sm.TotalCalls(), r.pg.AuthFailures(r.role)
	for i := 0; i < 50; i++ {
		err := db.Ping()
		var se *pgsecrets.SecretError
		if !errors.Is(err, pgsecrets.ErrCircuitOpen) || !errors.As(err, &se) || se.SQLState != "28P01" || se.SecretID != r.secretID {
			t.Fatalf("ping %d: %v", i, err)
		}
	}
	if r.sm.TotalCalls() != calls || r.pg.AuthFailures(r.role) != logins {
		t.Errorf("open breaker still reached the store (%d→%d) or the database (%d→%d)",
			calls, r.sm.TotalCalls(), logins, r.pg.AuthFailures(r.role))
	}
	if st := c.Stats(); st.BreakerState != "open" || st.BreakerRejects != 50 {
		t.Errorf("stats %+v", st)
	}
}

// Errors that are not about credentials are returned at once, with no
// store call beyond the first fetch.
func TestNonAuthFailuresNoRefresh(t *testing.T) {
	r := newRig(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadPort := l.Addr().(*net.TCPAddr).Port
	l.Close()

	check := func(t *testing.T, db *sql.DB, want func(error) bool) {
		t.Helper()
		if err := db.Ping(); !want(err) { // fetches the secret once
			t.Fatalf("got %v", err)
		}
		calls := r.sm.Calls("GetSecretValue")
		for i := 0; i < 3; i++ {
			if err := db.Ping(); !want(err) {
				t.Fatalf("got %v", err)
			}
		}
		if n := r.sm.Calls("GetSecretValue"); n != calls {
			t.Errorf("GetSecretValue calls went from %d to %d", calls, n)
		}
	}
	t.Run("server down", func(t *testing.T) {
		db := r.open(fmt.Sprintf("host=127.0.0.1 port=%d sslmode=require secret_id=%s secret_endpoint=%s", deadPort, r.secretID, r.sm.URL()))
		check(t, db, func(err error) bool { return err != nil && !errors.Is(err, pgsecrets.ErrAuthFailed) })
	})
	t.Run("unknown database", func(t *testing.T) {
		db := r.open(strings.Replace(r.kv(""), "dbname=postgres", "dbname=no_such_db", 1))
		check(t, db, func(err error) bool {
			var pqErr *pq.Error
			return errors.As(err, &pqErr) && pqErr.Code == "3D000"
		})
	})
}

// A store that throttles (its request quota spent by the fleet): cached
// credentials keep serving without a failed query, the calls are counted
// as throttled, not as an outage of another kind, and the error names the
// refused request.
func TestStoreThrottled(t *testing.T) {
	r := newRig(t)
	rec := &recorder{}
	db, c := r.openC(r.kv("secret_ttl=1s"), pgsecrets.WithObserver(rec))
	rotationPool(db)
	l := startLoad(t, db, 8)
	l.waitQueries(t, 100)

	remove := r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Throttle})
	eventually(t, "two throttled store calls", func() bool { return c.Stats().StoreThrottled >= 2 })
	_, err := c.Refresh(context.Background())
	remove()
	var se *pgsecrets.SecretError
	if !errors.Is(err, pgsecrets.ErrThrottled) || !errors.Is(err, pgsecrets.ErrStoreUnavailable) || !errors.As(err, &se) ||
		se.RequestID == "" || !strings.Contains(err.Error(), "quota") {
		t.Errorf("Refresh while throttled: %v", err)
	}
	l.waitQueries(t, 100)
	l.assertNoFailures(t)

	throttled := 0
	ev, _ := rec.take()
	for _, e := range ev {
		if e.Kind == pgsecrets.KindStoreCallEnd && e.Outcome == "throttled" {
			throttled++
		}
	}
	if st := c.Stats(); throttled == 0 || int64(throttled) != st.StoreThrottled || st.StaleServes == 0 {
		t.Errorf("%d throttled store_call.end events; stats %+v", throttled, st)
	}
	if !strings.Contains(r.logs.String(), `error_kind="secret store throttled the request"`) {
		t.Error("no log line says the store throttled")
	}
}
