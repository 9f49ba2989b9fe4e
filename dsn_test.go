package pgsecrets

import (
	"github.com/pgsecrets/pgsecrets/internal/engine"

	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
)

func TestParseDSNForms(t *testing.T) {
	cases := []struct {
		name, dsn string
		want      []Param
	}{
		{"url", "postgres://app@db.internal:6432/orders?sslmode=verify-full&secret_id=prod/app&application_name=api",
			[]Param{{"user", "app"}, {"host", "db.internal"}, {"port", "6432"}, {"dbname", "orders"}, {"application_name", "api"}, {"sslmode", "verify-full"}}},
		{"postgresql scheme", "postgresql://db/x?secret_id=s", []Param{{"host", "db"}, {"dbname", "x"}}},
		{"key value", "host=db.internal port=6432 dbname=orders secret_id=prod/app sslmode=verify-full",
			[]Param{{"host", "db.internal"}, {"port", "6432"}, {"dbname", "orders"}, {"sslmode", "verify-full"}}},
		{"quoted", `host=db application_name='my app\'s \\ name' secret_id='a b'`,
			[]Param{{"host", "db"}, {"application_name", `my app's \ name`}}},
		{"spaces around =", "host = db  secret_id =  s  dbname=", []Param{{"host", "db"}, {"dbname", ""}}},
		{"duplicate keys: last wins", "host=a host=b secret_id=s", []Param{{"host", "b"}}},
		{"unicode", "application_name=données secret_id=ß", []Param{{"application_name", "données"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseDSN(tc.dsn)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(cfg.Params, tc.want) {
				t.Errorf("params = %v, want %v", cfg.Params, tc.want)
			}
			if cfg.SecretID == "" {
				t.Error("no secret id")
			}
		})
	}
}

func TestParseDSNSecretKeys(t *testing.T) {
	cfg, err := ParseDSN("host=db secret_id=arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app-AbCdEf " +
		"secret_ttl=90s secret_max_stale=1h secret_retry_window=5s secret_version_stage=AWSPREVIOUS " +
		"secret_username_key=user secret_password_key=pass secret_endpoint=http://127.0.0.1:4566")
	if err != nil {
		t.Fatal(err)
	}
	want := Config{SecretID: "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app-AbCdEf", Provider: DefaultProvider, Driver: engine.Default, Region: "eu-west-1",
		Endpoint: "http://127.0.0.1:4566", VersionStage: "AWSPREVIOUS", TTL: 90 * time.Second, MaxStale: time.Hour,
		RetryWindow: 5 * time.Second, UsernameKey: "user", PasswordKey: "pass"}
	got := *cfg
	got.Params, got.set = nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}

	cfg, err = ParseDSN("secret_id=x secret_region=us-west-2")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Region != "us-west-2" || cfg.TTL != DefaultTTL || cfg.MaxStale != DefaultMaxStale ||
		cfg.RetryWindow != DefaultRetryWindow || cfg.VersionStage != "AWSCURRENT" || cfg.UsernameKey != "username" {
		t.Errorf("defaults wrong: %+v", cfg)
	}
}

func TestParseDSNErrors(t *testing.T) {
	cases := []struct{ dsn, key, mention string }{
		{"host=db", "secret_id", "secret_ttl"},
		{"postgres://db/x", "secret_id", "secret_region"},
		{"host=db secret_id=x secret_tll=5m", "secret_tll", "secret_ttl"},
		{"host=db secret_id=x secret_ttl=5 minutes", "", ""},
		{"host=db secret_id=x secret_ttl=soon", "secret_ttl", "duration"},
		{"host=db secret_id=x secret_ttl=0s", "secret_ttl", "positive"},
		{"host=db secret_id=x secret_max_stale=-1m", "secret_max_stale", "negative"},
		{"postgres://db/x?secret_id=x&secret_ttl=abc", "secret_ttl", "duration"},
		{"host=db secret_id=x secret_endpoint=ftp://x", "secret_endpoint", "http"},
		{"host=db secret_id=x secret_password_key=", "secret_password_key", "empty"},
		{"host='db", "host", "unterminated"},
		{"host=db secret_id=x hunter2", "", "missing"},
	}
	for _, tc := range cases {
		_, err := ParseDSN(tc.dsn)
		if err == nil {
			t.Errorf("%q: no error", tc.dsn)
			continue
		}
		if !errors.Is(err, ErrInvalidDSN) {
			t.Errorf("%q: %v is not ErrInvalidDSN", tc.dsn, err)
		}
		var de *DSNError
		if !errors.As(err, &de) || de.Key != tc.key {
			t.Errorf("%q: key %q, want %q (%v)", tc.dsn, de.Key, tc.key, err)
		}
		if !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%q: %q does not mention %q", tc.dsn, err, tc.mention)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%q: error echoes a possible password: %v", tc.dsn, err)
		}
	}
}

