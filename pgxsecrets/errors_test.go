package pgxsecrets_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/pgxsecrets"
	"github.com/pgsecrets/pgsecrets/smtest"
)

// The contract of errors.go holds with pgx too: through database/sql
// (secret_driver=pgx) and through the pool, a failure to make a new
// connection is a *SecretError naming the secret and wrapping one
// sentinel, with pgx's own error reachable, and no password in it.
func TestConnectErrorsWrapSentinels(t *testing.T) {
	r := newRig(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadPort := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	im := testkit.StartImpostor(t, testkit.ImpostorOptions{TLS: true})
	wrongPW := testkit.RandomPassword()
	r.seen = append(r.seen, wrongPW)
	wrongID := r.secretID + "/wrong"
	r.sm.CreateSecret(wrongID, secretJSON(r.role, wrongPW))

	at := func(host string, port int, dbname, secretID string) string {
		return fmt.Sprintf("host=%s port=%d dbname=%s sslmode=verify-full sslrootcert=%s secret_id=%s secret_endpoint=%s secret_retry_window=0s",
			host, port, dbname, r.pg.CAFile(), secretID, r.sm.URL())
	}
	good := at(r.pg.Host(), r.pg.Port(), "postgres", r.secretID)
	var (
		pgErr  *pgconn.PgError
		opErr  *net.OpError
		tlsErr *tls.CertificateVerificationError
	)
	cases := []struct {
		name      string
		dsn       string
		close     bool // the connector (or pool) is closed first
		fault     bool // the store fails
		kind      error
		temporary bool
		engine    func(error) bool // pgx's own error, reachable
	}{
		{name: "closed", dsn: good, close: true, kind: pgsecrets.ErrClosed},
		{name: "connection refused", dsn: at("127.0.0.1", deadPort, "postgres", r.secretID), kind: pgsecrets.ErrConnect, temporary: true,
			engine: func(err error) bool { return errors.As(err, &opErr) }},
		{name: "unknown database", dsn: at(r.pg.Host(), r.pg.Port(), "no_such_db", r.secretID), kind: pgsecrets.ErrConnect,
			engine: func(err error) bool { return errors.As(err, &pgErr) && pgErr.Code == "3D000" }},
		{name: "TLS certificate", dsn: at(im.Host(), im.Port(), "postgres", r.secretID), kind: pgsecrets.ErrConnect,
			engine: func(err error) bool { return errors.As(err, &tlsErr) }},
		{name: "password rejected", dsn: at(r.pg.Host(), r.pg.Port(), "postgres", wrongID), kind: pgsecrets.ErrAuthFailed,
			engine: func(err error) bool { return errors.As(err, &pgErr) && pgErr.Code == "28P01" }},
		{name: "store down", dsn: good, fault: true, kind: pgsecrets.ErrStoreUnavailable, temporary: true},
	}
	ways := []struct {
		name    string
		connect func(t *testing.T, dsn string, close bool) error
	}{
		{"database/sql", func(t *testing.T, dsn string, close bool) error {
			c, err := pgsecrets.NewConnector(dsn+" secret_driver=pgx", pgsecrets.WithLogger(r.logger))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if close {
				c.Close()
			}
			conn, err := c.Connect(context.Background())
			if err == nil {
				conn.Close()
			}
			return err
		}},
		{"pool", func(t *testing.T, dsn string, close bool) error {
			p, err := pgxsecrets.NewPool(context.Background(), dsn, pgsecrets.WithLogger(r.logger))
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if close {
				p.Close()
			}
			return p.Ping(context.Background())
		}},
	}
	for _, w := range ways {
		for _, tc := range cases {
			t.Run(w.name+"/"+tc.name, func(t *testing.T) {
				if tc.fault {
					defer r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Fail})()
				}
				err := w.connect(t, tc.dsn, tc.close)
				if err == nil {
					t.Fatal("no error")
				}
				var se *pgsecrets.SecretError
				if !errors.Is(err, tc.kind) || !errors.As(err, &se) || se.Kind != tc.kind {
					t.Fatalf("got %v (%T), want a *SecretError of kind %v", err, err, tc.kind)
				}
				if se.SecretID == "" || !strings.Contains(err.Error(), se.SecretID) {
					t.Errorf("%q does not name the secret", err)
				}
				if se.Temporary() != tc.temporary {
					t.Errorf("Temporary() = %v, want %v", se.Temporary(), tc.temporary)
				}
				if tc.engine != nil && !tc.engine(err) {
					t.Errorf("pgx's error is not reachable through %v", err)
				}
				for _, leak := range []string{r.password, wrongPW} {
					if strings.Contains(fmt.Sprintf("%v %+v %#v", err, err, err), leak) {
						t.Errorf("the error shows a password: %v", err)
					}
				}
			})
		}
	}
	if n := len(im.Passwords()); n != 0 {
		t.Errorf("the server whose certificate failed got %d passwords", n)
	}
}
