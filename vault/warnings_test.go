package vault_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

// A Vault reached over plain http on a host that is not loopback, or over
// https with VAULT_SKIP_VERIFY, gets one warning per connector, at
// construction (the hosts here resolve nowhere: the warning must not wait
// for an answer), naming the host without userinfo and never the token or
// secret id. https with verification and loopback get none.
func TestUnprotectedVaultWarnings(t *testing.T) {
	r := newVRig(t)
	tok := r.vs.CreateToken(vaulttest.TokenOptions{Policies: []string{"root"}})
	r.hide(tok)
	t.Setenv("VAULT_TOKEN", tok)
	user, pw := r.role()
	r.vs.PutKV("secret", "app", map[string]any{"username": user, "password": pw})
	secretID := "sid-" + testkit.RandomPassword()
	r.hide(secretID)
	r.vs.AddAppRole("approle", "app", "role-app", secretID, vaulttest.TokenOptions{TTL: time.Hour, Policies: []string{"root"}})
	sidFile := filepath.Join(t.TempDir(), "sid")
	if err := os.WriteFile(sidFile, []byte(secretID), 0o600); err != nil {
		t.Fatal(err)
	}
	approle := "secret_vault_auth=approle secret_vault_role_id=role-app secret_vault_secret_id_file=" + sidFile

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
	// if ping, it pings three times (logging in anew each time) and
	// checks that none was added, and returns the last ping's error.
	open := func(t *testing.T, dsn string, want int, ping bool) ([]string, error) {
		t.Helper()
		before := len(lines())
		db, _ := r.open(dsn)
		got := lines()[before:]
		if len(got) != want {
			t.Fatalf("%d warnings at construction, want %d: %q", len(got), want, got)
		}
		if !ping {
			return got, nil
		}
		db.SetMaxIdleConns(0)
		var err error
		for range 3 {
			err = db.Ping()
		}
		r.noSecret(err)
		if n := len(lines()) - before; n != want {
			t.Errorf("%d warnings after three pings, want %d", n, want)
		}
		return got, err
	}
	at := func(addr, extra string) string {
		return strings.Replace(r.dsn("secret/data/app", extra), "secret_endpoint="+r.vs.URL(), "secret_endpoint="+addr, 1)
	}
	fromEnv := func(extra string) string {
		return strings.Replace(r.dsn("secret/data/app", extra), "secret_endpoint="+r.vs.URL(), "", 1)
	}
	has := func(t *testing.T, line string, want ...string) {
		t.Helper()
		for _, w := range want {
			if !strings.Contains(line, w) {
				t.Errorf("warning lacks %q: %s", w, line)
			}
		}
	}

	t.Run("http remote", func(t *testing.T) {
		for _, extra := range []string{"", approle} {
			got, err := open(t, at("http://vault.example.invalid:8200", extra), 1, true)
			if !errors.Is(err, pgsecrets.ErrStoreUnavailable) {
				t.Fatalf("ping: %v, want ErrStoreUnavailable", err)
			}
			has(t, got[0], "level=WARN", "store=Vault", "host=vault.example.invalid:8200", "secret_id=secret/data/app", "https://")
		}
	})
	t.Run("once per connector", func(t *testing.T) {
		before := len(lines())
		for range 2 {
			open(t, at("http://vault.example.invalid:8200", ""), 1, true)
		}
		if n := len(lines()) - before; n != 2 {
			t.Errorf("%d warnings for two connectors", n)
		}
	})
	t.Run("userinfo never shown", func(t *testing.T) {
		upw := testkit.RandomPassword()
		r.hide(upw)
		got, err := open(t, at("http://ops:"+upw+"@vault.example.invalid:8200", ""), 1, true)
		has(t, got[0], "host=vault.example.invalid:8200")
		if strings.Contains(got[0], "ops") {
			t.Errorf("warning: %s", got[0])
		}
		if err == nil || !strings.Contains(err.Error(), "http://vault.example.invalid:8200") {
			t.Errorf("the error does not name the address: %v", err)
		}
		r.noSecret(err)
	})
	t.Run("VAULT_ADDR and VAULT_AGENT_ADDR", func(t *testing.T) {
		t.Setenv("VAULT_ADDR", "http://10.20.30.40:8200")
		got, _ := open(t, fromEnv(""), 1, false) // an address that may route: not contacted
		has(t, got[0], "host=10.20.30.40:8200")
		// vault/api sends requests to the agent when both are set.
		t.Setenv("VAULT_ADDR", r.vs.URL())
		t.Setenv("VAULT_AGENT_ADDR", "http://agent.example.invalid:8100")
		got, _ = open(t, fromEnv(""), 1, true)
		has(t, got[0], "host=agent.example.invalid:8100")
		// secret_endpoint wins over both.
		if _, err := open(t, r.dsn("secret/data/app", ""), 0, true); err != nil {
			t.Errorf("secret_endpoint with VAULT_AGENT_ADDR set: %v", err)
		}
	})
	t.Run("VAULT_SKIP_VERIFY", func(t *testing.T) {
		for _, v := range []string{"true", "1", "TRUE"} {
			t.Setenv("VAULT_SKIP_VERIFY", v)
			got, _ := open(t, at("https://vault.example.invalid:8200", approle), 1, true)
			has(t, got[0], "host=vault.example.invalid:8200", "VAULT_SKIP_VERIFY")
		}
		t.Setenv("VAULT_SKIP_VERIFY", "false")
		open(t, at("https://vault.example.invalid:8200", ""), 0, true)
	})
	t.Run("https and loopback", func(t *testing.T) {
		open(t, at("https://vault.example.invalid:8200", ""), 0, true)
		port := r.vs.URL()[strings.LastIndexByte(r.vs.URL(), ':')+1:]
		for _, addr := range []string{r.vs.URL(), "http://localhost:" + port, "http://LocalHost:" + port} {
			if _, err := open(t, at(addr, approle), 0, true); err != nil {
				t.Errorf("%s: %v", addr, err)
			}
		}
		for _, addr := range []string{"http://[::1]:1", "http://127.1.2.3:1"} {
			open(t, at(addr, ""), 0, false)
		}
		t.Setenv("VAULT_ADDR", "unix:///run/vault-agent.sock") // secret_endpoint takes only http(s)
		open(t, fromEnv(""), 0, false)
		// Loopback is exempt whatever the TLS settings: nothing lies
		// between.
		t.Setenv("VAULT_SKIP_VERIFY", "true")
		if _, err := open(t, at(r.vs.URL(), ""), 0, true); err != nil {
			t.Error(err)
		}
	})
	t.Run("a name is not resolved", func(t *testing.T) {
		open(t, at("http://localhost.example.invalid:8200", ""), 1, true)
	})

	out := r.logs.String()
	for _, s := range []string{tok, secretID, r.vs.RootToken()} {
		if strings.Contains(out, s) {
			t.Errorf("a token or secret id (%d bytes) was logged", len(s))
		}
	}
	if !strings.Contains(out, "secret fetched") {
		t.Error("no fetch succeeded: the loopback cases did not reach Vault")
	}
}
