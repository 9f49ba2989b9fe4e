package gcpiam_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/gcpiam"
	"github.com/pgsecrets/pgsecrets/iamtest"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/pgxsecrets" // and secret_driver=pgx
)

// TestMain keeps the developer's Google identity out: no key file, no
// metadata server, and a HOME without gcloud's file.
func TestMain(m *testing.M) {
	home, err := os.MkdirTemp("", "gcpiam-home-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("HOME", home)
	os.Unsetenv("GOOGLE_APPLICATION_CREDENTIALS")
	os.Unsetenv("GCE_METADATA_HOST")
	code := testdb.RunMain(m, testdb.Options{})
	os.RemoveAll(home)
	os.Exit(code)
}

var seq atomic.Int64

// account is a Google service account of the issuer with a real role of
// its database user name.
type account struct {
	email, user string
	key         []byte // its key file
}

// newIssuer starts an issuer whose tokens live an hour (so that only
// pgsecrets' cache bypass can replace a refused one).
func newIssuer(t testing.TB, opts iamtest.GoogleOptions) *iamtest.GoogleIssuer {
	return iamtest.StartGoogle(t, opts)
}

// newAccount makes a service account key and its role.
func newAccount(t testing.TB, g *iamtest.GoogleIssuer, pg *testdb.Cluster) *account {
	t.Helper()
	email := fmt.Sprintf("app-%d@%s.iam.gserviceaccount.com", seq.Add(1), g.ProjectID())
	key, err := g.ServiceAccountKey(email)
	if err != nil {
		t.Fatal(err)
	}
	a := &account{email: email, user: gcpiam.DatabaseUser(email), key: key}
	createRole(t, pg, a.user)
	return a
}

// createRole creates a role with a password only the front end uses.
func createRole(t testing.TB, pg *testdb.Cluster, name string) {
	t.Helper()
	pw := fmt.Sprintf("pw-%d-%d", time.Now().UnixNano(), seq.Add(1))
	if err := pg.CreateRole(context.Background(), name, pw); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.DropRole(context.Background(), name); err != nil {
			t.Error(err)
		}
	})
	rolePasswords.Store(name, pw)
}

// rolePasswords maps each role to its password, for the front ends.
var rolePasswords sync.Map

// newServer starts a front end that verifies g's tokens and relays to
// the shared cluster.
func newServer(t testing.TB, g *iamtest.GoogleIssuer) *iamtest.Server {
	t.Helper()
	pg := testdb.Shared(t)
	return iamtest.Start(t, iamtest.Options{
		Verifier:       g.Verifier(),
		RefusedMessage: g.RefusedMessage,
		Upstream: func(user string) (string, error) {
			pw, ok := rolePasswords.Load(user)
			if !ok {
				return "", fmt.Errorf("no such role %q", user)
			}
			return fmt.Sprintf("host=%s port=%d user='%s' password='%s' dbname=postgres sslmode=verify-full sslrootcert='%s'",
				pg.Host(), pg.Port(), user, pw.(string), pg.CAFile()), nil
		},
	})
}

// useKey points Application Default Credentials at the key.
func useKey(t testing.TB, key []byte) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "key.json")
	if err := os.WriteFile(f, key, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", f)
	return f
}

// dsn is a gcp-iam DSN for user on srv, verify-full against its CA.
func dsn(srv *iamtest.Server, user, extra string) string {
	return strings.TrimSpace(fmt.Sprintf("host=127.0.0.1 port=%d user='%s' dbname=postgres sslmode=verify-full sslrootcert='%s' secret_provider=gcp-iam %s",
		srv.Port(), user, srv.CAFile(), extra))
}

