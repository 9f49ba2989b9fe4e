package vault_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

// A static role rotated by Vault 3 times, 3 s apart, under load: Vault's
// new password works at once and the old one stops, so connections opened
// in between fail and recover, and the driver reads the role again just
// after the rotation time Vault announced.
func TestStaticRoleRotations(t *testing.T) {
	r := newVRig(t)
	user, _ := r.role()
	if err := r.vs.AddStaticRole("database", "app", vaulttest.StaticRole{DB: r.pg.DB(), Username: user, RotationPeriod: 3 * time.Second}); err != nil {
		t.Fatal(err)
	}
	db, c := r.open(r.dsn("database/static-creds/app", ""))
	db.SetConnMaxLifetime(250 * time.Millisecond)
	db.SetMaxIdleConns(4)
	l := startLoad(t, db, 16)
	l.WaitQueries(t, 100)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	before := r.vs.StaticRotations("database", "app")
	if err := r.vs.WaitStaticRotations(ctx, "database", "app", before+3); err != nil {
		t.Fatal(err)
	}
	r.hide(r.vs.StaticPassword("database", "app"))
	l.WaitQueries(t, 200) // logins work with the latest password
	l.AssertNoFailures(t)
	st := c.Stats()
	t.Logf("%d queries, stats %+v, %d static-creds reads", l.OK(), st, r.vs.Calls(vaulttest.OpStaticCreds))
	if n := r.vs.Calls(vaulttest.OpStaticCreds); n > 30 {
		t.Errorf("%d reads of the static role for 3 rotations", n)
	}
	if st.Expires != (time.Time{}) || st.LeasesHeld != 0 {
		t.Errorf("a static role is not a lease: %+v", st)
	}
}

// rotate-role at once (no waiting for the period): connections that log in
// after it recover with one refetch.
func TestStaticRoleRotateNow(t *testing.T) {
	r := newVRig(t)
	user, _ := r.role()
	if err := r.vs.AddStaticRole("database", "app", vaulttest.StaticRole{DB: r.pg.DB(), Username: user, RotationPeriod: time.Hour}); err != nil {
		t.Fatal(err)
	}
	db, c := r.open(r.dsn("database/static-creds/app", ""))
	db.SetConnMaxLifetime(250 * time.Millisecond)
	l := startLoad(t, db, 16)
	l.WaitQueries(t, 100)
	for i := 0; i < 3; i++ {
		if err := r.vs.RotateStaticRole("database", "app"); err != nil {
			t.Fatal(err)
		}
		r.hide(r.vs.StaticPassword("database", "app"))
		l.WaitQueries(t, 200)
	}
	l.AssertNoFailures(t)
	if c.Stats().AuthRecovered == 0 {
		t.Error("no login recovered, so the rotations were not exercised")
	}
}

// KV v2, the secret changed after the database (the wrong order): 0 failed
// queries, as with Secrets Manager.
func TestKVWrongOrder(t *testing.T) {
	r := newVRig(t)
	user, pw := r.role()
	r.vs.PutKV("secret", "app/db", map[string]any{"username": user, "password": pw})
	db, c := r.open(r.dsn("secret/data/app/db", ""))
	db.SetConnMaxLifetime(250 * time.Millisecond)
	db.SetMaxIdleConns(4)
	l := startLoad(t, db, 16)
	l.WaitQueries(t, 100)
	for i := 0; i < 2; i++ {
		next := testkit.RandomPassword()
		r.hide(next)
		if err := r.pg.SetPassword(context.Background(), user, next); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // the wrong order: the store catches up a second later
		r.vs.PutKV("secret", "app/db", map[string]any{"username": user, "password": next})
		l.WaitQueries(t, 200)
	}
	l.AssertNoFailures(t)
	st := c.Stats()
	if st.VersionID != "3" {
		t.Errorf("version %q in use, want KV version 3", st.VersionID)
	}
	if st.AuthRecovered == 0 {
		t.Error("no login recovered")
	}
}

