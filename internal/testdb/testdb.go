// Package testdb starts a real, throwaway PostgreSQL cluster for tests and
// demos: initdb into a temporary directory, TLS with a throwaway CA,
// scram-sha-256 logins, and a superuser pool. Start it once per test binary
// with RunMain from TestMain and fetch it with Shared, or call Start and Stop
// directly.
//
// The server listens on 127.0.0.1 only. Its pg_hba.conf admits
// scram-sha-256 logins over TLS ("hostssl") and, unless in host-SSL-only mode,
// over plain TCP ("host"). The role CertUser additionally needs a client
// certificate signed by the cluster's CA (see ClientCert) and is refused
// without TLS.
//
// When the process runs as root (as in CI containers), initdb and postgres
// run as the "postgres" OS user, since PostgreSQL refuses to run as root.
package testdb

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lib/pq"
)

const (
	// AdminUser is the cluster's superuser (initdb --username).
	AdminUser = "pgsadmin"

	// CertUser is the role that pg_hba.conf lets in only over TLS with a
	// client certificate whose CN is the role name (clientcert=verify-full),
	// in addition to its password. The role is not created by Start.
	CertUser = "pgs_certuser"

	// DefaultMaxConnections is the server's max_connections unless
	// Options.MaxConnections says otherwise.
	DefaultMaxConnections = 300

	host = "127.0.0.1"

	// File and directory names inside the cluster's temporary directory.
	ownerFile  = ".testdb-owner" // pid of the process that made the directory
	dataName   = "data"
	clientName = "client"
	logName    = "server.log"
	caName     = "ca.crt"
	certName   = "server.crt"
	keyName    = "server.key"
)

// ErrNoBinaries is returned (wrapped) by Start when no PostgreSQL server
// binaries are found.
var ErrNoBinaries = errors.New("testdb: PostgreSQL server binaries (initdb, postgres) not found; " +
	`install them with "apt-get install -y postgresql" (Debian/Ubuntu) or "brew install postgresql" (macOS), ` +
	"or set PG_BINDIR to the directory that holds initdb and postgres")

// Options configure Start.
type Options struct {
	// HostSSLOnly leaves only hostssl lines in pg_hba.conf: logins over TCP
	// without TLS are refused with SQLSTATE 28000 ("no pg_hba.conf entry").
	// SetHostSSLOnly switches it later.
	HostSSLOnly bool

	// Log, if not nil, receives progress lines.
	Log io.Writer

	// MaxConnections is the server's max_connections; 0 means
	// DefaultMaxConnections.
	MaxConnections int

	// StartTimeout bounds the wait for the server to accept logins after it
	// is launched; 0 means 60s.
	StartTimeout time.Duration

	// SCRAMIterations, if not 0, makes CreateRole and SetPassword store a
	// SCRAM-SHA-256 secret computed here with this iteration count instead
	// of the server's 4096, which makes every login of those roles cheaper
	// for the client (noticeable under -race with many logins). lib/pq
	// refuses counts under 1000. Passwords that are not printable ASCII are
	// always left to the server to hash.
	SCRAMIterations int
}

// Cluster is a running throwaway PostgreSQL server. Its methods are safe for
// concurrent use.
type Cluster struct {
	opts     Options
	binDir   string
	acct     *runAs // nil: the server runs as the current user
	env      []string
	root     string // temporary directory holding everything below
	dataDir  string
	logPath  string
	caFile   string
	adminPW  string
	adminCrt string
	adminKey string
	ca       *authority
	port     int

	logFile   *os.File
	srv       *server
	connector *pq.Connector
	db        *sql.DB

	mu          sync.Mutex // guards certSeq, hostSSLOnly; serialises pg_hba.conf rewrites
	certSeq     int
	hostSSLOnly bool

	stopOnce  sync.Once
	stopErr   error
	finalTail string // the log's last lines, kept for LogTail after Stop
}

// server is one launch of the postgres process.
type server struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result; read only after done is closed
}

