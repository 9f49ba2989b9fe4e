package testdb_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/pgsecrets/pgsecrets/internal/testdb"
)

func TestMain(m *testing.M) {
	os.Exit(testdb.RunMain(m, testdb.Options{Log: os.Stderr}))
}

var roleSeq atomic.Int64

// newRole creates a uniquely named login role, dropped when the test ends.
func newRole(t *testing.T, c *testdb.Cluster, password string) string {
	t.Helper()
	name := fmt.Sprintf("r%d_%s", roleSeq.Add(1), strings.ToLower(strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())))
	if len(name) > 60 {
		name = name[:60]
	}
	createRole(t, c, name, password)
	return name
}

func createRole(t *testing.T, c *testdb.Cluster, name, password string) {
	t.Helper()
	ctx := context.Background()
	if err := c.CreateRole(ctx, name, password); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.DropRole(context.Background(), name); err != nil {
			t.Error(err)
		}
	})
}

// login opens a pool with dsn and proves one login works.
func login(t *testing.T, dsn string) (*sql.DB, error) {
	t.Helper()
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, err
	}
	t.Cleanup(func() { db.Close() })
	return db, nil
}

func mustLogin(t *testing.T, c *testdb.Cluster, dsn string) *sql.DB {
	t.Helper()
	db, err := login(t, dsn)
	if err != nil {
		t.Fatalf("login: %v\nserver log:\n%s", err, c.LogTail(20))
	}
	return db
}

func wantCode(t *testing.T, err error, code string) *pq.Error {
	t.Helper()
	var pe *pq.Error
	if !errors.As(err, &pe) {
		t.Fatalf("got error %v (%T), want a *pq.Error with code %s", err, err, code)
	}
	if pe.SQLState() != code {
		t.Fatalf("got code %s (%v), want %s", pe.SQLState(), pe, code)
	}
	return pe
}

func sessionSSL(t *testing.T, db *sql.DB) bool {
	t.Helper()
	var ssl bool
	if err := db.QueryRow("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil {
		t.Fatal(err)
	}
	return ssl
}

