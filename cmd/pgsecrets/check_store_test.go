package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

// check with the file provider: the path, its form and mtime, a login.
func TestCheckFileProvider(t *testing.T) {
	r := newCheckRig(t)
	file := filepath.Join(t.TempDir(), "db.json")
	if err := os.WriteFile(file, []byte(secretJSON(r.role, r.password)), 0o600); err != nil {
		t.Fatal(err)
	}
	res, rep := r.check(t, r.dsn("secret_provider=file secret_id="+file))
	if res.code != 0 {
		t.Fatalf("exit %d:\n%s", res.code, res)
	}
	for _, want := range []string{"provider", "file", file + " (JSON file)", "modified", "user", r.role, "OK: logged in as " + r.role} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if rep["facts"] == nil {
		t.Error("--json has no facts")
	}

	// A missing file: the path, not found.
	res, _ = r.check(t, r.dsn("secret_provider=file secret_id="+file+".missing"))
	if res.code != 1 || !strings.Contains(res.stdout, "FAIL") || !strings.Contains(res.stdout, file+".missing") {
		t.Errorf("missing file: exit %d\n%s", res.code, res)
	}
}

// check with Vault dynamic credentials: lease id prefix, expiry,
// renewable, token TTL; the token never printed.
func TestCheckVaultProvider(t *testing.T) {
	r := newCheckRig(t)
	vs := vaulttest.Start(t)
	vs.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: r.pg.DB(), TTL: time.Hour, MaxTTL: 2 * time.Hour})
	tok := vs.CreateToken(vaulttest.TokenOptions{TTL: time.Hour, Renewable: true, Policies: []string{"root"}})
	r.planted = append(r.planted, tok, vs.RootToken())
	t.Setenv("VAULT_TOKEN", tok)
	dsn := strings.Replace(r.dsn("secret_provider=vault secret_id=database/creds/app"), "secret_endpoint="+r.sm.URL(), "secret_endpoint="+vs.URL(), 1)
	dsn = strings.Replace(dsn, "secret_id="+r.secretID+" ", "", 1)
	res, _ := r.check(t, dsn)
	if res.code != 0 {
		t.Fatalf("exit %d:\n%s", res.code, res)
	}
	for _, want := range []string{"database/creds/app/…", "expires", "renewable", "true", "token", "ends in", "renewable true",
		"dynamic credentials", "auth", "OK: logged in as v-token-app-"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// check's connector closed: its leases were revoked.
	if n := vs.ActiveLeases(); n != 0 {
		t.Errorf("%d leases left active after check", n)
	}
}

// check with secret_driver=pgx: the login goes through pgx.
func TestCheckPgxEngine(t *testing.T) {
	r := newCheckRig(t)
	res, _ := r.check(t, r.dsn("secret_driver=pgx"))
	if res.code != 0 || !strings.Contains(res.stdout, "OK: logged in as "+r.role) {
		t.Fatalf("exit %d:\n%s", res.code, res)
	}
}
