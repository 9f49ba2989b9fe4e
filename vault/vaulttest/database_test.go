package vaulttest_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

func TestCredsCreateRoleThatLogsIn(t *testing.T) {
	t.Parallel()
	cl, db := adminDB(t)
	s := vaulttest.Start(t)
	s.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{
		DB:     db,
		TTL:    time.Minute,
		MaxTTL: 10 * time.Minute,
		Grants: []string{`GRANT CONNECT ON DATABASE postgres TO {{name}}`},
	})
	c := client(t, s, s.RootToken())
	sec, user, pw := creds(t, c, "database/creds/app")

	if !strings.HasPrefix(sec.LeaseID, "database/creds/app/") {
		t.Errorf("lease_id = %q, want prefix database/creds/app/", sec.LeaseID)
	}
	if sec.LeaseDuration != 60 || !sec.Renewable {
		t.Errorf("lease_duration = %d, renewable = %v; want 60, true", sec.LeaseDuration, sec.Renewable)
	}
	if !strings.HasPrefix(user, "v-token-app-") || len(user) > 63 {
		t.Errorf("username = %q, want v-token-app-<random>, at most 63 bytes", user)
	}
	if len(pw) != 24 {
		t.Errorf("password has %d characters, want 24", len(pw))
	}
	mustLogin(t, cl, user, pw)

	l := lease(t, s, sec.LeaseID)
	if l.Username != user || l.Role != "app" || l.Mount != "database" || l.Revoked {
		t.Errorf("lease = %+v", l)
	}
	if l.TokenAccessor == "" || l.TokenAccessor != s.TokenAccessor(s.RootToken()) {
		t.Errorf("lease owner = %q, want the root token's accessor", l.TokenAccessor)
	}
	wantNear(t, "rolvaliduntil", validUntil(t, db, user), l.Expires.Add(5*time.Second), 1500*time.Millisecond)
	if got := s.ActiveLeases(); got != 1 {
		t.Errorf("ActiveLeases = %d, want 1", got)
	}

	// Two issues make two different roles.
	_, user2, pw2 := creds(t, c, "database/creds/app")
	if user2 == user || pw2 == pw {
		t.Errorf("second credentials repeat the first")
	}
	if got := len(s.Leases()); got != 2 {
		t.Errorf("Leases() has %d entries, want 2", got)
	}

	// An unknown role is a 400, as in Vault.
	_, err := c.Logical().ReadWithContext(t.Context(), "database/creds/nope")
	wantErrorText(t, responseError(t, err, 400), "unknown role: nope")

	for _, l := range s.Leases() {
		if err := s.RevokeLease(l.ID); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCredsNamesAreQuoted(t *testing.T) {
	t.Parallel()
	cl, db := adminDB(t)
	s := vaulttest.Start(t)
	name := `o'k"x; DROP`
	s.AddDatabaseRole("db/team", name, vaulttest.DatabaseRole{DB: db, TTL: time.Minute})
	c := client(t, s, s.RootToken())
	sec, user, pw := creds(t, c, "db/team/creds/"+name)
	if !strings.HasPrefix(user, "v-token-"+name) {
		t.Fatalf("username = %q", user)
	}
	mustLogin(t, cl, user, pw)
	if err := c.Sys().RevokeWithContext(t.Context(), sec.LeaseID); err != nil {
		t.Fatal(err)
	}
	if roleExists(t, db, user) {
		t.Fatalf("role %q still exists after revoke", user)
	}
}

func TestCredsFailingGrantLeavesNoRole(t *testing.T) {
	t.Parallel()
	_, db := adminDB(t)
	s := vaulttest.Start(t)
	role := unique("badgrant")
	s.AddDatabaseRole("database", role, vaulttest.DatabaseRole{
		DB:     db,
		Grants: []string{`GRANT no_such_role_anywhere TO {{name}}`},
	})
	c := client(t, s, s.RootToken())
	_, err := c.Logical().ReadWithContext(t.Context(), "database/creds/"+role)
	wantErrorText(t, responseError(t, err, 500), "failed to create credentials")
	var n int
	if err := db.QueryRowContext(t.Context(), "SELECT count(*) FROM pg_roles WHERE rolname LIKE $1",
		"v-token-"+role+"-%").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d roles left behind by the failed grant", n)
	}
	if s.ActiveLeases() != 0 {
		t.Fatalf("a lease was recorded for failed credentials")
	}
}