func TestServerAndAdmin(t *testing.T) {
	c := testdb.Shared(t)
	if c.Host() != "127.0.0.1" || c.Port() <= 0 || c.Addr() != "127.0.0.1:"+strconv.Itoa(c.Port()) {
		t.Fatalf("Host %q Port %d Addr %q", c.Host(), c.Port(), c.Addr())
	}
	var user, version string
	if err := c.DB().QueryRow("SELECT current_user, version()").Scan(&user, &version); err != nil {
		t.Fatal(err)
	}
	if user != testdb.AdminUser {
		t.Errorf("current_user = %q, want %q", user, testdb.AdminUser)
	}
	t.Log(version)
	if !sessionSSL(t, c.DB()) {
		t.Error("admin pool session is not encrypted")
	}
	var maxConns int
	if err := c.DB().QueryRow("SELECT current_setting('max_connections')::int").Scan(&maxConns); err != nil {
		t.Fatal(err)
	}
	if maxConns != testdb.DefaultMaxConnections {
		t.Errorf("max_connections = %d", maxConns)
	}

	db := mustLogin(t, c, c.AdminDSN())
	if !sessionSSL(t, db) {
		t.Error("AdminDSN session is not encrypted")
	}
	for _, want := range []string{"sslmode='verify-full'", "sslrootcert='" + c.CAFile() + "'", "host='127.0.0.1'"} {
		if !strings.Contains(c.AdminDSN(), want) {
			t.Errorf("AdminDSN lacks %s", want)
		}
	}

	onDisk, err := os.ReadFile(c.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	if string(onDisk) != string(c.CAPEM()) {
		t.Error("CAFile and CAPEM differ")
	}
	block, _ := pem.Decode(c.CAPEM())
	if block == nil {
		t.Fatal("CAPEM is not PEM")
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if ca.Subject.CommonName != testdb.CAName || !ca.IsCA {
		t.Errorf("CA subject %q IsCA %v", ca.Subject.CommonName, ca.IsCA)
	}
	if sock := filepath.Join(c.Dir(), ".s.PGSQL."+strconv.Itoa(c.Port())); len(sock) > 100 {
		t.Errorf("socket path %s is too long", sock)
	}
}

func TestRoleLogsInOverVerifiedTLS(t *testing.T) {
	c := testdb.Shared(t)
	role := newRole(t, c, "pw-1")
	db := mustLogin(t, c, c.DSN(role, "pw-1", ""))
	var user, version string
	var ssl bool
	err := db.QueryRow(`SELECT current_user, s.ssl, coalesce(s.version, '')
		FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()`).Scan(&user, &ssl, &version)
	if err != nil {
		t.Fatal(err)
	}
	if user != role || !ssl || !strings.HasPrefix(version, "TLS") {
		t.Errorf("user %q ssl %v version %q", user, ssl, version)
	}

	// The same through a connector built from Config.
	conn, err := pq.NewConnectorConfig(c.Config(role, "pw-1", ""))
	if err != nil {
		t.Fatal(err)
	}
	db2 := sql.OpenDB(conn)
	defer db2.Close()
	if !sessionSSL(t, db2) {
		t.Error("Config session is not encrypted")
	}

	// verify-full against another CA fails.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "other.crt")
	if err := os.WriteFile(other, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = login(t, c.DSN(role, "pw-1", "", "sslrootcert", other))
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("login trusting another CA: %v, want x509.UnknownAuthorityError", err)
	}
}

func TestWrongPasswordAndAuthFailures(t *testing.T) {
	c := testdb.Shared(t)
	role := newRole(t, c, "right")
	if n := c.AuthFailures(role); n != 0 {
		t.Fatalf("AuthFailures before = %d", n)
	}
	_, err := login(t, c.DSN(role, "wrong", ""))
	wantCode(t, err, "28P01")
	if n := c.AuthFailures(role); n != 1 {
		t.Fatalf("AuthFailures after one failure = %d\n%s", n, c.LogTail(10))
	}
	_, err = login(t, c.DSN(role, "wrong again", ""))
	wantCode(t, err, "28P01")
	mustLogin(t, c, c.DSN(role, "right", ""))
	if n := c.AuthFailures(role); n != 2 {
		t.Fatalf("AuthFailures = %d, want 2", n)
	}
	// Failures are counted per role.
	if n := c.AuthFailures(role + "x"); n != 0 {
		t.Fatalf("AuthFailures of another role = %d", n)
	}
}

func TestSetPasswordAffectsOnlyNewLogins(t *testing.T) {
	c := testdb.Shared(t)
	ctx := context.Background()
	role := newRole(t, c, "old-pw")
	db := mustLogin(t, c, c.DSN(role, "old-pw", ""))
	held, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	if err := c.SetPassword(ctx, role, "new-pw"); err != nil {
		t.Fatal(err)
	}
	_, err = login(t, c.DSN(role, "old-pw", ""))
	wantCode(t, err, "28P01")
	mustLogin(t, c, c.DSN(role, "new-pw", ""))

	var one int
	if err := held.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("open session after the password change: %v", err)
	}
}

func TestTerminateSessions(t *testing.T) {
	c := testdb.Shared(t)
	ctx := context.Background()
	role := newRole(t, c, "pw")
	db := mustLogin(t, c, c.DSN(role, "pw", ""))
	var held []*sql.Conn
	for range 3 {
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		held = append(held, conn)
	}
	n, err := c.TerminateSessions(ctx, role)
	if err != nil {
		t.Fatal(err)
	}
	// The ping in login may have left a fourth, idle session.
	if n < 3 || n > 4 {
		t.Fatalf("terminated %d sessions, want 3 or 4", n)
	}
	for _, conn := range held {
		if err := conn.QueryRowContext(ctx, "SELECT 1").Scan(new(int)); err == nil {
			t.Fatal("a terminated session still answers")
		}
	}
	if n, err := c.TerminateSessions(ctx, role); err != nil || n != 0 {
		t.Fatalf("second TerminateSessions = %d, %v", n, err)
	}
}

func TestSetHostSSLOnly(t *testing.T) {
	c := testdb.Shared(t)
	ctx := context.Background()
	role := newRole(t, c, "pw")
	if c.HostSSLOnly() {
		t.Fatal("shared cluster started in host-SSL-only mode")
	}
	plain := c.DSN(role, "pw", "", "sslmode", "disable")
	db := mustLogin(t, c, plain)
	if sessionSSL(t, db) {
		t.Fatal("sslmode=disable session is encrypted")
	}

	if err := c.SetHostSSLOnly(ctx, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.SetHostSSLOnly(context.Background(), false); err != nil {
			t.Error(err)
		}
	})
	if !c.HostSSLOnly() {
		t.Error("HostSSLOnly() = false after SetHostSSLOnly(true)")
	}
	_, err := login(t, plain)
	pe := wantCode(t, err, "28000")
	if !strings.Contains(pe.Message, "no pg_hba.conf entry") {
		t.Errorf("message %q", pe.Message)
	}
	mustLogin(t, c, c.DSN(role, "pw", "", "sslmode", "require"))
	mustLogin(t, c, c.DSN(role, "pw", ""))

	if err := c.SetHostSSLOnly(ctx, false); err != nil {
		t.Fatal(err)
	}
	mustLogin(t, c, plain)
}

