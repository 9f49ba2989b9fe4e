package pgsecrets_test

import (
	"context"
	"database/sql"
	"os"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/pgsecrets/pgsecrets"
)

// A Secrets Manager endpoint over plain http on a host that is not
// loopback gets one warning per connector, at construction (the store is
// unreachable here, and the warning must not wait for an answer), naming
// the store and the host without userinfo. https and loopback get none.
func TestUnprotectedStoreWarnings(t *testing.T) {
	r := newRig(t)
	// A key of its own, to check that it is never logged (smtest does not
	// verify signatures).
	secretKey := "sk-" + randomPassword()
	t.Setenv("AWS_SECRET_ACCESS_KEY", secretKey)
	port := r.sm.URL()[strings.LastIndexByte(r.sm.URL(), ':')+1:]
	lines := func() []string {
		var out []string
		for _, l := range strings.Split(r.logs.String(), "\n") {
			if strings.Contains(l, `msg="`+pgsecrets.EventUnprotectedStore+`"`) {
				out = append(out, l)
			}
		}
		return out
	}
	// open builds a connector and checks the warnings it logged at once;
	// if ping, it pings three times (logging in anew each time) and checks
	// that none was added. Only names that resolve nowhere and the rig's
	// store are pinged: nothing here may reach AWS or a routable address.
	open := func(t *testing.T, dsn string, want int, ping bool, opts ...pgsecrets.Option) (*sql.DB, []string) {
		t.Helper()
		before := len(lines())
		db := r.open(dsn, opts...)
		got := lines()[before:]
		if len(got) != want {
			t.Fatalf("%d warnings at construction, want %d: %q", len(got), want, got)
		}
		if !ping {
			return db, got
		}
		db.SetMaxIdleConns(0)
		for range 3 {
			_ = db.Ping()
		}
		if n := len(lines()) - before; n != want {
			t.Errorf("%d warnings after three pings, want %d", n, want)
		}
		return db, got
	}
	remote := func(endpoint string) string {
		return strings.Replace(r.kv(""), "secret_endpoint="+r.sm.URL(), "secret_endpoint="+endpoint, 1)
	}

	t.Run("http remote", func(t *testing.T) {
		db, got := open(t, remote("http://sm.example.invalid:4566"), 1, true)
		if db.Ping() == nil {
			t.Fatal("a store that resolves nowhere answered")
		}
		line := got[0]
		for _, want := range []string{"level=WARN", "store=\"AWS Secrets Manager\"", "host=sm.example.invalid:4566", "secret_id=" + r.secretID, "https://"} {
			if !strings.Contains(line, want) {
				t.Errorf("warning lacks %q: %s", want, line)
			}
		}
	})
	t.Run("once per connector", func(t *testing.T) {
		before := len(lines())
		for range 2 {
			open(t, remote("http://sm.example.invalid:4566"), 1, true)
		}
		if n := len(lines()) - before; n != 2 {
			t.Errorf("%d warnings for two connectors", n)
		}
	})
	t.Run("userinfo never logged", func(t *testing.T) {
		pw := randomPassword()
		_, got := open(t, remote("http://ops:"+pw+"@sm.example.invalid:4566"), 1, true)
		if strings.Contains(got[0], "ops") || !strings.Contains(got[0], "host=sm.example.invalid:4566") {
			t.Errorf("warning: %s", got[0])
		}
		if strings.Contains(r.logs.String(), pw) {
			t.Error("the endpoint's password was logged")
		}
	})
	t.Run("endpoint from the environment", func(t *testing.T) {
		for _, env := range []string{"AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ENDPOINT_URL"} {
			t.Setenv(env, "http://"+strings.ToLower(env)+".example.invalid")
			dsn := strings.Replace(r.kv(""), "secret_endpoint="+r.sm.URL(), "", 1)
			_, got := open(t, dsn, 1, true)
			if !strings.Contains(got[0], "host="+strings.ToLower(env)+".example.invalid") {
				t.Errorf("%s: %s", env, got[0])
			}
			os.Unsetenv(env)
		}
	})
	t.Run("caller's client", func(t *testing.T) {
		cfg, err := config.LoadDefaultConfig(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		client := secretsmanager.NewFromConfig(cfg, func(o *secretsmanager.Options) {
			o.BaseEndpoint = aws.String("http://client.example.invalid")
		})
		_, got := open(t, r.kv(""), 1, true, pgsecrets.WithSecretsManagerClient(client))
		if !strings.Contains(got[0], "host=client.example.invalid") {
			t.Errorf("warning: %s", got[0])
		}
	})
	t.Run("https and loopback", func(t *testing.T) {
		open(t, remote("https://sm.example.invalid"), 0, true)
		open(t, strings.Replace(r.kv(""), "secret_endpoint="+r.sm.URL(), "", 1), 0, false) // AWS's own endpoint
		for _, ep := range []string{r.sm.URL(), "http://localhost:" + port, "http://LOCALHOST:" + port, "http://127.0.0.1:" + port} {
			db, _ := open(t, remote(ep), 0, true)
			if err := db.Ping(); err != nil {
				t.Errorf("%s: %v", ep, err)
			}
		}
		for _, ep := range []string{"http://[::1]:1", "http://127.8.9.10:1", "http://[::ffff:127.0.0.1]:1"} {
			open(t, remote(ep), 0, false)
		}
	})
	t.Run("a name is not resolved", func(t *testing.T) {
		// Only the literal name localhost is exempt.
		open(t, remote("http://localhost.example.invalid:4566"), 1, true)
		open(t, remote("http://127.0.0.1.example.invalid:4566"), 1, true)
	})
	if strings.Contains(r.logs.String(), secretKey) {
		t.Error("the AWS secret key was logged")
	}
}
