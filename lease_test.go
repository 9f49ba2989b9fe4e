package pgsecrets_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/pgsecrets/pgsecrets"
)

// leaseProvider hands out the rig's credentials as leases of a fixed life
// (no Leaser: nothing to renew or revoke), a new version per fetch.
type leaseProvider struct {
	user, password string
	life           time.Duration
	fetches        atomic.Int64
}

func (p *leaseProvider) Fetch(context.Context, string) (*pgsecrets.Credentials, error) {
	n := p.fetches.Add(1)
	return &pgsecrets.Credentials{Username: p.user, Password: pgsecrets.NewSecret(p.password),
		VersionID: fmt.Sprint(n), Expires: time.Now().Add(p.life)}, nil
}

// Connections made with expiring credentials are wrapped; everything lib/pq
// offers through database/sql still works through the wrapper.
func TestLeaseConnKeepsLibPQFeatures(t *testing.T) {
	r := newRig(t)
	db, _ := r.openC(r.kv(""), pgsecrets.WithProvider(&leaseProvider{user: r.role, password: r.password, life: time.Hour}))
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Raw(func(dc any) error {
		if got := fmt.Sprintf("%T", dc); got == "*pq.conn" {
			return fmt.Errorf("driver conn is lib/pq's own, want the lease wrapper")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := conn.QueryRowContext(ctx, "SELECT cardinality($1::int[])", pq.Array([]int{1, 2, 3})).Scan(&n); err != nil || n != 3 {
		t.Fatalf("pq.Array through the wrapper: %d, %v", n, err)
	}
	if _, err := conn.ExecContext(ctx, "CREATE TEMP TABLE t (v int)"); err != nil {
		t.Fatal(err)
	}
	tx, err := conn.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelSerializable})
	if err != nil {
		t.Fatal(err)
	}
	stmt, err := tx.Prepare(pq.CopyIn("t", "v"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := stmt.Exec(i); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := stmt.Exec(); err != nil {
		t.Fatal(err)
	}
	stmt.Close()
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 3 {
		t.Fatalf("COPY through the wrapper: %d rows, %v", n, err)
	}
	if err := conn.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
}

// With no SetConnMaxLifetime, no session outlives its credential: each is
// closed before the credential's end, less the margin, and new ones use a
// fresh credential fetched ahead of time.
func TestLeaseRetiresConnectionsWithoutLifetime(t *testing.T) {
	r := newRig(t)
	p := &leaseProvider{user: r.role, password: r.password, life: 2 * time.Second}
	db, c := r.openC(r.kv(""), pgsecrets.WithProvider(p))
	db.SetMaxIdleConns(8)
	l := startLoad(t, db, 8)
	l.waitQueries(t, 100)
	// A session older than a credential's life, seen twice 100 ms apart
	// (a closing backend lingers a moment), outlived its credential.
	var old []string
	prev := map[int]bool{}
	end := time.Now().Add(6 * time.Second)
	for time.Now().Before(end) {
		rows, err := r.pg.DB().Query(`SELECT pid FROM pg_stat_activity WHERE usename = $1 AND backend_start < now() - interval '2 seconds'`, r.role)
		if err != nil {
			t.Fatal(err)
		}
		cur := map[int]bool{}
		for rows.Next() {
			var pid int
			if err := rows.Scan(&pid); err != nil {
				t.Fatal(err)
			}
			cur[pid] = true
			if prev[pid] {
				old = append(old, fmt.Sprint(pid))
			}
		}
		rows.Close()
		prev = cur
		time.Sleep(100 * time.Millisecond) // sampling at an interval is the point
	}
	l.assertNoFailures(t)
	if len(old) > 0 {
		t.Errorf("sessions outlived their credential: pids %s", strings.Join(old, ", "))
	}
	st := c.Stats()
	if st.ConnsRetired == 0 || p.fetches.Load() < 3 {
		t.Errorf("%d connections retired, %d credentials fetched in 6 s of 2 s credentials", st.ConnsRetired, p.fetches.Load())
	}
	if st.StoreWaits > 8 {
		t.Errorf("%d connections waited for the store: refreshes should run ahead", st.StoreWaits)
	}
}

// leaserProvider is leaseProvider with leases it can revoke (and, capped
// at issue, never renews), counting the revocations.
type leaserProvider struct {
	leaseProvider
	revoked atomic.Int64
}

func (p *leaserProvider) Fetch(ctx context.Context, stage string) (*pgsecrets.Credentials, error) {
	c, err := p.leaseProvider.Fetch(ctx, stage)
	if err == nil {
		c.LeaseID = "database/creds/app/" + c.VersionID
	}
	return c, err
}

func (p *leaserProvider) Renew(_ context.Context, c *pgsecrets.Credentials, _ time.Duration) (time.Time, error) {
	return c.Expires, nil
}

func (p *leaserProvider) Revoke(context.Context, *pgsecrets.Credentials) error {
	p.revoked.Add(1)
	return nil
}

// Two connectors share one cache entry and its leases. Once the first is
// closed, what happens to the leases reaches the second alone: the first's
// Stats stay as they were at Close, and its logger hears nothing more.
func TestClosedConnectorHearsNoMore(t *testing.T) {
	r := newRig(t)
	p := &leaserProvider{leaseProvider: leaseProvider{user: r.role, password: r.password, life: time.Hour}}
	logs1, logs2 := &syncBuffer{}, &syncBuffer{}
	open := func(logs *syncBuffer) *pgsecrets.Connector {
		c, err := pgsecrets.NewConnector(r.kv(""), pgsecrets.WithProvider(p),
			pgsecrets.WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c1, c2 := open(logs1), open(logs2)
	defer c2.Close()
	db1 := sql.OpenDB(c1)
	if err := db1.Ping(); err != nil { // the first lease, fetched for c1
		t.Fatal(err)
	}
	if err := db1.Close(); err != nil { // its connection, then c1
		t.Fatal(err)
	}
	closed, heard := c1.Stats(), logs1.String()

	// A newer lease supersedes the first, unused now: it is revoked.
	if _, err := c2.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the superseded lease revoked", func() bool { return p.revoked.Load() == 1 })
	eventually(t, "c2 to count the revocation", func() bool { return c2.Stats().LeaseRevocations == 1 })
	if st := c1.Stats(); st != closed {
		t.Errorf("the closed connector's stats changed:\n at Close %+v\n now      %+v", closed, st)
	}
	if now := logs1.String(); now != heard {
		t.Errorf("the closed connector's logger got more lines:\n%s", strings.TrimPrefix(now, heard))
	}
	if !strings.Contains(logs2.String(), pgsecrets.EventLeaseRevoked) {
		t.Errorf("the open connector's logger did not hear of the revocation:\n%s", logs2)
	}
	for _, logs := range []*syncBuffer{logs1, logs2} {
		if strings.Contains(logs.String(), r.password) {
			t.Error("a log line contains the password")
		}
	}
}

// gatedLeases is leaseProvider whose fetches, while held, wait for
// release (or their context).
type gatedLeases struct {
	leaseProvider
	mu   sync.Mutex
	gate chan struct{} // nil: answer at once
}

func (p *gatedLeases) hold() {
	p.mu.Lock()
	p.gate = make(chan struct{})
	p.mu.Unlock()
}

func (p *gatedLeases) release() {
	p.mu.Lock()
	close(p.gate)
	p.gate = nil
	p.mu.Unlock()
}

func (p *gatedLeases) Fetch(ctx context.Context, stage string) (*pgsecrets.Credentials, error) {
	p.mu.Lock()
	gate := p.gate
	p.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return p.leaseProvider.Fetch(ctx, stage)
}

// database/sql's opener can park a new connection in the pool unused (the
// caller it was made for gave up meanwhile) and hand it out later without
// ResetSession. Such a connection is idle all along: it is closed at its
// lease's retire time like any idle one, and never handed out past it.
func TestLeaseConnParkedByOpenerRetires(t *testing.T) {
	r := newRig(t)
	const life, margin = time.Second, 250 * time.Millisecond
	p := &gatedLeases{leaseProvider: leaseProvider{user: r.role, password: r.password, life: life}}
	db, c := r.openC(r.kv("secret_expiry_margin=250ms"), pgsecrets.WithProvider(p))
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	ctx := context.Background()
	backendPID := func(q interface {
		QueryRowContext(context.Context, string, ...any) *sql.Row
	}) int {
		t.Helper()
		var pid int
		if err := q.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		return pid
	}

	// The only connection is held; every later fetch waits, so once the
	// first lease is past its retire time the next login waits too.
	first, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	firstPID := backendPID(first)
	p.hold()
	retired := c.Stats().Expires.Add(-margin)
	eventually(t, "the first lease's retire time", func() bool { return time.Now().After(retired) })

	// A caller waits for a connection, and gives up while the opener
	// makes one for it.
	waitCtx, giveUp := context.WithCancel(ctx)
	waited := make(chan error, 1)
	go func() {
		conn, err := db.Conn(waitCtx)
		if err == nil {
			conn.Close()
		}
		waited <- err
	}()
	eventually(t, "a caller waiting for a connection", func() bool { return db.Stats().WaitCount == 1 })
	waits := c.Stats().StoreWaits
	// Closed as broken: database/sql asks its opener for a new connection
	// for the waiting caller.
	if err := first.Raw(func(any) error { return driver.ErrBadConn }); !errors.Is(err, driver.ErrBadConn) {
		t.Fatalf("Raw = %v", err)
	}
	eventually(t, "the opener's login waiting for the store", func() bool { return c.Stats().StoreWaits > waits })
	giveUp()
	if err := <-waited; !errors.Is(err, context.Canceled) {
		t.Fatalf("the waiting caller got %v, want context.Canceled", err)
	}
	p.release()
	eventually(t, "the opener's connection parked in the pool", func() bool { return db.Stats().Idle == 1 })
	parked := time.Now()
	var parkedPID int
	eventually(t, "the parked connection's session", func() bool {
		rows, err := r.pg.DB().Query("SELECT pid FROM pg_stat_activity WHERE usename = $1 AND pid <> $2", r.role, firstPID)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var pids []int
		for rows.Next() {
			var pid int
			if err := rows.Scan(&pid); err != nil {
				t.Fatal(err)
			}
			pids = append(pids, pid)
		}
		if len(pids) == 1 {
			parkedPID = pids[0]
		}
		return len(pids) == 1
	})

	// Its lease was fetched before it was parked, so its retire time is
	// parked+life-margin at the latest.
	eventually(t, "the parked connection's retire time", func() bool { return time.Now().After(parked.Add(life - margin)) })
	if pid := backendPID(db); pid == parkedPID {
		t.Fatal("the parked connection was handed out past its lease's retire time")
	}
	if st := c.Stats(); st.ConnsRetired == 0 {
		t.Errorf("the parked connection was not counted as retired: %+v", st)
	}
}

// shortFirstLease hands out a first lease that ends right after its
// fetch (less than a login takes, beyond the margin), then hour-long ones.
type shortFirstLease struct {
	leaseProvider
	margin time.Duration
}

func (p *shortFirstLease) Fetch(ctx context.Context, stage string) (*pgsecrets.Credentials, error) {
	c, _ := p.leaseProvider.Fetch(ctx, stage)
	if c.VersionID == "1" {
		c.Expires = time.Now().Add(p.margin + time.Millisecond)
	}
	return c, nil
}

// A lease that reaches its retirement while a login with it runs does not
// become a connection database/sql would be refused at first use: the
// login is made again with the lease that replaces it, inside the call.
func TestLeaseEndedDuringLoginLogsInAgain(t *testing.T) {
	r := newRig(t)
	p := &shortFirstLease{leaseProvider: leaseProvider{user: r.role, password: r.password, life: time.Hour}, margin: time.Second}
	rec := &recorder{}
	db, c := r.openC(r.kv("secret_expiry_margin=1s"), pgsecrets.WithProvider(p), pgsecrets.WithObserver(rec))
	if err := db.Ping(); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if n := p.fetches.Load(); n != 2 {
		t.Errorf("%d fetches, want 2 (the short lease, then its replacement)", n)
	}
	ev, _ := rec.take()
	var outcomes []string
	for _, e := range ev {
		if e.Kind == pgsecrets.KindLoginEnd {
			outcomes = append(outcomes, e.VersionID+":"+e.Outcome)
		}
	}
	if !slices.Equal(outcomes, []string{"1:failed", "2:ok"}) {
		t.Errorf("logins %v, want the short lease's discarded, then the next one's", outcomes)
	}
	if st := c.Stats(); st.VersionID != "2" || st.AuthFailures != 0 {
		t.Errorf("stats %+v", st)
	}
}
