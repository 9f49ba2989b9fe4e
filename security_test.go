package pgsecrets_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/smtest"
)

// TestNoPasswordAnywhere provokes every error path with a debug logger and
// checks that none of the planted passwords shows up in a log line, an
// error (any verb), or the JSON of a value.
func TestNoPasswordAnywhere(t *testing.T) {
	r := newRig(t)
	planted := []string{r.password}
	plant := func() string {
		p := randomPassword()
		planted = append(planted, p)
		return p
	}
	var seen []any // every error and value reached
	ping := func(db *sql.DB) error {
		err := db.Ping()
		seen = append(seen, err)
		return err
	}
	dsn := func(id, extra string) string {
		return fmt.Sprintf("host=%s port=%d dbname=postgres sslmode=require secret_id=%s secret_endpoint=%s secret_retry_window=300ms %s",
			r.pg.Host(), r.pg.Port(), id, r.sm.URL(), extra)
	}

	// A password left in the DSN (both forms) while things work.
	dsnPW := plant()
	db, c := r.openC(dsn(r.secretID, "password="+dsnPW))
	if err := ping(db); err != nil {
		t.Fatal(err)
	}
	seen = append(seen, c.Config(), c.Stats())
	urlPW := plant()
	cfg, err := pgsecrets.ParseDSN("postgres://u:" + urlPW + "@h/db?secret_id=x")
	if err != nil {
		t.Fatal(err)
	}
	seen = append(seen, cfg, *cfg)
	_, err = sql.Open("pgsecrets", "host=h password="+plant()+" secret_id=x secret_ttl=never")
	seen = append(seen, err)
	_, err = sql.Open("pgsecrets", "postgres://u:"+plant()+"@h:bad:port/db?secret_id=x")
	seen = append(seen, err)

	// Store errors of each kind.
	for i, k := range []smtest.FaultKind{smtest.Fail, smtest.Throttle, smtest.Deny, smtest.NotFound, smtest.DecryptionFailure} {
		id := fmt.Sprintf("test/fault%d", i) // a secret of its own: the cache must be cold
		r.sm.CreateSecret(id, rdsSecret(r.role, plant(), nil))
		remove := r.sm.Inject("GetSecretValue", smtest.Fault{Kind: k})
		db := r.open(dsn(id, ""))
		if err := ping(db); err == nil {
			t.Errorf("%v: no error", k)
		}
		remove()
	}

	// Malformed secrets and missing fields, each with a password inside.
	for i, body := range []string{
		`{"username":"x","password":"` + plant() + `","port":"not a port"}`,
		`{"password":"` + plant() + `"}`,
		`{"username":"x","pass":"` + plant() + `"}`,
		`not json ` + plant(),
		`{"username":["` + plant() + `"],"password":"x"}`,
	} {
		id := fmt.Sprintf("test/malformed%d", i)
		r.sm.CreateSecret(id, body)
		if err := ping(r.open(dsn(id, ""))); !errors.Is(err, pgsecrets.ErrMalformedSecret) {
			t.Errorf("%s: %v", id, err)
		}
	}
	r.sm.CreateBinarySecret("test/binary", []byte(plant()))
	if err := ping(r.open(dsn("test/binary", ""))); !errors.Is(err, pgsecrets.ErrMalformedSecret) {
		t.Errorf("binary: %v", err)
	}

	// Stale credential served during an outage.
	staleDB, staleC := r.openC(dsn(r.secretID, "secret_ttl=50ms"))
	if err := ping(staleDB); err != nil {
		t.Fatal(err)
	}
	remove := r.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Fail})
	eventually(t, "a stale serve", func() bool {
		staleDB.SetMaxIdleConns(0)
		_ = ping(staleDB)
		return staleC.Stats().StaleServes > 0
	})
	remove()

	// Wrong password: auth failure, then the breaker.
	wrongID := "test/wrong"
	r.sm.CreateSecret(wrongID, rdsSecret(r.role, plant(), nil))
	wdb, wc := r.openC(dsn(wrongID, ""), pgsecrets.WithBreakerOpenInterval(time.Hour))
	if err := ping(wdb); !errors.Is(err, pgsecrets.ErrAuthFailed) {
		t.Errorf("wrong password: %v", err)
	}
	if err := ping(wdb); !errors.Is(err, pgsecrets.ErrCircuitOpen) {
		t.Errorf("breaker: %v", err)
	}
	seen = append(seen, wc.Stats(), wc, c, staleC)
	// Printed below with every verb, and %s or %q on a pointer makes fmt
	// read everything behind it: close the connectors first, so that none
	// of their goroutines is still running (Close waits for them).
	for _, d := range []*sql.DB{db, staleDB, wdb} {
		d.Close()
	}

	var text strings.Builder
	text.WriteString(r.logs.String())
	for _, v := range seen {
		if v == nil {
			continue
		}
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
			fmt.Fprintf(&text, verb+"\n", v)
		}
		if e, ok := v.(error); ok {
			text.WriteString(e.Error())
			for u := errors.Unwrap(e); u != nil; u = errors.Unwrap(u) {
				fmt.Fprintf(&text, "%v %+v %#v\n", u, u, u)
			}
			continue
		}
		b, err := json.Marshal(v)
		if err != nil {
			t.Errorf("json of %T: %v", v, err)
		}
		text.Write(b)
	}
	out := text.String()
	if !strings.Contains(out, `level=DEBUG`) || !strings.Contains(out, pgsecrets.EventBreakerOpen) {
		t.Fatalf("the debug log did not capture the paths (len %d)", len(out))
	}
	for _, p := range planted {
		if strings.Contains(out, p) {
			i := strings.Index(out, p)
			t.Errorf("password %s… found: …%s…", p[:6], out[max(0, i-200):i])
		}
	}
}

