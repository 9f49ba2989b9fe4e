package testkit

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"os"
	"testing"
	"time"
)

// ChurnTokenAge is the age past which the server refuses tokens during a
// churn: a token dies seconds after it was minted, over and over, as one
// signed by credentials about to expire does. Not shorter: on a machine
// busy with other tests a login can take a second or two, and a token
// refused before the logins that recovery found it for is a database that
// refuses everything (and providers outside the core fetch at most every
// 500 ms).
const ChurnTokenAge = 5 * time.Second

// TokenChurn is the load every token provider is held to: workers
// querying through db for Duration, each connection living only
// ConnLifetime (so logins never stop), while the server refuses tokens
// early (its MaxTokenAge, set by the caller before RunTokenChurn).
type TokenChurn struct {
	// Workers defaults to 16.
	Workers int
	// Duration defaults to one minute; PGSECRETS_TOKEN_CHURN overrides
	// the default (a Go duration), for a quicker run by hand.
	Duration time.Duration
	// ConnLifetime defaults to 250 ms.
	ConnLifetime time.Duration
	// Refused reports how many logins the server has refused for the
	// token's age so far; the run must see some.
	Refused func() int
}

// ChurnResult is what a TokenChurn run saw.
type ChurnResult struct {
	Queries int64
	Refused int
}

// RunTokenChurn runs c against db and fails the test if a query failed,
// none succeeded, or the server refused no token (the run then proved
// nothing about recovery).
func RunTokenChurn(tb testing.TB, db *sql.DB, c TokenChurn) ChurnResult {
	tb.Helper()
	if c.Workers == 0 {
		c.Workers = 16
	}
	if c.Duration == 0 {
		c.Duration = time.Minute
		if d, err := time.ParseDuration(os.Getenv("PGSECRETS_TOKEN_CHURN")); err == nil && d > 0 {
			c.Duration = d
		}
	}
	if c.ConnLifetime == 0 {
		c.ConnLifetime = 250 * time.Millisecond
	}
	db.SetMaxOpenConns(c.Workers)
	db.SetMaxIdleConns(c.Workers)
	db.SetConnMaxLifetime(c.ConnLifetime)
	refusedBefore := c.Refused()
	l := Start(tb, c.Workers, func(ctx context.Context) error {
		var one int
		return db.QueryRowContext(ctx, "SELECT 1").Scan(&one)
	})
	timer := time.NewTimer(c.Duration)
	<-timer.C // the run's length is the point
	l.AssertNoFailures(tb)
	res := ChurnResult{Queries: l.OK(), Refused: c.Refused() - refusedBefore}
	if res.Refused == 0 {
		tb.Errorf("the server refused no token in %s: the run did not exercise recovery", c.Duration)
	}
	tb.Logf("token churn: %d workers, %s, connections of %s: %d queries, %d tokens refused for their age, 0 failed",
		c.Workers, c.Duration, c.ConnLifetime, res.Queries, res.Refused)
	return res
}

// BenchConnect runs one sub-benchmark per connector (named "driver=NAME",
// for benchstat -col /driver), each opening and closing a connection per
// iteration: a provider's Connect against the plain driver's, in the same
// process.
func BenchConnect(b *testing.B, connectors ...NamedConnector) {
	ctx := context.Background()
	for _, nc := range connectors {
		b.Run("driver="+nc.Name, func(b *testing.B) {
			for b.Loop() {
				conn, err := nc.Connector.Connect(ctx)
				if err != nil {
					b.Fatal(err)
				}
				conn.Close()
			}
		})
	}
}

// NamedConnector is a connector and its name in BenchConnect.
type NamedConnector struct {
	Name      string
	Connector driver.Connector
}

// TokenNeverSentToImpostor plays the attacker on the network path of a
// token provider: an impostor that declines TLS, or presents a certificate
// from another CA than ca, gets neither a plaintext startup nor a password
// (the token) under require, verify-ca and verify-full. login opens one
// connection with the provider's DSN for the impostor's port and the
// sslmode settings given, and returns its error.
func TokenNeverSentToImpostor(t *testing.T, ca string, login func(port int, sslmode string) error) {
	t.Helper()
	for _, tc := range []struct {
		name, mode string
		tls        bool // the impostor accepts TLS with its own CA
	}{
		{"declines TLS, require", "sslmode=require", false},
		{"declines TLS, verify-full", "sslmode=verify-full sslrootcert=" + ca, false},
		{"foreign certificate, verify-full", "sslmode=verify-full sslrootcert=" + ca, true},
		{"foreign certificate, verify-ca", "sslmode=verify-ca sslrootcert=" + ca, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			imp := StartImpostor(t, ImpostorOptions{TLS: tc.tls})
			if err := login(imp.Port(), tc.mode); err == nil {
				t.Fatal("logged in to the impostor")
			}
			imp.Settle(t)
			if imp.Conns() == 0 {
				t.Fatal("the login never reached the impostor")
			}
			if n := imp.PlaintextStartups(); n != 0 {
				t.Errorf("%d startups sent in plaintext", n)
			}
			if p := imp.Passwords(); len(p) != 0 {
				t.Errorf("the impostor received %d passwords (a token)", len(p))
			}
		})
	}
}