func TestParseDSNPasswordNeverPrinted(t *testing.T) {
	for _, dsn := range []string{
		"postgres://app:hunter2@db/x?secret_id=s",
		"host=db password=hunter2 secret_id=s",
		"host=db password='hunter2' secret_id=s",
	} {
		cfg, err := ParseDSN(dsn)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Password.Reveal() != "hunter2" {
			t.Fatalf("password not captured from %q", dsn)
		}
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
			if s := fmt.Sprintf(verb, cfg); strings.Contains(s, "hunter2") {
				t.Errorf("%s of Config leaks: %s", verb, s)
			}
			if s := fmt.Sprintf(verb, *cfg); strings.Contains(s, "hunter2") {
				t.Errorf("%s of Config value leaks: %s", verb, s)
			}
		}
		if s := cfg.pqDSN(noEnv); strings.Contains(s, "hunter2") {
			t.Errorf("password handed to lib/pq in the DSN: %s", s)
		}
	}
}

func noEnv(string) string { return "" }

func TestFormatDSNRoundTrip(t *testing.T) {
	for _, dsn := range []string{
		"postgres://app:pw@db.internal:6432/orders?sslmode=verify-full&secret_id=prod/app&secret_ttl=1m",
		`host=db application_name='a b\'c' options='-c search_path=x' secret_id='with space' secret_region=eu-west-1 secret_max_stale=2h`,
		"host=/var/run/postgresql dbname='' secret_id=arn:aws:secretsmanager:us-east-2:1:secret:x-abcdef secret_retry_window=0s",
	} {
		a, err := ParseDSN(dsn)
		if err != nil {
			t.Fatal(err)
		}
		out := a.FormatDSN()
		b, err := ParseDSN(out)
		if err != nil {
			t.Fatalf("formatted DSN %q does not parse: %v", out, err)
		}
		if strings.Contains(out, "pw@") || strings.Contains(out, "password=pw") {
			t.Errorf("formatted DSN shows the password: %s", out)
		}
		a.set, b.set = nil, nil
		if !a.Password.IsZero() {
			if b.Password.Reveal() != redacted {
				t.Errorf("password not redacted in %q", out)
			}
			a.Password, b.Password = Secret{}, Secret{}
		}
		if !reflect.DeepEqual(a, b) {
			t.Errorf("round trip of %q\n via %q\n got  %+v\n want %+v", dsn, out, b, a)
		}
	}
}

// The DSN handed to lib/pq must configure lib/pq exactly as the user's DSN
// would without the secret_* keys (and with sslmode=require by default).
func TestPQDSNEquivalent(t *testing.T) {
	cases := []struct{ ours, plain string }{
		{"postgres://app@db:6432/orders?sslmode=verify-full&secret_id=s&connect_timeout=5",
			"postgres://app@db:6432/orders?sslmode=verify-full&connect_timeout=5"},
		{"host=db dbname=x secret_id=s application_name='a b'", "host=db dbname=x application_name='a b' sslmode=require"},
		{"host=db1,db2 port=1,2 secret_id=s sslmode=disable", "host=db1,db2 port=1,2 sslmode=disable"},
		{"host=db sslrootcert=system secret_id=s", "host=db sslrootcert=system"},
	}
	for _, tc := range cases {
		cfg, err := ParseDSN(tc.ours)
		if err != nil {
			t.Fatal(err)
		}
		got, err := pq.NewConfig(cfg.pqDSN(noEnv))
		if err != nil {
			t.Fatalf("%q: lib/pq rejects %q: %v", tc.ours, cfg.pqDSN(noEnv), err)
		}
		want, err := pq.NewConfig(tc.plain)
		if err != nil {
			t.Fatal(err)
		}
		if got.Host != want.Host || got.Port != want.Port || got.Database != want.Database || got.User != want.User ||
			got.SSLMode != want.SSLMode || got.ApplicationName != want.ApplicationName ||
			got.ConnectTimeout != want.ConnectTimeout || !reflect.DeepEqual(got.Multi, want.Multi) ||
			!reflect.DeepEqual(got.Runtime, want.Runtime) {
			t.Errorf("%q:\n got  %+v\n want %+v", tc.ours, got, want)
		}
	}
}

