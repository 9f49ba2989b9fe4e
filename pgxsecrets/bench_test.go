package pgxsecrets_test

import (
	"context"
	"database/sql"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/pgxsecrets"
)

// Benchmarks compare pgxsecrets with plain pgx, same server, credentials
// and TLS, in the same run; report ratios:
//
//	go test -run '^$' -bench . -count 10 . > bench.txt && benchstat -col /pool bench.txt

// pools returns a plain pgxpool with the rig's password and a pgxsecrets
// pool on its secret, each holding at most one connection.
func pools(b *testing.B) (plain *pgxpool.Pool, ours *pgxsecrets.Pool) {
	r := newRig(b)
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=verify-full sslrootcert=%s user=%s password=%s pool_max_conns=1",
		r.pg.Host(), r.pg.Port(), r.pg.CAFile(), r.role, r.password))
	if err != nil {
		b.Fatal(err)
	}
	plain, err = pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(plain.Close)
	ours = r.pool("pool_max_conns=1")
	for _, ping := range []func(context.Context) error{plain.Ping, ours.Ping} {
		if err := ping(ctx); err != nil {
			b.Fatal(err)
		}
	}
	return plain, ours
}

// BenchmarkPoolConnect: a new pool connection (TLS + SCRAM login), the
// secret cached: acquire, then take the connection out of the pool and
// close it, so the next acquire logs in again.
func BenchmarkPoolConnect(b *testing.B) {
	plain, ours := pools(b)
	for _, bc := range []struct {
		name    string
		acquire func(context.Context) (*pgxpool.Conn, error)
	}{{"pool=pgxpool", plain.Acquire}, {"pool=pgxsecrets", ours.Acquire}} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			for b.Loop() {
				c, err := bc.acquire(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if err := c.Hijack().Close(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPoolSelect1: SELECT 1 through the pool, its connection open.
func BenchmarkPoolSelect1(b *testing.B) {
	plain, ours := pools(b)
	for _, bc := range []struct {
		name string
		row  func(ctx context.Context) error
	}{
		{"pool=pgxpool", func(ctx context.Context) error { var one int; return plain.QueryRow(ctx, "SELECT 1").Scan(&one) }},
		{"pool=pgxsecrets", func(ctx context.Context) error { var one int; return ours.QueryRow(ctx, "SELECT 1").Scan(&one) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			for b.Loop() {
				if err := bc.row(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSQLEngine: database/sql through pgsecrets over lib/pq and over
// pgx, SELECT 1 on one open connection.
func BenchmarkSQLEngine(b *testing.B) {
	r := newRig(b)
	for _, bc := range []struct{ name, extra string }{{"pool=sql-pq", ""}, {"pool=sql-pgx", "secret_driver=pgx"}} {
		c, err := pgsecrets.NewConnector(r.dsn(bc.extra), pgsecrets.WithLogger(r.logger))
		if err != nil {
			b.Fatal(err)
		}
		db := sql.OpenDB(c)
		b.Cleanup(func() { db.Close() })
		db.SetMaxOpenConns(1)
		b.Run(bc.name, func(b *testing.B) {
			var one int
			for b.Loop() {
				if err := db.QueryRow("SELECT 1").Scan(&one); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
