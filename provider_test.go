package pgsecrets

import (
	"github.com/pgsecrets/pgsecrets/internal/engine"

	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// testProvider is registered for the DSN tests only.
type testProvider struct{}

func (testProvider) Fetch(context.Context, string) (*Credentials, error) {
	return nil, &SecretError{Kind: ErrSecretNotFound, SecretID: "t"}
}

func init() {
	RegisterProvider("dsntest", func(context.Context, *Config) (Provider, error) { return testProvider{}, nil },
		"secret_dsntest_mode")
}

func TestProviderDSN(t *testing.T) {
	cfg, err := ParseDSN("host=db secret_provider=dsntest secret_id=x secret_dsntest_mode='a b' secret_dsntest_mode=c")
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := cfg.ProviderParam("secret_dsntest_mode"); !ok || v != "c" {
		t.Errorf("ProviderParam = %q, %v; want the last value, c", v, ok)
	}
	again, err := ParseDSN(cfg.FormatDSN())
	if err != nil {
		t.Fatalf("FormatDSN %q does not parse: %v", cfg.FormatDSN(), err)
	}
	if again.FormatDSN() != cfg.FormatDSN() || again.Provider != "dsntest" {
		t.Errorf("round trip: %q then %q", cfg.FormatDSN(), again.FormatDSN())
	}
	if cfg.Region != "" {
		t.Errorf("region %q for a provider that is not awssm", cfg.Region)
	}
	if ps := providerNames(); !strings.Contains(strings.Join(ps, ","), "awssm") || !strings.Contains(strings.Join(ps, ","), "dsntest") {
		t.Errorf("providerNames() = %v", ps)
	}
}

func TestProviderDSNErrors(t *testing.T) {
	cases := []struct {
		dsn, key string
		want     []string
	}{
		{"secret_provider=vault secret_id=database/creds/app", keyProvider,
			[]string{`"vault" is not a registered provider`, "awssm", `import _ "github.com/pgsecrets/pgsecrets/vault"`}},
		{"secret_provider=nosuch secret_id=x", keyProvider, []string{`"nosuch" is not a registered provider`, "registered: "}},
		{"secret_id=x secret_dsntest_mode=a", "secret_dsntest_mode", []string{"secret_provider=dsntest", "this DSN uses awssm"}},
		{"secret_provider=dsntest secret_id=x secret_typo=1", "secret_typo", []string{"unknown secret key", "secret_dsntest_mode"}},
		{"secret_provider='' secret_id=x", keyProvider, []string{"must not be empty"}},
	}
	for _, tc := range cases {
		_, err := ParseDSN(tc.dsn)
		var de *DSNError
		if !errors.As(err, &de) || de.Key != tc.key || !errors.Is(err, ErrInvalidDSN) {
			t.Errorf("%q: err = %v, want a DSNError for %s", tc.dsn, err, tc.key)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: %q does not say %q", tc.dsn, err, w)
			}
		}
	}
	// NewConnector gives the same error.
	if _, err := NewConnector("secret_provider=vault secret_id=database/creds/app"); !errors.Is(err, ErrInvalidDSN) {
		t.Errorf("NewConnector: %v", err)
	}
}

func TestRegisterProviderPanics(t *testing.T) {
	f := func(context.Context, *Config) (Provider, error) { return testProvider{}, nil }
	for name, reg := range map[string]func(){
		"duplicate":  func() { RegisterProvider("dsntest", f) },
		"empty name": func() { RegisterProvider("", f) },
		"core key":   func() { RegisterProvider("other", f, "secret_ttl") },
		"bad key":    func() { RegisterProvider("other2", f, "mode") },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: RegisterProvider did not panic", name)
				}
			}()
			reg()
		}()
	}
}

func TestEngineDSNErrors(t *testing.T) {
	_, err := NewConnector("secret_id=x secret_driver=pgx secret_endpoint=http://127.0.0.1:1 secret_region=us-east-1")
	var de *DSNError
	if !errors.As(err, &de) || de.Key != keyDriver || !strings.Contains(err.Error(), `import _ "github.com/pgsecrets/pgsecrets/pgxsecrets"`) ||
		!strings.Contains(err.Error(), "registered: pq") {
		t.Errorf("secret_driver=pgx without the import: %v", err)
	}
	cfg, err := ParseDSN("secret_id=x secret_driver=pgx")
	if err != nil || cfg.Driver != "pgx" || !strings.Contains(cfg.FormatDSN(), "secret_driver=pgx") {
		t.Errorf("ParseDSN: %+v, %v", cfg, err)
	}
}

// Providers and engines share one registry shape: the same errors for an
// unknown name (naming the import that registers a known one) and the same
// refusal of a second registration.
func TestRegistriesShareOneShape(t *testing.T) {
	_, err := NewConnector("secret_id=x secret_region=eu-west-1 secret_driver=pgx")
	var de *DSNError
	if !errors.As(err, &de) || de.Key != keyDriver || !strings.Contains(err.Error(), `"pgx" is not a registered engine`) ||
		!strings.Contains(err.Error(), `import _ "github.com/pgsecrets/pgsecrets/pgxsecrets"`) || !strings.Contains(err.Error(), "registered: pq") {
		t.Errorf("unknown engine: %v", err)
	}
	for what, register := range map[string]func(){
		"provider": func() { RegisterProvider(DefaultProvider, newAWSProvider) },
		"engine":   func() { engine.Register(engine.Default, newPQEngine) },
	} {
		func() {
			defer func() {
				if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), what+` "`) || !strings.Contains(fmt.Sprint(r), "registered twice") {
					t.Errorf("%s registered twice: panic %v", what, r)
				}
			}()
			register()
		}()
	}
}
