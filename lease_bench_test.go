package pgsecrets

import (
	"context"
	"database/sql/driver"
	"io"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
)

// BenchmarkLeaseConnQuery: what the lease wrapper adds to a query, on one
// and the same lib/pq connection (so the server and the TLS session are
// the same for both columns): the pool's ResetSession and IsValid around
// each query, and the query itself through the wrapper.
//
//	go test -run '^$' -bench LeaseConnQuery -count 10 . > lease.txt && benchstat -col /driver lease.txt
func BenchmarkLeaseConnQuery(b *testing.B) {
	pg := testdb.Current()
	if pg == nil {
		b.Skip("needs PostgreSQL")
	}
	ctx := context.Background()
	const role, pw = "bench_lease", "bench-lease-pw"
	if err := pg.CreateRole(ctx, role, pw); err != nil {
		b.Fatal(err)
	}
	defer pg.DropRole(ctx, role)
	pc, err := pq.NewConnectorConfig(pg.Config(role, pw, ""))
	if err != nil {
		b.Fatal(err)
	}
	raw, err := pc.Connect(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	book := newLeaseBook("bench", nil, newLifetime())
	l := &lease{conns: map[*leaseConn]struct{}{}}
	l.retireAt.Store(time.Now().Add(time.Hour).UnixNano())
	wrapped := newLeaseConn(raw, book, l, &observers{stats: &counters{}})

	dest := make([]driver.Value, 1)
	for _, bc := range []struct {
		name string
		conn driver.Conn
	}{{"driver=pq", raw}, {"driver=pgsecrets-lease", wrapped}} {
		q := bc.conn.(driver.QueryerContext)
		reset := bc.conn.(driver.SessionResetter)
		valid := bc.conn.(driver.Validator)
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if err := reset.ResetSession(ctx); err != nil {
					b.Fatal(err)
				}
				rows, err := q.QueryContext(ctx, "SELECT 1", nil)
				if err != nil {
					b.Fatal(err)
				}
				if err := rows.Next(dest); err != nil {
					b.Fatal(err)
				}
				if err := rows.Next(dest); err != io.EOF {
					b.Fatal(err)
				}
				rows.Close()
				if !valid.IsValid() {
					b.Fatal("connection not valid")
				}
			}
		})
	}
}
