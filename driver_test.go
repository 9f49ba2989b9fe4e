package pgsecrets_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/smtest"
)

func TestSQLOpenKeyValueDSN(t *testing.T) {
	r := newRig(t)
	db, err := sql.Open("pgsecrets", r.kv(""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if got := currentUser(t, db); got != r.role {
		t.Errorf("current_user = %q, want %q", got, r.role)
	}
}

func TestSQLOpenURLDSN(t *testing.T) {
	r := newRig(t)
	q := url.Values{}
	q.Set("sslmode", "verify-full")
	q.Set("sslrootcert", r.pg.CAFile())
	q.Set("secret_id", r.secretID)
	q.Set("secret_endpoint", r.sm.URL())
	q.Set("application_name", "pgsecrets url test")
	dsn := fmt.Sprintf("postgres://%s:%d/postgres?%s", r.pg.Host(), r.pg.Port(), q.Encode())
	db, err := sql.Open("pgsecrets", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var user, app string
	if err := db.QueryRow("SELECT current_user, current_setting('application_name')").Scan(&user, &app); err != nil {
		t.Fatal(err)
	}
	if user != r.role || app != "pgsecrets url test" {
		t.Errorf("got user %q app %q", user, app)
	}
}

// The connection database/sql holds is lib/pq's own: nothing of pgsecrets
// sits on the query path.
func TestConnIsLibPQs(t *testing.T) {
	r := newRig(t)
	db := r.open(r.kv(""))
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	err = conn.Raw(func(dc any) error {
		if got := fmt.Sprintf("%T", dc); got != "*pq.conn" {
			return fmt.Errorf("driver conn is %s, want lib/pq's *pq.conn", got)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

// An RDS secret's host, port and dbname fill what the DSN leaves out; what
// the DSN names wins (a read replica reusing the primary's secret).
func TestRDSSecretSuppliesHostPortDB(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	dbname := r.role + "_db"
	if err := r.pg.CreateDatabase(ctx, dbname, r.role); err != nil {
		t.Fatal(err)
	}
	r.sm.PutSecretValue(r.secretID, rdsSecret(r.role, r.password, map[string]any{
		"host": r.pg.Host(), "port": r.pg.Port(), "dbname": dbname}))
	db := r.open(fmt.Sprintf("sslmode=verify-full sslrootcert=%s secret_id=%s secret_endpoint=%s",
		r.pg.CAFile(), r.secretID, r.sm.URL()))
	var got string
	if err := db.QueryRow("SELECT current_database()").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != dbname {
		t.Errorf("current_database = %q, want %q from the secret", got, dbname)
	}

	// Port as a string, a host that does not resolve: the DSN's host and
	// dbname win.
	r.sm.PutSecretValue(r.secretID, rdsSecret(r.role, r.password, map[string]any{
		"host": "primary.invalid", "port": fmt.Sprint(r.pg.Port()), "dbname": dbname}))
	db2 := r.open(fmt.Sprintf("host=%s dbname=postgres sslmode=verify-full sslrootcert=%s secret_id=%s secret_endpoint=%s",
		r.pg.Host(), r.pg.CAFile(), r.secretID, r.sm.URL()))
	if err := db2.QueryRow("SELECT current_database()").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != "postgres" {
		t.Errorf("current_database = %q, want the DSN's postgres", got)
	}
}

func TestEndpointFromEnvironment(t *testing.T) {
	for _, env := range []string{"AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ENDPOINT_URL"} {
		t.Run(env, func(t *testing.T) {
			r := newRig(t)
			t.Setenv(env, r.sm.URL())
			dsn := strings.Replace(r.kv(""), "secret_endpoint="+r.sm.URL(), "", 1)
			db := r.open(dsn)
			if got := currentUser(t, db); got != r.role {
				t.Errorf("current_user = %q", got)
			}
			if n := r.sm.Calls("GetSecretValue"); n != 1 {
				t.Errorf("GetSecretValue calls = %d, want 1", n)
			}
		})
	}
}

// PGPASSWORD, a passfile and a password= in the DSN must not override the
// secret's password; the DSN password earns one warning without its value.
func TestSecretPasswordWins(t *testing.T) {
	r := newRig(t)
	passfile := filepath.Join(t.TempDir(), "pgpass")
	if err := os.WriteFile(passfile, []byte("*:*:*:*:from-passfile\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGPASSFILE", passfile)
	t.Setenv("PGPASSWORD", "from-env")
	db := r.open(r.kv("password=from-dsn"))
	for i := 0; i < 3; i++ {
		if got := currentUser(t, db); got != r.role {
			t.Fatalf("current_user = %q", got)
		}
	}
	if n := r.logs.count(pgsecrets.EventDSNPassword); n != 1 {
		t.Errorf("DSN password warning logged %d times, want 1\n%s", n, r.logs)
	}
	if strings.Contains(r.logs.String(), "from-dsn") {
		t.Error("the DSN password was logged")
	}
	if n := r.pg.AuthFailures(r.role); n != 0 {
		t.Errorf("%d failed logins: something overrode the secret's password", n)
	}
}

// 100 goroutines opening connections on a cold cache share one store call.
func TestColdCacheOneFetch(t *testing.T) {
	r := newRig(t)
	// Hold the store call so every goroutine arrives while it is in flight.
	release := make(chan struct{})
	r.sm.OnRequest(func(op, _ string) {
		if op == "GetSecretValue" {
			<-release
		}
	})
	db := r.open(r.kv(""))
	db.SetMaxIdleConns(100)
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	conns := make(chan *sql.Conn, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := db.Conn(context.Background())
			if err != nil {
				errs <- err
				return
			}
			conns <- c
		}()
	}
	if err := r.sm.WaitCalls(context.Background(), "GetSecretValue", 1); err != nil {
		t.Fatal(err)
	}
	close(release)
	wg.Wait()
	close(errs)
	close(conns)
	for err := range errs {
		t.Error(err)
	}
	open := 0
	for c := range conns {
		open++
		c.Close()
	}
	if open != n {
		t.Errorf("%d connections opened, want %d", open, n)
	}
	if got := r.sm.Calls("GetSecretValue"); got != 1 {
		t.Errorf("GetSecretValue calls = %d, want 1", got)
	}
}

// A caller whose context ends while the store hangs returns at once with an
// error wrapping ctx.Err(); closing the DB ends the hung fetch.
func TestCancelWhileStoreHangs(t *testing.T) {
	r := newRig(t)
	r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.HangUntilCancel})
	db := r.open(r.kv(""))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- db.PingContext(ctx) }()
	if err := r.sm.WaitCalls(context.Background(), "GetSecretValue", 1); err != nil {
		t.Fatal(err)
	}
	cancel()
	var se *pgsecrets.SecretError
	if err := <-done; !errors.Is(err, context.Canceled) || !errors.As(err, &se) || se.SecretID != r.secretID {
		t.Errorf("PingContext = %v, want a *SecretError wrapping context.Canceled", err)
	}
	// A second caller with a deadline gets DeadlineExceeded, saying what it
	// waited for.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if err := db.PingContext(ctx2); !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &se) ||
		!strings.Contains(err.Error(), r.secretID) || !strings.Contains(err.Error(), "store") {
		t.Errorf("PingContext = %v, want a *SecretError naming the secret and the store, wrapping context.DeadlineExceeded", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestTLS(t *testing.T) {
	r := newRig(t)
	encrypted := func(db *sql.DB) (bool, string) {
		t.Helper()
		var ssl bool
		var version sql.NullString
		err := db.QueryRow("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl, &version)
		if err != nil {
			t.Fatal(err)
		}
		return ssl, version.String
	}
	base := fmt.Sprintf("host=%s port=%d dbname=postgres secret_id=%s secret_endpoint=%s ",
		r.pg.Host(), r.pg.Port(), r.secretID, r.sm.URL())
	for _, mode := range []string{"sslmode=require", "sslmode=verify-full sslrootcert=" + r.pg.CAFile(), ""} {
		db := r.open(base + mode)
		if ok, v := encrypted(db); !ok {
			t.Errorf("%q: session not encrypted", mode)
		} else {
			t.Logf("%q: %s", mode, v)
		}
	}

	if err := r.pg.SetHostSSLOnly(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.pg.SetHostSSLOnly(context.Background(), false) })
	db := r.open(base + "sslmode=disable secret_retry_window=0s")
	err := db.Ping()
	var pqErr *pq.Error
	if !errors.As(err, &pqErr) || pqErr.Code != "28000" {
		t.Fatalf("sslmode=disable against hostssl-only: %v, want SQLSTATE 28000", err)
	}
	if strings.Contains(err.Error(), r.password) {
		t.Error("error contains the password")
	}
}

func TestErrorKinds(t *testing.T) {
	r := newRig(t)
	const planted = "pw-planted-never-print"
	r.sm.CreateBinarySecret("test/binary", []byte(`{"username":"x","password":"`+planted+`"}`))
	r.sm.CreateSecret("test/notjson", "user="+planted)
	r.sm.CreateSecret("test/nouser", `{"password":"`+planted+`"}`)
	r.sm.CreateSecret("test/intpw", `{"username":"x","password":73829164}`)

	dsnFor := func(id, extra string) string {
		return fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=require secret_id=%s secret_endpoint=%s secret_retry_window=0s %s",
			r.pg.Host(), r.pg.Port(), id, r.sm.URL(), extra)
	}
	cases := []struct {
		name, id string
		fault    *smtest.Fault
		kind     error
		mention  []string
	}{
		{"not found", "test/missing", nil, pgsecrets.ErrSecretNotFound, []string{"test/missing", "secret_id"}},
		{"access denied", r.secretID, &smtest.Fault{Kind: smtest.Deny}, pgsecrets.ErrAccessDenied, []string{r.secretID, "secretsmanager:GetSecretValue"}},
		{"kms", r.secretID, &smtest.Fault{Kind: smtest.DecryptionFailure}, pgsecrets.ErrAccessDenied, []string{r.secretID, "kms:Decrypt"}},
		{"store down", r.secretID, &smtest.Fault{Kind: smtest.Fail}, pgsecrets.ErrStoreUnavailable, []string{r.secretID, "InternalServiceError"}},
		{"throttled", r.secretID, &smtest.Fault{Kind: smtest.Throttle}, pgsecrets.ErrStoreUnavailable, []string{r.secretID}},
		{"binary", "test/binary", nil, pgsecrets.ErrMalformedSecret, []string{"test/binary", "SecretString"}},
		{"not json", "test/notjson", nil, pgsecrets.ErrMalformedSecret, []string{"test/notjson", "JSON"}},
		{"missing username", "test/nouser", nil, pgsecrets.ErrMalformedSecret, []string{"test/nouser", `field "username"`}},
		{"password not a string", "test/intpw", nil, pgsecrets.ErrMalformedSecret, []string{"test/intpw", `field "password"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.fault != nil {
				defer r.sm.Inject("GetSecretValue", *tc.fault)()
			}
			// Closed at the end of the subtest: the next one must not find
			// this one's error cached.
			db := r.open(dsnFor(tc.id, ""))
			defer db.Close()
			err := db.Ping()
			if !errors.Is(err, tc.kind) {
				t.Fatalf("got %v, want %v", err, tc.kind)
			}
			var se *pgsecrets.SecretError
			if !errors.As(err, &se) || se.SecretID != tc.id {
				t.Errorf("not a *SecretError naming %q: %#v", tc.id, err)
			}
			for _, m := range tc.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("%q does not mention %q", err, m)
				}
			}
			for _, leak := range []string{planted, r.password, "73829164"} {
				if strings.Contains(fmt.Sprintf("%v %+v %#v", err, err, err), leak) {
					t.Errorf("error leaks a secret value: %v", err)
				}
			}
			if se.Temporary() != (tc.kind == pgsecrets.ErrStoreUnavailable) {
				t.Errorf("Temporary() = %v", se.Temporary())
			}
		})
	}

	t.Run("wrong password", func(t *testing.T) {
		r.sm.PutSecretValue(r.secretID, rdsSecret(r.role, planted, nil))
		db := r.open(dsnFor(r.secretID, ""))
		err := db.Ping()
		if !errors.Is(err, pgsecrets.ErrAuthFailed) {
			t.Fatalf("got %v, want ErrAuthFailed", err)
		}
		var pqErr *pq.Error
		if !errors.As(err, &pqErr) || pqErr.Code != "28P01" {
			t.Errorf("lib/pq's error with 28P01 not reachable: %v", err)
		}
		if msg := err.Error(); !strings.Contains(msg, "28P01") || !strings.Contains(msg, r.secretID) || strings.Contains(msg, planted) {
			t.Errorf("message: %s", msg)
		}
	})

	t.Run("AWS credentials refused", func(t *testing.T) {
		other := smtest.Start(t, smtest.WithAccessKeyID("AKIDSOMEONEELSE"))
		other.CreateSecret(r.secretID, rdsSecret(r.role, r.password, nil))
		db := r.open(strings.Replace(dsnFor(r.secretID, ""), r.sm.URL(), other.URL(), 1))
		err := db.Ping()
		if !errors.Is(err, pgsecrets.ErrAccessDenied) || !strings.Contains(err.Error(), "invalid or expired") {
			t.Errorf("got %v, want ErrAccessDenied about the AWS credentials", err)
		}
	})

	t.Run("bad DSN", func(t *testing.T) {
		_, err := sql.Open("pgsecrets", "host=db secret_id=x secret_ttl=forever password=hunter2")
		if !errors.Is(err, pgsecrets.ErrInvalidDSN) || !strings.Contains(err.Error(), "secret_ttl") || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("got %v", err)
		}
		_, err = sql.Open("pgsecrets", "host=db")
		if !errors.Is(err, pgsecrets.ErrInvalidDSN) || !strings.Contains(err.Error(), "secret_id") {
			t.Errorf("got %v", err)
		}
	})
}