func TestWarningsOncePerConnector(t *testing.T) {
	r := newRig(t)
	count := func(ev string) int { return r.logs.count(ev) }
	pingN := func(db *sql.DB, n int) {
		for i := 0; i < n; i++ {
			db.SetMaxIdleConns(0) // every ping logs in anew
			_ = db.Ping()
		}
	}

	t.Run("password in DSN", func(t *testing.T) {
		pw := randomPassword()
		pingN(r.open(r.kv("password="+pw)), 3)
		if n := count(pgsecrets.EventDSNPassword); n != 1 {
			t.Errorf("%d warnings", n)
		}
		if strings.Contains(r.logs.String(), pw) {
			t.Error("value logged")
		}
	})
	t.Run("user differs", func(t *testing.T) {
		db := r.open(r.kv("user=someone_else_entirely"))
		pingN(db, 3)
		if got := currentUser(t, db); got != r.role {
			t.Errorf("current_user %q: the secret's username must win", got)
		}
		if n := count(pgsecrets.EventUserMismatch); n != 1 {
			t.Errorf("%d warnings", n)
		}
		line := logLine(r.logs.String(), pgsecrets.EventUserMismatch)
		if strings.Contains(line, "someone_else_entirely") || strings.Contains(line, "user=") {
			t.Errorf("warning carries a value: %s", line)
		}
	})
	t.Run("PQGO_DEBUG", func(t *testing.T) {
		t.Setenv("PQGO_DEBUG", "1")
		r.open(r.kv(""))
		if n := count(pgsecrets.EventLibPQDebug); n != 1 {
			t.Errorf("%d warnings", n)
		}
	})
	t.Run("ttl over max stale", func(t *testing.T) {
		pingN(r.open(r.kv("secret_ttl=2h secret_max_stale=1h")), 2)
		if n := count(pgsecrets.EventTTLOverMaxStale); n != 1 {
			t.Errorf("%d warnings", n)
		}
	})
	t.Run("DSN overrides secret fields", func(t *testing.T) {
		r.sm.CreateSecret("test/withhost", rdsSecret(r.role, r.password, map[string]any{"host": "primary.invalid", "port": 5432, "dbname": "primary"}))
		db := r.open(strings.Replace(r.kv(""), "secret_id="+r.secretID, "secret_id=test/withhost", 1))
		pingN(db, 3)
		if n := count(pgsecrets.EventSecretFieldOverridden); n != 1 {
			t.Errorf("%d debug lines", n)
		}
		if line := logLine(r.logs.String(), pgsecrets.EventSecretFieldOverridden); !strings.Contains(line, "level=DEBUG") || strings.Contains(line, "primary") {
			t.Errorf("line: %s", line)
		}
	})
	t.Run("weak sslmode to a remote host", func(t *testing.T) {
		for _, mode := range []string{"disable", "allow", "prefer"} {
			before := count(pgsecrets.EventWeakSSLMode)
			db := r.open(fmt.Sprintf("host=db.example.invalid sslmode=%s secret_id=%s secret_endpoint=%s connect_timeout=1", mode, r.secretID, r.sm.URL()))
			pingN(db, 3)
			if n := count(pgsecrets.EventWeakSSLMode) - before; n != 1 {
				t.Errorf("sslmode=%s: %d warnings", mode, n)
			}
		}
		before := count(pgsecrets.EventWeakSSLMode)
		pingN(r.open(strings.Replace(r.kv(""), "sslmode=verify-full", "sslmode=disable", 1)), 2)
		pingN(r.open(r.kv("")), 2)
		if n := count(pgsecrets.EventWeakSSLMode) - before; n != 0 {
			t.Errorf("loopback or verified TLS warned %d times", n)
		}
	})
}