func TestPQDSNKeepsSSLKeys(t *testing.T) {
	cfg, err := ParseDSN("host=db secret_id=s sslmode=verify-ca sslrootcert=/ca.pem sslcert=/c.pem sslkey=/k.pem sslsni=0")
	if err != nil {
		t.Fatal(err)
	}
	got := cfg.pqDSN(noEnv)
	for _, kv := range []string{"sslmode=verify-ca", "sslrootcert=/ca.pem", "sslcert=/c.pem", "sslkey=/k.pem", "sslsni=0"} {
		if !strings.Contains(got, kv) {
			t.Errorf("%q missing from %q", kv, got)
		}
	}
	env := func(k string) string {
		if k == "PGSSLMODE" {
			return "verify-full"
		}
		return ""
	}
	cfg, _ = ParseDSN("host=db secret_id=s")
	if s := cfg.pqDSN(env); strings.Contains(s, "sslmode") {
		t.Errorf("PGSSLMODE in the environment should be left to lib/pq, got %q", s)
	}
	if s := cfg.pqDSN(noEnv); !strings.Contains(s, "sslmode=require") {
		t.Errorf("default sslmode not require: %q", s)
	}
}

// An inline private key and sslpassword never print: not in String, any
// fmt verb (of a *Config, a Config, or a struct holding them), slog or
// JSON. FormatDSN and the DSN for the engine keep them, since connectors
// are built from those.
func TestInlineKeyNeverPrinted(t *testing.T) {
	key, body := testkit.PrivateKeyPEM(t)
	// A PEM key without sslinline could never work (lib/pq takes it for a
	// path, and names it in its error): refused, without the key.
	if _, err := ParseDSN("host=db secret_id=s sslcert=/c.pem sslkey=" + quoteValue(key)); err == nil ||
		!strings.Contains(err.Error(), "sslinline") || strings.Contains(err.Error(), body[0]) {
		t.Errorf("PEM sslkey without sslinline: %v", err)
	}
	const passphrase = "key-passphrase-never-printed"
	for _, tc := range []struct {
		name, dsn string
		key       string // sslkey's value
		pass      bool   // the DSN sets sslpassword
	}{
		{"sslinline=true", "host=db secret_id=s sslmode=verify-full sslinline=true sslkey=" + quoteValue(key) + " sslpassword=" + passphrase, key, true},
		{"URL", "postgres://app@db/x?secret_id=s&sslinline=1&sslkey=" + url.QueryEscape(key), key, false},
		{"inline, not PEM", "host=db secret_id=s sslinline=yes sslkey=" + body[0], body[0], false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseDSN(tc.dsn)
			if err != nil {
				t.Fatal(err)
			}
			leaks := func(what, s string) {
				t.Helper()
				if strings.Contains(s, "PRIVATE KEY") || strings.Contains(s, passphrase) || strings.Contains(s, tc.key) {
					t.Errorf("%s shows key material: %s", what, s)
				}
				for _, l := range body {
					if strings.Contains(s, l) {
						t.Errorf("%s shows a line of the key: %s", what, s)
						break
					}
				}
			}
			if s := cfg.String(); !strings.Contains(s, "sslkey="+redacted) || tc.pass != strings.Contains(s, "sslpassword="+redacted) {
				t.Errorf("String() = %s, want sslkey (and sslpassword) [REDACTED]", s)
			}
			holder := struct {
				C Config
				P *Config
			}{*cfg, cfg}
			for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
				for _, v := range []any{cfg, *cfg, holder, &holder} {
					leaks(fmt.Sprintf("%s of %T", verb, v), fmt.Sprintf(verb, v))
				}
			}
			var buf bytes.Buffer
			for _, h := range []slog.Handler{slog.NewTextHandler(&buf, nil), slog.NewJSONHandler(&buf, nil)} {
				slog.New(h).Info("x", "cfg", cfg, "value", *cfg)
			}
			leaks("slog", buf.String())
			for _, v := range []any{cfg, *cfg, holder} {
				js, err := json.Marshal(v)
				if err != nil {
					t.Fatal(err)
				}
				leaks(fmt.Sprintf("JSON of %T", v), string(js))
				if !strings.Contains(string(js), `"sslkey","Value":"`+redacted) {
					t.Errorf("JSON of %T lost the redacted param: %s", v, js)
				}
			}

			// What builds connectors keeps the values.
			again, err := ParseDSN(cfg.FormatDSN())
			if err != nil {
				t.Fatal(err)
			}
			if v, _ := again.param("sslkey"); v != tc.key {
				t.Errorf("FormatDSN lost the key: sslkey=%.20q…", v)
			}
			if v, _ := again.param("sslpassword"); tc.pass && v != passphrase {
				t.Errorf("FormatDSN lost sslpassword")
			}
			pairs, err := parseKeyValue(cfg.pqDSN(noEnv))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(pairs, Param{"sslkey", tc.key}) {
				t.Errorf("the DSN for the engine lost the key")
			}
		})
	}

	// A key file's path is not a secret: diagnostics need it.
	for _, dsn := range []string{"host=db secret_id=s sslkey=/k.pem", "host=db secret_id=s sslinline=false sslkey=/k.pem"} {
		cfg, err := ParseDSN(dsn)
		if err != nil {
			t.Fatal(err)
		}
		if s := cfg.String(); !strings.Contains(s, "sslkey=/k.pem") {
			t.Errorf("String() = %s, want the key's path", s)
		}
	}
}

