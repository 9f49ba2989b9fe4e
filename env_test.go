package pgsecrets_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/pgsecrets/pgsecrets"
)

// envDSN reaches the shared cluster over verified TLS with credentials
// from the environment.
func envDSN(r *rig, extra string) string {
	return fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=verify-full sslrootcert=%s secret_provider=env %s",
		r.pg.Host(), r.pg.Port(), r.pg.CAFile(), extra)
}

func TestEnvProvider(t *testing.T) {
	r := newRig(t)
	passwords := []string{r.password}
	noneLogged(t, r, &passwords)
	t.Setenv("PGS_TEST_PW", r.password)
	t.Setenv("PGS_TEST_USER", r.role)

	db, c := r.openC(envDSN(r, "secret_id=PGS_TEST_PW secret_username_env=PGS_TEST_USER"))
	db.SetMaxIdleConns(0)
	if got := currentUser(t, db); got != r.role {
		t.Fatalf("logged in as %q", got)
	}
	first := c.Stats().VersionID
	if first == "" {
		t.Error("no version id")
	}

	// A process that changes its own environment: the next authentication
	// failure reads the variables again.
	pw := randomPassword()
	passwords = append(passwords, pw)
	if err := r.pg.SetPassword(context.Background(), r.role, pw); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGS_TEST_PW", pw)
	r.password = pw
	if err := db.Ping(); err != nil {
		t.Fatalf("after the variable changed: %v", err)
	}
	if st := c.Stats(); st.AuthRecovered != 1 || st.VersionID == first {
		t.Errorf("change not picked up through recovery: %+v", st)
	}

	t.Run("username from the DSN", func(t *testing.T) {
		db := r.open(envDSN(r, "user="+r.role+" secret_id=PGS_TEST_PW"))
		if got := currentUser(t, db); got != r.role {
			t.Errorf("logged in as %q", got)
		}
	})
	t.Run("missing variable", func(t *testing.T) {
		for _, dsn := range []string{
			"secret_id=PGS_TEST_NEVER_SET secret_username_env=PGS_TEST_USER",
			"secret_id=PGS_TEST_PW secret_username_env=PGS_TEST_NEVER_SET_USER",
		} {
			err := r.open(envDSN(r, dsn)).Ping()
			name := "PGS_TEST_NEVER_SET"
			if strings.Contains(dsn, "NEVER_SET_USER") {
				name = "PGS_TEST_NEVER_SET_USER"
			}
			var se *pgsecrets.SecretError
			if !errors.Is(err, pgsecrets.ErrSecretNotFound) || !errors.As(err, &se) || !strings.Contains(err.Error(), name) {
				t.Errorf("%s: got %v, want ErrSecretNotFound naming %s", dsn, err, name)
			}
			if msg := fmt.Sprintf("%v %+v %#v", err, err, err); strings.Contains(msg, pw) || strings.Contains(msg, r.role+"=") {
				t.Errorf("error prints a value: %s", msg)
			}
		}
	})
	t.Run("no username", func(t *testing.T) {
		for _, dsn := range []string{"secret_id=PGS_TEST_PW", "secret_id=PGS_TEST_PW secret_username_env="} {
			_, err := pgsecrets.NewConnector(envDSN(r, dsn))
			var de *pgsecrets.DSNError
			if !errors.Is(err, pgsecrets.ErrInvalidDSN) || !errors.As(err, &de) || de.Key != "secret_username_env" {
				t.Errorf("%s: got %v, want a DSN error on secret_username_env", dsn, err)
			}
		}
	})
	t.Run("key of another provider", func(t *testing.T) {
		_, err := pgsecrets.ParseDSN("secret_provider=file secret_id=/x secret_username_env=U")
		if !errors.Is(err, pgsecrets.ErrInvalidDSN) || !strings.Contains(err.Error(), "secret_provider=env") {
			t.Errorf("got %v, want a DSN error naming the env provider", err)
		}
	})
}

// The env provider is unstaged, and connectors share a cache only if they
// take the username from the same place.
func TestEnvProviderInterfaces(t *testing.T) {
	t.Setenv("PGS_TEST_PW", "pw-unit")
	t.Setenv("PGS_TEST_USER", "bob")
	key := func(dsn string) string {
		t.Helper()
		p, _, err := pgsecrets.NewProviderForTest(dsn)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := p.(pgsecrets.Staged); ok {
			t.Error("env provider claims a pending stage")
		}
		k, ok := p.(pgsecrets.CacheKeyer)
		if !ok {
			t.Fatal("env provider is not a CacheKeyer")
		}
		return k.CacheKey()
	}
	a := key("secret_provider=env secret_id=PGS_TEST_PW user=alice")
	b := key("secret_provider=env secret_id=PGS_TEST_PW user=bob")
	e := key("secret_provider=env secret_id=PGS_TEST_PW secret_username_env=PGS_TEST_USER")
	if a == b || a == e || b == e || a != key("secret_provider=env secret_id=PGS_TEST_PW user=alice") {
		t.Errorf("cache keys %q %q %q", a, b, e)
	}

	p, _, _ := pgsecrets.NewProviderForTest("secret_provider=env secret_id=PGS_TEST_PW secret_username_env=PGS_TEST_USER")
	c1, err := p.Fetch(context.Background(), "AWSCURRENT")
	if err != nil || c1.Username != "bob" || c1.Password.Reveal() != "pw-unit" || c1.VersionID == "" ||
		strings.Contains(c1.VersionID, "pw-unit") {
		t.Fatalf("%+v %v", c1, err)
	}
	if c2, _ := p.Fetch(context.Background(), "AWSCURRENT"); c2 != c1 {
		t.Error("unchanged variables gave new credentials")
	}
	t.Setenv("PGS_TEST_PW", "pw-unit-2")
	if c3, _ := p.Fetch(context.Background(), "AWSCURRENT"); c3.VersionID == c1.VersionID || c3.Password.Reveal() != "pw-unit-2" {
		t.Errorf("changed variable: %+v", c3)
	}
}