func logLine(logs, msg string) string {
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `msg="`+msg+`"`) {
			return l
		}
	}
	return ""
}

// TLS against a server that accepts only TLS.
func TestTLSHostSSLOnly(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	if err := r.pg.SetHostSSLOnly(ctx, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.pg.SetHostSSLOnly(ctx, false) })
	base := fmt.Sprintf("host=%s port=%d dbname=postgres secret_id=%s secret_endpoint=%s secret_retry_window=0s ",
		r.pg.Host(), r.pg.Port(), r.secretID, r.sm.URL())
	encrypted := func(db *sql.DB) bool {
		t.Helper()
		var ssl bool
		if err := db.QueryRow("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil {
			t.Fatal(err)
		}
		return ssl
	}

	t.Run("default DSN is encrypted", func(t *testing.T) {
		if !encrypted(r.open(base)) {
			t.Error("not encrypted")
		}
	})
	t.Run("verify-full with the test CA", func(t *testing.T) {
		if !encrypted(r.open(base + "sslmode=verify-full sslrootcert=" + r.pg.CAFile())) {
			t.Error("not encrypted")
		}
	})
	t.Run("verify-full with a wrong CA fails", func(t *testing.T) {
		err := r.open(base + "sslmode=verify-full sslrootcert=" + otherCA(t)).Ping()
		var uae x509.UnknownAuthorityError
		if !errors.As(err, &uae) && !strings.Contains(fmt.Sprint(err), "certificate") {
			t.Errorf("got %v, want a certificate verification error", err)
		}
		if errors.Is(err, pgsecrets.ErrAuthFailed) {
			t.Error("a TLS failure must not be treated as an auth failure")
		}
	})
	t.Run("client certificate forwarded", func(t *testing.T) {
		pw := randomPassword()
		if err := r.pg.CreateRole(ctx, testdb.CertUser, pw); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.pg.DropRole(ctx, testdb.CertUser) })
		certFile, keyFile, err := r.pg.ClientCert(testdb.CertUser)
		if err != nil {
			t.Fatal(err)
		}
		r.sm.CreateSecret("test/certuser", rdsSecret(testdb.CertUser, pw, nil))
		certBase := strings.Replace(base, "secret_id="+r.secretID, "secret_id=test/certuser", 1) +
			"sslmode=verify-full sslrootcert=" + r.pg.CAFile()
		db := r.open(certBase + " sslcert=" + certFile + " sslkey=" + keyFile)
		if got := currentUser(t, db); got != testdb.CertUser {
			t.Errorf("current_user %q", got)
		}
		var dn sql.NullString
		if err := db.QueryRow("SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&dn); err != nil || !strings.Contains(dn.String, testdb.CertUser) {
			t.Errorf("client_dn %q (%v): certificate not presented", dn.String, err)
		}
		// Without the certificate the server refuses the login.
		noCert := filepath.Join(t.TempDir(), "none")
		err = r.open(certBase + " sslcert=" + noCert + " sslkey=" + noCert).Ping()
		var pqErr *pq.Error
		if !errors.As(err, &pqErr) || pqErr.Code != "28000" {
			t.Errorf("without a client certificate: %v", err)
		}
	})
}

