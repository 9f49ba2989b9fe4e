package vaulttest_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

func TestTokenLookupAndRenewSelf(t *testing.T) {
	t.Parallel()
	s := vaulttest.Start(t)
	tok := s.CreateToken(vaulttest.TokenOptions{TTL: 30 * time.Second, MaxTTL: time.Minute, Renewable: true, Policies: []string{"app"}})
	c := client(t, s, tok)

	sec, err := c.Auth().Token().LookupSelfWithContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if sec.Data["id"] != tok || sec.Data["accessor"] != s.TokenAccessor(tok) || sec.Data["renewable"] != true {
		t.Fatalf("lookup-self = %v", sec.Data)
	}
	num := func(k string) int64 {
		n, err := sec.Data[k].(json.Number).Int64()
		if err != nil {
			t.Fatalf("lookup-self %s = %v: %v", k, sec.Data[k], err)
		}
		return n
	}
	if ttl := num("ttl"); ttl <= 0 || ttl > 30 {
		t.Fatalf("ttl = %d, want 1..30", ttl)
	}
	if num("creation_ttl") != 30 || num("explicit_max_ttl") != 60 {
		t.Fatalf("creation_ttl = %d, explicit_max_ttl = %d", num("creation_ttl"), num("explicit_max_ttl"))
	}
	if pol, _ := sec.TokenPolicies(); len(pol) != 1 || pol[0] != "app" {
		t.Fatalf("policies = %v", pol)
	}
	for _, k := range []string{"expire_time", "issue_time"} {
		if _, err := time.Parse(time.RFC3339Nano, sec.Data[k].(string)); err != nil {
			t.Fatalf("%s: %v", k, err)
		}
	}

	r, err := c.Auth().Token().RenewSelfWithContext(t.Context(), 10)
	if err != nil {
		t.Fatal(err)
	}
	if r.Auth == nil || r.Auth.ClientToken != tok || r.Auth.LeaseDuration != 10 || !r.Auth.Renewable || len(r.Warnings) != 0 {
		t.Fatalf("renew-self(10) = %+v, warnings %q", r.Auth, r.Warnings)
	}

	r, err = c.Auth().Token().RenewSelfWithContext(t.Context(), 3600)
	if err != nil {
		t.Fatal(err)
	}
	if r.Auth.LeaseDuration <= 0 || r.Auth.LeaseDuration > 60 {
		t.Fatalf("capped renew-self: lease_duration = %d, want 1..60", r.Auth.LeaseDuration)
	}
	if len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], `TTL of "1h0m0s" exceeded the effective max_ttl of "`) {
		t.Fatalf("capped renew-self: warnings = %q", r.Warnings)
	}

	// A duration string works too.
	w, err := c.Logical().WriteWithContext(t.Context(), "auth/token/renew-self", map[string]any{"increment": "5s"})
	if err != nil {
		t.Fatal(err)
	}
	if w.Auth.LeaseDuration != 5 {
		t.Fatalf("renew-self 5s: lease_duration = %d", w.Auth.LeaseDuration)
	}
}

func TestTokenNotRenewableAndExpired(t *testing.T) {
	t.Parallel()
	s := vaulttest.Start(t)
	fixed := s.CreateToken(vaulttest.TokenOptions{TTL: time.Hour})
	_, err := client(t, s, fixed).Auth().Token().RenewSelfWithContext(t.Context(), 10)
	wantErrorText(t, responseError(t, err, 400), "lease is not renewable")

	gone := s.CreateToken(vaulttest.TokenOptions{TTL: time.Nanosecond, Renewable: true})
	_, err = client(t, s, gone).Auth().Token().LookupSelfWithContext(t.Context())
	wantErrorText(t, responseError(t, err, 403), "permission denied")

	_, err = client(t, s, "hvs.not-a-token").Auth().Token().LookupSelfWithContext(t.Context())
	responseError(t, err, 403)
	_, err = client(t, s, "").Auth().Token().LookupSelfWithContext(t.Context())
	responseError(t, err, 403)

	// The root token never expires and cannot be renewed.
	sec, err := client(t, s, s.RootToken()).Auth().Token().LookupSelfWithContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if sec.Data["expire_time"] != nil || sec.Data["ttl"] != json.Number("0") {
		t.Fatalf("root lookup-self = %v", sec.Data)
	}
}

func TestPolicies(t *testing.T) {
	t.Parallel()
	s := vaulttest.Start(t)
	s.PutKV("secret", "app/config", map[string]any{"k": "v"})
	s.PutKV("secret", "other/config", map[string]any{"k": "v"})
	s.PutKV("secret", "team/x/config", map[string]any{"k": "v"})
	s.SetPolicy("app", "secret/data/app/*", "secret/data/+/config-exact")
	s.SetPolicy("team", "secret/data/team/+/config")
	tok := s.CreateToken(vaulttest.TokenOptions{Policies: []string{"app", "team"}})
	c := client(t, s, tok)

	for _, p := range []string{"app/config", "team/x/config"} {
		if _, err := c.KVv2("secret").Get(t.Context(), p); err != nil {
			t.Fatalf("allowed read of %s: %v", p, err)
		}
	}
	_, err := c.KVv2("secret").Get(t.Context(), "other/config")
	wantErrorText(t, responseError(t, err, 403), "permission denied")
	_, err = c.Logical().ReadWithContext(t.Context(), "database/creds/app")
	responseError(t, err, 403)
	// Denied even where nothing exists: ACLs are checked before routing.
	_, err = c.Logical().ReadWithContext(t.Context(), "secret/data/nothing")
	responseError(t, err, 403)

	// The token's own endpoints and sys/leases need no policy.
	none := client(t, s, s.CreateToken(vaulttest.TokenOptions{}))
	if _, err := none.Auth().Token().LookupSelfWithContext(t.Context()); err != nil {
		t.Fatalf("lookup-self without policies: %v", err)
	}
	_, err = none.Sys().LookupWithContext(t.Context(), "database/creds/x/y")
	responseError(t, err, 400) // allowed, but no such lease

	// Root may read anything; a missing path is a 404 the client maps to nil.
	sec, err := client(t, s, s.RootToken()).Logical().ReadWithContext(t.Context(), "nothing/here")
	if err != nil || sec != nil {
		t.Fatalf("root read of an unknown path = %v, %v; want nil, nil", sec, err)
	}
}

