package pgsecrets

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/lib/pq"
)

func TestAuthFailureBySQLState(t *testing.T) {
	dial := &net.OpError{Op: "dial", Err: errors.New("connection refused")}
	cases := []struct {
		name  string
		err   error
		state string
		ok    bool
	}{
		{"invalid password", &pq.Error{Code: "28P01"}, "28P01", true},
		{"no pg_hba entry", &pq.Error{Code: "28000"}, "28000", true},
		{"wrapped", fmt.Errorf("connecting to db:5432: %w", &pq.Error{Code: "28P01"}), "28P01", true},
		{"second host of a multi-host DSN", errors.Join(
			fmt.Errorf("connecting to a:5432: %w", dial),
			fmt.Errorf("connecting to b:5432: %w", &pq.Error{Code: "28P01"})), "28P01", true},
		{"unknown database", &pq.Error{Code: "3D000"}, "", false},
		{"too many connections", &pq.Error{Code: "53300"}, "", false},
		{"connection refused", dial, "", false},
		{"message text alone", errors.New(`pq: password authentication failed for user "app"`), "", false},
		{"nil", nil, "", false},
	}
	for _, tc := range cases {
		state, ok := authFailure(tc.err)
		if state != tc.state || ok != tc.ok {
			t.Errorf("%s: got %q %v, want %q %v", tc.name, state, ok, tc.state, tc.ok)
		}
	}
}

func TestSecretErrorUnwrap(t *testing.T) {
	pqErr := &pq.Error{Code: "28P01"}
	err := error(&SecretError{Kind: ErrAuthFailed, SecretID: "s", SQLState: "28P01", Err: pqErr})
	var got *pq.Error
	if !errors.Is(err, ErrAuthFailed) || !errors.As(err, &got) || got != pqErr {
		t.Errorf("errors.Is/As through SecretError fail: %v", err)
	}
	if errors.Is(err, ErrCircuitOpen) {
		t.Error("wrong kind matches")
	}
	if !(&SecretError{Kind: ErrStoreUnavailable}).Temporary() || (&SecretError{Kind: ErrAccessDenied}).Temporary() {
		t.Error("Temporary wrong")
	}
}

// Whether an ErrConnect is worth retrying follows from the engine's error:
// the network, or a server starting, stopping or full, yes; a server that
// refuses the session for good, or a host name that does not exist, no.
func TestConnectErrorTemporary(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"connection refused", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, true},
		{"unknown host", &net.DNSError{Err: "no such host", Name: "db.invalid", IsNotFound: true}, false},
		{"DNS server failing", &net.DNSError{Err: "server misbehaving", Name: "db.internal", IsTemporary: true}, true},
		{"too many connections", &pq.Error{Code: "53300"}, true},
		{"server starting", fmt.Errorf("connecting: %w", &pq.Error{Code: "57P03"}), true},
		{"unknown database", &pq.Error{Code: "3D000"}, false},
		{"certificate", errors.New("x509: certificate signed by unknown authority"), false},
	}
	for _, tc := range cases {
		if got := (&SecretError{Kind: ErrConnect, Err: tc.err}).Temporary(); got != tc.want {
			t.Errorf("%s: Temporary() = %v, want %v", tc.name, got, tc.want)
		}
	}
	if (&SecretError{Kind: ErrClosed}).Temporary() {
		t.Error("a closed connector is not temporary")
	}
}

// blockingProvider waits for its context and records whether it had a
// deadline.
type blockingProvider struct{ deadline chan time.Duration }

func (p *blockingProvider) Fetch(ctx context.Context, stage string) (*Credentials, error) {
	dl, ok := ctx.Deadline()
	if !ok {
		p.deadline <- -1
	} else {
		p.deadline <- time.Until(dl)
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

// A store call made for a caller without a deadline still has one, and a
// caller who gives up gets ctx.Err() while the call goes on for the others.
func TestStoreCallBounded(t *testing.T) {
	p := &blockingProvider{deadline: make(chan time.Duration, 1)}
	c, err := NewConnector("host=127.0.0.1 secret_id=bounded", WithProvider(p))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := c.Connect(ctx); done <- err }()
	d := <-p.deadline
	if d <= 0 || d > storeTimeout {
		t.Errorf("store call deadline in %v, want within %v", d, storeTimeout)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Connect = %v, want context.Canceled", err)
	}
	c.Close() // ends the store call
}

// Internal values print no password either, whatever the verb.
func TestInternalValuesRedacted(t *testing.T) {
	const pw = "pw-internal-9f3k2"
	creds := &Credentials{Username: "app", Password: NewSecret(pw), VersionID: "v1"}
	e := acquireEntry("redact-test", "s", "AWSCURRENT", nil)
	defer e.release()
	e.cache.record(creds)
	e.cache.setPending(&Credentials{Username: "app", Password: NewSecret(pw), VersionID: "v2"})
	f := failure{creds: creds, sqlstate: "28P01", err: &pq.Error{Code: "28P01"}}
	cfg, err := ParseDSN("host=h password=" + pw + " secret_id=s")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []any{creds, *creds, e, f, &f, &progress{f: f}, cfg, *cfg, fetchResult{creds: creds}, policy{},
		e.cache, e.store, where{}.login(creds), *where{}.login(creds), e.cache.view(), attempt{creds: creds, runState: &runState{}}} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
			if out := fmt.Sprintf(verb, v); strings.Contains(out, pw) {
				t.Errorf("%s of %T shows the password: %s", verb, v, out)
			}
		}
	}
}
