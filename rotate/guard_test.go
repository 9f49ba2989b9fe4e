package rotate

import (
	"strings"
	"testing"
)

// The operator's connection parameters are read as the driver reads them,
// and pgsecrets' defaults never weaken what the operator (or PG*) chose.
func TestConnParamsNeverWeakened(t *testing.T) {
	for _, c := range []struct {
		name, params string
		env          map[string]string
		sslmode      string
		rootcert     string
		host         string
		port         uint16
		pinned       bool
	}{
		{name: "unset: verify-full against the system roots", sslmode: "verify-full", rootcert: "system", host: "localhost", port: 5432},
		{name: "a bundle without sslmode still verifies the name", params: "sslrootcert=/etc/rds.pem", sslmode: "verify-full", rootcert: "/etc/rds.pem", host: "localhost", port: 5432},
		{name: "sslrootcert=system without sslmode", params: "sslrootcert=system", sslmode: "verify-full", rootcert: "system", host: "localhost", port: 5432},
		{name: "PGSSLMODE=verify-full", env: map[string]string{"PGSSLMODE": "verify-full", "PGSSLROOTCERT": "/ca.pem"}, sslmode: "verify-full", rootcert: "/ca.pem", host: "localhost", port: 5432},
		{name: "an explicit weaker choice stays", params: "sslmode=require", sslmode: "require", host: "localhost", port: 5432},
		{name: "URL form keeps host, port and sslmode", params: "postgres://db.internal:6543/app?sslmode=verify-ca&sslrootcert=/ca.pem",
			sslmode: "verify-ca", rootcert: "/ca.pem", host: "db.internal", port: 6543, pinned: true},
		{name: "PGHOST pins the host", env: map[string]string{"PGHOST": "bastion"}, sslmode: "verify-full", rootcert: "system", host: "bastion", port: 5432, pinned: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			cs, err := parseConnSettings(c.params)
			if err != nil {
				t.Fatal(err)
			}
			if string(cs.base.SSLMode) != c.sslmode || cs.base.SSLRootCert != c.rootcert || cs.base.Host != c.host || cs.base.Port != c.port || cs.host != c.pinned {
				t.Errorf("sslmode %q, sslrootcert %q, host %q (pinned %v), port %d", cs.base.SSLMode, cs.base.SSLRootCert, cs.base.Host, cs.host, cs.base.Port)
			}
			if cs.verified != (c.sslmode == "verify-full") {
				t.Errorf("verified %v", cs.verified)
			}
		})
	}
	for _, bad := range []string{"port=70000", "sslmode=sometimes", "postgres://h:99999/db", "host='unterminated",
		"postgres://u:pw-never-printed@h:5432/db%zz", "postgres://u:pw-never-printed@h:x/db"} {
		_, err := parseConnSettings(bad)
		if err == nil {
			t.Errorf("%q accepted", bad)
		} else if strings.Contains(err.Error(), "pw-never-printed") {
			t.Errorf("the error repeats the password: %v", err)
		}
	}
}

func TestSecretPort(t *testing.T) {
	for v, want := range map[any]uint16{5432.0: 5432, "6543": 6543, " 1 ": 1} {
		p, ok, err := secretPort(&secret{id: "s", fields: map[string]any{"port": v}})
		if err != nil || !ok || p != want {
			t.Errorf("%#v: %d %v %v", v, p, ok, err)
		}
	}
	for _, v := range []any{70000.0, 0.0, -1.0, 5432.5, "70000", "x", true} {
		if _, _, err := secretPort(&secret{id: "s", fields: map[string]any{"port": v}}); err == nil || !strings.Contains(err.Error(), "port") {
			t.Errorf("%#v accepted: %v", v, err)
		}
	}
	if _, ok, err := secretPort(&secret{fields: map[string]any{}}); ok || err != nil {
		t.Errorf("no port: %v %v", ok, err)
	}
}

func TestHostsEqual(t *testing.T) {
	same := [][2]string{
		{"DB.example.com.", "db.example.com"},
		{"app.cluster-ro-abc.eu-west-1.rds.amazonaws.com", "app.cluster-abc.eu-west-1.rds.amazonaws.com"},
	}
	for _, p := range same {
		if !hostsEqual(p[0], p[1]) {
			t.Errorf("%s ≠ %s", p[0], p[1])
		}
	}
	differ := [][2]string{
		{"db.example.com", "db.example.com.evil.net"},
		{"app-instance-1.abc.eu-west-1.rds.amazonaws.com", "app.cluster-abc.eu-west-1.rds.amazonaws.com"},
		{"other.cluster-abc.eu-west-1.rds.amazonaws.com", "app.cluster-abc.eu-west-1.rds.amazonaws.com"},
	}
	for _, p := range differ {
		if hostsEqual(p[0], p[1]) {
			t.Errorf("%s = %s", p[0], p[1])
		}
	}
}
