package pgsecrets

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/lib/pq"
)

// FuzzParseDSN: any input gives a Config or a DSNError, never a panic; a
// parsed DSN formats back to one that parses to the same Config; the DSN
// password never appears in errors or formatted output; lib/pq accepts
// what we hand it whenever it accepts the user's DSN.
func FuzzParseDSN(f *testing.F) {
	for _, s := range []string{
		"postgres://app:pw@db:5432/x?secret_id=s&sslmode=verify-full",
		"postgresql://[::1]:5432/x?secret_id=s&secret_ttl=1m",
		"postgres://h1:1,h2:2/db?secret_id=s",
		"host=db secret_id=s password=pw",
		`host=db application_name='it\'s' secret_id='a b'`,
		`host=db\ x secret_id=s\\`,
		"host = db secret_id = s secret_ttl = 5m",
		"secret_id=s secret_max_stale=1h secret_retry_window=3s",
		"host=a host=b secret_id=s secret_id=t",
		"application_name=日本語 secret_id=ß",
		"secret_id=s secret_bogus=1",
		"'", "=", "a=", "a='", `a=\`, "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, dsn string) {
		cfg, err := ParseDSN(dsn)
		if err != nil {
			if !errors.Is(err, ErrInvalidDSN) {
				t.Fatalf("error %v is not ErrInvalidDSN", err)
			}
			return
		}
		pw := cfg.Password.Reveal()
		out := cfg.FormatDSN()
		again, err := ParseDSN(out)
		if err != nil {
			t.Fatalf("FormatDSN output %q does not parse: %v", out, err)
		}
		if pw != "" && pw != redacted {
			// The output must not depend on the password (it may occur by
			// chance in other values, as in secret_id='password=0').
			other := *cfg
			other.Password = NewSecret(pw + "x")
			if again.Password.Reveal() == pw || other.FormatDSN() != out {
				t.Fatalf("FormatDSN shows the password: %s", out)
			}
			pairs, err := parseKeyValue(cfg.pqDSN(noEnv))
			if err != nil {
				t.Fatalf("the DSN for lib/pq does not parse: %v", err)
			}
			for _, p := range pairs {
				if p.Key == "password" {
					t.Fatalf("password handed to lib/pq in the DSN")
				}
			}
			// Print the Config with and without its password: the text must
			// be the same (the password may occur by chance in other fields).
			bare := *cfg
			bare.Password = NewSecret("x")
			for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
				if fmt.Sprintf(verb, cfg) != fmt.Sprintf(verb, &bare) {
					t.Fatalf("%s output depends on the password", verb)
				}
			}
		}
		a, b := *cfg, *again
		a.set, b.set, a.Password, b.Password = nil, nil, Secret{}, Secret{}
		if len(a.Params) == 0 {
			a.Params = nil
		}
		if len(b.Params) == 0 {
			b.Params = nil
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("round trip differs:\n in  %q\n out %q\n a %+v\n b %+v", dsn, out, a, b)
		}
		if (cfg.Password.IsZero()) != (again.Password.IsZero()) {
			t.Fatalf("password presence lost in round trip")
		}
		_, _ = pq.NewConfig(cfg.pqDSN(noEnv)) // must not panic
	})
}

// FuzzParseSecret: any secret content gives credentials or a malformed
// secret error that does not contain the content.
func FuzzParseSecret(f *testing.F) {
	for _, s := range []string{
		`{"username":"app","password":"pw"}`,
		`{"username":"app","password":"pw","host":"h","port":5432,"dbname":"d","engine":"postgres"}`,
		`{"username":"app","password":"pw","port":"5432"}`,
		`{"username":"app","password":"pw","port":1e3}`,
		`{"username":"app","password":null}`,
		`{"username":"app","password":"pw","username":"dup"}`,
		`{"username":"\u0000","password":"\ud800"}`,
		`[]`, `"x"`, `{`, ``, `{"a":`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data string) {
		c, err := ParseSecret("fuzz", data, "username", "password")
		if err != nil {
			var se *SecretError
			if !errors.As(err, &se) || se.Kind != ErrMalformedSecret {
				t.Fatalf("unexpected error type %T: %v", err, err)
			}
			if len(data) >= 8 && strings.Contains(err.Error(), data) {
				t.Fatalf("error echoes the secret: %v", err)
			}
			return
		}
		if c.Username == "" || c.Password.IsZero() {
			t.Fatalf("accepted without username/password: %q", data)
		}
		// Printed with and without the password, the text is the same.
		other := *c
		other.Password = NewSecret("x")
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
			if fmt.Sprintf(verb, c) != fmt.Sprintf(verb, &other) {
				t.Fatalf("%s output of credentials depends on the password", verb)
			}
		}
	})
}
