package iamtest_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/iamtest"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
	_ "github.com/pgsecrets/pgsecrets/pgxsecrets" // secret_driver=pgx
)

// awsEnv gives the SDK's default chain the front end's static key, and
// nothing else.
func awsEnv(t testing.TB) { testkit.AWSEnv(t, akid, secret) }

// rdsIAMDB opens a *sql.DB with secret_provider=rds-iam on the front end,
// every query on a new connection (a login per query).
func (r *rig) rdsIAMDB(t testing.TB, user, driver string, logs *testkit.SyncBuffer) (*sql.DB, *pgsecrets.Connector) {
	t.Helper()
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=verify-full sslrootcert=%s "+
		"secret_provider=rds-iam secret_region=%s secret_driver=%s", r.srv.Port(), user, r.srv.CAFile(), r.srv.Region(), driver)
	c, err := pgsecrets.NewConnector(dsn, pgsecrets.WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	db.SetMaxIdleConns(0)
	t.Cleanup(func() { db.Close() })
	return db, c
}

// pgsecrets' rds-iam provider through the front end, on both engines:
// tokens from the SDK's default chain log in; a refused token recovers
// inside the call; a role that never logged in fails fast, naming the
// provider, user and the server's message; no token reaches the logs.
func TestPgsecretsRDSIAM(t *testing.T) {
	for _, driver := range []string{"pq", "pgx"} {
		t.Run(driver, func(t *testing.T) {
			awsEnv(t)
			r := newRig(t, nil)
			logs := &testkit.SyncBuffer{}
			db, c := r.rdsIAMDB(t, r.user, driver, logs)
			ctx := context.Background()
			var user string
			if err := db.QueryRowContext(ctx, "SELECT current_user").Scan(&user); err != nil || user != r.user {
				t.Fatalf("current_user = %q, %v", user, err)
			}

			r.srv.RejectNext(1)
			if err := db.PingContext(ctx); err != nil {
				t.Fatalf("a refused token was not recovered inside the call: %v", err)
			}
			if st := c.Stats(); st.AuthFailures != 1 || st.AuthRecovered != 1 {
				t.Errorf("after one refused token: %d failures, %d recovered", st.AuthFailures, st.AuthRecovered)
			}

			// A role that never logged in (another server, another role):
			// one round, then the error, at once.
			r2 := newRig(t, nil)
			r2.srv.RejectNext(1000)
			other, _ := r2.rdsIAMDB(t, r2.user, driver, logs)
			err := other.PingContext(ctx)
			if !errors.Is(err, pgsecrets.ErrAuthFailed) || !strings.Contains(err.Error(), "rds-iam:"+r2.user+"@127.0.0.1") ||
				!strings.Contains(err.Error(), "PAM authentication failed") || !strings.Contains(err.Error(), "granted rds_iam") {
				t.Errorf("a token the server refuses from the start: %v", err)
			}
			if strings.Contains(logs.String(), "X-Amz-Signature") || strings.Contains(logs.String(), secret) {
				t.Error("a log line carries a token or the secret key")
			}
		})
	}
}

// The token churn on both engines at once: 16 workers, connections of
// 250 ms, for a minute, while the server refuses every token once it is
// testkit.ChurnTokenAge old (as RDS does when the credentials that signed
// it expire first): no query fails.
func TestPgsecretsRDSIAMTokenChurn(t *testing.T) {
	awsEnv(t)
	for _, driver := range []string{"pq", "pgx"} {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, nil)
			logs := &testkit.SyncBuffer{}
			db, _ := r.rdsIAMDB(t, r.user, driver, logs)
			r.srv.MaxTokenAge(testkit.ChurnTokenAge)
			testkit.RunTokenChurn(t, db, testkit.TokenChurn{Refused: func() int { return r.srv.Refusals(iamtest.ReasonTooOld) }})
		})
	}
}

// A reconnect storm against a server that throttles logins: with
// secret_login_rate below the server's limit, no login is throttled and
// no query fails, although every query needs a new connection.
func TestPgsecretsRDSIAMPacedLogins(t *testing.T) {
	awsEnv(t)
	r := newRig(t, nil)
	r.srv.Throttle(20)
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=verify-full sslrootcert=%s "+
		"secret_provider=rds-iam secret_region=%s secret_login_rate=10", r.srv.Port(), r.user, r.srv.CAFile(), r.srv.Region())
	c, err := pgsecrets.NewConnector(dsn)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	db.SetMaxIdleConns(0)
	t.Cleanup(func() { db.Close() })
	l := testkit.Start(t, 8, func(ctx context.Context) error {
		var one int
		return db.QueryRowContext(ctx, "SELECT 1").Scan(&one)
	})
	accepted := func() (n, throttled int) {
		for _, in := range r.srv.Logins() {
			switch {
			case in.Accepted:
				n++
			case in.Reason == iamtest.ReasonThrottled:
				throttled++
			}
		}
		return n, throttled
	}
	testkit.Eventually(t, "30 logins", func() bool { n, _ := accepted(); return n >= 30 })
	l.Halt()
	l.AssertNoFailures(t)
	if _, throttled := accepted(); throttled != 0 {
		t.Errorf("%d logins throttled at 20/s although pgsecrets paces them to 10/s", throttled)
	}
}
