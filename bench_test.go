package pgsecrets_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"testing"

	"github.com/lib/pq"
	"github.com/pgsecrets/pgsecrets"
)

// Benchmarks compare pgsecrets with plain lib/pq, same server, same
// credentials, same TLS settings, in the same run. Report ratios:
//
//	go test -run '^$' -bench . -count 10 . > bench.txt && benchstat -col /driver bench.txt

func benchConnectors(b *testing.B) (plain, ours driver.Connector) {
	r := newRig(b)
	pqc, err := pq.NewConnectorConfig(r.pg.Config(r.role, r.password, ""))
	if err != nil {
		b.Fatal(err)
	}
	c, err := pgsecrets.NewConnector(r.kv(""), pgsecrets.WithLogger(r.logger))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	// Warm the cache.
	conn, err := c.Connect(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	conn.Close()
	return pqc, c
}

// BenchmarkConnect: the cost of a new connection (TLS + SCRAM login), the
// secret cached.
func BenchmarkConnect(b *testing.B) {
	plain, ours := benchConnectors(b)
	for _, bc := range []struct {
		name string
		c    driver.Connector
	}{{"driver=pq", plain}, {"driver=pgsecrets", ours}} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			for b.Loop() {
				conn, err := bc.c.Connect(ctx)
				if err != nil {
					b.Fatal(err)
				}
				conn.Close()
			}
		})
	}
}

// BenchmarkSelect1: a query on one open connection.
func BenchmarkSelect1(b *testing.B) {
	plain, ours := benchConnectors(b)
	for _, bc := range []struct {
		name string
		c    driver.Connector
	}{{"driver=pq", plain}, {"driver=pgsecrets", ours}} {
		b.Run(bc.name, func(b *testing.B) {
			db := sql.OpenDB(bc.c)
			defer db.Close()
			db.SetMaxOpenConns(1)
			var one int
			for b.Loop() {
				if err := db.QueryRow("SELECT 1").Scan(&one); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