// Start creates, configures and starts a new cluster. Stop it with Stop,
// which removes every file Start made. ctx bounds the start-up only.
func Start(ctx context.Context, opts Options) (cl *Cluster, err error) {
	began := time.Now()
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = DefaultMaxConnections
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 60 * time.Second
	}
	if opts.SCRAMIterations != 0 && opts.SCRAMIterations < 1000 {
		return nil, fmt.Errorf("testdb: SCRAMIterations %d: lib/pq refuses SCRAM iteration counts under 1000", opts.SCRAMIterations)
	}
	binDir, err := findBinDir()
	if err != nil {
		return nil, err
	}
	acct, err := serverAccount()
	if err != nil {
		return nil, err
	}
	base := tempBase(acct)
	removeStale(base)
	root, err := os.MkdirTemp(base, "pgt-")
	if err != nil {
		return nil, fmt.Errorf("testdb: %w", err)
	}
	c := &Cluster{
		opts:        opts,
		binDir:      binDir,
		acct:        acct,
		root:        root,
		dataDir:     filepath.Join(root, dataName),
		logPath:     filepath.Join(root, logName),
		caFile:      filepath.Join(root, caName),
		hostSSLOnly: opts.HostSSLOnly,
		env: []string{
			"PATH=" + binDir + string(os.PathListSeparator) + "/usr/bin" + string(os.PathListSeparator) + "/bin",
			"LC_ALL=C", "LANG=C", "TZ=UTC",
		},
	}
	defer func() {
		if err != nil {
			cl = nil
			tail := c.LogTail(40)
			if stopErr := c.Stop(); stopErr != nil {
				err = fmt.Errorf("%w (cleaning up: %v)", err, stopErr)
			}
			if tail != "" {
				err = fmt.Errorf("%w\n--- last lines of the server log ---\n%s", err, tail)
			}
		}
	}()
	c.logf("binaries in %s; directory %s%s", binDir, root, c.asWho())
	if err := os.WriteFile(filepath.Join(root, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return c, fmt.Errorf("testdb: %w", err)
	}
	if c.logFile, err = os.OpenFile(c.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644); err != nil {
		return c, fmt.Errorf("testdb: %w", err)
	}
	if err := c.makeCerts(); err != nil {
		return c, err
	}
	if err := chown(root, acct); err != nil {
		return c, fmt.Errorf("testdb: giving %s to the postgres OS user: %w", root, err)
	}

	t := time.Now()
	if err := c.initdb(ctx); err != nil {
		return c, err
	}
	c.logf("initdb took %v", time.Since(t).Round(time.Millisecond))
	if err := c.configure(); err != nil {
		return c, err
	}

	t = time.Now()
	for attempt := 1; ; attempt++ {
		if c.port, err = pickPort(); err != nil {
			return c, err
		}
		cfg := c.config(AdminUser, c.adminPW, "postgres")
		cfg.SSLCert, cfg.SSLKey = c.adminCrt, c.adminKey
		cfg.ApplicationName = "pgsecrets-testdb"
		if c.connector, err = pq.NewConnectorConfig(cfg); err != nil {
			return c, fmt.Errorf("testdb: %w", err)
		}
		err = c.startServer(ctx)
		if err == nil {
			break
		}
		if !errors.Is(err, errPortInUse) || attempt > 3 {
			return c, err
		}
		c.logf("port %d was taken; retrying with another", c.port)
	}
	c.logf("server ready on %s:%d in %v (total start-up %v)", host, c.port,
		time.Since(t).Round(time.Millisecond), time.Since(began).Round(time.Millisecond))

	c.db = sql.OpenDB(c.connector)
	c.db.SetMaxOpenConns(20)
	c.db.SetMaxIdleConns(4)
	if err := c.db.PingContext(ctx); err != nil {
		return c, fmt.Errorf("testdb: admin login: %w", err)
	}
	return c, nil
}

func (c *Cluster) logf(format string, args ...any) {
	if c.opts.Log != nil {
		fmt.Fprintf(c.opts.Log, "testdb: "+format+"\n", args...)
	}
}

func (c *Cluster) asWho() string {
	if c.acct == nil {
		return ""
	}
	return fmt.Sprintf(" (server runs as OS user %s)", c.acct.name)
}

