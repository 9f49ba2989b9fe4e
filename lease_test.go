package pgsecrets_test

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
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
