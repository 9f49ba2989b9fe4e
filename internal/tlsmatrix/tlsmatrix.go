// Package tlsmatrix is the TLS test every engine runs (lib/pq, pgx through
// database/sql, the pgx pool): for each place the host can come from and
// each sslmode, a login against a server that accepts only TLS
// (hostssl-only) and against listeners that should not get the password
// (one that declines TLS, one with a certificate of its own). The
// expectations are written once, here; an engine's test supplies how it
// logs in.
package tlsmatrix

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/smtest"
)

// Login logs in once through the engine under test with a pgsecrets DSN
// and the logger given, reads pg_stat_ssl.ssl for its own session, and
// closes everything it opened before returning. A failed login returns
// the error the application would see.
type Login func(t *testing.T, dsn string, logger *slog.Logger) (encrypted bool, err error)

// Options adapt the matrix to an engine.
type Options struct {
	// Params are DSN settings every login adds, as key, value pairs (e.g.
	// "secret_driver", "pgx").
	Params []string
}

// Source is where a login's host (and port) comes from.
type Source string

const (
	// KeyValue: host= and port= in a key=value DSN.
	KeyValue Source = "kv"
	// URL: postgres://host:port/db?… .
	URL Source = "url"
	// Secret: the secret's host and port fields; the DSN names neither.
	Secret Source = "secret"
	// Env: PGHOST and PGPORT; the DSN names neither.
	Env Source = "env"
	// EnvSSL: PGHOST, PGPORT, and the sslmode and sslrootcert from
	// PGSSLMODE and PGSSLROOTCERT; the DSN names none of them.
	EnvSSL Source = "env-sslmode"
	// List: host=a,b: the listener first, then the server. A TLS mode must
	// get past the first without sending it a plaintext startup.
	List Source = "list"
)

// Sources are all sources, in the order the matrix runs them.
var Sources = []Source{KeyValue, URL, Secret, Env, EnvSSL, List}

// Modes are the sslmodes of the matrix; "" leaves sslmode unset.
var Modes = []string{"", "require", "verify-full", "disable"}

// Target is what a login is pointed at.
type Target string

const (
	// Server is the test cluster in hostssl-only mode.
	Server Target = "hostssl-only"
	// Declining is a listener that declines TLS and wants the password.
	Declining Target = "declining"
	// ForeignCert is a listener with TLS and a certificate the test CA did
	// not sign (run with verify-full only).
	ForeignCert Target = "foreign-cert"
)

var seq atomic.Int64

// Run runs the matrix as subtests of t, named source/sslmode/target. It
// switches the shared cluster to hostssl-only for its duration, so it
// must not run in parallel with tests that need plain TCP logins.
func Run(t *testing.T, login Login, opt Options) {
	pg := testdb.Shared(t)
	ctx := context.Background()
	clearPGEnv(t)
	sm := smtest.Start(t)
	role := fmt.Sprintf("tls_%d_%d", os.Getpid(), seq.Add(1))
	password := testkit.RandomPassword()
	if err := pg.CreateRole(ctx, role, password); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pg.DropRole(ctx, role) })
	if err := pg.SetHostSSLOnly(ctx, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.SetHostSSLOnly(ctx, false); err != nil {
			t.Error(err)
		}
	})
	logs := &testkit.SyncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var errs []string
	t.Cleanup(func() {
		if strings.Contains(logs.String(), password) {
			t.Error("a log line contains the password")
		}
		for _, e := range errs {
			if strings.Contains(e, password) {
				t.Errorf("an error contains the password")
			}
		}
	})

	c := &cell{pg: pg, sm: sm, role: role, password: password, opt: opt}
	for _, src := range Sources {
		for _, mode := range Modes {
			targets := []Target{Server, Declining}
			if src == List {
				targets = []Target{Declining} // the server is the list's second host
			}
			for _, target := range targets {
				name := fmt.Sprintf("%s/%s/%s", src, modeName(mode), target)
				t.Run(name, func(t *testing.T) {
					errs = append(errs, c.run(t, login, logger, src, mode, target))
				})
			}
		}
		name := fmt.Sprintf("%s/verify-full/%s", src, ForeignCert)
		t.Run(name, func(t *testing.T) {
			errs = append(errs, c.run(t, login, logger, src, "verify-full", ForeignCert))
		})
	}
}

func modeName(mode string) string {
	if mode == "" {
		return "unset"
	}
	return mode
}

// clearPGEnv unsets the PG* variables of the machine for the test, so
// that only what a cell sets reaches the engines.
func clearPGEnv(t *testing.T) {
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") {
			t.Setenv(k, "") // restores the value when the test ends
			os.Unsetenv(k)
		}
	}
}

type cell struct {
	pg       *testdb.Cluster
	sm       *smtest.Server
	role     string
	password string
	opt      Options
}