// open opens a *sql.DB on the DSN with debug logs into logs, every query
// on a new connection.
func open(t testing.TB, dsn string, logs *testkit.SyncBuffer) (*sql.DB, *pgsecrets.Connector) {
	t.Helper()
	c, err := pgsecrets.NewConnector(dsn, pgsecrets.WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	db.SetMaxIdleConns(0)
	t.Cleanup(func() { db.Close() })
	return db, c
}

// assertNoSecrets fails if s holds an access token, a private key or an
// assertion (a JWT whose header starts {"alg":).
func assertNoSecrets(t testing.TB, what, s string, keys ...[]byte) {
	t.Helper()
	for _, bad := range []string{"ya29.", "PRIVATE KEY", "eyJhbGciOi", "assertion="} {
		if strings.Contains(s, bad) {
			t.Errorf("%s holds %q", what, bad)
		}
	}
	for _, k := range keys {
		lines := strings.Split(string(k), `\n`)
		if len(lines) > 2 && strings.Contains(s, lines[1]) {
			t.Errorf("%s holds a line of the private key", what)
		}
	}
}

func currentUser(t testing.TB, db *sql.DB) string {
	t.Helper()
	var u string
	if err := db.QueryRowContext(context.Background(), "SELECT current_user").Scan(&u); err != nil {
		t.Fatalf("query: %v", err)
	}
	return u
}

// gcp-iam with a service account key from GOOGLE_APPLICATION_CREDENTIALS
// (the real oauth2/google ADC and JWT flow), on both engines: logs in as
// the account's database user; a refused token is replaced with a new one
// inside the call; nothing secret reaches the logs.
func TestGCPIAM(t *testing.T) {
	for _, driver := range []string{"pq", "pgx"} {
		t.Run(driver, func(t *testing.T) {
			pg := testdb.Shared(t)
			g := newIssuer(t, iamtest.GoogleOptions{})
			a := newAccount(t, g, pg)
			useKey(t, a.key)
			srv := newServer(t, g)
			logs := &testkit.SyncBuffer{}
			db, c := open(t, dsn(srv, a.user, "secret_driver="+driver), logs)
			if u := currentUser(t, db); u != a.user {
				t.Fatalf("current_user = %q, want %q", u, a.user)
			}
			issued := g.TokensIssued()
			srv.RejectNext(1)
			if err := db.PingContext(context.Background()); err != nil {
				t.Fatalf("a refused token was not recovered inside the call: %v", err)
			}
			if st := c.Stats(); st.AuthFailures != 1 || st.AuthRecovered != 1 {
				t.Errorf("after one refused token: %d failures, %d recovered", st.AuthFailures, st.AuthRecovered)
			}
			if g.TokensIssued() == issued {
				t.Error("recovery logged in without a new token: the oauth2 cache was not bypassed")
			}
			facts, err := c.Describe(context.Background())
			if err != nil || !strings.Contains(fmt.Sprint(facts), "sqlservice.login") || !strings.Contains(fmt.Sprint(facts), "GOOGLE_APPLICATION_CREDENTIALS") {
				t.Errorf("Describe: %v, %v", facts, err)
			}
			assertNoSecrets(t, "the logs", logs.String()+fmt.Sprint(facts), a.key)
		})
	}
}

// The metadata server path (GCE, GKE, Cloud Run): no key file, no gcloud
// file, GCE_METADATA_HOST at the issuer. Tokens are the VM account's and
// log in as its database user; a DSN user that is not that account's
// fails before any login.
func TestGCPIAMMetadataServer(t *testing.T) {
	pg := testdb.Shared(t)
	vm := fmt.Sprintf("vm-%d@iamtest-project.iam.gserviceaccount.com", seq.Add(1))
	g := newIssuer(t, iamtest.GoogleOptions{MetadataEmail: vm})
	createRole(t, pg, gcpiam.DatabaseUser(vm))
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", "")
	t.Setenv("HOME", t.TempDir())
	t.Setenv("GCE_METADATA_HOST", g.MetadataHost())
	srv := newServer(t, g)
	for _, driver := range []string{"pq", "pgx"} {
		t.Run(driver, func(t *testing.T) {
			logs := &testkit.SyncBuffer{}
			db, c := open(t, dsn(srv, gcpiam.DatabaseUser(vm), "secret_driver="+driver), logs)
			if u := currentUser(t, db); u != gcpiam.DatabaseUser(vm) {
				t.Fatalf("current_user = %q", u)
			}
			srv.RejectNext(1)
			if err := db.PingContext(context.Background()); err != nil {
				t.Fatalf("a refused token was not recovered: %v", err)
			}
			if st := c.Stats(); st.AuthRecovered != 1 {
				t.Errorf("AuthRecovered = %d", st.AuthRecovered)
			}
			assertNoSecrets(t, "the logs", logs.String())
		})
	}
	before := len(srv.Logins())
	other := fmt.Sprintf("someone-%d@iamtest-project.iam", seq.Add(1))
	db, _ := open(t, dsn(srv, other, ""), &testkit.SyncBuffer{})
	err := db.PingContext(context.Background())
	if !errors.Is(err, pgsecrets.ErrAccessDenied) || !strings.Contains(err.Error(), gcpiam.DatabaseUser(vm)) || !strings.Contains(err.Error(), other) {
		t.Errorf("a DSN user that is not the VM's account: %v", err)
	}
	if n := len(srv.Logins()) - before; n != 0 {
		t.Errorf("%d logins tried for a user the credentials cannot be", n)
	}
}

// The token churn on both engines at once: 16 workers, connections of
// 250 ms, for a minute, while the server refuses every token once it is
// testkit.ChurnTokenAge old although the issuer made it for an hour: only
// a provider that gets a new token from oauth2 (not its cached one) keeps
// every query working.
func TestGCPIAMTokenChurn(t *testing.T) {
	pg := testdb.Shared(t)
	g := newIssuer(t, iamtest.GoogleOptions{TokenLifetime: time.Hour})
	a := newAccount(t, g, pg)
	useKey(t, a.key)
	for _, driver := range []string{"pq", "pgx"} {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, g)
			db, _ := open(t, dsn(srv, a.user, "secret_driver="+driver), &testkit.SyncBuffer{})
			srv.MaxTokenAge(testkit.ChurnTokenAge)
			testkit.RunTokenChurn(t, db, testkit.TokenChurn{Refused: func() int { return srv.Refusals(iamtest.ReasonTooOld) }})
		})
	}
}