// findBinDir locates initdb and postgres: $PG_BINDIR, `pg_config --bindir`,
// the newest versioned install directory, then $PATH.
func findBinDir() (string, error) {
	has := func(dir string) bool {
		for _, name := range []string{"initdb", "postgres"} {
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	if dir := os.Getenv("PG_BINDIR"); dir != "" {
		if has(dir) {
			return dir, nil
		}
		return "", fmt.Errorf("%w (PG_BINDIR=%q holds no initdb and postgres)", ErrNoBinaries, dir)
	}
	if pgc, err := exec.LookPath("pg_config"); err == nil {
		if out, err := exec.Command(pgc, "--bindir").Output(); err == nil {
			if dir := strings.TrimSpace(string(out)); dir != "" && has(dir) {
				return dir, nil
			}
		}
	}
	var dirs []string
	for _, pattern := range []string{
		"/usr/lib/postgresql/*/bin",         // Debian, Ubuntu
		"/usr/pgsql-*/bin",                  // PGDG RPMs
		"/opt/homebrew/opt/postgresql*/bin", // Homebrew, Apple silicon
		"/usr/local/opt/postgresql*/bin",    // Homebrew, Intel
		"/Applications/Postgres.app/Contents/Versions/*/bin",
	} {
		m, _ := filepath.Glob(pattern)
		dirs = append(dirs, m...)
	}
	sort.SliceStable(dirs, func(i, j int) bool { return dirVersion(dirs[i]) > dirVersion(dirs[j]) })
	for _, dir := range dirs {
		if has(dir) {
			return dir, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil && has(filepath.Dir(p)) {
		return filepath.Dir(p), nil
	}
	return "", ErrNoBinaries
}

var versionRE = regexp.MustCompile(`(?:postgresql[@/-]?|pgsql-|Versions/)(\d+)(?:\.(\d+))?`)

// dirVersion extracts the major version from an install directory, 0 when
// there is none ("postgresql@16" → 16, "/usr/lib/postgresql/15/bin" → 15).
func dirVersion(dir string) int {
	m := versionRE.FindStringSubmatch(dir)
	if m == nil {
		return 0
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	return major*1000 + minor
}

// tempBase picks the parent of the cluster directory: os.TempDir() unless it
// is too long for a Unix socket path or, when the server runs as another
// user, that user cannot reach it; /tmp then.
func tempBase(acct *runAs) string {
	dir := os.TempDir()
	if runtime.GOOS == "windows" {
		return dir
	}
	if len(dir) > 70 || !traversable(dir, acct) {
		return "/tmp"
	}
	return dir
}

// removeStale deletes cluster directories left behind by test binaries that
// died without calling Stop (crash, timeout, kill): both the process that
// made the directory and its server must be gone.
func removeStale(base string) {
	dirs, _ := filepath.Glob(filepath.Join(base, "pgt-*"))
	for _, dir := range dirs {
		owner := pidIn(filepath.Join(dir, ownerFile))
		if owner <= 0 || processAlive(owner) {
			continue // not ours, still being set up, or in use
		}
		if pm := pidIn(filepath.Join(dir, dataName, "postmaster.pid")); pm > 0 && processAlive(pm) {
			continue
		}
		_ = os.RemoveAll(dir)
	}
}

// pidIn reads the number on the first line of a file; 0 if there is none.
func pidIn(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	n, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0
	}
	return n
}

// makeCerts writes the CA certificate, the server's certificate and key
// (owned by the server's account, key mode 0600, as PostgreSQL demands) and
// the superuser's client certificate.
func (c *Cluster) makeCerts() error {
	now := time.Now()
	var err error
	if c.ca, err = newAuthority(now); err != nil {
		return err
	}
	certPEM, keyPEM, err := c.ca.issue("localhost", true, now)
	if err != nil {
		return err
	}
	if err := writeFile(c.caFile, c.ca.certPEM, 0o644, c.acct); err != nil {
		return fmt.Errorf("testdb: %w", err)
	}
	if err := writeFile(filepath.Join(c.root, certName), certPEM, 0o644, c.acct); err != nil {
		return fmt.Errorf("testdb: %w", err)
	}
	if err := writeFile(filepath.Join(c.root, keyName), keyPEM, 0o600, c.acct); err != nil {
		return fmt.Errorf("testdb: %w", err)
	}
	if err := os.Mkdir(filepath.Join(c.root, clientName), 0o700); err != nil {
		return fmt.Errorf("testdb: %w", err)
	}
	// The superuser presents a client certificate too, so lib/pq never falls
	// back to ~/.postgresql/postgresql.crt for the admin connections.
	c.adminCrt, c.adminKey, err = c.ClientCert(AdminUser)
	return err
}

// initdb creates the data directory with a random superuser password.
func (c *Cluster) initdb(ctx context.Context) error {
	pw := make([]byte, 18)
	if _, err := rand.Read(pw); err != nil {
		return fmt.Errorf("testdb: %w", err)
	}
	c.adminPW = hex.EncodeToString(pw)
	pwFile := filepath.Join(c.root, "pwfile")
	if err := writeFile(pwFile, []byte(c.adminPW+"\n"), 0o600, c.acct); err != nil {
		return fmt.Errorf("testdb: %w", err)
	}
	defer os.Remove(pwFile)
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, "initdb"),
		"-D", c.dataDir,
		"--username="+AdminUser,
		"--pwfile="+pwFile,
		"--auth=scram-sha-256",
		"--encoding=UTF8",
		"--locale=C",
		"--no-sync",
	)
	cmd.Dir = c.root
	cmd.Env = c.env
	cmd.SysProcAttr = sysProcAttr(c.acct, false)
	if out, err := cmd.CombinedOutput(); err != nil {
		if out = bytes.TrimSpace(out); len(out) > 0 {
			return fmt.Errorf("testdb: initdb%s: %w\n%s", c.asWho(), err, out)
		}
		return fmt.Errorf("testdb: initdb%s: %w", c.asWho(), err)
	}
	return nil
}

// configure appends the cluster's settings to postgresql.conf and writes
// pg_hba.conf.
func (c *Cluster) configure() error {
	q := func(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
	settings := []string{
		"",
		"# added by pgsecrets/internal/testdb",
		"listen_addresses = " + q(host),
		"unix_socket_directories = " + q(c.root),
		"password_encryption = 'scram-sha-256'",
		"ssl = on",
		"ssl_cert_file = " + q(filepath.Join(c.root, certName)),
		"ssl_key_file = " + q(filepath.Join(c.root, keyName)),
		"ssl_ca_file = " + q(c.caFile),
		"fsync = off",
		"synchronous_commit = off",
		"full_page_writes = off",
		"max_connections = " + strconv.Itoa(c.opts.MaxConnections),
		"shared_buffers = '32MB'",
		"logging_collector = off",
		"log_destination = 'stderr'",
		"log_line_prefix = '%m [%p] %u@%d '",
		"log_min_messages = warning",
		"log_connections = off",
		"log_disconnections = off",
		"lc_messages = 'C'",
		"",
	}
	f, err := os.OpenFile(filepath.Join(c.dataDir, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("testdb: %w", err)
	}
	_, err = f.WriteString(strings.Join(settings, "\n"))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("testdb: postgresql.conf: %w", err)
	}
	return c.writeHBA(c.hostSSLOnly)
}

// hbaConf is the whole pg_hba.conf. Lines are matched top to bottom; "host"
// matches TCP with or without TLS, "hostssl" only with TLS.
func hbaConf(sslOnly bool) string {
	var b strings.Builder
	b.WriteString("# written by pgsecrets/internal/testdb\n")
	fmt.Fprintf(&b, "local   all all %-16s scram-sha-256\n", "")
	fmt.Fprintf(&b, "hostssl all %s %s/32 scram-sha-256 clientcert=verify-full\n", CertUser, host)
	fmt.Fprintf(&b, "host    all %s %s/32 reject\n", CertUser, host)
	fmt.Fprintf(&b, "hostssl all all %s/32 scram-sha-256\n", host)
	if !sslOnly {
		fmt.Fprintf(&b, "host    all all %s/32 scram-sha-256\n", host)
	}
	return b.String()
}

// writeHBA replaces pg_hba.conf atomically.
func (c *Cluster) writeHBA(sslOnly bool) error {
	path := filepath.Join(c.dataDir, "pg_hba.conf")
	tmp := path + ".new"
	if err := writeFile(tmp, []byte(hbaConf(sslOnly)), 0o600, c.acct); err != nil {
		return fmt.Errorf("testdb: pg_hba.conf: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("testdb: pg_hba.conf: %w", err)
	}
	return nil
}

// pickPort chooses the server's port; tests replace it.
var pickPort = freePort

// freePort asks the kernel for a free TCP port on the loopback address.
func freePort() (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("testdb: finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

var errPortInUse = errors.New("testdb: the server could not bind its port")

// startServer launches postgres on c.port and waits until the superuser can
// log in over TLS.
func (c *Cluster) startServer(ctx context.Context) error {
	logStart := fileSize(c.logPath)
	cmd := exec.Command(filepath.Join(c.binDir, "postgres"), "-D", c.dataDir, "-p", strconv.Itoa(c.port))
	cmd.Dir = c.root
	cmd.Env = c.env
	cmd.Stdout = c.logFile
	cmd.Stderr = c.logFile
	cmd.SysProcAttr = sysProcAttr(c.acct, true)
	s := &server{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// The parent-death signal (Linux) fires when the thread that
		// started the server exits, so keep this goroutine on its thread
		// until the server has exited. The thread is discarded then.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		s.err = cmd.Wait()
		close(s.done)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("testdb: starting postgres: %w", err)
	}
	c.srv = s

	// Wait for postmaster.pid to say "ready" (what pg_ctl -w does) before
	// logging in: until then the port may belong to someone else.
	deadline := time.Now().Add(c.opts.StartTimeout)
	pidFile := filepath.Join(c.dataDir, "postmaster.pid")
	var lastErr error
	for {
		select {
		case <-s.done:
			c.srv = nil
			if strings.Contains(readFrom(c.logPath, logStart), "Address already in use") {
				return fmt.Errorf("%w %d", errPortInUse, c.port)
			}
			return fmt.Errorf("testdb: postgres exited during start-up (%v)", s.err)
		case <-ctx.Done():
			return fmt.Errorf("testdb: waiting for the server: %w (last login attempt: %v)", ctx.Err(), lastErr)
		default:
		}
		if postmasterReady(pidFile, cmd.Process.Pid) {
			conn, err := c.connector.Connect(ctx)
			if err == nil {
				conn.Close()
				return nil
			}
			lastErr = err
			if !transientStartErr(err) {
				return fmt.Errorf("testdb: admin login to the new server: %w", err)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("testdb: server not accepting logins after %v (last login attempt: %v)", c.opts.StartTimeout, lastErr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// postmasterReady reports whether postmaster.pid is the given process's and
// its status line (the 8th) says "ready".
func postmasterReady(pidFile string, pid int) bool {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return false
	}
	lines := strings.Split(string(b), "\n")
	return len(lines) >= 8 &&
		strings.TrimSpace(lines[0]) == strconv.Itoa(pid) &&
		strings.TrimSpace(lines[7]) == "ready"
}

// transientStartErr tells errors of a server still starting (nothing on the
// port yet; "the database system is starting up") from real failures.
func transientStartErr(err error) bool {
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		return pqErr.SQLState() == "57P03"
	}
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		alert     tls.AlertError
	)
	if errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &alert) {
		return false
	}
	return true
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func readFrom(path string, off int64) string {
	b, err := os.ReadFile(path)
	if err != nil || off > int64(len(b)) {
		return ""
	}
	return string(b[off:])
}

// stop ends the server with an immediate shutdown, killing it if it does
// not exit in time.
func (s *server) stop(timeout time.Duration) error {
	select {
	case <-s.done:
		return nil
	default:
	}
	_ = quitServer(s.cmd.Process)
	select {
	case <-s.done:
		return nil
	case <-time.After(timeout):
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	return fmt.Errorf("testdb: server did not exit within %v of an immediate shutdown; killed", timeout)
}

// Stop closes the superuser pool, stops the server (immediate shutdown) and
// removes every file Start made. It is idempotent; later calls return the
// first call's result.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		var errs []error
		if c.db != nil {
			if err := c.db.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		if c.srv != nil {
			if err := c.srv.stop(15 * time.Second); err != nil {
				errs = append(errs, err)
			}
		}
		c.finalTail = c.readTail(200)
		if c.logFile != nil {
			c.logFile.Close()
		}
		if c.root != "" {
			if err := os.RemoveAll(c.root); err != nil {
				errs = append(errs, fmt.Errorf("testdb: removing %s: %w", c.root, err))
			}
		}
		c.stopErr = errors.Join(errs...)
	})
	return c.stopErr
}

// Host is the address the server listens on: "127.0.0.1".
func (c *Cluster) Host() string { return host }

// Port is the server's TCP port.
func (c *Cluster) Port() int { return c.port }

// Addr is "127.0.0.1:<port>".
func (c *Cluster) Addr() string { return net.JoinHostPort(host, strconv.Itoa(c.port)) }

// Dir is the temporary directory holding the cluster (removed by Stop).
func (c *Cluster) Dir() string { return c.root }

// CAFile is the path of the PEM certificate of the CA that signed the
// server's certificate (use it as sslrootcert).
func (c *Cluster) CAFile() string { return c.caFile }

// CAPEM is the CA certificate in PEM form.
func (c *Cluster) CAPEM() []byte { return bytes.Clone(c.ca.certPEM) }

// CAPool is a certificate pool holding only the CA.
func (c *Cluster) CAPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.ca.cert)
	return p
}

// AdminPassword is the superuser's (AdminUser's) password.
func (c *Cluster) AdminPassword() string { return c.adminPW }

// ClientCert writes a client certificate with CN=user, signed by the
// cluster's CA, and its key (mode 0600) into the cluster's directory and
// returns their paths (use them as sslcert and sslkey).
func (c *Cluster) ClientCert(user string) (certFile, keyFile string, err error) {
	certPEM, keyPEM, err := c.ca.issue(user, false, time.Now())
	if err != nil {
		return "", "", err
	}
	c.mu.Lock()
	c.certSeq++
	n := c.certSeq
	c.mu.Unlock()
	base := filepath.Join(c.root, clientName, fmt.Sprintf("%d-%s", n, fileSafe(user)))
	certFile, keyFile = base+".crt", base+".key"
	if err := writeFile(certFile, certPEM, 0o644, nil); err != nil {
		return "", "", fmt.Errorf("testdb: %w", err)
	}
	if err := writeFile(keyFile, keyPEM, 0o600, nil); err != nil {
		return "", "", fmt.Errorf("testdb: %w", err)
	}
	return certFile, keyFile, nil
}

func fileSafe(s string) string {
	b := []byte(s)
	for i, ch := range b {
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '_' || ch == '-') {
			b[i] = '_'
		}
	}
	if len(b) > 40 {
		b = b[:40]
	}
	return string(b)
}

// config is a lib/pq configuration for user over TLS with full
// verification against the cluster's CA. It is built field by field, so
// neither PG* environment variables nor ~/.pgpass nor a service file can
// change it.
func (c *Cluster) config(user, password, dbname string) pq.Config {
	if dbname == "" {
		dbname = "postgres"
	}
	return pq.Config{
		Host:               host,
		Hostaddr:           netip.MustParseAddr(host),
		Port:               uint16(c.port),
		User:               user,
		Password:           password,
		Database:           dbname,
		SSLMode:            pq.SSLModeVerifyFull,
		SSLRootCert:        c.caFile,
		SSLSNI:             true,
		ConnectTimeout:     30 * time.Second,
		ClientEncoding:     "UTF8",
		Datestyle:          "ISO, MDY",
		MinProtocolVersion: "3.0",
		MaxProtocolVersion: "3.0",
	}
}

// Config is a lib/pq configuration for logging in as user (to dbname;
// "" means "postgres") over TLS with sslmode=verify-full against the
// cluster's CA. Being built directly rather than parsed, it ignores PG*
// environment variables and ~/.pgpass. Use pq.NewConnectorConfig with it.
func (c *Cluster) Config(user, password, dbname string) pq.Config {
	return c.config(user, password, dbname)
}

// DSN is a key=value connection string for user (to dbname; "" means
// "postgres") over TLS with sslmode=verify-full against the cluster's CA.
// Everything a PG* environment variable could use to redirect or break the
// login is given explicitly (host, hostaddr, port, user, password, dbname,
// sslmode, sslrootcert, sslnegotiation, options, service, ...); sslcert and
// sslkey are not, and lib/pq still fails on a PG* variable it does not
// support (Config avoids both). extra holds further key, value pairs, which
// override the defaults (e.g. "sslmode", "disable" or "sslcert", certFile).
func (c *Cluster) DSN(user, password, dbname string, extra ...string) string {
	if dbname == "" {
		dbname = "postgres"
	}
	kv := []string{
		"host", host,
		"hostaddr", host,
		"port", strconv.Itoa(c.port),
		"user", user,
		"password", password,
		"dbname", dbname,
		"sslmode", "verify-full",
		"sslrootcert", c.caFile,
		"sslsni", "1",
		"sslnegotiation", "postgres",
		"connect_timeout", "30",
		"options", "",
		"service", "",
		"target_session_attrs", "any",
		"load_balance_hosts", "disable",
		"min_protocol_version", "3.0",
		"max_protocol_version", "3.0",
	}
	kv = append(kv, extra...)
	var b strings.Builder
	for i := 0; i+1 < len(kv); i += 2 {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(kv[i])
		b.WriteByte('=')
		b.WriteString(dsnQuote(kv[i+1]))
	}
	return b.String()
}

// dsnQuote quotes a key=value connection string value.
func dsnQuote(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// AdminDSN is a key=value connection string for the superuser, over TLS
// with sslmode=verify-full (sslrootcert=CAFile) and the superuser's client
// certificate.
func (c *Cluster) AdminDSN() string {
	return c.DSN(AdminUser, c.adminPW, "postgres",
		"sslcert", c.adminCrt, "sslkey", c.adminKey, "application_name", "pgsecrets-testdb")
}

// DB is the shared superuser pool (lib/pq); Stop closes it.
func (c *Cluster) DB() *sql.DB { return c.db }

// CreateRole creates a LOGIN role with a password (scram-sha-256); an empty
// password creates the role without one.
func (c *Cluster) CreateRole(ctx context.Context, name, password string) error {
	q := "CREATE ROLE " + pq.QuoteIdentifier(name) + " LOGIN"
	if password != "" {
		secret, err := c.passwordSecret(password)
		if err != nil {
			return err
		}
		q += " PASSWORD " + pq.QuoteLiteral(secret)
	}
	return c.exec(ctx, "creating role "+name, q)
}

// SetPassword changes a role's password. Open sessions stay open; new logins
// need the new password.
func (c *Cluster) SetPassword(ctx context.Context, role, password string) error {
	secret, err := c.passwordSecret(password)
	if err != nil {
		return err
	}
	return c.exec(ctx, "setting the password of "+role,
		"ALTER ROLE "+pq.QuoteIdentifier(role)+" PASSWORD "+pq.QuoteLiteral(secret))
}

// passwordSecret is what CREATE/ALTER ROLE ... PASSWORD gets: the password
// itself (the server hashes it), or with Options.SCRAMIterations a
// SCRAM-SHA-256 secret, which the server stores as it is.
func (c *Cluster) passwordSecret(password string) (string, error) {
	if c.opts.SCRAMIterations == 0 || !printableASCII(password) {
		return password, nil
	}
	return scramSecret(password, c.opts.SCRAMIterations)
}

// DropRole drops a role if it exists: it ends the role's sessions, revokes
// its privileges and drops what it owns in the postgres database (DROP
// OWNED), then drops the role. A database the role owns must be dropped
// first.
func (c *Cluster) DropRole(ctx context.Context, name string) error {
	if _, err := c.TerminateSessions(ctx, name); err != nil {
		return err
	}
	var exists bool
	if err := c.db.QueryRowContext(ctx, "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("testdb: dropping role %s: %w", name, err)
	}
	if !exists {
		return nil
	}
	id := pq.QuoteIdentifier(name)
	return c.exec(ctx, "dropping role "+name, "DROP OWNED BY "+id+"; DROP ROLE "+id)
}

// CreateDatabase creates a database, owned by owner unless owner is "".
func (c *Cluster) CreateDatabase(ctx context.Context, name, owner string) error {
	q := "CREATE DATABASE " + pq.QuoteIdentifier(name)
	if owner != "" {
		q += " OWNER " + pq.QuoteIdentifier(owner)
	}
	return c.exec(ctx, "creating database "+name, q)
}

// DropDatabase drops a database if it exists, ending its sessions.
func (c *Cluster) DropDatabase(ctx context.Context, name string) error {
	return c.exec(ctx, "dropping database "+name,
		"DROP DATABASE IF EXISTS "+pq.QuoteIdentifier(name)+" WITH (FORCE)")
}

// GrantRole makes member a member of role (GRANT role TO member).
func (c *Cluster) GrantRole(ctx context.Context, role, member string) error {
	return c.exec(ctx, "granting "+role+" to "+member,
		"GRANT "+pq.QuoteIdentifier(role)+" TO "+pq.QuoteIdentifier(member))
}

// GrantAllOnDatabase grants every database privilege on dbname to role.
func (c *Cluster) GrantAllOnDatabase(ctx context.Context, dbname, role string) error {
	return c.exec(ctx, "granting database "+dbname+" to "+role,
		"GRANT ALL PRIVILEGES ON DATABASE "+pq.QuoteIdentifier(dbname)+" TO "+pq.QuoteIdentifier(role))
}

func (c *Cluster) exec(ctx context.Context, what, query string) error {
	if _, err := c.db.ExecContext(ctx, query); err != nil {
		return fmt.Errorf("testdb: %s: %w", what, err)
	}
	return nil
}

// TerminateSessions ends every session of role (other than the caller's
// own) with pg_terminate_backend, waiting up to 5 s for each to exit, and
// reports how many ended.
func (c *Cluster) TerminateSessions(ctx context.Context, role string) (int, error) {
	var n int
	err := c.db.QueryRowContext(ctx, `
		WITH s AS MATERIALIZED (
			SELECT pid FROM pg_stat_activity
			WHERE usename = $1 AND pid <> pg_backend_pid()
		)
		SELECT count(*) FROM s WHERE pg_terminate_backend(s.pid, 5000)`, role).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("testdb: terminating the sessions of %s: %w", role, err)
	}
	return n, nil
}

// HostSSLOnly reports whether pg_hba.conf currently refuses TCP logins
// without TLS.
func (c *Cluster) HostSSLOnly() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hostSSLOnly
}

// SetHostSSLOnly rewrites pg_hba.conf with (on) or without (off) the plain
// "host" line and reloads the configuration. It returns once new logins
// follow the new rules.
func (c *Cluster) SetHostSSLOnly(ctx context.Context, on bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	before, err := c.loadTime(ctx)
	if err != nil {
		return err
	}
	if err := c.writeHBA(on); err != nil {
		return err
	}
	var problems sql.NullString
	if err := c.db.QueryRowContext(ctx,
		`SELECT string_agg(format('line %s: %s', line_number, error), '; ')
		 FROM pg_hba_file_rules WHERE error IS NOT NULL`).Scan(&problems); err != nil {
		return fmt.Errorf("testdb: checking pg_hba.conf: %w", err)
	}
	if problems.Valid {
		return fmt.Errorf("testdb: the new pg_hba.conf has errors: %s", problems.String)
	}
	if _, err := c.db.ExecContext(ctx, "SELECT pg_reload_conf()"); err != nil {
		return fmt.Errorf("testdb: reloading the configuration: %w", err)
	}
	// The postmaster reloads asynchronously. A new session's
	// pg_conf_load_time() is the postmaster's last reload, and a session
	// that shows a newer one was forked after pg_hba.conf was re-read.
	deadline := time.Now().Add(10 * time.Second)
	for {
		t, err := c.loadTime(ctx)
		if err != nil {
			return err
		}
		if t.After(before) {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("testdb: the server did not reload its configuration within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.hostSSLOnly = on
	return nil
}

// loadTime is pg_conf_load_time() as seen by a brand-new session.
func (c *Cluster) loadTime(ctx context.Context) (time.Time, error) {
	db := sql.OpenDB(c.connector) // a new pool: its first query opens a new session
	defer db.Close()
	var t time.Time
	if err := db.QueryRowContext(ctx, "SELECT pg_conf_load_time()").Scan(&t); err != nil {
		return time.Time{}, fmt.Errorf("testdb: reading pg_conf_load_time(): %w", err)
	}
	return t, nil
}

// LogTail returns the last n lines of the server log, the first place to
// look when a login fails. After Stop it returns what the log held then.
func (c *Cluster) LogTail(n int) string {
	if t := c.readTail(n); t != "" {
		return t
	}
	return lastLines(c.finalTail, n)
}

func (c *Cluster) readTail(n int) string {
	if c.logPath == "" {
		return ""
	}
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return ""
	}
	return lastLines(string(b), n)
}

func lastLines(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	if s == "" || n <= 0 {
		return ""
	}
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// AuthFailures counts the server log's FATAL "password authentication
// failed for user" lines for role. The server writes the line before it
// sends the error to the client, so a failure the caller has seen is
// already counted. A client certificate whose CN does not match (for
// CertUser) is logged, and reported to the client as 28P01, the same way.
func (c *Cluster) AuthFailures(role string) int {
	f, err := os.Open(c.logPath)
	if err != nil {
		return 0
	}
	defer f.Close()
	needle := `FATAL:  password authentication failed for user "` + role + `"`
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		if strings.Contains(sc.Text(), needle) {
			n++
		}
	}
	return n
}

// ServerPID is the postmaster's process id (0 when it is not running).
func (c *Cluster) ServerPID() int {
	if c.srv == nil || c.srv.cmd.Process == nil {
		return 0
	}
	select {
	case <-c.srv.done:
		return 0
	default:
		return c.srv.cmd.Process.Pid
	}
}