func TestRenewMovesValidUntilAndCapsAtMaxTTL(t *testing.T) {
	t.Parallel()
	_, db := adminDB(t)
	s := vaulttest.Start(t)
	s.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: db, TTL: 30 * time.Second, MaxTTL: 2 * time.Minute})
	c := client(t, s, s.RootToken())
	sec, user, _ := creds(t, c, "database/creds/app")
	defer s.RevokeLease(sec.LeaseID)

	r, err := c.Sys().RenewWithContext(t.Context(), sec.LeaseID, 60)
	if err != nil {
		t.Fatal(err)
	}
	if r.LeaseID != sec.LeaseID || r.LeaseDuration != 60 || !r.Renewable || len(r.Warnings) != 0 {
		t.Fatalf("renew = lease %q duration %d renewable %v warnings %q", r.LeaseID, r.LeaseDuration, r.Renewable, r.Warnings)
	}
	l := lease(t, s, sec.LeaseID)
	if l.Renewals != 1 || l.LastRenewal.IsZero() {
		t.Fatalf("lease after renew = %+v", l)
	}
	wantNear(t, "rolvaliduntil after renew", validUntil(t, db, user), l.Expires.Add(5*time.Second), 1500*time.Millisecond)

	// Increment 0 means the role's TTL.
	r, err = c.Sys().RenewWithContext(t.Context(), sec.LeaseID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if r.LeaseDuration != 30 {
		t.Fatalf("renew without increment: lease_duration = %d, want 30", r.LeaseDuration)
	}

	// Past MaxTTL: capped at the issue time + MaxTTL, with Vault's warning.
	r, err = c.Sys().RenewWithContext(t.Context(), sec.LeaseID, 3600)
	if err != nil {
		t.Fatal(err)
	}
	if r.LeaseDuration <= 0 || r.LeaseDuration > 120 {
		t.Fatalf("capped renew: lease_duration = %d, want 1..120", r.LeaseDuration)
	}
	if len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], `TTL of "1h0m0s" exceeded the effective max_ttl of "`) ||
		!strings.HasSuffix(r.Warnings[0], "; TTL value is capped accordingly") {
		t.Fatalf("capped renew: warnings = %q", r.Warnings)
	}
	l = lease(t, s, sec.LeaseID)
	if !l.Expires.Equal(l.MaxExpires) || !l.MaxExpires.Equal(l.IssuedAt.Add(2*time.Minute)) {
		t.Fatalf("capped lease: expires %v, max %v, issued %v", l.Expires, l.MaxExpires, l.IssuedAt)
	}
	if l.Renewals != 3 {
		t.Fatalf("renewals = %d, want 3", l.Renewals)
	}
	wantNear(t, "rolvaliduntil after capped renew", validUntil(t, db, user), l.MaxExpires.Add(5*time.Second), 1500*time.Millisecond)

	// The old alias path works too, with a duration string.
	sec2, err := c.Logical().WriteWithContext(t.Context(), "sys/renew", map[string]any{"lease_id": sec.LeaseID, "increment": "10s"})
	if err != nil {
		t.Fatal(err)
	}
	if sec2.LeaseDuration != 10 {
		t.Fatalf("sys/renew: lease_duration = %d, want 10", sec2.LeaseDuration)
	}

	// Lookup reports the lease.
	lk, err := c.Sys().LookupWithContext(t.Context(), sec.LeaseID)
	if err != nil {
		t.Fatal(err)
	}
	if lk.Data["id"] != sec.LeaseID || lk.Data["renewable"] != true || lk.Data["last_renewal"] == nil {
		t.Fatalf("lookup = %v", lk.Data)
	}
	if ttl, err := lk.Data["ttl"].(json.Number).Int64(); err != nil || ttl < 0 || ttl > 10 {
		t.Fatalf("lookup ttl = %v, want 0..10", lk.Data["ttl"])
	}
	for _, k := range []string{"issue_time", "expire_time"} {
		if _, err := time.Parse(time.RFC3339Nano, lk.Data[k].(string)); err != nil {
			t.Fatalf("lookup %s = %v: %v", k, lk.Data[k], err)
		}
	}

	// Unknown leases.
	_, err = c.Sys().RenewWithContext(t.Context(), "database/creds/app/nope", 10)
	wantErrorText(t, responseError(t, err, 400), "lease not found")
	_, err = c.Sys().LookupWithContext(t.Context(), "database/creds/app/nope")
	wantErrorText(t, responseError(t, err, 400), "invalid lease")
}