func TestClientCertificate(t *testing.T) {
	c := testdb.Shared(t)
	createRole(t, c, testdb.CertUser, "cert-pw")
	certFile, keyFile, err := c.ClientCert(testdb.CertUser)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v", fi.Mode().Perm())
	}

	db := mustLogin(t, c, c.DSN(testdb.CertUser, "cert-pw", "", "sslcert", certFile, "sslkey", keyFile))
	var dn string
	if err := db.QueryRow("SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&dn); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(dn, "CN="+testdb.CertUser) {
		t.Errorf("client_dn = %q", dn)
	}

	// No certificate: refused even with the right password.
	_, err = login(t, c.DSN(testdb.CertUser, "cert-pw", ""))
	wantCode(t, err, "28000")
	// A certificate for someone else.
	otherCert, otherKey, err := c.ClientCert("someone_else")
	if err != nil {
		t.Fatal(err)
	}
	// PostgreSQL checks the CN after the password and then reports the
	// failure as the method's: 28P01 "password authentication failed".
	_, err = login(t, c.DSN(testdb.CertUser, "cert-pw", "", "sslcert", otherCert, "sslkey", otherKey))
	wantCode(t, err, "28P01")
	if !strings.Contains(c.LogTail(4), "CN mismatch") {
		t.Errorf("log tail lacks the CN mismatch:\n%s", c.LogTail(4))
	}
	// ... and the server log says "password authentication failed" too.
	if n := c.AuthFailures(testdb.CertUser); n != 1 {
		t.Errorf("AuthFailures(CertUser) = %d, want 1", n)
	}
	// No TLS at all.
	_, err = login(t, c.DSN(testdb.CertUser, "cert-pw", "", "sslmode", "disable"))
	wantCode(t, err, "28000")
	// The certificate does not replace the password.
	_, err = login(t, c.DSN(testdb.CertUser, "wrong", "", "sslcert", certFile, "sslkey", keyFile))
	wantCode(t, err, "28P01")
}

func TestQuotingOfNamesAndPasswords(t *testing.T) {
	c := testdb.Shared(t)
	ctx := context.Background()
	role := `Odd "Role" ü ' x`
	pw := `it's a \back\slash "quote" ünï ' \' \\`
	createRole(t, c, role, pw)
	db := mustLogin(t, c, c.DSN(role, pw, ""))
	var user string
	if err := db.QueryRow("SELECT current_user").Scan(&user); err != nil || user != role {
		t.Fatalf("current_user %q, %v", user, err)
	}
	pw2 := `E'\x41' ; DROP ROLE x; --`
	if err := c.SetPassword(ctx, role, pw2); err != nil {
		t.Fatal(err)
	}
	mustLogin(t, c, c.DSN(role, pw2, ""))
}

func TestCreateDatabase(t *testing.T) {
	c := testdb.Shared(t)
	ctx := context.Background()
	role := newRole(t, c, "pw")
	dbName := "db_" + role
	if err := c.CreateDatabase(ctx, dbName, role); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.DropDatabase(context.Background(), dbName); err != nil {
			t.Error(err)
		}
	})
	db := mustLogin(t, c, c.DSN(role, "pw", dbName))
	var name, owner string
	err := db.QueryRow(`SELECT current_database(), pg_get_userbyid(datdba)
		FROM pg_database WHERE datname = current_database()`).Scan(&name, &owner)
	if err != nil {
		t.Fatal(err)
	}
	if name != dbName || owner != role {
		t.Errorf("database %q owner %q", name, owner)
	}
	if _, err := db.Exec("CREATE TABLE t (x int)"); err != nil {
		t.Errorf("owner cannot create a table: %v", err)
	}

	other := newRole(t, c, "pw")
	if err := c.GrantAllOnDatabase(ctx, dbName, other); err != nil {
		t.Fatal(err)
	}
	if err := c.GrantRole(ctx, role, other); err != nil {
		t.Fatal(err)
	}
	odb := mustLogin(t, c, c.DSN(other, "pw", dbName))
	var member bool
	if err := odb.QueryRow("SELECT pg_has_role($1, 'MEMBER')", role).Scan(&member); err != nil || !member {
		t.Errorf("membership %v, %v", member, err)
	}
}