// A role the principal does not log in as, with credentials that do not
// name their account (a user's gcloud login): the database refuses the
// token, and after one round the error names the secret, the user and
// the server's message, at once.
func TestGCPIAMRefusedRole(t *testing.T) {
	pg := testdb.Shared(t)
	g := newIssuer(t, iamtest.GoogleOptions{})
	dev := fmt.Sprintf("dev-%d@example.com", seq.Add(1))
	adc, err := g.AuthorizedUser(dev)
	if err != nil {
		t.Fatal(err)
	}
	useKey(t, adc)
	role := fmt.Sprintf("other-%d@example.com", seq.Add(1))
	createRole(t, pg, role)
	createRole(t, pg, dev)
	srv := newServer(t, g)
	for _, driver := range []string{"pq", "pgx"} {
		t.Run(driver, func(t *testing.T) {
			logs := &testkit.SyncBuffer{}
			ok, _ := open(t, dsn(srv, dev, "secret_driver="+driver), logs)
			if u := currentUser(t, ok); u != dev {
				t.Fatalf("the user's own role: current_user = %q", u)
			}
			db, _ := open(t, dsn(srv, role, "secret_driver="+driver), logs)
			err := db.PingContext(context.Background())
			want := fmt.Sprintf("Cloud SQL IAM user authentication failed for user %q", role)
			if !errors.Is(err, pgsecrets.ErrAuthFailed) || !strings.Contains(err.Error(), "gcp-iam:"+role+"@127.0.0.1") ||
				!strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "cloudsql.iam_authentication") {
				t.Errorf("a role the token is not for: %v", err)
			}
			assertNoSecrets(t, "the error", err.Error())
			assertNoSecrets(t, "the logs", logs.String())
		})
	}
}

// A key whose account is not the DSN's user fails at once with
// ErrAccessDenied, before any token request or login.
func TestGCPIAMWrongUserFailsFast(t *testing.T) {
	pg := testdb.Shared(t)
	g := newIssuer(t, iamtest.GoogleOptions{})
	a, b := newAccount(t, g, pg), newAccount(t, g, pg)
	useKey(t, a.key)
	srv := newServer(t, g)
	db, _ := open(t, dsn(srv, b.user, ""), &testkit.SyncBuffer{})
	err := db.PingContext(context.Background())
	var se *pgsecrets.SecretError
	if !errors.As(err, &se) || !errors.Is(err, pgsecrets.ErrAccessDenied) || se.Temporary() ||
		se.SecretID != "gcp-iam:"+b.user+"@"+srv.Addr() || !strings.Contains(err.Error(), a.email) || !strings.Contains(err.Error(), "user="+a.user) {
		t.Fatalf("a DSN user that is not the key's account: %v", err)
	}
	if g.TokensIssued() != 0 || len(srv.Logins()) != 0 {
		t.Errorf("%d tokens issued, %d logins tried", g.TokensIssued(), len(srv.Logins()))
	}
	assertNoSecrets(t, "the error", err.Error(), a.key)
}

