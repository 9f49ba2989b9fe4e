package vault_test

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

// secret_vault_namespace reaches every request of the provider, logins
// included: the server answers 403 to any request without the namespace,
// and counts the namespace of each. Every kind of request is made: token
// lookup or login, reads, token and lease renewals, lease revocation and
// token revocation at Close. A VAULT_NAMESPACE naming another namespace
// must not leak into any of them; alone, it serves as the namespace.
func TestNamespaceOnEveryRequest(t *testing.T) {
	const ns = "team-a/app"
	for _, tc := range []struct {
		name string
		auth string // DSN keys; the files are appended below
		env  string // VAULT_NAMESPACE
		dsn  bool   // secret_vault_namespace set
	}{
		{name: "token", auth: "", dsn: true},
		{name: "approle", auth: "secret_vault_auth=approle secret_vault_role_id=role-app", dsn: true},
		{name: "approle with another VAULT_NAMESPACE", auth: "secret_vault_auth=approle secret_vault_role_id=role-app", env: "team-b", dsn: true},
		{name: "approle with VAULT_NAMESPACE only", auth: "secret_vault_auth=approle secret_vault_role_id=role-app", env: ns},
		{name: "kubernetes", auth: "secret_vault_auth=kubernetes secret_vault_role=app", dsn: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newVRig(t)
			vs := vaulttest.Start(t, vaulttest.WithNamespace(ns))
			r.vs = vs
			r.hide(vs.RootToken())
			if tc.env != "" {
				t.Setenv("VAULT_NAMESPACE", tc.env)
			}
			vs.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: r.pg.DB(), TTL: 2 * time.Second, MaxTTL: time.Minute})
			// Tokens of 4 s: renewed within the test, never expired.
			topts := vaulttest.TokenOptions{TTL: 4 * time.Second, Renewable: true, Policies: []string{"root"}}
			dir := t.TempDir()
			auth := tc.auth
			if tc.dsn {
				auth += " secret_vault_namespace=" + ns
			}
			switch {
			case tc.auth == "":
				tok := vs.CreateToken(topts)
				r.hide(tok)
				t.Setenv("VAULT_TOKEN", tok)
			case strings.Contains(tc.auth, "kubernetes"):
				os.Unsetenv("VAULT_TOKEN") // t.Setenv in newVRig restores it
				jwt := "eyJhbGciOiJSUzI1NiJ9." + testkit.RandomPassword()
				r.hide(jwt)
				vs.AddKubernetesRole("kubernetes", "app", jwt, topts)
				file := filepath.Join(dir, "jwt")
				if err := os.WriteFile(file, []byte(jwt), 0o600); err != nil {
					t.Fatal(err)
				}
				auth += " secret_vault_jwt_file=" + file
			default:
				os.Unsetenv("VAULT_TOKEN")
				secretID := "sid-" + testkit.RandomPassword()
				r.hide(secretID)
				vs.AddAppRole("approle", "app", "role-app", secretID, topts)
				file := filepath.Join(dir, "sid")
				if err := os.WriteFile(file, []byte(secretID), 0o600); err != nil {
					t.Fatal(err)
				}
				auth += " secret_vault_secret_id_file=" + file
			}

			db, _ := r.open(r.dsn("database/creds/app", auth))
			conn, err := db.Conn(context.Background()) // the lease stays in use: it is renewed
			if err != nil {
				r.noSecret(err)
				t.Fatalf("first connection: %v (namespaces seen: %v)", err, vs.Namespaces())
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for _, op := range []string{vaulttest.OpRenew, vaulttest.OpTokenRenew} {
				if err := vs.WaitCalls(ctx, op, 1); err != nil {
					t.Fatalf("waiting for %s: %v (namespaces seen: %v)", op, err, vs.Namespaces())
				}
			}
			conn.Close()
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			if n := vs.ActiveLeases(); n != 0 {
				t.Errorf("%d leases left after Close: revocation did not reach the namespace", n)
			}
			want := []string{vaulttest.OpCreds, vaulttest.OpRenew, vaulttest.OpTokenRenew, vaulttest.OpRevoke}
			if tc.auth == "" {
				want = append(want, vaulttest.OpTokenLookup)
			} else {
				want = append(want, vaulttest.OpLogin, vaulttest.OpTokenRevoke)
			}
			for _, op := range want {
				if vs.Calls(op) == 0 {
					t.Errorf("no %s request was made", op)
				}
			}
			// Close has returned: no request is in flight any more.
			if got, all := vs.Namespaces(), vs.TotalCalls(); !maps.Equal(got, map[string]int{ns: all}) {
				t.Errorf("requests by namespace %v, want all %d with %q", got, all, ns)
			}
		})
	}
}