func TestRevokeDropsRoleButKeepsSessions(t *testing.T) {
	t.Parallel()
	cl, db := adminDB(t)
	s := vaulttest.Start(t)
	s.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: db, TTL: time.Minute})
	c := client(t, s, s.RootToken())
	sec, user, pw := creds(t, c, "database/creds/app")

	// A session opened before the revocation.
	udb, err := openAs(cl, user, pw)
	if err != nil {
		t.Fatal(err)
	}
	defer udb.Close()
	conn, err := udb.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	if err := c.Sys().RevokeWithContext(t.Context(), sec.LeaseID); err != nil {
		t.Fatal(err)
	}
	if roleExists(t, db, user) {
		t.Fatalf("role %s still in pg_roles after revoke", user)
	}
	wantLoginRefused(t, cl, user, pw)
	var one int
	if err := conn.QueryRowContext(t.Context(), "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("the session opened before the revocation was ended: %v", err)
	}
	l := lease(t, s, sec.LeaseID)
	if !l.Revoked || l.RevokedBy != vaulttest.RevokedByRequest || s.ActiveLeases() != 0 {
		t.Fatalf("lease after revoke = %+v", l)
	}

	_, err = c.Sys().RenewWithContext(t.Context(), sec.LeaseID, 10)
	wantErrorText(t, responseError(t, err, 400), "lease not found")
	// Revoking again succeeds, as in Vault.
	if err := c.Sys().RevokeWithContext(t.Context(), sec.LeaseID); err != nil {
		t.Fatalf("second revoke: %v", err)
	}
}

func TestLeaseExpiryRevokesRole(t *testing.T) {
	t.Parallel()
	cl, db := adminDB(t)
	s := vaulttest.Start(t)
	s.AddDatabaseRole("database", "short", vaulttest.DatabaseRole{DB: db, TTL: time.Second})
	c := client(t, s, s.RootToken())
	sec, user, pw := creds(t, c, "database/creds/short")

	l, err := s.WaitLeaseRevoked(waitCtx(t), sec.LeaseID)
	if err != nil {
		t.Fatalf("waiting for expiry: %v", err)
	}
	if l.RevokedBy != vaulttest.RevokedByExpiry || l.RevokedAt.Before(l.Expires) {
		t.Fatalf("lease = %+v, want revoked by expiry after its end", l)
	}
	if roleExists(t, db, user) {
		t.Fatalf("role %s still exists after the lease expired", user)
	}
	wantLoginRefused(t, cl, user, pw)
	_, err = c.Sys().RenewWithContext(t.Context(), sec.LeaseID, 10)
	wantErrorText(t, responseError(t, err, 400), "lease not found")
}

func TestTokenExpiryRevokesItsLeases(t *testing.T) {
	t.Parallel()
	_, db := adminDB(t)
	s := vaulttest.Start(t)
	s.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: db, TTL: time.Hour})
	s.SetPolicy("creds", "database/creds/*")
	tok := s.CreateToken(vaulttest.TokenOptions{TTL: 3 * time.Second, Policies: []string{"creds"}})
	c := client(t, s, tok)
	sec, user, _ := creds(t, c, "database/creds/app")
	if got := lease(t, s, sec.LeaseID).TokenAccessor; got != s.TokenAccessor(tok) {
		t.Fatalf("lease owner %q, want %q", got, s.TokenAccessor(tok))
	}

	l, err := s.WaitLeaseRevoked(waitCtx(t), sec.LeaseID)
	if err != nil {
		t.Fatalf("waiting for the token's expiry: %v", err)
	}
	if l.RevokedBy != vaulttest.RevokedByToken {
		t.Fatalf("revoked by %q, want %q", l.RevokedBy, vaulttest.RevokedByToken)
	}
	if roleExists(t, db, user) {
		t.Fatalf("role %s outlived its token", user)
	}
	_, err = c.Auth().Token().LookupSelfWithContext(t.Context())
	wantErrorText(t, responseError(t, err, 403), "permission denied")
}

func TestRevokingTokensRevokesTheirLeases(t *testing.T) {
	t.Parallel()
	_, db := adminDB(t)
	s := vaulttest.Start(t)
	s.AddDatabaseRole("database", "app", vaulttest.DatabaseRole{DB: db, TTL: time.Hour})
	s.SetPolicy("creds", "database/creds/app")

	// revoke-self over the API.
	tok := s.CreateToken(vaulttest.TokenOptions{TTL: time.Hour, Policies: []string{"creds"}})
	c := client(t, s, tok)
	sec, user, _ := creds(t, c, "database/creds/app")
	if err := c.Auth().Token().RevokeSelfWithContext(t.Context(), ""); err != nil {
		t.Fatal(err)
	}
	if l := lease(t, s, sec.LeaseID); !l.Revoked || l.RevokedBy != vaulttest.RevokedByToken {
		t.Fatalf("lease after revoke-self = %+v", l)
	}
	if roleExists(t, db, user) {
		t.Fatalf("role %s outlived revoke-self", user)
	}
	_, err := c.Logical().ReadWithContext(t.Context(), "database/creds/app")
	responseError(t, err, 403)

	// RevokeToken from Go.
	tok2 := s.CreateToken(vaulttest.TokenOptions{Policies: []string{"creds"}})
	c2 := client(t, s, tok2)
	sec2, user2, _ := creds(t, c2, "database/creds/app")
	sec3, user3, _ := creds(t, c2, "database/creds/app")
	if err := s.RevokeToken(tok2); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{sec2.LeaseID, sec3.LeaseID} {
		if l := lease(t, s, id); l.RevokedBy != vaulttest.RevokedByToken {
			t.Fatalf("lease %s after RevokeToken = %+v", id, l)
		}
	}
	if roleExists(t, db, user2) || roleExists(t, db, user3) {
		t.Fatalf("roles outlived RevokeToken")
	}
	if s.ActiveLeases() != 0 {
		t.Fatalf("ActiveLeases = %d, want 0", s.ActiveLeases())
	}
	if err := s.RevokeToken(s.RootToken()); err == nil {
		t.Fatalf("revoking the root token succeeded")
	}
}