// run logs in once as the cell says, checks the outcome and returns the
// error's text (for the leak check).
func (c *cell) run(t *testing.T, login Login, logger *slog.Logger, src Source, mode string, target Target) string {
	var im *testkit.Impostor
	host, port := c.pg.Host(), c.pg.Port()
	if target != Server {
		im = testkit.StartImpostor(t, testkit.ImpostorOptions{TLS: target == ForeignCert})
		if src != List {
			host, port = im.Host(), im.Port()
		}
	}

	secretID := "tls/" + strings.ReplaceAll(t.Name(), "/", "_")
	secret := map[string]any{"username": c.role, "password": c.password, "engine": "postgres"}
	var params []string // key, value pairs
	add := func(kv ...string) { params = append(params, kv...) }
	sslInEnv := src == EnvSSL
	switch src {
	case KeyValue, URL:
		add("host", host, "port", strconv.Itoa(port))
	case Secret:
		secret["host"], secret["port"] = host, port
	case Env, EnvSSL:
		t.Setenv("PGHOST", host)
		t.Setenv("PGPORT", strconv.Itoa(port))
	case List:
		add("host", im.Host()+","+c.pg.Host(), "port", strconv.Itoa(im.Port())+","+strconv.Itoa(c.pg.Port()))
	}
	if mode != "" {
		if sslInEnv {
			t.Setenv("PGSSLMODE", mode)
		} else {
			add("sslmode", mode)
		}
	}
	if mode == "verify-full" {
		if sslInEnv {
			t.Setenv("PGSSLROOTCERT", c.pg.CAFile())
		} else {
			add("sslrootcert", c.pg.CAFile())
		}
	}
	add("dbname", "postgres", "connect_timeout", "30",
		"secret_id", secretID, "secret_endpoint", c.sm.URL(), "secret_retry_window", "0s")
	add(c.opt.Params...)
	b, _ := json.Marshal(secret)
	c.sm.CreateSecret(secretID, string(b))

	dsn := formatKV(params)
	if src == URL {
		dsn = formatURL(params)
	}
	encrypted, err := login(t, dsn, logger)
	if im != nil {
		im.Settle(t)
	}
	c.check(t, src, mode, target, im, encrypted, err)
	if err != nil {
		return err.Error()
	}
	return ""
}

// check holds the matrix's expectations.
func (c *cell) check(t *testing.T, src Source, mode string, target Target, im *testkit.Impostor, encrypted bool, err error) {
	t.Helper()
	tlsMode := mode != "disable"
	leaked := im != nil && (im.Saw(c.password) || len(im.Passwords()) > 0)
	switch {
	case target == ForeignCert:
		if leaked || im.Startups() != 0 {
			t.Errorf("verify-full sent a login to a server whose certificate does not verify: %v", im)
		}
		if src == List {
			// The next host is the real server.
			if err != nil || !encrypted {
				t.Errorf("got encrypted=%v, %v; want a TLS login at the second host", encrypted, err)
			}
			return
		}
		var uae x509.UnknownAuthorityError
		if err == nil || !errors.As(err, &uae) && !strings.Contains(err.Error(), "certificate") {
			t.Errorf("got %v, want a certificate verification error", err)
		}

	case !tlsMode && target == Declining:
		// The control: a client allowed plaintext sends the listener the
		// password, which proves the listener would have caught one.
		if err == nil {
			t.Error("logged in to the listener")
		}
		if im.PlaintextStartups() == 0 || !im.Saw(c.password) {
			t.Errorf("sslmode=disable did not send the listener a plaintext login: %v", im)
		}

	case !tlsMode && target == Server:
		if got := sqlState(err); got != "28000" {
			t.Errorf("got %v (SQLSTATE %q), want the hostssl-only server's 28000", err, got)
		}

	case target == Declining:
		if im.PlaintextStartups() != 0 || leaked {
			t.Errorf("sslmode=%s sent a login to a server that declined TLS: %v", modeName(mode), im)
		}
		if src == List {
			if err != nil || !encrypted {
				t.Errorf("got encrypted=%v, %v; want a TLS login at the second host", encrypted, err)
			}
			return
		}
		if err == nil {
			t.Error("logged in to the listener")
		}

	default: // a TLS mode against the hostssl-only server
		if err != nil {
			t.Fatalf("login failed: %v", err)
		}
		if !encrypted {
			t.Error("pg_stat_ssl.ssl is false")
		}
	}
}

// sqlState is the SQLSTATE the database answered with, whatever the
// driver.
func sqlState(err error) string {
	var s interface{ SQLState() string }
	if errors.As(err, &s) {
		return s.SQLState()
	}
	return ""
}

func formatKV(params []string) string {
	var parts []string
	for i := 0; i+1 < len(params); i += 2 {
		v := params[i+1]
		if v == "" || strings.ContainsAny(v, ` '\`) {
			v = "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
		}
		parts = append(parts, params[i]+"="+v)
	}
	return strings.Join(parts, " ")
}

// formatURL puts host, port and dbname into the URL's authority and path,
// the rest into its query.
func formatURL(params []string) string {
	var host, port, db string
	q := url.Values{}
	for i := 0; i+1 < len(params); i += 2 {
		switch k, v := params[i], params[i+1]; k {
		case "host":
			host = v
		case "port":
			port = v
		case "dbname":
			db = v
		default:
			q.Set(k, v)
		}
	}
	u := url.URL{Scheme: "postgres", Host: host, Path: "/" + db, RawQuery: q.Encode()}
	if port != "" {
		u.Host += ":" + port
	}
	return u.String()
}
