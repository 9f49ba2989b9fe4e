package gcpiam_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/lib/pq"
	"golang.org/x/oauth2/google"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/gcpiam"
	"github.com/pgsecrets/pgsecrets/iamtest"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
)

// BenchmarkGCPIAMConnect: a new connection through the front end with a
// Google token, plain lib/pq (a token got once, outside the loop) against
// pgsecrets' gcp-iam provider (the token cached). Report the ratio:
//
//	cd gcpiam && go test -run '^$' -bench GCPIAMConnect -count 10 . > bench.txt && benchstat -col /driver bench.txt
func BenchmarkGCPIAMConnect(b *testing.B) {
	pg := testdb.Shared(b)
	g := newIssuer(b, iamtest.GoogleOptions{Logf: func(string, ...any) {}})
	a := newAccount(b, g, pg)
	useKey(b, a.key)
	srv := newServer(b, g)
	ctx := context.Background()
	creds, err := google.CredentialsFromJSON(ctx, a.key, gcpiam.ScopeCloudSQLLogin)
	if err != nil {
		b.Fatal(err)
	}
	tok, err := creds.TokenSource.Token()
	if err != nil {
		b.Fatal(err)
	}
	base := fmt.Sprintf("host=127.0.0.1 port=%d user='%s' dbname=postgres sslmode=verify-full sslrootcert='%s'", srv.Port(), a.user, srv.CAFile())
	plain, err := pq.NewConnector(base + " password=" + tok.AccessToken)
	if err != nil {
		b.Fatal(err)
	}
	ours, err := pgsecrets.NewConnector(base + " secret_provider=gcp-iam")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ours.Close() })
	testkit.BenchConnect(b, testkit.NamedConnector{Name: "pq", Connector: plain}, testkit.NamedConnector{Name: "pgsecrets", Connector: ours})
}

// BenchmarkGCPIAMToken: what one token costs the provider: the key file
// read, an assertion signed and posted to the (local) token endpoint;
// pgsecrets asks once per token life per process, in the background, and
// after a refused token.
func BenchmarkGCPIAMToken(b *testing.B) {
	pg := testdb.Shared(b)
	g := newIssuer(b, iamtest.GoogleOptions{Logf: func(string, ...any) {}})
	a := newAccount(b, g, pg)
	ctx := context.Background()
	for b.Loop() {
		creds, err := google.CredentialsFromJSON(ctx, a.key, gcpiam.ScopeCloudSQLLogin)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := creds.TokenSource.Token(); err != nil {
			b.Fatal(err)
		}
	}
}
