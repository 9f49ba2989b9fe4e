package pgsecrets_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/smtest"
)

// BenchmarkFirstError: how long a caller waits for the first error from a
// fresh *sql.DB when something is persistently wrong, against plain lib/pq
// where it has an equivalent:
//
//	go test -run '^$' -bench FirstError -count 10 . > ff.txt && benchstat -col /driver ff.txt
//
// Cold cases open a new *sql.DB (a new connector for pgsecrets) per
// iteration and close it at the end, so the process-wide cache entry and
// circuit breaker of the secret are dropped and every iteration is a cold
// start; ns/op covers open, Ping and Close, ping-ns/op the Ping alone.
// store-down-backoff and breaker-open measure the answers of a warm,
// failing connector instead. calls/op is the store's GetSecretValue calls
// per iteration.
func BenchmarkFirstError(b *testing.B) {
	b.Run("case=wrong-password", func(b *testing.B) {
		b.Run("driver=pq", func(b *testing.B) {
			r := newRig(b)
			cfg := r.pg.Config(r.role, "wrong", "")
			benchColdPq(b, cfg, "28P01")
		})
		b.Run("driver=pgsecrets", func(b *testing.B) {
			r := newRig(b)
			if _, err := r.sm.PutSecretValue(r.secretID, rdsSecret(r.role, "wrong-pw", nil)); err != nil {
				b.Fatal(err)
			}
			benchColdOurs(b, r, r.kv(""), authFailedWith("28P01"))
		})
	})

	b.Run("case=pg_hba", func(b *testing.B) {
		// Only hostssl lines: a login without TLS is refused before any
		// password is checked (28000, "no pg_hba.conf entry").
		pg := testdb.Shared(b)
		ctx := context.Background()
		if err := pg.SetHostSSLOnly(ctx, true); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			if err := pg.SetHostSSLOnly(ctx, false); err != nil {
				b.Error(err)
			}
		})
		b.Run("driver=pq", func(b *testing.B) {
			r := newRig(b)
			cfg := r.pg.Config(r.role, r.password, "")
			cfg.SSLMode = pq.SSLModeDisable
			benchColdPq(b, cfg, "28000")
		})
		b.Run("driver=pgsecrets", func(b *testing.B) {
			r := newRig(b)
			dsn := fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=disable secret_id=%s secret_endpoint=%s",
				r.pg.Host(), r.pg.Port(), r.secretID, r.sm.URL())
			benchColdOurs(b, r, dsn, authFailedWith("28000"))
		})
	})

	b.Run("case=store-down/driver=pgsecrets", func(b *testing.B) {
		r := newRig(b)
		b.Cleanup(r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Fail}))
		benchColdOurs(b, r, r.kv(""), kindIs(pgsecrets.ErrStoreUnavailable))
	})

	b.Run("case=store-down-backoff/driver=pgsecrets", func(b *testing.B) {
		r := newRig(b)
		b.Cleanup(r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Fail}))
		db := r.open(r.kv(""))
		db.SetMaxIdleConns(0)
		if err := db.Ping(); !errors.Is(err, pgsecrets.ErrStoreUnavailable) {
			b.Fatalf("first ping: %v, want ErrStoreUnavailable", err)
		}
		benchWarm(b, r, db, kindIs(pgsecrets.ErrStoreUnavailable))
	})

	b.Run("case=breaker-open/driver=pgsecrets", func(b *testing.B) {
		r := newRig(b)
		if _, err := r.sm.PutSecretValue(r.secretID, rdsSecret(r.role, "wrong-pw", nil)); err != nil {
			b.Fatal(err)
		}
		db := r.open(r.kv(""), pgsecrets.WithBreakerOpenInterval(time.Hour))
		db.SetMaxIdleConns(0)
		if err := db.Ping(); !errors.Is(err, pgsecrets.ErrAuthFailed) {
			b.Fatalf("first ping: %v, want ErrAuthFailed", err)
		}
		benchWarm(b, r, db, kindIs(pgsecrets.ErrCircuitOpen))
	})
}

// kindIs checks that an error wraps kind.
func kindIs(kind error) func(error) error {
	return func(err error) error {
		if !errors.Is(err, kind) {
			return fmt.Errorf("got %v, want %v", err, kind)
		}
		return nil
	}
}

// authFailedWith checks that an error is ErrAuthFailed wrapping lib/pq's
// error with sqlstate.
func authFailedWith(sqlstate string) func(error) error {
	return func(err error) error {
		var pqErr *pq.Error
		if !errors.Is(err, pgsecrets.ErrAuthFailed) || !errors.As(err, &pqErr) || pqErr.Code != pq.ErrorCode(sqlstate) {
			return fmt.Errorf("got %v, want ErrAuthFailed wrapping lib/pq's %s", err, sqlstate)
		}
		return nil
	}
}

// benchColdPq opens a lib/pq *sql.DB per iteration and wants its first
// Ping to fail with sqlstate.
func benchColdPq(b *testing.B, cfg pq.Config, sqlstate string) {
	b.Helper()
	var ping time.Duration
	n := 0
	for b.Loop() {
		c, err := pq.NewConnectorConfig(cfg)
		if err != nil {
			b.Fatal(err)
		}
		db := sql.OpenDB(c)
		start := time.Now()
		err = db.Ping()
		ping += time.Since(start)
		n++
		var pqErr *pq.Error
		if !errors.As(err, &pqErr) || pqErr.Code != pq.ErrorCode(sqlstate) {
			b.Fatalf("iteration %d: got %v, want lib/pq's %s", n, err, sqlstate)
		}
		db.Close()
	}
	b.ReportMetric(float64(ping.Nanoseconds())/float64(n), "ping-ns/op")
}

// benchColdOurs opens a pgsecrets *sql.DB (a new connector) per iteration
// and checks its first Ping's error with check.
func benchColdOurs(b *testing.B, r *rig, dsn string, check func(error) error) {
	b.Helper()
	calls0 := r.sm.Calls("GetSecretValue")
	var ping time.Duration
	n := 0
	for b.Loop() {
		c, err := pgsecrets.NewConnector(dsn, pgsecrets.WithLogger(r.logger))
		if err != nil {
			b.Fatal(err)
		}
		db := sql.OpenDB(c)
		start := time.Now()
		err = db.Ping()
		ping += time.Since(start)
		n++
		if err := check(err); err != nil {
			b.Fatalf("iteration %d: %v", n, err)
		}
		db.Close() // closes c: the last user of the cache entry drops it
	}
	b.ReportMetric(float64(ping.Nanoseconds())/float64(n), "ping-ns/op")
	b.ReportMetric(float64(r.sm.Calls("GetSecretValue")-calls0)/float64(n), "calls/op")
}

// benchWarm pings db, already failing, once per iteration and checks each
// error with check.
func benchWarm(b *testing.B, r *rig, db *sql.DB, check func(error) error) {
	b.Helper()
	calls0 := r.sm.Calls("GetSecretValue")
	n := 0
	for b.Loop() {
		err := db.Ping()
		n++
		if err := check(err); err != nil {
			b.Fatalf("iteration %d: %v", n, err)
		}
	}
	b.ReportMetric(float64(r.sm.Calls("GetSecretValue")-calls0)/float64(n), "calls/op")
}
