package pgsecrets

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
)

// isolateAWS keeps the SDK's default chain to a test key.
func isolateAWS(t *testing.T) {
	testkit.AWSEnv(t, "AKIDRDSIAMTEST", "rds-iam-secret-key-never-printed")
}

// A DSN that names no secret: the token is signed for the DSN's user,
// host and port, in secret_region, with the SDK's credentials; it reads
// as a presigned rds-db:connect request and is valid 15 minutes.
func TestRDSIAMToken(t *testing.T) {
	isolateAWS(t)
	cfg, err := ParseDSN("host=db.example.internal port=6432 user=app_iam sslmode=verify-full secret_provider=rds-iam secret_region=eu-west-1")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.SecretID != "rds-iam:app_iam@db.example.internal:6432" {
		t.Errorf("secret id %q", cfg.SecretID)
	}
	p, err := newRDSIAMProvider(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	c, err := p.Fetch(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	tok := c.Password.Reveal()
	u, err := url.Parse("https://" + tok)
	if err != nil {
		t.Fatalf("token %q is not a presigned URL: %v", tok, err)
	}
	q := u.Query()
	if u.Host != "db.example.internal:6432" || q.Get("Action") != "connect" || q.Get("DBUser") != "app_iam" ||
		!strings.HasPrefix(q.Get("X-Amz-Credential"), "AKIDRDSIAMTEST/") || !strings.Contains(q.Get("X-Amz-Credential"), "/eu-west-1/rds-db/") ||
		q.Get("X-Amz-Signature") == "" {
		t.Errorf("token for %s with %v", u.Host, q)
	}
	if strings.Contains(tok, "rds-iam-secret-key-never-printed") {
		t.Error("the token carries the secret key")
	}
	if c.Username != "app_iam" || !c.Expires.IsZero() || c.LoginUntil.Before(before.Add(rdsTokenLife)) || c.LoginUntil.After(time.Now().Add(rdsTokenLife)) {
		t.Errorf("credentials %v: want a 15-minute token, not a lease", c)
	}
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%+v", *c), fmt.Sprintf("%#v", c)} {
		if strings.Contains(s, q.Get("X-Amz-Signature")) {
			t.Errorf("printing the credentials shows the token: %s", s)
		}
	}
}

// The token dies with the credentials that signed it: it is valid until
// the earlier of its 15 minutes and their end.
func TestRDSIAMTokenEndsWithSigningCredentials(t *testing.T) {
	end := time.Now().Add(4 * time.Minute)
	p := &rdsIAMProvider{region: "us-east-1", endpoint: "db:5432", user: "app",
		creds: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: "ASIATEST", SecretAccessKey: "s", SessionToken: "t", CanExpire: true, Expires: end, Source: "test"}, nil
		})}
	c, err := p.Fetch(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if !c.LoginUntil.Equal(end) {
		t.Errorf("token valid until %s, want the signing credentials' end %s", c.LoginUntil, end)
	}
	failing := &rdsIAMProvider{region: "us-east-1", endpoint: "db:5432", user: "app",
		creds: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{}, errors.New("no web identity token file")
		})}
	_, err = failing.Fetch(context.Background(), "")
	var se *SecretError
	if !errors.As(err, &se) || !errors.Is(err, ErrStoreUnavailable) || !strings.Contains(err.Error(), "rds-iam:app@db:5432") ||
		!strings.Contains(err.Error(), "no web identity token file") {
		t.Errorf("credentials that cannot be retrieved: %v", err)
	}
}

// What a token cannot be signed for, or may not travel over, is a DSN
// error at NewConnector.
func TestRDSIAMRefusesDSN(t *testing.T) {
	isolateAWS(t)
	for _, tc := range []struct{ dsn, key string }{
		{"host=db port=5432 sslmode=verify-full secret_provider=rds-iam secret_region=eu-west-1", "user"},
		{"host=db user=app sslmode=disable secret_provider=rds-iam secret_region=eu-west-1", "sslmode"},
		{"host=db user=app sslmode=prefer secret_provider=rds-iam secret_region=eu-west-1", "sslmode"},
		{"host=db user=app sslmode=allow secret_provider=rds-iam secret_region=eu-west-1", "sslmode"},
		{"host=a,b user=app sslmode=require secret_provider=rds-iam secret_region=eu-west-1", "host"},
		{"host=/var/run/postgresql user=app sslmode=require secret_provider=rds-iam secret_region=eu-west-1", "host"},
		{"user=app sslmode=require secret_provider=rds-iam secret_region=eu-west-1", "host"},
		{"host=db user=app sslmode=require secret_provider=rds-iam", "secret_region"},
	} {
		_, err := NewConnector(tc.dsn)
		var de *DSNError
		if !errors.As(err, &de) || de.Key != tc.key {
			t.Errorf("%s: %v, want a DSN error on %s", tc.dsn, err, tc.key)
		}
	}
}

// The token is a password for 15 minutes: a server that declines TLS,
// or presents a certificate that does not verify, gets no startup in
// plaintext and no token, with every sslmode rds-iam accepts.
func TestRDSIAMTokenNeverSentToImpostor(t *testing.T) {
	isolateAWS(t)
	testkit.TokenNeverSentToImpostor(t, testdb.Shared(t).CAFile(), func(port int, sslmode string) error {
		c, err := NewConnector(fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=app %s secret_provider=rds-iam secret_region=eu-west-1",
			port, sslmode))
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
}