func TestARNRegion(t *testing.T) {
	for id, want := range map[string]string{
		"arn:aws:secretsmanager:eu-central-1:123456789012:secret:db-AbCdEf":  "eu-central-1",
		"arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:db-AbCdEf": "cn-north-1",
		"prod/db":             "",
		"arn:aws:s3:::bucket": "",
	} {
		if got := arnRegion(id); got != want {
			t.Errorf("arnRegion(%q) = %q, want %q", id, got, want)
		}
	}
}

// A user or password written into secret_endpoint is not printed; the
// connector still gets the endpoint as written.
func TestEndpointUserinfoNeverPrinted(t *testing.T) {
	cfg, err := ParseDSN("host=db secret_id=s secret_endpoint=https://proxyuser:proxy-pass-never-printed@sm.internal:8443")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{cfg.String(), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", *cfg)} {
		if strings.Contains(s, "proxy-pass-never-printed") || strings.Contains(s, "proxyuser") || !strings.Contains(s, "sm.internal:8443") {
			t.Errorf("printed: %s", s)
		}
	}
	if !strings.Contains(cfg.FormatDSN(), "proxy-pass-never-printed") || cfg.Endpoint != "https://proxyuser:proxy-pass-never-printed@sm.internal:8443" {
		t.Error("FormatDSN or Endpoint lost the endpoint as written")
	}
}

// A URL's host list keeps each host's port, as libpq's host and port
// lists, and lib/pq reads them back host by host.
func TestURLHostList(t *testing.T) {
	for dsn, want := range map[string][2]string{
		"postgres://h1:5432,h2:5433/db?secret_id=s": {"h1,h2", "5432,5433"},
		"postgres://h1,h2:5433/db?secret_id=s":      {"h1,h2", "5432,5433"},
		"postgres://h1,h2/db?secret_id=s":           {"h1,h2", ""},
		"postgres://[::1]:6432/db?secret_id=s":      {"::1", "6432"},
	} {
		cfg, err := ParseDSN(dsn)
		if err != nil {
			t.Fatal(dsn, err)
		}
		host, _ := cfg.param("host")
		port, _ := cfg.param("port")
		if host != want[0] || port != want[1] {
			t.Errorf("%s: host %q port %q, want %q %q", dsn, host, port, want[0], want[1])
		}
		if _, err := pq.NewConfig(cfg.pqDSN(func(string) string { return "" })); err != nil {
			t.Errorf("%s: lib/pq rejects %q: %v", dsn, cfg.pqDSN(func(string) string { return "" }), err)
		}
	}
}