// The token endpoint refusing the account (a deleted key, a disabled
// account) fails fast with ErrAccessDenied naming the secret; an outage
// of it leaves the cached token serving new connections.
func TestGCPIAMTokenEndpointFailures(t *testing.T) {
	pg := testdb.Shared(t)
	g := newIssuer(t, iamtest.GoogleOptions{})
	a := newAccount(t, g, pg)
	useKey(t, a.key)
	srv := newServer(t, g)

	g.FailTokens(iamtest.TokensInvalidGrant)
	refused, _ := open(t, dsn(srv, a.user, ""), &testkit.SyncBuffer{})
	err := refused.PingContext(context.Background())
	var se *pgsecrets.SecretError
	if !errors.As(err, &se) || !errors.Is(err, pgsecrets.ErrAccessDenied) || se.Temporary() || se.SecretID != "gcp-iam:"+a.user+"@"+srv.Addr() ||
		!strings.Contains(err.Error(), "invalid_grant") {
		t.Fatalf("a refused token request: %v", err)
	}
	assertNoSecrets(t, "the error", err.Error(), a.key)

	// Another account: the refusal above stays the answer for a's
	// cache entry for a while, as pgsecrets keeps a persistent error.
	g.FailTokens(iamtest.TokensOK)
	b := newAccount(t, g, pg)
	useKey(t, b.key)
	db, c := open(t, dsn(srv, b.user, "secret_driver=pgx"), &testkit.SyncBuffer{})
	if u := currentUser(t, db); u != b.user {
		t.Fatalf("current_user = %q", u)
	}
	g.FailTokens(iamtest.TokensServerError)
	_, err = c.Refresh(context.Background())
	if !errors.As(err, &se) || !errors.Is(err, pgsecrets.ErrStoreUnavailable) || !se.Temporary() {
		t.Errorf("a refresh during an outage: %v", err)
	}
	for range 3 {
		if u := currentUser(t, db); u != b.user {
			t.Fatalf("during the outage: current_user = %q", u)
		}
	}
	if n := len(srv.Logins()); n < 4 {
		t.Errorf("%d logins: the queries did not make new connections", n)
	}
}

// The factory does no I/O and rejects DSNs that cannot carry a token
// safely, naming the key.
func TestGCPIAMDSNErrors(t *testing.T) {
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", filepath.Join(t.TempDir(), "absent.json"))
	t.Setenv("PGUSER", "")
	t.Setenv("PGHOST", "")
	const base = "dbname=postgres secret_provider=gcp-iam"
	for _, tc := range []struct{ dsn, key string }{
		{"host=db.example sslmode=verify-full " + base, "user"},
		{"host=a.example,b.example user=u@p.iam sslmode=verify-full " + base, "host"},
		{"host=db.example user=u@p.iam sslmode=disable " + base, "sslmode"},
		{"host=db.example user=u@p.iam sslmode=prefer " + base, "sslmode"},
		{"host=db.example user=u@p.iam sslmode=verify-full secret_gcp_service=spanner " + base, gcpiam.KeyService},
		{"host=db.example user=u@p.iam sslmode=verify-full secret_login_rate=fast " + base, gcpiam.KeyLoginRate},
	} {
		_, err := pgsecrets.NewConnector(tc.dsn)
		var de *pgsecrets.DSNError
		if !errors.As(err, &de) || de.Key != tc.key {
			t.Errorf("%s: %v, want a DSN error for %s", tc.dsn, err, tc.key)
		}
	}
	c, err := pgsecrets.NewConnector("host=db.example user=u@p.iam sslmode=verify-full secret_gcp_service=alloydb secret_login_rate=5 " + base)
	if err != nil {
		t.Fatalf("a good DSN whose credentials file is missing: %v (the factory must not look for it)", err)
	}
	c.Close()
}

