package pgxsecrets

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/engine"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
)

// engineDSN is an engine DSN and which of host and port it sets (the
// core gives the secret's to a login only where the DSN sets none).
type engineDSN struct {
	DSN              string
	HostSet, PortSet bool
}

// fitted is the configuration a login with the secret's host and port
// dials.
func fitted(t *testing.T, ec engineDSN, host string, port uint16) (*pgx.ConnConfig, error) {
	t.Helper()
	cc, err := pgx.ParseConfig(ec.DSN)
	if err != nil {
		t.Fatal(err)
	}
	return cc, newTargets(ec.DSN).setLogin(cc, ec.login(host, port))
}

func (ec engineDSN) login(host string, port uint16) *engine.Login {
	l := &engine.Login{User: "u", Password: pgsecrets.NewSecret("p")}
	if !ec.HostSet {
		l.Host = host
	}
	if !ec.PortSet {
		l.Port = port
	}
	return l
}

// A host and port from the secret get the TLS and fallbacks pgx builds for
// them when a DSN names them, for every sslmode.
func TestTargetsSecretHostTLS(t *testing.T) {
	ca := testdb.Shared(t).CAFile()
	for _, tc := range []struct {
		name, mode string
		tls        bool // the first attempt uses TLS
		plaintext  bool // a plaintext fallback follows
		verify     bool // the certificate is checked against ServerName
	}{
		{name: "disable", mode: "disable"},
		{name: "allow", mode: "allow"}, // plaintext first, then TLS
		{name: "prefer", mode: "prefer", tls: true, plaintext: true},
		{name: "require", mode: "require", tls: true},
		{name: "verify-full", mode: "verify-full sslrootcert=" + ca, tls: true, verify: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ec := engineDSN{DSN: "dbname=app sslmode=" + tc.mode}
			cc, err := fitted(t, ec, "db.example.com", 6543)
			if err != nil {
				t.Fatal(err)
			}
			if cc.Host != "db.example.com" || cc.Port != 6543 || cc.Database != "app" {
				t.Fatalf("dials %s:%d/%s", cc.Host, cc.Port, cc.Database)
			}
			// The reference: the same DSN naming the host and port.
			want, err := pgx.ParseConfig(ec.DSN + " host=db.example.com port=6543")
			if err != nil {
				t.Fatal(err)
			}
			if (cc.TLSConfig != nil) != (want.TLSConfig != nil) || len(cc.Fallbacks) != len(want.Fallbacks) {
				t.Fatalf("TLS %v with %d fallbacks, want TLS %v with %d", cc.TLSConfig != nil, len(cc.Fallbacks), want.TLSConfig != nil, len(want.Fallbacks))
			}
			for i, f := range cc.Fallbacks {
				w := want.Fallbacks[i]
				if f.Host != w.Host || f.Port != w.Port || (f.TLSConfig != nil) != (w.TLSConfig != nil) {
					t.Errorf("fallback %d: %s:%d TLS %v, want %s:%d TLS %v", i, f.Host, f.Port, f.TLSConfig != nil, w.Host, w.Port, w.TLSConfig != nil)
				}
			}
			if tc.tls != (cc.TLSConfig != nil) {
				t.Errorf("first attempt TLS %v, want %v", cc.TLSConfig != nil, tc.tls)
			}
			if tc.plaintext && (len(cc.Fallbacks) != 1 || cc.Fallbacks[0].TLSConfig != nil) {
				t.Error("no plaintext fallback")
			}
			if tc.verify && (cc.TLSConfig.ServerName != "db.example.com" || cc.TLSConfig.InsecureSkipVerify) {
				t.Errorf("ServerName %q, InsecureSkipVerify %v: the certificate is not checked for the host dialled",
					cc.TLSConfig.ServerName, cc.TLSConfig.InsecureSkipVerify)
			}
		})
	}
}

// A host list in the DSN keeps pgx's own per-host fallbacks when the
// secret supplies only the port.
func TestTargetsDSNHostListSecretPort(t *testing.T) {
	ec := engineDSN{DSN: "host=a.example,b.example sslmode=require", HostSet: true}
	cc, err := fitted(t, ec, "c.example", 7000)
	if err != nil {
		t.Fatal(err)
	}
	if cc.Host != "a.example" || cc.Port != 7000 || cc.TLSConfig == nil {
		t.Fatalf("first %s:%d TLS %v", cc.Host, cc.Port, cc.TLSConfig != nil)
	}
	if len(cc.Fallbacks) != 1 || cc.Fallbacks[0].Host != "b.example" || cc.Fallbacks[0].Port != 7000 || cc.Fallbacks[0].TLSConfig == nil {
		t.Fatalf("fallbacks %+v, want b.example:7000 over TLS", cc.Fallbacks)
	}
}

