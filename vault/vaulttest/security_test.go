package vaulttest_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

// lockedBuffer is an io.Writer safe for the server's concurrent handlers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestSecretsNeverLoggedOrInErrors(t *testing.T) {
	t.Parallel()
	cl, db := adminDB(t)
	var logs lockedBuffer
	s := vaulttest.NewServer(vaulttest.WithLogger(slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	defer s.Close()

	secrets := []string{s.RootToken(), "approle-secret-id-value", "k8s-jwt-value"}
	s.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: db, TTL: time.Second})
	s.AddDatabaseRole("database", "bad", vaulttest.DatabaseRole{DB: db, Grants: []string{"GRANT nope_nope TO {{name}}"}})
	s.AddAppRole("approle", "app", "role-id", "approle-secret-id-value", vaulttest.TokenOptions{TTL: time.Hour, Policies: []string{"root"}})
	s.AddKubernetesRole("kubernetes", "app", "k8s-jwt-value", vaulttest.TokenOptions{TTL: time.Hour})
	user := unique("secstatic")
	if err := cl.CreateRole(t.Context(), user, "x"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.DropRole(t.Context(), user) })
	if err := s.AddStaticRole("database", "static", vaulttest.StaticRole{DB: db, Username: user}); err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, s.StaticPassword("database", "static"))

	var errTexts []string
	note := func(err error) {
		if err != nil {
			errTexts = append(errTexts, err.Error())
		}
	}
	anon := client(t, s, "")
	sec, err := anon.Logical().WriteWithContext(t.Context(), "auth/approle/login", map[string]any{"role_id": "role-id", "secret_id": "approle-secret-id-value"})
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, sec.Auth.ClientToken)
	_, err = anon.Logical().WriteWithContext(t.Context(), "auth/approle/login", map[string]any{"role_id": "role-id", "secret_id": "approle-secret-id-valu"})
	note(err)
	_, err = anon.Logical().WriteWithContext(t.Context(), "auth/kubernetes/login", map[string]any{"role": "app", "jwt": "k8s-jwt-valuX"})
	note(err)
	_, err = client(t, s, "hvs.guessed-token-value").Auth().Token().LookupSelfWithContext(t.Context())
	note(err)
	secrets = append(secrets, "hvs.guessed-token-value")

	c := client(t, s, sec.Auth.ClientToken)
	cr, _, pw := creds(t, c, "database/creds/app")
	secrets = append(secrets, pw)
	_, err = c.Logical().ReadWithContext(t.Context(), "database/creds/bad")
	note(err)
	_, err = c.Logical().WriteWithContext(t.Context(), "sys/leases/renew", map[string]any{"lease_id": cr.LeaseID, "increment": "not a duration " + pw})
	note(err)
	_, err = c.Logical().WriteRawWithContext(t.Context(), "sys/leases/renew", []byte(`{"lease_id": "`+pw+`", broken`))
	note(err)
	if _, err := c.Logical().WriteWithContext(t.Context(), "database/rotate-role/static", nil); err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, s.StaticPassword("database", "static"))
	if _, err := s.WaitLeaseRevoked(waitCtx(t), cr.LeaseID); err != nil {
		t.Fatal(err)
	}
	s.Close()

	out := logs.String()
	if !strings.Contains(out, `"msg":"vaulttest request"`) || !strings.Contains(out, "revoked lease") {
		t.Fatalf("the log lacks the expected entries:\n%s", out)
	}
	if len(errTexts) != 6 {
		t.Fatalf("got %d errors, want 6: %q", len(errTexts), errTexts)
	}
	for _, secret := range secrets {
		if secret == "" {
			t.Fatal("empty secret in the list")
		}
		if strings.Contains(out, secret) {
			t.Errorf("the log contains a secret:\n%s", out)
		}
		for _, e := range errTexts {
			if strings.Contains(e, secret) {
				t.Errorf("an error contains a secret: %s", e)
			}
		}
	}
}
