package vault_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

// Kubernetes auth: the service account token file, the role, a mount of
// its own; the namespace and the address from the environment as in the
// CLI (no secret_endpoint).
func TestKubernetesAuthFromEnvironment(t *testing.T) {
	r := newVRig(t)
	os.Unsetenv("VAULT_TOKEN")
	ns := "team-a"
	vs := vaulttest.Start(t, vaulttest.WithNamespace(ns))
	r.vs = vs
	r.hide(vs.RootToken())
	user, pw := r.role()
	vs.PutKV("kv", "app", map[string]any{"username": user, "password": pw})
	jwt := "eyJhbGciOiJSUzI1NiJ9." + testkit.RandomPassword()
	r.hide(jwt)
	vs.SetPolicy("app", "kv/data/app")
	vs.AddKubernetesRole("k8s-prod", "app", jwt, vaulttest.TokenOptions{TTL: time.Hour, Renewable: true, Policies: []string{"app"}})
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(jwt), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VAULT_ADDR", vs.URL())
	t.Setenv("VAULT_NAMESPACE", ns)
	dsn := strings.Replace(r.dsn("kv/data/app", "secret_vault_auth=kubernetes secret_vault_auth_mount=k8s-prod secret_vault_role=app secret_vault_jwt_file="+file),
		"secret_endpoint="+vs.URL(), "", 1)
	db, c := r.open(dsn)
	if got := currentUserOf(t, db); got != user {
		t.Errorf("current_user %q, want %q", got, user)
	}
	if n := vs.Logins("k8s-prod"); n != 1 {
		t.Errorf("%d Kubernetes logins, want 1", n)
	}
	if vs.Namespaces()[ns] == 0 {
		t.Errorf("no request carried the namespace: %v", vs.Namespaces())
	}
	facts, err := c.Describe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := ""
	for _, f := range facts {
		got += f.Name + "=" + f.Value + "\n"
	}
	for _, want := range []string{"provider=vault", "vault=" + vs.URL(), "namespace=" + ns, "auth=kubernetes at auth/k8s-prod", "KV version 2", "token=ends in"} {
		if !strings.Contains(got, want) {
			t.Errorf("Describe lacks %q:\n%s", want, got)
		}
	}
	r.mu.Lock()
	for _, s := range r.secrets {
		if strings.Contains(got, s) {
			t.Error("Describe shows a secret")
		}
	}
	r.mu.Unlock()
}

// The CLI's token file (~/.vault-token) when VAULT_TOKEN is not set.
func TestTokenFromCLIFile(t *testing.T) {
	r := newVRig(t)
	user, pw := r.role()
	r.vs.PutKV("secret", "app", map[string]any{"username": user, "password": pw})
	os.Unsetenv("VAULT_TOKEN")
	home := t.TempDir()
	t.Setenv("HOME", home)
	if err := os.WriteFile(filepath.Join(home, ".vault-token"), []byte(r.vs.RootToken()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	db, _ := r.open(r.dsn("secret/data/app", ""))
	if got := currentUserOf(t, db); got != user {
		t.Errorf("current_user %q, want %q", got, user)
	}
}

// A static role is read again just after the rotation time Vault
// announced: an idle application's next connection uses the new password
// without a rejected login.
func TestStaticRoleReadAfterAnnouncedRotation(t *testing.T) {
	r := newVRig(t)
	user, _ := r.role()
	if err := r.vs.AddStaticRole("database", "app", vaulttest.StaticRole{DB: r.pg.DB(), Username: user, RotationPeriod: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	db, c := r.open(r.dsn("database/static-creds/app", "secret_ttl=1h"))
	db.SetMaxIdleConns(0) // every query logs in
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	first := c.Stats().VersionID
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.vs.WaitStaticRotations(ctx, "database", "app", r.vs.StaticRotations("database", "app")+1); err != nil {
		t.Fatal(err)
	}
	r.hide(r.vs.StaticPassword("database", "app"))
	time.Sleep(300 * time.Millisecond) // past the 100–200 ms after the rotation time, so no login races it
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	st := c.Stats()
	if st.VersionID == first {
		t.Error("the static role was not read again after its rotation time (secret_ttl is 1h)")
	}
	if st.AuthFailures != 0 {
		t.Errorf("%d rejected logins: the new password was not fetched before the login", st.AuthFailures)
	}
}
