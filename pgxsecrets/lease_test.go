package pgxsecrets_test

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/pgxsecrets"
)

// leaseProvider hands out the rig's credentials as leases of a fixed life.
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

// With the pool's default lifetime (an hour), no pool connection outlives
// its credential: expired ones are never handed out and idle ones are
// closed in time.
func TestPoolRetiresLeaseConnections(t *testing.T) {
	r := newRig(t)
	lp := &leaseProvider{user: r.role, password: r.password, life: 2 * time.Second}
	p, err := pgxsecrets.NewPool(context.Background(), r.dsn("pool_max_conns=16"), pgsecrets.WithLogger(r.logger), pgsecrets.WithProvider(lp))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	l := startLoad(t, func(ctx context.Context) error {
		var one int
		return p.QueryRow(ctx, "SELECT 1").Scan(&one)
	})
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
			rows.Scan(&pid)
			cur[pid] = true
			if prev[pid] {
				old = append(old, fmt.Sprint(pid))
			}
		}
		rows.Close()
		prev = cur
		time.Sleep(100 * time.Millisecond) // sampling at an interval is the point
	}
	l.AssertNoFailures(t)
	if len(old) > 0 {
		t.Errorf("pool sessions outlived their credential: pids %s", strings.Join(old, ", "))
	}
	if n := lp.fetches.Load(); n < 3 {
		t.Errorf("%d credentials fetched in 6 s of 2 s leases", n)
	}
}

// database/sql over pgx with expiring credentials: connections are the
// core's lease wrapper around pgx's, retired in time without a lifetime.
func TestSQLOverPgxRetiresLeaseConnections(t *testing.T) {
	r := newRig(t)
	lp := &leaseProvider{user: r.role, password: r.password, life: 2 * time.Second}
	c, err := pgsecrets.NewConnector(r.dsn("secret_driver=pgx"), pgsecrets.WithLogger(r.logger), pgsecrets.WithProvider(lp))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	db.SetMaxIdleConns(16)
	l := startLoad(t, func(ctx context.Context) error {
		var one int
		return db.QueryRowContext(ctx, "SELECT 1").Scan(&one)
	})
	eventually := time.Now().Add(time.Minute)
	for c.Stats().ConnsRetired == 0 && time.Now().Before(eventually) {
		time.Sleep(20 * time.Millisecond) // polling a counter
	}
	l.WaitQueries(t, 200)
	l.AssertNoFailures(t)
	if st := c.Stats(); st.ConnsRetired == 0 || lp.fetches.Load() < 2 {
		t.Errorf("%d connections retired, %d leases fetched", st.ConnsRetired, lp.fetches.Load())
	}
}
