package pgsecrets_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/lib/pq"
	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/smtest"
)

// The contract of errors.go: every error Connect returns is a *SecretError
// naming the secret, wrapping one sentinel, with the engine's own error
// reachable, and no secret value in it.
func TestConnectErrorsWrapSentinels(t *testing.T) {
	r := newRig(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadPort := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	im := testkit.StartImpostor(t, testkit.ImpostorOptions{TLS: true})
	const wrongPW = "pw-wrong-never-print"
	wrongID := r.secretID + "/wrong"
	r.sm.CreateSecret(wrongID, rdsSecret(r.role, wrongPW, nil))

	at := func(host string, port int, dbname, secretID string) string {
		return fmt.Sprintf("host=%s port=%d dbname=%s sslmode=verify-full sslrootcert=%s secret_id=%s secret_endpoint=%s secret_retry_window=0s",
			host, port, dbname, r.pg.CAFile(), secretID, r.sm.URL())
	}
	good := at(r.pg.Host(), r.pg.Port(), "postgres", r.secretID)
	var (
		pqErr  *pq.Error
		opErr  *net.OpError
		tlsErr *tls.CertificateVerificationError
	)
	cases := []struct {
		name      string
		dsn       string
		prepare   func(t *testing.T, c *pgsecrets.Connector)
		kind      error
		temporary bool
		engine    func(error) bool // the engine's own error, reachable
	}{
		{name: "closed connector", dsn: good, kind: pgsecrets.ErrClosed,
			prepare: func(t *testing.T, c *pgsecrets.Connector) { c.Close() }},
		{name: "connection refused", dsn: at("127.0.0.1", deadPort, "postgres", r.secretID), kind: pgsecrets.ErrConnect, temporary: true,
			engine: func(err error) bool { return errors.As(err, &opErr) }},
		{name: "unknown database", dsn: at(r.pg.Host(), r.pg.Port(), "no_such_db", r.secretID), kind: pgsecrets.ErrConnect,
			engine: func(err error) bool { return errors.As(err, &pqErr) && pqErr.Code == "3D000" }},
		{name: "TLS certificate", dsn: at(im.Host(), im.Port(), "postgres", r.secretID), kind: pgsecrets.ErrConnect,
			engine: func(err error) bool { return errors.As(err, &tlsErr) }},
		{name: "password rejected", dsn: at(r.pg.Host(), r.pg.Port(), "postgres", wrongID), kind: pgsecrets.ErrAuthFailed,
			engine: func(err error) bool { return errors.As(err, &pqErr) && pqErr.Code == "28P01" }},
		{name: "store down", dsn: good, kind: pgsecrets.ErrStoreUnavailable, temporary: true,
			prepare: func(t *testing.T, c *pgsecrets.Connector) {
				t.Cleanup(r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Fail}))
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := pgsecrets.NewConnector(tc.dsn, pgsecrets.WithLogger(r.logger))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tc.prepare != nil {
				tc.prepare(t, c)
			}
			conn, err := c.Connect(context.Background())
			if err == nil {
				conn.Close()
				t.Fatal("Connect succeeded")
			}
			var se *pgsecrets.SecretError
			if !errors.Is(err, tc.kind) || !errors.As(err, &se) || se.Kind != tc.kind {
				t.Fatalf("Connect = %v (%T), want a *SecretError of kind %v", err, err, tc.kind)
			}
			if se.SecretID == "" || !strings.Contains(err.Error(), se.SecretID) {
				t.Errorf("%q does not name the secret", err)
			}
			if se.Temporary() != tc.temporary {
				t.Errorf("Temporary() = %v, want %v", se.Temporary(), tc.temporary)
			}
			if tc.engine != nil && !tc.engine(err) {
				t.Errorf("the engine's error is not reachable through %v", err)
			}
			for _, leak := range []string{r.password, wrongPW} {
				if strings.Contains(fmt.Sprintf("%v %+v %#v", err, err, err), leak) {
					t.Errorf("the error shows a password: %v", err)
				}
			}
		})
	}
	if n := len(im.Passwords()); n != 0 {
		t.Errorf("the server whose certificate failed got %d passwords", n)
	}

	t.Run("closed while waiting for the store", func(t *testing.T) {
		defer r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.HangUntilCancel})()
		c, err := pgsecrets.NewConnector(good, pgsecrets.WithLogger(r.logger))
		if err != nil {
			t.Fatal(err)
		}
		calls := r.sm.Calls("GetSecretValue")
		done := make(chan error, 1)
		go func() {
			conn, err := c.Connect(context.Background())
			if err == nil {
				conn.Close()
			}
			done <- err
		}()
		if err := r.sm.WaitCalls(context.Background(), "GetSecretValue", calls+1); err != nil {
			t.Fatal(err)
		}
		c.Close()
		var se *pgsecrets.SecretError
		if err := <-done; !errors.Is(err, pgsecrets.ErrClosed) || errors.Is(err, pgsecrets.ErrStoreUnavailable) ||
			!errors.As(err, &se) || se.Temporary() {
			t.Errorf("Connect = %v, want ErrClosed, not temporary", err)
		}
	})

	t.Run("Refresh on a closed connector", func(t *testing.T) {
		c, err := pgsecrets.NewConnector(good, pgsecrets.WithLogger(r.logger))
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		var se *pgsecrets.SecretError
		if _, err := c.Refresh(context.Background()); !errors.Is(err, pgsecrets.ErrClosed) || !errors.As(err, &se) || se.Temporary() {
			t.Errorf("Refresh = %v, want ErrClosed, not temporary", err)
		}
	})
}