func TestStaticCreds(t *testing.T) {
	t.Parallel()
	cl, db := adminDB(t)
	user := unique("static")
	if err := cl.CreateRole(t.Context(), user, "initial-password"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.DropRole(t.Context(), user) })
	mustLogin(t, cl, user, "initial-password")

	s := vaulttest.Start(t)
	if err := s.AddStaticRole("database", "static", vaulttest.StaticRole{DB: db, Username: user, RotationPeriod: time.Hour}); err != nil {
		t.Fatal(err)
	}
	wantLoginRefused(t, cl, user, "initial-password") // replaced at once

	c := client(t, s, s.RootToken())
	sec, err := c.Logical().ReadWithContext(t.Context(), "database/static-creds/static")
	if err != nil {
		t.Fatal(err)
	}
	pw, _ := sec.Data["password"].(string)
	if sec.Data["username"] != user || pw == "" || pw != s.StaticPassword("database", "static") {
		t.Fatalf("static-creds = %v", sec.Data)
	}
	if sec.LeaseID != "" || sec.LeaseDuration != 0 || sec.Renewable {
		t.Fatalf("static-creds has a lease: %q %d %v", sec.LeaseID, sec.LeaseDuration, sec.Renewable)
	}
	if n, _ := sec.Data["rotation_period"].(json.Number).Int64(); n != 3600 {
		t.Fatalf("rotation_period = %v, want 3600", sec.Data["rotation_period"])
	}
	if n, _ := sec.Data["ttl"].(json.Number).Int64(); n <= 0 || n > 3600 {
		t.Fatalf("ttl = %v, want 1..3600", sec.Data["ttl"])
	}
	if _, err := time.Parse(time.RFC3339, sec.Data["last_vault_rotation"].(string)); err != nil {
		t.Fatalf("last_vault_rotation: %v", err)
	}
	mustLogin(t, cl, user, pw)

	// rotate-role over the API.
	if _, err := c.Logical().WriteWithContext(t.Context(), "database/rotate-role/static", nil); err != nil {
		t.Fatal(err)
	}
	pw2 := s.StaticPassword("database", "static")
	if pw2 == pw {
		t.Fatalf("rotate-role kept the password")
	}
	wantLoginRefused(t, cl, user, pw)
	mustLogin(t, cl, user, pw2)

	// And from Go.
	if err := s.RotateStaticRole("database", "static"); err != nil {
		t.Fatal(err)
	}
	wantLoginRefused(t, cl, user, pw2)
	mustLogin(t, cl, user, s.StaticPassword("database", "static"))
	if n := s.StaticRotations("database", "static"); n != 3 {
		t.Fatalf("StaticRotations = %d, want 3", n)
	}

	_, err = c.Logical().ReadWithContext(t.Context(), "database/static-creds/nope")
	wantErrorText(t, responseError(t, err, 400), "unknown role")
}

func TestStaticRotationBySchedule(t *testing.T) {
	t.Parallel()
	cl, db := adminDB(t)
	user := unique("rotating")
	if err := cl.CreateRole(t.Context(), user, "x"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.DropRole(t.Context(), user) })
	s := vaulttest.Start(t)
	if err := s.AddStaticRole("database", "fast", vaulttest.StaticRole{DB: db, Username: user, RotationPeriod: time.Second}); err != nil {
		t.Fatal(err)
	}
	first := s.StaticPassword("database", "fast")
	if err := s.WaitStaticRotations(waitCtx(t), "database", "fast", 2); err != nil {
		t.Fatalf("waiting for the scheduled rotation: %v", err)
	}
	c := client(t, s, s.RootToken())
	sec, err := c.Logical().ReadWithContext(t.Context(), "database/static-creds/fast")
	if err != nil {
		t.Fatal(err)
	}
	if sec.Data["password"] == first {
		t.Fatalf("the scheduled rotation kept the password")
	}
	if n, _ := sec.Data["ttl"].(json.Number).Int64(); n < 0 || n > 1 {
		t.Fatalf("ttl = %v, want 0..1", sec.Data["ttl"])
	}
	wantLoginRefused(t, cl, user, first)
}