func TestManyConcurrentConnections(t *testing.T) {
	c := testdb.Shared(t)
	ctx := context.Background()
	role := newRole(t, c, "pw")
	const n = 150
	db, err := sql.Open("postgres", c.DSN(role, "pw", ""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(n)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []*sql.Conn
		errs  []error
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := db.Conn(ctx)
			if err == nil {
				err = conn.PingContext(ctx)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			conns = append(conns, conn)
		}()
	}
	wg.Wait()
	defer func() {
		for _, conn := range conns {
			conn.Close()
		}
	}()
	if len(errs) > 0 {
		t.Fatalf("%d of %d connections failed, first: %v", len(errs), n, errs[0])
	}
	var count int
	if err := c.DB().QueryRow("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role).Scan(&count); err != nil {
		t.Fatal(err)
	}
	if count != n {
		t.Errorf("%d sessions, want %d", count, n)
	}
}

// The admin DSN and the internal admin connections must not be swayed by the
// PG* environment.
func TestEnvironmentDoesNotLeakIn(t *testing.T) {
	c := testdb.Shared(t)
	role := newRole(t, c, "pw")
	for k, v := range map[string]string{
		"PGHOST":            "/nonexistent",
		"PGHOSTADDR":        "127.0.0.2",
		"PGPORT":            "1",
		"PGUSER":            "nobody",
		"PGPASSWORD":        "wrong",
		"PGDATABASE":        "nope",
		"PGSSLMODE":         "disable",
		"PGSSLNEGOTIATION":  "direct",
		"PGOPTIONS":         "-c search_path=nowhere",
		"PGSERVICE":         "nope",
		"PGSSLROOTCERT":     "/nonexistent",
		"PGCONNECT_TIMEOUT": "1",
	} {
		t.Setenv(k, v)
	}
	for _, dsn := range []string{c.AdminDSN(), c.DSN(role, "pw", "")} {
		db := mustLogin(t, c, dsn)
		var path string
		if err := db.QueryRow("SHOW search_path").Scan(&path); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(path, "nowhere") {
			t.Errorf("PGOPTIONS leaked in: search_path = %q", path)
		}
	}
	// SetHostSSLOnly opens fresh admin sessions.
	if err := c.SetHostSSLOnly(context.Background(), c.HostSSLOnly()); err != nil {
		t.Fatal(err)
	}
}

func TestLogTail(t *testing.T) {
	c := testdb.Shared(t)
	tail := c.LogTail(5)
	if tail == "" {
		t.Fatal("LogTail is empty")
	}
	if n := len(strings.Split(tail, "\n")); n > 5 {
		t.Errorf("LogTail(5) has %d lines", n)
	}
	if !strings.Contains(c.LogTail(100000), "database system is ready to accept connections") {
		t.Error("the log lacks the ready line")
	}
}

func TestHBAConf(t *testing.T) {
	for _, sslOnly := range []bool{false, true} {
		conf := testdb.HBAConf(sslOnly)
		var kinds []string
		for _, line := range strings.Split(conf, "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || strings.HasPrefix(f[0], "#") {
				continue
			}
			kinds = append(kinds, f[0]+"/"+f[2]+"/"+f[len(f)-1])
		}
		want := []string{
			"local/all/scram-sha-256",
			"hostssl/" + testdb.CertUser + "/clientcert=verify-full",
			"host/" + testdb.CertUser + "/reject",
			"hostssl/all/scram-sha-256",
		}
		if !sslOnly {
			want = append(want, "host/all/scram-sha-256")
		}
		if strings.Join(kinds, " ") != strings.Join(want, " ") {
			t.Errorf("sslOnly=%v: lines %v, want %v", sslOnly, kinds, want)
		}
	}
}