// Register and RegisterCredentials: a program's own credentials under
// another secret_provider name, rebuilt per fetch (a refused token is
// replaced), with the principal check where the JSON names the account.
func TestGCPIAMRegister(t *testing.T) {
	pg := testdb.Shared(t)
	g := newIssuer(t, iamtest.GoogleOptions{})
	a, b := newAccount(t, g, pg), newAccount(t, g, pg)
	srv := newServer(t, g)
	name := fmt.Sprintf("gcp-iam-own-%d", seq.Add(1))
	gcpiam.Register(name, func(ctx context.Context, scopes []string) (oauth2.TokenSource, error) {
		creds, err := google.CredentialsFromJSONWithParams(ctx, a.key, google.CredentialsParams{Scopes: scopes})
		if err != nil {
			return nil, err
		}
		return creds.TokenSource, nil
	})
	creds, err := google.CredentialsFromJSON(context.Background(), b.key, gcpiam.ScopeCloudSQLLogin)
	if err != nil {
		t.Fatal(err)
	}
	credsName := name + "-creds"
	gcpiam.RegisterCredentials(credsName, creds)

	for _, tc := range []struct{ provider, user string }{{name, a.user}, {credsName, b.user}} {
		d := strings.Replace(dsn(srv, tc.user, ""), "secret_provider=gcp-iam", "secret_provider="+tc.provider, 1)
		db, c := open(t, d, &testkit.SyncBuffer{})
		if u := currentUser(t, db); u != tc.user {
			t.Fatalf("%s: current_user = %q", tc.provider, u)
		}
		srv.RejectNext(1)
		if err := db.PingContext(context.Background()); err != nil || c.Stats().AuthRecovered != 1 {
			t.Errorf("%s: a refused token was not replaced: %v", tc.provider, err)
		}
	}
	d := strings.Replace(dsn(srv, a.user, ""), "secret_provider=gcp-iam", "secret_provider="+credsName, 1)
	db, _ := open(t, d, &testkit.SyncBuffer{})
	if err := db.PingContext(context.Background()); !errors.Is(err, pgsecrets.ErrAccessDenied) || !strings.Contains(err.Error(), b.email) {
		t.Errorf("RegisterCredentials with another account's key: %v", err)
	}
}

// A pgxsecrets pool logs in with gcp-iam tokens and recovers from a
// refused one inside the call.
func TestGCPIAMPool(t *testing.T) {
	pg := testdb.Shared(t)
	g := newIssuer(t, iamtest.GoogleOptions{})
	a := newAccount(t, g, pg)
	useKey(t, a.key)
	srv := newServer(t, g)
	ctx := context.Background()
	pool, err := pgxsecrets.NewPool(ctx, dsn(srv, a.user, ""))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	var u string
	if err := pool.QueryRow(ctx, "SELECT current_user").Scan(&u); err != nil || u != a.user {
		t.Fatalf("current_user = %q, %v", u, err)
	}
	pool.Pool().Reset() // the next call needs a new connection
	srv.RejectNext(1)
	if err := pool.QueryRow(ctx, "SELECT current_user").Scan(&u); err != nil {
		t.Fatalf("a refused token in a pool: %v", err)
	}
	if st := pool.Connector().Stats(); st.AuthRecovered != 1 {
		t.Errorf("AuthRecovered = %d", st.AuthRecovered)
	}
}

// Whoever answers on the network path in the server's place gets no
// token: not in a plaintext startup, not behind a certificate from another
// CA (the attacker's test every token provider passes).
func TestGCPIAMTokenNeverSentToImpostor(t *testing.T) {
	pg := testdb.Shared(t)
	g := newIssuer(t, iamtest.GoogleOptions{})
	a := newAccount(t, g, pg)
	useKey(t, a.key)
	testkit.TokenNeverSentToImpostor(t, pg.CAFile(), func(port int, sslmode string) error {
		c, err := pgsecrets.NewConnector(fmt.Sprintf("host=127.0.0.1 port=%d user='%s' dbname=postgres %s secret_provider=gcp-iam",
			port, a.user, sslmode))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conn, err := c.Connect(context.Background())
		if err == nil {
			conn.Close()
		}
		return err
	})
	if g.TokensIssued() == 0 {
		t.Error("no token was got: the test proved nothing about where it goes")
	}
}