func TestAppRoleLogin(t *testing.T) {
	t.Parallel()
	s := vaulttest.Start(t)
	s.SetPolicy("kv", "secret/data/*")
	s.PutKV("secret", "app", map[string]any{"k": "v"})
	s.AddAppRole("approle", "app", "role-id-1", "secret-id-1", vaulttest.TokenOptions{TTL: time.Hour, Renewable: true, Policies: []string{"kv"}})
	c := client(t, s, "")

	sec, err := c.Logical().WriteWithContext(t.Context(), "auth/approle/login", map[string]any{"role_id": "role-id-1", "secret_id": "secret-id-1"})
	if err != nil {
		t.Fatal(err)
	}
	a := sec.Auth
	if a == nil || !strings.HasPrefix(a.ClientToken, "hvs.") || a.Accessor == "" || a.LeaseDuration != 3600 || !a.Renewable {
		t.Fatalf("login auth = %+v", a)
	}
	if len(a.TokenPolicies) != 1 || a.TokenPolicies[0] != "kv" || a.Metadata["role_name"] != "app" {
		t.Fatalf("login auth = %+v", a)
	}
	if s.TokenAccessor(a.ClientToken) != a.Accessor {
		t.Fatalf("accessor mismatch")
	}
	c.SetToken(a.ClientToken)
	if _, err := c.KVv2("secret").Get(t.Context(), "app"); err != nil {
		t.Fatalf("read with the login token: %v", err)
	}

	c.ClearToken()
	_, err = c.Logical().WriteWithContext(t.Context(), "auth/approle/login", map[string]any{"role_id": "role-id-1", "secret_id": "wrong"})
	wantErrorText(t, responseError(t, err, 400), "invalid role or secret ID")
	if s.Logins("approle") != 1 || s.Calls(vaulttest.OpLogin) != 2 {
		t.Fatalf("logins = %d, login calls = %d; want 1, 2", s.Logins("approle"), s.Calls(vaulttest.OpLogin))
	}
	// No such auth mount: a token is needed, as for any other path.
	_, err = c.Logical().WriteWithContext(t.Context(), "auth/nope/login", map[string]any{"role_id": "role-id-1"})
	responseError(t, err, 403)
}

func TestKubernetesLogin(t *testing.T) {
	t.Parallel()
	s := vaulttest.Start(t)
	s.AddKubernetesRole("k8s/cluster-a", "web", "eyJ.fake.jwt", vaulttest.TokenOptions{TTL: 10 * time.Minute, Policies: []string{"web"}})
	c := client(t, s, "")

	sec, err := c.Logical().WriteWithContext(t.Context(), "auth/k8s/cluster-a/login", map[string]any{"role": "web", "jwt": "eyJ.fake.jwt"})
	if err != nil {
		t.Fatal(err)
	}
	if sec.Auth == nil || sec.Auth.ClientToken == "" || sec.Auth.LeaseDuration != 600 || sec.Auth.Metadata["role"] != "web" {
		t.Fatalf("login auth = %+v", sec.Auth)
	}
	c.SetToken(sec.Auth.ClientToken)
	if _, err := c.Auth().Token().LookupSelfWithContext(t.Context()); err != nil {
		t.Fatal(err)
	}

	c.ClearToken()
	_, err = c.Logical().WriteWithContext(t.Context(), "auth/k8s/cluster-a/login", map[string]any{"role": "web", "jwt": "other"})
	wantErrorText(t, responseError(t, err, 403), "permission denied")
	_, err = c.Logical().WriteWithContext(t.Context(), "auth/k8s/cluster-a/login", map[string]any{"role": "db", "jwt": "eyJ.fake.jwt"})
	wantErrorText(t, responseError(t, err, 400), `invalid role name "db"`)
	if s.Logins("k8s/cluster-a") != 1 || s.Logins("") != 1 {
		t.Fatalf("logins = %d", s.Logins("k8s/cluster-a"))
	}
}

func TestNamespace(t *testing.T) {
	t.Parallel()
	s := vaulttest.Start(t, vaulttest.WithNamespace("team-a/"))
	c := client(t, s, s.RootToken())
	_, err := c.Auth().Token().LookupSelfWithContext(t.Context())
	responseError(t, err, 403)

	c.SetNamespace("team-a")
	if _, err := c.Auth().Token().LookupSelfWithContext(t.Context()); err != nil {
		t.Fatalf("with the namespace: %v", err)
	}
	c.SetNamespace("team-b")
	_, err = c.Auth().Token().LookupSelfWithContext(t.Context())
	responseError(t, err, 403)

	ns := s.Namespaces()
	if ns[""] != 1 || ns["team-a"] != 1 || ns["team-b"] != 1 {
		t.Fatalf("Namespaces = %v", ns)
	}
}