// otherCA writes a CA certificate that signed nothing the server has.
func otherCA(t *testing.T) string {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "some other CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "other-ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// pgsecretsGoroutines lists goroutines running code of the pgsecrets
// package (not its tests).
func pgsecretsGoroutines() []string {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "github.com/pgsecrets/pgsecrets.") || strings.Contains(g, "aws-sdk-go-v2") ||
			strings.Contains(g, "net/http.(*persistConn)") {
			out = append(out, g)
		}
	}
	return out
}

// lingeringGoroutines is pgsecretsGoroutines once the goroutines that were
// already ending have ended: a goroutine whose deferred WaitGroup.Done has
// run (so Close stopped waiting for it) is still listed, runnable, until
// the scheduler runs it to its end (CI saw one at hedged's closing brace).
// A goroutine that really outlives Close stays, and is returned.
func lingeringGoroutines() []string {
	deadline := time.Now().Add(2 * time.Second)
	for {
		g := pgsecretsGoroutines()
		if len(g) == 0 || time.Now().After(deadline) {
			return g
		}
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond) // goroutine exit has no event to wait on
	}
}

// Concurrent connects during rotations and store faults, under -race; then
// every goroutine the connector started has ended once db.Close returns.
func TestStressNoRaceNoLeak(t *testing.T) {
	r := newRig(t)
	if g := pgsecretsGoroutines(); len(g) != 0 {
		t.Fatalf("goroutines left by earlier tests:\n%s", strings.Join(g, "\n\n"))
	}
	c, err := pgsecrets.NewConnector(r.kv("secret_ttl=300ms secret_retry_window=5s"), pgsecrets.WithLogger(r.logger))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	rotationPool(db)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ok, failed atomic.Int64
	var unexpected atomic.Value
	for i := 0; i < 24; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithCancel(context.Background())
				if (i+n)%7 == 0 {
					cancel() // some callers give up at once
				}
				conn, err := db.Conn(ctx)
				if err == nil {
					err = conn.PingContext(ctx)
					conn.Close()
				}
				cancel()
				if err == nil {
					ok.Add(1)
					continue
				}
				failed.Add(1)
				if !errors.Is(err, context.Canceled) && !errors.Is(err, pgsecrets.ErrStoreUnavailable) &&
					!errors.Is(err, pgsecrets.ErrAuthFailed) && !errors.Is(err, pgsecrets.ErrCircuitOpen) {
					unexpected.Store(err)
				}
			}
		}(i)
	}
	faults := []smtest.Fault{{Kind: smtest.Fail, Times: 3}, {Kind: smtest.Throttle, Times: 2}, {Kind: smtest.Delay, Delay: 200 * time.Millisecond, Times: 5}}
	for i := 0; i < 6; i++ {
		// Let connections succeed between rounds: the stress must cover
		// working paths too, not only backoff.
		target := ok.Load() + 20
		eventually(t, "connects to succeed", func() bool { return ok.Load() >= target })
		r.sm.Inject("GetSecretValue", faults[i%len(faults)])
		if i%2 == 0 {
			r.fourStep(t, r.role, 300*time.Millisecond)
		} else {
			r.wrongOrder(t, 0)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("connects ok=%d failed=%d stats %+v", ok.Load(), failed.Load(), c.Stats())
	if err, _ := unexpected.Load().(error); err != nil {
		t.Errorf("unexpected error kind: %v", err)
	}
	if ok.Load() == 0 {
		t.Error("nothing connected")
	}

	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if g := lingeringGoroutines(); len(g) != 0 {
		t.Errorf("%d goroutines outlived db.Close:\n%s", len(g), strings.Join(g, "\n\n"))
	}
	// No connection leaked either (e.g. a recovery's login nobody took):
	// the server sees the role's sessions end.
	eventually(t, "the role's sessions to end", func() bool {
		var n int
		if err := r.pg.DB().QueryRow("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", r.role).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 0
	})
}
