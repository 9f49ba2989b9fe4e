package vault_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

// No token, AppRole secret id or password in anything a program can print:
// logs at debug level, errors of every kind, Stats, Describe, the Config,
// and the connector itself under every fmt verb.
func TestNothingPrintsVaultSecrets(t *testing.T) {
	r := newVRig(t)
	admin := r.pg.DB()
	r.vs.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: admin, TTL: 2 * time.Second, MaxTTL: 4 * time.Second})
	tok := r.vs.CreateToken(vaulttest.TokenOptions{TTL: time.Hour, Renewable: true, Policies: []string{"root"}})
	r.hide(tok)
	t.Setenv("VAULT_TOKEN", tok)
	secretID := "sid-" + testkit.RandomPassword()
	r.hide(secretID)
	r.vs.AddAppRole("approle", "app", "role-app", secretID, vaulttest.TokenOptions{TTL: time.Hour, Policies: []string{"root"}})
	file := filepath.Join(t.TempDir(), "sid")
	if err := os.WriteFile(file, []byte(secretID), 0o600); err != nil {
		t.Fatal(err)
	}

	var printed []string
	note := func(err error) {
		if err != nil {
			printed = append(printed, err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err))
		}
	}
	for _, dsn := range []string{
		r.dsn("database/creds/app", ""),
		r.dsn("database/creds/app", "secret_vault_auth=approle secret_vault_role_id=role-app secret_vault_secret_id_file="+file),
	} {
		db, c := r.open(dsn)
		db.SetMaxIdleConns(0)
		for i := 0; i < 3; i++ {
			note(db.Ping())
		}
		facts, err := c.Describe(context.Background())
		note(err)
		for _, f := range facts {
			printed = append(printed, f.Value)
		}
		// Faults of every kind while leases are renewed and replaced.
		for _, f := range []vaulttest.Fault{{Kind: vaulttest.FaultError, Status: 403}, {Kind: vaulttest.FaultError, Status: 500}, {Kind: vaulttest.FaultDrop}} {
			remove := r.vs.Inject(vaulttest.OpAny, f)
			_, err := c.Refresh(context.Background())
			note(err)
			remove()
		}
		// A fresh lease once Vault answers again: the old one is revoked.
		testkit.Eventually(t, "a lease replaced", func() bool {
			_, err := c.Refresh(context.Background())
			note(err)
			return err == nil && c.Stats().LeaseRevocations > 0
		})
		cfg := c.Config()
		printed = append(printed, c.Stats().String(), cfg.String())
		db.Close()
		for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
			printed = append(printed, fmt.Sprintf(verb, c), fmt.Sprintf(verb, cfg))
		}
	}
	// Errors from a bad secret id and a bad token.
	bad := filepath.Join(t.TempDir(), "bad")
	os.WriteFile(bad, []byte("wrong-"+secretID), 0o600)
	db, _ := r.open(r.dsn("database/creds/app", "secret_vault_auth=approle secret_vault_role_id=role-app secret_vault_secret_id_file="+bad))
	err := db.Ping()
	if !errors.Is(err, pgsecrets.ErrAccessDenied) {
		t.Errorf("bad AppRole secret id: %v", err)
	}
	note(err)
	t.Setenv("VAULT_TOKEN", "hvs.not-a-token-"+testkit.RandomPassword())
	r.hide(os.Getenv("VAULT_TOKEN"))
	db, _ = r.open(r.dsn("database/creds/app", ""))
	err = db.Ping()
	if !errors.Is(err, pgsecrets.ErrAccessDenied) {
		t.Errorf("bad token: %v", err)
	}
	note(err)

	all := strings.Join(printed, "\n") + r.logs.String()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.secrets {
		if strings.Contains(all, s) {
			t.Errorf("a secret (%d bytes) was printed", len(s))
		}
	}
}