// The DSN's own host and port: nothing is parsed again.
func TestTargetsDSNHostUntouched(t *testing.T) {
	ec := engineDSN{DSN: "host=a.example port=5433 sslmode=prefer", HostSet: true, PortSet: true}
	tg := newTargets(ec.DSN)
	cc, _ := pgx.ParseConfig(ec.DSN)
	if err := tg.setLogin(cc, ec.login("c.example", 7000)); err != nil {
		t.Fatal(err)
	}
	if cc.Host != "a.example" || cc.Port != 5433 || len(cc.Fallbacks) != 1 || len(tg.parsed) != 0 {
		t.Errorf("%s:%d, %d fallbacks, %d parses", cc.Host, cc.Port, len(cc.Fallbacks), len(tg.parsed))
	}
}

// A warm connect reuses the parse; the cache keeps the last maxTargets;
// a hook that changes the TLS configuration it is given does not change
// the next login's.
func TestTargetsCache(t *testing.T) {
	tg := newTargets("sslmode=require")
	login := func(host string) *pgx.ConnConfig {
		cc, err := pgx.ParseConfig("sslmode=require")
		if err != nil {
			t.Fatal(err)
		}
		if err := tg.setLogin(cc, engineDSN{}.login(host, 5432)); err != nil {
			t.Fatal(err)
		}
		return cc
	}
	first := login("h0.example")
	first.TLSConfig.ServerName = "tampered"
	p := tg.parsed[target{host: "h0.example", port: 5432}]
	if again := login("h0.example"); p == nil || tg.parsed[target{host: "h0.example", port: 5432}] != p || again.TLSConfig.ServerName == "tampered" {
		t.Fatal("a warm login parsed again, or saw another login's changes")
	}
	for i := 1; i <= maxTargets; i++ {
		login(fmt.Sprintf("h%d.example", i))
	}
	if len(tg.parsed) != maxTargets || len(tg.order) != maxTargets {
		t.Errorf("%d cached, want %d", len(tg.parsed), maxTargets)
	}
	if _, ok := tg.parsed[target{host: "h0.example", port: 5432}]; ok {
		t.Error("the oldest target was not evicted")
	}
}

// A secret's host that is a list or a Unix socket would change more than
// the server dialled.
func TestTargetsHostileSecretHost(t *testing.T) {
	if _, err := fitted(t, engineDSN{DSN: "sslmode=require"}, "evil.example,db.example", 0); !errors.Is(err, errSecretHostList) {
		t.Errorf("host list: %v", err)
	}
	for _, mode := range []string{"require", "verify-ca", "verify-full"} {
		if _, err := fitted(t, engineDSN{DSN: "sslmode=" + mode}, "/tmp", 0); !errors.Is(err, errSecretHostSocket) {
			t.Errorf("socket under %s: %v", mode, err)
		}
	}
	for _, mode := range []string{"disable", "allow", "prefer"} {
		cc, err := fitted(t, engineDSN{DSN: "sslmode=" + mode}, "/tmp", 0)
		if err != nil || cc.Host != "/tmp" {
			t.Errorf("socket under %s, which allows plaintext: %v", mode, err)
		}
	}
	// Quoting keeps a hostile host one value: it cannot add keys, whatever
	// the white space or quotes around them.
	for _, host := range []string{
		"db.example sslmode=disable", "db.example\tsslmode=disable", "db.example\nsslmode=disable",
		"db.example\r\v\fsslmode=disable", "db.example' sslmode=disable '", `db.example\' sslmode=disable`,
	} {
		cc, err := fitted(t, engineDSN{DSN: "sslmode=verify-full"}, host, 0)
		if err != nil {
			continue // refused is safe too
		}
		if cc.TLSConfig == nil || cc.TLSConfig.InsecureSkipVerify || len(cc.Fallbacks) != 0 || cc.Host != host {
			t.Errorf("host %q: dials %q with TLS %v, %d fallbacks: a DSN key in the host weakened TLS",
				host, cc.Host, cc.TLSConfig != nil, len(cc.Fallbacks))
		}
	}
}

// pgx reads the environment again when it parses: a login parsed after
// the TLS environment changed is refused rather than weakened.
func TestTargetsEnvChanged(t *testing.T) {
	t.Setenv("PGSSLMODE", "require")
	tg := newTargets("dbname=app") // pgsecrets adds no sslmode when PGSSLMODE has one
	t.Setenv("PGSSLMODE", "prefer")
	cc, _ := pgx.ParseConfig("dbname=app")
	if err := tg.setLogin(cc, engineDSN{}.login("db.example", 0)); !errors.Is(err, errEnvChanged) {
		t.Errorf("got %v, want errEnvChanged", err)
	}
}
