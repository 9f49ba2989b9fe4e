package pgsecrets

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestSecretNeverPrints(t *testing.T) {
	const pw = "s3cr3t-Pa55"
	s := NewSecret(pw)
	if s.Reveal() != pw {
		t.Fatal("Reveal lost the value")
	}
	holder := struct {
		P    Secret
		Ptr  *Secret
		C    Credentials
		CPtr *Credentials
	}{P: s, Ptr: &s, C: Credentials{Username: "app", Password: s}, CPtr: &Credentials{Password: s}}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T %[1]v"} {
		for _, v := range []any{s, &s, holder, &holder, holder.C, holder.CPtr} {
			if out := fmt.Sprintf(verb, v); strings.Contains(out, pw) || strings.Contains(out, fmt.Sprintf("%x", pw)) {
				t.Errorf("%s of %T leaks: %s", verb, v, out)
			}
		}
	}
	if got := fmt.Sprintf("%q", s); got != `"[REDACTED]"` {
		t.Errorf("%%q = %s", got)
	}
	js, err := json.Marshal(holder)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(js), pw) || !strings.Contains(string(js), redacted) {
		t.Errorf("JSON: %s", js)
	}
	var buf bytes.Buffer
	for _, h := range []slog.Handler{slog.NewTextHandler(&buf, nil), slog.NewJSONHandler(&buf, nil)} {
		slog.New(h).Info("x", "secret", s, "creds", holder.C, "ptr", holder.CPtr, slog.Any("holder", holder))
	}
	if strings.Contains(buf.String(), pw) {
		t.Errorf("slog leaks: %s", buf.String())
	}
	if !NewSecret("").IsZero() || s.IsZero() || !s.Equal(NewSecret(pw)) || s.Equal(NewSecret("other")) {
		t.Error("IsZero/Equal wrong")
	}
}

func TestParseSecret(t *testing.T) {
	c, err := ParseSecret("s", `{"username":"app","password":"pw","host":"db","port":5433,"dbname":"orders","engine":"postgres"}`, "username", "password")
	if err != nil {
		t.Fatal(err)
	}
	if c.Username != "app" || c.Password.Reveal() != "pw" || c.Host != "db" || c.Port != 5433 || c.DBName != "orders" {
		t.Errorf("got %+v", c)
	}
	c, err = ParseSecret("s", `{"username":"app","password":"pw","port":"6432"}`, "username", "password")
	if err != nil || c.Port != 6432 {
		t.Errorf("string port: %+v %v", c, err)
	}
	c, err = ParseSecret("s", `{"u":"app","p":"pw","port":null}`, "u", "p")
	if err != nil || c.Username != "app" || c.Port != 0 {
		t.Errorf("custom keys: %+v %v", c, err)
	}

	const pw = "Zq9-leak-check"
	bad := []struct{ data, field string }{
		{`not json ` + pw, ""},
		{`["` + pw + `"]`, ""},
		{`null`, ""},
		{`{"password":"` + pw + `"}`, "username"},
		{`{"username":"app"}`, "password"},
		{`{"username":"app","password":""}`, "password"},
		{`{"username":"app","password":12345}`, "password"},
		{`{"username":7,"password":"` + pw + `"}`, "username"},
		{`{"username":"app","password":"` + pw + `","port":"x"}`, "port"},
		{`{"username":"app","password":"` + pw + `","port":70000}`, "port"},
		{`{"username":"app","password":"` + pw + `","port":54.5}`, "port"},
		{`{"username":"app","password":"` + pw + `","port":true}`, "port"},
		{`{"username":"app","password":"` + pw + `","host":1}`, "host"},
		{`{"username":"app","password":"` + pw + `","dbname":{}}`, "dbname"},
		{`{"username":"app","password":"` + pw + `","pad":"` + strings.Repeat("x", maxSecretSize) + `"}`, ""},
	}
	for _, tc := range bad {
		_, err := ParseSecret("prod/app", tc.data, "username", "password")
		var se *SecretError
		if !errors.As(err, &se) || se.Kind != ErrMalformedSecret || se.Field != tc.field {
			t.Errorf("%.60q: got %v, want malformed field %q", tc.data, err, tc.field)
			continue
		}
		msg := err.Error()
		if strings.Contains(msg, pw) || strings.Contains(fmt.Sprintf("%+v", err), pw) {
			t.Errorf("error leaks the password: %s", msg)
		}
		if !strings.Contains(msg, `"prod/app"`) || (tc.field != "" && !strings.Contains(msg, `"`+tc.field+`"`)) {
			t.Errorf("error should name the secret and the field: %s", msg)
		}
	}
}
