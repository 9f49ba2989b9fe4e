package vault

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

// Vault revokes a lease with the token it was issued under. After a new
// login, a renewal (sent with the new token) must not move the lease's
// end past the old token's: the lease would be dropped under connections
// that pgsecrets believes may keep it, and renew-first keeps a lease for
// as long as renewals extend it.
func TestRenewalKeepsLeaseWithinItsToken(t *testing.T) {
	pg := testdb.Shared(t)
	vs := vaulttest.Start(t)
	t.Setenv("VAULT_TOKEN", "")
	os.Unsetenv("VAULT_TOKEN")
	vs.SetPolicy("app", "database/creds/app")
	vs.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: pg.DB(), TTL: time.Minute, MaxTTL: time.Hour})
	secretID := "sid-" + testkit.RandomPassword()
	vs.AddAppRole("approle", "app", "role-app", secretID, vaulttest.TokenOptions{TTL: time.Minute, MaxTTL: time.Minute, Policies: []string{"app"}})
	file := filepath.Join(t.TempDir(), "secret-id")
	if err := os.WriteFile(file, []byte(secretID), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgsecrets.ParseDSN(fmt.Sprintf("host=%s secret_provider=vault secret_id=database/creds/app secret_endpoint=%s "+
		"secret_vault_auth=approle secret_vault_role_id=role-app secret_vault_secret_id_file=%s", pg.Host(), vs.URL(), file))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pr, err := newProvider(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := pr.(*provider)
	defer p.Close()
	c, err := p.Fetch(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.Revoke(ctx, c) }()
	tokenEnd := c.Expires                // the lease (1 min, renewable to 1 h) ends with its token (1 min)
	if err := p.login(ctx); err != nil { // a new token, as when the old one cannot be renewed
		t.Fatal(err)
	}
	end, err := p.Renew(ctx, c, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if end.After(tokenEnd) {
		t.Errorf("renewed until %s, past the end of the token the lease was issued under (%s)", end, tokenEnd)
	}
}