func TestNoBinaries(t *testing.T) {
	t.Setenv("PG_BINDIR", t.TempDir())
	c, err := testdb.Start(context.Background(), testdb.Options{})
	if err == nil {
		c.Stop()
		t.Fatal("Start succeeded without binaries")
	}
	if !errors.Is(err, testdb.ErrNoBinaries) {
		t.Fatalf("error %v is not ErrNoBinaries", err)
	}
	for _, want := range []string{"apt-get install -y postgresql", "brew install postgresql", "PG_BINDIR"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

// A second cluster, started in host-SSL-only mode, and its clean-up.
func TestOwnClusterStartStop(t *testing.T) {
	shared := testdb.Shared(t)
	base := filepath.Dir(shared.Dir())

	// A directory left by a crashed test binary: its owner is gone.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale, err := os.MkdirTemp(base, "pgt-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stale, ".testdb-owner"), []byte(strconv.Itoa(dead.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	began := time.Now()
	c, err := testdb.Start(ctx, testdb.Options{HostSSLOnly: true, MaxConnections: 50, SCRAMIterations: 1000})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("second cluster started in %v", time.Since(began))
	defer c.Stop()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale directory %s survived: %v", stale, err)
	}
	if c.Dir() == shared.Dir() || c.Port() == shared.Port() {
		t.Fatal("second cluster shares the first's directory or port")
	}
	if !c.HostSSLOnly() {
		t.Error("HostSSLOnly() = false")
	}
	role := "own_cluster_role"
	if err := c.CreateRole(ctx, role, "pw"); err != nil {
		t.Fatal(err)
	}
	_, err = login(t, c.DSN(role, "pw", "", "sslmode", "disable"))
	wantCode(t, err, "28000")
	db := mustLogin(t, c, c.DSN(role, "pw", "", "sslmode", "require"))
	if !sessionSSL(t, db) {
		t.Error("sslmode=require session is not encrypted")
	}
	db.Close()
	// SCRAMIterations: the role's secret was computed here.
	var secret string
	if err := c.DB().QueryRow("SELECT rolpassword FROM pg_authid WHERE rolname = $1", role).Scan(&secret); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(secret, "SCRAM-SHA-256$1000:") {
		t.Errorf("secret %q", secret)
	}
	if err := c.SetPassword(ctx, role, "pw2"); err != nil {
		t.Fatal(err)
	}
	_, err = login(t, c.DSN(role, "pw", ""))
	wantCode(t, err, "28P01")
	mustLogin(t, c, c.DSN(role, "pw2", "")).Close()
	// A password that is not printable ASCII is hashed by the server.
	if err := c.SetPassword(ctx, role, "pw\tü"); err != nil {
		t.Fatal(err)
	}
	mustLogin(t, c, c.DSN(role, "pw\tü", "")).Close()
	if _, err := testdb.Start(ctx, testdb.Options{SCRAMIterations: 16}); err == nil {
		t.Error("SCRAMIterations 16 accepted")
	}
	if err := c.DropRole(ctx, role); err != nil {
		t.Fatal(err)
	}

	pid := c.ServerPID()
	if pid <= 0 {
		t.Fatal("no server pid")
	}
	dir := c.Dir()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still exists after Stop: %v", dir, err)
	}
	if c.ServerPID() != 0 {
		t.Error("ServerPID after Stop")
	}
	if p, err := os.FindProcess(pid); err == nil {
		if p.Signal(syscall.Signal(0)) == nil {
			t.Errorf("postmaster %d still runs", pid)
		}
	}
	// No process (postmaster or backend) refers to the removed directory.
	if procs, _ := filepath.Glob("/proc/[0-9]*/cmdline"); len(procs) > 0 {
		for _, p := range procs {
			b, _ := os.ReadFile(p)
			if strings.Contains(string(b), dir) {
				t.Errorf("%s: %q still runs", p, strings.ReplaceAll(string(b), "\x00", " "))
			}
		}
	}
	if c.LogTail(5) == "" {
		t.Error("LogTail after Stop is empty")
	}
}

func TestStartCanceledLeavesNothing(t *testing.T) {
	shared := testdb.Shared(t)
	base := filepath.Dir(shared.Dir())
	before, _ := filepath.Glob(filepath.Join(base, "pgt-*"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c, err := testdb.Start(ctx, testdb.Options{})
	if err == nil {
		c.Stop()
		t.Fatal("Start with a canceled context succeeded")
	}
	t.Log(err)
	after, _ := filepath.Glob(filepath.Join(base, "pgt-*"))
	if len(after) != len(before) {
		t.Errorf("directories before %v, after %v", before, after)
	}
}

// A port taken between choosing it and starting the server makes Start try
// another.
func TestStartRetriesTakenPort(t *testing.T) {
	testdb.Shared(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	calls := 0
	defer testdb.SetPickPort(func() (int, error) {
		calls++
		if calls <= 2 {
			return taken, nil
		}
		return testdb.FreePort()
	})()
	var progress strings.Builder
	c, err := testdb.Start(context.Background(), testdb.Options{Log: &progress})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if c.Port() == taken || calls != 3 {
		t.Errorf("port %d (taken %d), %d choices", c.Port(), taken, calls)
	}
	if !strings.Contains(progress.String(), "was taken") {
		t.Errorf("progress:\n%s", progress.String())
	}
	if !strings.Contains(c.LogTail(1000), "Address already in use") {
		t.Errorf("log:\n%s", c.LogTail(1000))
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
}
