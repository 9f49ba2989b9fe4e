package pgsecrets_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"testing"
	"time"

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

// expiringProvider hands out the rig's credentials as if they were a
// lease ending in an hour, so that connections are wrapped (lease.go).
type expiringProvider struct{ user, password string }

func (p expiringProvider) Fetch(context.Context, string) (*pgsecrets.Credentials, error) {
	return &pgsecrets.Credentials{Username: p.user, Password: pgsecrets.NewSecret(p.password), VersionID: "lease",
		Expires: time.Now().Add(time.Hour)}, nil
}

// BenchmarkSelect1: a query on one open connection. driver=pgsecrets-lease
// runs on the wrapper that connections made with expiring credentials get;
// plain pgsecrets connections are lib/pq's own.
func BenchmarkSelect1(b *testing.B) {
	plain, ours := benchConnectors(b)
	r := newRig(b)
	leased, err := pgsecrets.NewConnector(r.kv(""), pgsecrets.WithLogger(r.logger),
		pgsecrets.WithProvider(expiringProvider{r.role, r.password}))
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		c    driver.Connector
	}{{"driver=pq", plain}, {"driver=pgsecrets", ours}, {"driver=pgsecrets-lease", leased}} {
		// One pool per driver for all of b.Run's rounds: closing it would
		// close the pgsecrets connector.
		db := sql.OpenDB(bc.c)
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

// BenchmarkConnectAfterRotation: a new connection right after the password
// changed in the database, the cache still holding the old one, so Connect
// recovers (login fails, store read, login). Compare with
// BenchmarkConnect. Slow to run (each round waits out the store-call
// spacing that rotations far apart would give):
//
//	go test -run '^$' -bench ConnectAfterRotation -benchtime 20x .
func BenchmarkConnectAfterRotation(b *testing.B) {
	for _, kind := range []string{"four-step", "wrong-order"} {
		b.Run("rotation="+kind, func(b *testing.B) {
			r := newRig(b)
			c, err := pgsecrets.NewConnector(r.kv("secret_ttl=1h"), pgsecrets.WithLogger(r.logger))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			ctx := context.Background()
			connect := func() {
				conn, err := c.Connect(ctx)
				if err != nil {
					b.Fatal(err)
				}
				conn.Close()
			}
			connect()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				// Rotations are minutes apart in life; here, wait out the
				// spacing of store calls so that it is not what is measured.
				time.Sleep(600 * time.Millisecond)
				pw := randomPassword()
				var pending string
				if kind == "four-step" {
					if pending, err = r.sm.PutSecretValue(r.secretID, rdsSecret(r.role, pw, nil), "AWSPENDING"); err != nil {
						b.Fatal(err)
					}
				}
				if err := r.pg.SetPassword(ctx, r.role, pw); err != nil {
					b.Fatal(err)
				}
				if kind == "wrong-order" {
					if _, err := r.sm.PutSecretValue(r.secretID, rdsSecret(r.role, pw, nil)); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				connect()
				b.StopTimer()
				if kind == "four-step" {
					if err := r.sm.FinishRotation(r.secretID, pending); err != nil {
						b.Fatal(err)
					}
				}
				r.password = pw
				b.StartTimer()
			}
		})
	}
}