// AppRole: a token that cannot outlive its max TTL is replaced by a new
// login before it ends, and fresh leases are fetched under the new token
// before the old token's leases die with it.
func TestAppRoleReloginUnderLoad(t *testing.T) {
	r := newVRig(t)
	admin := r.pg.DB()
	os.Unsetenv("VAULT_TOKEN") // t.Setenv registered its restore
	r.vs.SetPolicy("app", "database/creds/app")
	r.vs.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: admin, TTL: 30 * time.Second, MaxTTL: time.Minute})
	secretID := "sid-" + testkit.RandomPassword()
	r.hide(secretID)
	r.vs.AddAppRole("approle", "app", "role-app", secretID, vaulttest.TokenOptions{TTL: 3 * time.Second, MaxTTL: 6 * time.Second, Renewable: true, Policies: []string{"app"}})
	file := filepath.Join(t.TempDir(), "secret-id")
	if err := os.WriteFile(file, []byte(secretID+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Every lease handed to a new connection must still have more than
	// the expiry margin to live (its token's end included): checked at
	// each handout, which no machine's speed changes. A login that starts
	// in time and ends after the role is gone (a slow machine) is a
	// rejection recovered inside the call, not a lease outliving its token.
	var lateMu sync.Mutex
	var late []string
	watch := pgsecrets.ObserverFunc(func(ctx context.Context, e pgsecrets.Event) context.Context {
		if e.Kind == pgsecrets.KindServed && !e.Expires.IsZero() {
			if left := time.Until(e.Expires); left < 250*time.Millisecond {
				lateMu.Lock()
				late = append(late, fmt.Sprintf("%s with %s left", e.VersionID, left.Round(time.Millisecond)))
				lateMu.Unlock()
			}
		}
		return ctx
	})
	db, c := r.open(r.dsn("database/creds/app", "secret_vault_auth=approle secret_vault_role_id=role-app secret_vault_secret_id_file="+file), pgsecrets.WithObserver(watch))
	db.SetConnMaxLifetime(250 * time.Millisecond)
	db.SetMaxIdleConns(4)
	l := startLoad(t, db, 16)
	l.WaitQueries(t, 100)
	testkit.During(14*time.Second, 100*time.Millisecond, func() {})
	l.AssertNoFailures(t)
	if n := r.vs.Logins("approle"); n < 2 {
		t.Errorf("%d AppRole logins in 14 s of 6 s tokens", n)
	}
	owners := map[string]bool{}
	for _, le := range r.vs.Leases() {
		owners[le.TokenAccessor] = true
	}
	if len(owners) < 2 {
		t.Errorf("leases from %d tokens, want fresh ones under each new token", len(owners))
	}
	lateMu.Lock()
	if len(late) > 0 {
		t.Errorf("%d leases handed out within the expiry margin of their end (their token's): %v", len(late), late[:min(len(late), 5)])
	}
	lateMu.Unlock()
	if st := c.Stats(); st.AuthFailures > 0 {
		t.Logf("%d logins rejected and recovered in the call (a login slower than the margin)", st.AuthFailures)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if n := r.vs.ActiveLeases(); n != 0 {
		t.Errorf("%d leases active after Close", n)
	}
}

// A token that can be neither renewed nor replaced is an error naming the
// Vault address and path before the token (and its leases) end.
func TestTokenCannotRenewFailsBeforeEnd(t *testing.T) {
	r := newVRig(t)
	admin := r.pg.DB()
	r.vs.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: admin, TTL: time.Minute, MaxTTL: time.Hour})
	tok := r.vs.CreateToken(vaulttest.TokenOptions{TTL: 3 * time.Second, Policies: []string{"root"}})
	r.hide(tok)
	t.Setenv("VAULT_TOKEN", tok)
	start := time.Now()
	db, c := r.open(r.dsn("database/creds/app", ""))
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	if exp := c.Stats().Expires; time.Until(exp) > 3*time.Second {
		t.Errorf("the lease ends in %s, beyond its token's end", time.Until(exp))
	}
	var err error
	testkit.Eventually(t, "the token error", func() bool {
		_, err = c.Refresh(context.Background())
		return err != nil
	})
	t.Logf("after %s: %v", time.Since(start).Round(time.Millisecond), err)
	if !errors.Is(err, pgsecrets.ErrAccessDenied) || !strings.Contains(err.Error(), "neither be renewed nor replaced") {
		t.Fatalf("Refresh near the token's end: %v", err)
	}
	for _, want := range []string{r.vs.URL(), "database/creds/app"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	r.noSecret(err)
	if !time.Now().Before(c.Stats().Expires) {
		t.Error("the error came only after the lease had ended")
	}
}

// A renewable token is renewed (not replaced) as it goes.
func TestTokenRenewed(t *testing.T) {
	r := newVRig(t)
	r.vs.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: r.pg.DB(), TTL: 2 * time.Second, MaxTTL: time.Minute})
	tok := r.vs.CreateToken(vaulttest.TokenOptions{TTL: 2 * time.Second, Renewable: true, Policies: []string{"root"}})
	r.hide(tok)
	t.Setenv("VAULT_TOKEN", tok)
	db, _ := r.open(r.dsn("database/creds/app", ""))
	db.SetConnMaxLifetime(250 * time.Millisecond)
	l := startLoad(t, db, 4)
	l.WaitQueries(t, 50)
	testkit.Eventually(t, "two token renewals", func() bool { return r.vs.Calls(vaulttest.OpTokenRenew) >= 2 })
	testkit.During(3*time.Second, 100*time.Millisecond, func() {}) // past the token's first TTL
	l.WaitQueries(t, 50)
	l.AssertNoFailures(t)
}

