package entra_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/lib/pq"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/entra"
	"github.com/pgsecrets/pgsecrets/iamtest"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
)

// BenchmarkEntraConnect: a new connection through the front end with an
// Entra token, plain lib/pq (a token got once, outside the loop) against
// pgsecrets' entra provider (the token cached). Report the ratio:
//
//	cd entra && go test -run '^$' -bench EntraConnect -count 10 . > bench.txt && benchstat -col /driver bench.txt
func BenchmarkEntraConnect(b *testing.B) {
	r := newRig(b, func(_ *rig, o *iamtest.EntraOptions) { o.Logf = func(string, ...any) {} })
	srv := r.frontEnd(b)
	tok := r.endpointToken(b)
	base := fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=verify-full sslrootcert=%s", srv.Port(), r.user, srv.CAFile())
	plain, err := pq.NewConnector(base + " password='" + strings.ReplaceAll(tok, `'`, `\'`) + "'")
	if err != nil {
		b.Fatal(err)
	}
	ours, err := pgsecrets.NewConnector(base + " secret_provider=entra")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ours.Close() })
	testkit.BenchConnect(b, testkit.NamedConnector{Name: "pq", Connector: plain}, testkit.NamedConnector{Name: "pgsecrets", Connector: ours})
}

// BenchmarkEntraGetToken: what one token costs the provider, a request to
// the (local) managed identity endpoint through azidentity with the claims
// that skip its cache; pgsecrets asks once per token life per process, in
// the background, and after a refused token.
func BenchmarkEntraGetToken(b *testing.B) {
	newRig(b, func(_ *rig, o *iamtest.EntraOptions) { o.Logf = func(string, ...any) {} })
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	opts := policy.TokenRequestOptions{Scopes: []string{entra.DefaultScope}, Claims: `{"access_token":{"nbf":{"essential":true,"value":"1"}}}`}
	for b.Loop() {
		if _, err := cred.GetToken(ctx, opts); err != nil {
			b.Fatal(err)
		}
	}
}
