package iamtest_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/rds/auth"
	"github.com/lib/pq"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
)

// BenchmarkRDSIAMConnect: a new connection through the front end with a
// token, plain lib/pq (a token signed once, outside the loop) against
// pgsecrets' rds-iam (the token cached). Report the ratio:
//
//	cd iamtest && go test -run '^$' -bench RDSIAM -count 10 . > bench.txt && benchstat -col /driver bench.txt
func BenchmarkRDSIAMConnect(b *testing.B) {
	awsEnv(b)
	r := newRig(b, nil)
	ctx := context.Background()
	tok, err := auth.BuildAuthToken(ctx, r.srv.Endpoint(), r.srv.Region(), r.user, credentials.NewStaticCredentialsProvider(akid, secret, ""))
	if err != nil {
		b.Fatal(err)
	}
	base := fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=verify-full sslrootcert=%s", r.srv.Port(), r.user, r.srv.CAFile())
	plain, err := pq.NewConnector(base + " password=" + quote(tok))
	if err != nil {
		b.Fatal(err)
	}
	ours, err := pgsecrets.NewConnector(base + " secret_provider=rds-iam secret_region=" + r.srv.Region())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ours.Close() })
	testkit.BenchConnect(b, testkit.NamedConnector{Name: "pq", Connector: plain}, testkit.NamedConnector{Name: "pgsecrets", Connector: ours})
}

// BenchmarkRDSIAMSignToken: what minting one token costs (the SDK's
// signer, static credentials); pgsecrets does it once per token life per
// process, in the background.
func BenchmarkRDSIAMSignToken(b *testing.B) {
	ctx := context.Background()
	creds := credentials.NewStaticCredentialsProvider(akid, secret, "")
	for b.Loop() {
		if _, err := auth.BuildAuthToken(ctx, "db.example:5432", "us-east-1", "app", creds); err != nil {
			b.Fatal(err)
		}
	}
}