// Errors are classified, name the address and path, and carry no token.
func TestVaultErrors(t *testing.T) {
	r := newVRig(t)
	r.vs.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: r.pg.DB(), TTL: time.Minute})
	r.vs.SetPolicy("kvonly", "secret/data/*")
	limited := r.vs.CreateToken(vaulttest.TokenOptions{Policies: []string{"kvonly"}})
	r.hide(limited)

	ping := func(dsn string) error {
		t.Helper()
		db, _ := r.open(dsn)
		err := db.Ping()
		r.noSecret(err)
		return err
	}
	if err := ping(r.dsn("database/creds/nosuch", "")); !errors.Is(err, pgsecrets.ErrSecretNotFound) {
		t.Errorf("unknown role: %v", err)
	}
	if err := ping(r.dsn("secret/data/missing", "")); !errors.Is(err, pgsecrets.ErrSecretNotFound) || !strings.Contains(err.Error(), "secret/data/missing") {
		t.Errorf("missing KV path: %v", err)
	}
	t.Setenv("VAULT_TOKEN", limited)
	err := ping(r.dsn("database/creds/app", ""))
	if !errors.Is(err, pgsecrets.ErrAccessDenied) || !strings.Contains(err.Error(), r.vs.URL()) {
		t.Errorf("denied by policy: %v", err)
	}

	// DSN errors.
	for dsn, key := range map[string]string{
		r.dsn("kv/app", ""): "secret_id",
		r.dsn("database/creds/app", "secret_vault_auth=ldap"):       "secret_vault_auth",
		r.dsn("database/creds/app", "secret_vault_auth=approle"):    "secret_vault_role_id",
		r.dsn("database/creds/app", "secret_vault_auth=kubernetes"): "secret_vault_role",
		r.dsn("database/creds/app", "secret_ttl=bogus"):             "secret_ttl",
	} {
		_, err := pgsecrets.NewConnector(dsn)
		var de *pgsecrets.DSNError
		if !errors.As(err, &de) || de.Key != key {
			t.Errorf("%s: %v, want a DSN error for %s", dsn, err, key)
		}
	}

	// Vault unreachable from the start.
	t.Setenv("VAULT_TOKEN", r.vs.RootToken())
	dead := vaulttest.NewServer()
	dead.Close()
	db, _ := r.open(strings.Replace(r.dsn("database/creds/app", ""), r.vs.URL(), dead.URL(), 1))
	err = db.Ping()
	if !errors.Is(err, pgsecrets.ErrStoreUnavailable) || !strings.Contains(err.Error(), dead.URL()) {
		t.Errorf("Vault down: %v", err)
	}
	r.noSecret(err)
}
