package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lib/pq"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/smtest"
	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

const demoHelp = `Usage: pgsecrets demo [--duration 20s] [--rotate-every 3s] [--workers 8] [--verbose]

Starts a throwaway PostgreSQL server (TLS, scram-sha-256 logins) and an
in-process fake of AWS Secrets Manager, both on 127.0.0.1 and both gone when
the demo ends, also on Ctrl-C. It creates a role with a random password, a
database the role owns and the role's secret in the RDS JSON format, opens a
database/sql pool through pgsecrets, and runs --workers query loops against
it (four reads to one INSERT) while it changes the role's password every
--rotate-every, cycling through:

  four-step     what AWS's rotation function does: the new password is
                written as AWSPENDING, set on the role (ALTER ROLE), tested
                with a login, and moved to AWSCURRENT only 1.5s later. In
                between, AWSCURRENT holds a password the database no longer
                accepts; the driver finds and uses the AWSPENDING version.
  wrong-order   the database password changes first and the secret 1.5s
                later, as with a hand-made rotation; the driver keeps
                fetching the secret again until the new password is there.
  store outage  Secrets Manager fails every GetSecretValue (HTTP 500) for 3s;
                the driver keeps using the credentials it has.

With --rotate-every under 3s, the 1.5s and 3s phases shrink to half and all
of the interval, so the rotations never overlap.

Why connections are short-lived: PostgreSQL checks a password only at login,
and an open session survives a password change. The demo sets
SetConnMaxLifetime(250ms) and keeps at most workers/2 idle connections, so
new logins happen all the time and every rotation meets many of them. In
production use pgsecrets.Open's default (the secret's ttl, 1m to 1h).

The DSN sets secret_ttl=2s, so that the outage outlasts the cached
credential's TTL: the driver keeps serving it past the TTL ("stale serves")
while it retries the store in the background with backoff. Refreshes run in
the background before the TTL ends, triggered by use, so no query waits for
the store. A rotation still reaches the driver first through a rejected
login: the recovery fetches AWSCURRENT and AWSPENDING again and retries.

What is shown: a line when each rotation or outage starts and ends; a
progress line (elapsed time, queries, failed queries, rotations, calls to
GetSecretValue, p50 and p99 latency), redrawn in place on a terminal and
printed every second otherwise; then a summary with the driver's Stats and a
verdict.

"failed" counts queries that returned an error to the application: what a
user would see. Logins the database rejected and the driver retried are not
failures; they appear as "DB login failures" and in the driver's counters. A
query's latency includes waiting for a connection, so queries that waited
for a recovery show in p99 and max.

Exit status: 0 when no query failed; 1 when any did (the first errors are
printed) or PostgreSQL could not be started; 2 for usage errors; 130 when
interrupted.

Needs the PostgreSQL server binaries (initdb, postgres): found through
PG_BINDIR, pg_config, or the usual install directories.

With --provider vault the store is an in-process Vault (vaulttest) issuing
dynamic credentials: a PostgreSQL role per lease (TTL 3 × --rotate-every,
max TTL twice that), a pool with no SetConnMaxLifetime at all, and a Vault
outage every 3 × --rotate-every. It shows leases issued, renewed, retired
and revoked as they happen, and checks that db.Close left no lease and no
role behind.

Flags:
  --provider P        awssm (default) or vault
  --duration DUR      how long the load runs (default 20s)
  --rotate-every DUR  time between rotations and outages (default 3s)
  --workers N         concurrent query loops (default 8)
  --verbose           log the driver's events (log/slog text) to stderr
`

type demoOpts struct {
	provider    string
	duration    time.Duration
	rotateEvery time.Duration
	workers     int
	verbose     bool
}

// demoTestHook, when set, sees the finished demo (tests read the passwords
// it used and its counters).
var demoTestHook func(*demo)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	var o demoOpts
	fs.DurationVar(&o.duration, "duration", 20*time.Second, "")
	fs.DurationVar(&o.rotateEvery, "rotate-every", 3*time.Second, "")
	fs.IntVar(&o.workers, "workers", 8, "")
	fs.StringVar(&o.provider, "provider", "awssm", "")
	fs.BoolVar(&o.verbose, "verbose", false, "")
	pos, code, ok := parseFlags(fs, args, stdout, stderr, demoHelp)
	if !ok {
		return code
	}
	switch {
	case len(pos) > 0:
		return usageError(stderr, "demo", "takes no arguments, got %d", len(pos))
	case o.duration <= 0:
		return usageError(stderr, "demo", "--duration must be positive")
	case o.rotateEvery < 100*time.Millisecond:
		return usageError(stderr, "demo", "--rotate-every must be at least 100ms")
	case o.workers < 1 || o.workers > 200:
		return usageError(stderr, "demo", "--workers must be between 1 and 200")
	case o.provider != "awssm" && o.provider != "vault":
		return usageError(stderr, "demo", "--provider must be awssm or vault")
	}
	d := &demo{opt: o, stdout: stdout, stderr: stderr, term: isTerminal(stdout), errSeen: map[string]bool{}}
	code = d.run(ctx)
	if demoTestHook != nil {
		demoTestHook(d)
	}
	return code
}

const (
	demoRole   = "demo_app"
	demoDB     = "demo"
	demoSecret = "demo/app/db"

	// connLifetime is short on purpose: see demoHelp.
	connLifetime = 250 * time.Millisecond

	readQuery   = `SELECT count(*), coalesce(sum(amount), 0) FROM orders WHERE worker = $1`
	insertQuery = `INSERT INTO orders (worker, amount) VALUES ($1, $2)`
)

// demo is one run of the demo.
type demo struct {
	opt            demoOpts
	stdout, stderr io.Writer
	term           bool

	outMu        sync.Mutex // serialises writes to stdout and stderr
	lastProgress string

	pg *testdb.Cluster
	sm *smtest.Server
	vs *vaulttest.Server // --provider vault
	// restoreToken undoes VAULT_TOKEN; vaultToken is kept for tests' leak
	// checks.
	restoreToken func()
	vaultToken   string
	connector    *pgsecrets.Connector
	logins       *countingConnector
	db           *sql.DB
	start        time.Time // when the load started

	pwMu      sync.Mutex
	passwords []string // every password the role had, for tests' leak checks

	hist        histogram
	ok, failed  atomic.Int64
	errMu       sync.Mutex
	firstErrs   []string
	errSeen     map[string]bool
	interrupted bool

	rotations, fourSteps, wrongOrders, outages atomic.Int64
	outageTotal                                atomic.Int64 // nanoseconds
	eventErr                                   error        // a rotation step that failed (guarded by errMu)
}

func (d *demo) run(ctx context.Context) int {
	vault := d.opt.provider == "vault"
	if !vault {
		restoreEnv, err := setDemoAWSEnv()
		if err != nil {
			fmt.Fprintf(d.stderr, "pgsecrets demo: %v\n", err)
			return exitFail
		}
		defer restoreEnv()
		fmt.Fprintf(d.stdout, "pgsecrets demo: %d workers for %s, a rotation every %s\n", d.opt.workers, d.opt.duration, d.opt.rotateEvery)
	} else {
		fmt.Fprintf(d.stdout, "pgsecrets demo --provider vault: %d workers for %s, leases of %s\n", d.opt.workers, d.opt.duration, d.vaultTTL())
	}
	fmt.Fprintf(d.stdout, "starting a throwaway PostgreSQL server…\n")
	var pgLog io.Writer
	if d.opt.verbose {
		pgLog = d.stderr
	}
	pg, err := testdb.Start(ctx, testdb.Options{Log: pgLog})
	if err != nil {
		switch {
		case errors.Is(err, testdb.ErrNoBinaries):
			fmt.Fprintf(d.stderr, "pgsecrets demo: the demo runs a throwaway PostgreSQL server, and none is installed here.\n%v\n", err)
		case ctx.Err() != nil:
			fmt.Fprintln(d.stderr, "pgsecrets demo: interrupted")
			return exitInterrupted
		default:
			fmt.Fprintf(d.stderr, "pgsecrets demo: cannot start PostgreSQL: %v\n", err)
		}
		return exitFail
	}
	d.pg = pg
	defer pg.Stop()
	setup := d.setup
	if vault {
		setup = d.setupVault
		defer func() {
			if d.vs != nil {
				d.vs.Close()
			}
			if d.restoreToken != nil {
				d.restoreToken()
			}
		}()
	} else {
		d.sm = smtest.NewServer()
		defer d.sm.Close()
	}

	if err := setup(ctx); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(d.stderr, "pgsecrets demo: interrupted")
			return exitInterrupted
		}
		fmt.Fprintf(d.stderr, "pgsecrets demo: setting up: %v\n", err)
		return exitFail
	}
	defer d.db.Close()

	d.runLoad(ctx)
	if vault {
		return d.vaultSummary()
	}
	return d.summary()
}

// setDemoAWSEnv points the AWS SDK's default chain at dummy static
// credentials and away from this machine's AWS files and the metadata
// service; the DSN's secret_endpoint then sends every call to smtest.
func setDemoAWSEnv() (restore func(), err error) {
	dir, err := os.MkdirTemp("", "pgsecrets-demo-aws-")
	if err != nil {
		return nil, err
	}
	set := map[string]string{
		"AWS_ACCESS_KEY_ID":           "AKIDPGSECRETSDEMO",
		"AWS_SECRET_ACCESS_KEY":       "pgsecrets-demo-dummy-key",
		"AWS_REGION":                  smtest.DefaultRegion,
		"AWS_EC2_METADATA_DISABLED":   "true",
		"AWS_CONFIG_FILE":             filepath.Join(dir, "no-such-config"),
		"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "no-such-credentials"),
	}
	unset := []string{"AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
		"AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"}
	type saved struct {
		val string
		ok  bool
	}
	old := map[string]saved{}
	for k, v := range set {
		val, ok := os.LookupEnv(k)
		old[k] = saved{val, ok}
		os.Setenv(k, v)
	}
	for _, k := range unset {
		val, ok := os.LookupEnv(k)
		old[k] = saved{val, ok}
		os.Unsetenv(k)
	}
	return func() {
		for k, s := range old {
			if s.ok {
				os.Setenv(k, s.val)
			} else {
				os.Unsetenv(k)
			}
		}
		os.RemoveAll(dir)
	}, nil
}

func randomPassword() string {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	return "pw-" + hex.EncodeToString(b)
}

func (d *demo) remember(pw string) {
	d.pwMu.Lock()
	d.passwords = append(d.passwords, pw)
	d.pwMu.Unlock()
}

// Passwords returns every password the demo's role had.
func (d *demo) Passwords() []string {
	d.pwMu.Lock()
	defer d.pwMu.Unlock()
	return append([]string(nil), d.passwords...)
}

// secretJSON is the role's secret in the format AWS uses for RDS.
func (d *demo) secretJSON(pw string) string {
	b, _ := json.Marshal(map[string]any{
		"username": demoRole, "password": pw, "engine": "postgres",
		"host": d.pg.Host(), "port": d.pg.Port(), "dbname": demoDB,
	})
	return string(b)
}

func (d *demo) setup(ctx context.Context) error {
	pw := randomPassword()
	d.remember(pw)
	if err := d.pg.CreateRole(ctx, demoRole, pw); err != nil {
		return err
	}
	if err := d.pg.CreateDatabase(ctx, demoDB, demoRole); err != nil {
		return err
	}
	d.sm.CreateSecret(demoSecret, d.secretJSON(pw))

	dsn := fmt.Sprintf("host=%s port=%d dbname=%s sslmode=verify-full sslrootcert=%s secret_id=%s secret_endpoint=%s secret_ttl=2s",
		d.pg.Host(), d.pg.Port(), demoDB, d.pg.CAFile(), demoSecret, d.sm.URL())
	logger := slog.New(slog.DiscardHandler)
	if d.opt.verbose {
		logger = slog.New(slog.NewTextHandler(&logWriter{d}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	c, err := pgsecrets.NewConnector(dsn, pgsecrets.WithLogger(logger))
	if err != nil {
		return err
	}
	d.connector = c
	d.logins = &countingConnector{Connector: c}
	d.db = sql.OpenDB(d.logins)
	d.db.SetConnMaxLifetime(connLifetime)
	d.db.SetMaxIdleConns(max(1, d.opt.workers/2))

	// The first statement through the driver creates the table, so the
	// role owns it.
	if _, err := d.db.ExecContext(ctx, `CREATE TABLE orders (
		id         bigserial PRIMARY KEY,
		worker     int NOT NULL,
		amount     numeric(12,2) NOT NULL,
		created_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("creating the table through pgsecrets: %w", err)
	}
	if _, err := d.db.ExecContext(ctx, `CREATE INDEX orders_worker ON orders (worker) INCLUDE (amount)`); err != nil {
		return err
	}
	var version string
	if err := d.pg.DB().QueryRowContext(ctx, "SHOW server_version").Scan(&version); err != nil {
		return err
	}
	cfg := c.Config()
	fmt.Fprintf(d.stdout, "  postgres  PostgreSQL %s at %s (TLS, scram-sha-256); role %s owns database %s, table orders\n",
		firstField(version), d.pg.Addr(), demoRole, demoDB)
	fmt.Fprintf(d.stdout, "  secrets   %s in an in-process Secrets Manager at %s (RDS JSON format)\n", demoSecret, d.sm.URL())
	fmt.Fprintf(d.stdout, "  dsn       %s\n", cfg.FormatDSN())
	fmt.Fprintf(d.stdout, "  pool      connections live %s, at most %d idle: new logins all the time\n", connLifetime, max(1, d.opt.workers/2))
	fmt.Fprintf(d.stdout, "  load      %d workers: 4 reads to 1 INSERT; secret_ttl=2s, so the outage outlasts the cache\n\n", d.opt.workers)
	return nil
}

func firstField(s string) string {
	if f := strings.Fields(s); len(f) > 0 {
		return f[0]
	}
	return s
}

// runLoad runs the workers, the rotations and the progress display until
// the duration has passed or ctx ends.
func (d *demo) runLoad(ctx context.Context) {
	stop := make(chan struct{})
	d.start = time.Now()

	var workers sync.WaitGroup
	for i := range d.opt.workers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			d.worker(ctx, i+1, stop)
		}()
	}
	rotDone := make(chan struct{})
	go func() {
		defer close(rotDone)
		if d.vs != nil {
			d.vaultEvents(ctx, stop)
			return
		}
		d.rotate(ctx, stop)
	}()
	progDone := make(chan struct{})
	progStop := make(chan struct{})
	go func() {
		defer close(progDone)
		d.progressLoop(progStop)
	}()

	timer := time.NewTimer(d.opt.duration)
	select {
	case <-timer.C:
	case <-ctx.Done():
		timer.Stop()
		d.interrupted = true
	}
	close(stop)
	<-rotDone // finishes a rotation in progress, so waiting queries can complete
	workers.Wait()
	close(progStop)
	<-progDone
	d.outMu.Lock()
	if d.term {
		fmt.Fprint(d.stdout, "\r\033[K")
	}
	fmt.Fprintln(d.stdout, d.progressLine())
	d.outMu.Unlock()
}

func (d *demo) worker(ctx context.Context, id int, stop <-chan struct{}) {
	rng := mrand.New(mrand.NewPCG(uint64(id), uint64(time.Now().UnixNano())))
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		var err error
		t := time.Now()
		if rng.IntN(5) == 0 {
			amount := fmt.Sprintf("%d.%02d", rng.IntN(500), rng.IntN(100))
			_, err = d.db.ExecContext(ctx, insertQuery, id, amount)
		} else {
			var n int64
			var sum string
			err = d.db.QueryRowContext(ctx, readQuery, id).Scan(&n, &sum)
		}
		took := time.Since(t)
		if err != nil && ctx.Err() != nil {
			return // interrupted: the query was cancelled, not failed
		}
		d.hist.record(took)
		if err == nil {
			d.ok.Add(1)
			continue
		}
		d.failed.Add(1)
		d.noteErr(err.Error())
	}
}

func (d *demo) noteErr(msg string) {
	d.errMu.Lock()
	defer d.errMu.Unlock()
	if len(d.firstErrs) < 5 && !d.errSeen[msg] {
		d.errSeen[msg] = true
		d.firstErrs = append(d.firstErrs, msg)
	}
}

// rotate runs one rotation or outage every rotateEvery, one at a time,
// cycling four-step, wrong-order, outage. When stop closes it finishes the
// one in progress at once.
func (d *demo) rotate(ctx context.Context, stop <-chan struct{}) {
	every := d.opt.rotateEvery
	deadline := d.start.Add(d.opt.duration)
	next := d.start.Add(every)
	for i := 0; ; i++ {
		// An event that could not even get going before the end would
		// show nothing.
		if deadline.Sub(next) < every/4 || !sleepUntil(ctx, stop, next) {
			return
		}
		var err error
		switch i % 3 {
		case 0:
			err = d.fourStep(ctx, stop)
		case 1:
			err = d.wrongOrder(ctx, stop)
		case 2:
			d.outage(ctx, stop)
		}
		if err != nil {
			if ctx.Err() == nil {
				d.errMu.Lock()
				d.eventErr = err
				d.errMu.Unlock()
				d.event("%v; no more rotations", err)
			}
			return
		}
		next = next.Add(every)
		if now := time.Now(); next.Before(now) {
			next = now
		}
	}
}

// sleepUntil waits until t; false if stop closed or ctx ended first.
func sleepUntil(ctx context.Context, stop <-chan struct{}, t time.Time) bool {
	select { // stop wins over a timer that is already due
	case <-stop:
		return false
	case <-ctx.Done():
		return false
	default:
	}
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-stop:
		return false
	case <-ctx.Done():
		return false
	}
}

// phase is how long the middle of a rotation lasts (1.5s by default); an
// outage lasts twice that. Both shrink with short rotation intervals.
func (d *demo) phase() time.Duration { return min(1500*time.Millisecond, d.opt.rotateEvery/2) }

// snapshot is the state at the start of an event, to report its cost.
type snapshot struct {
	failed int64
	calls  int
	t      time.Time
}

func (d *demo) snap() snapshot {
	return snapshot{d.failed.Load(), d.sm.Calls("GetSecretValue"), time.Now()}
}

func (d *demo) cost(s snapshot) string {
	return fmt.Sprintf("[%s; %d failed queries, %d store calls]", seconds(time.Since(s.t)),
		d.failed.Load()-s.failed, d.sm.Calls("GetSecretValue")-s.calls)
}

func short(version string) string {
	if len(version) > 8 {
		return version[:8]
	}
	return version
}

func (d *demo) fourStep(ctx context.Context, stop <-chan struct{}) error {
	n := d.rotations.Add(1)
	d.fourSteps.Add(1)
	s := d.snap()
	pw := randomPassword()
	d.remember(pw)
	// createSecret
	version, err := d.sm.PutSecretValue(demoSecret, d.secretJSON(pw), smtest.StagePending)
	if err != nil {
		return fmt.Errorf("rotation %d: four-step: writing AWSPENDING: %w", n, err)
	}
	// setSecret
	if err := d.pg.SetPassword(ctx, demoRole, pw); err != nil {
		return fmt.Errorf("rotation %d: four-step: ALTER ROLE: %w", n, err)
	}
	// testSecret: the pending password logs in.
	pc, err := pq.NewConnectorConfig(d.pg.Config(demoRole, pw, demoDB))
	if err == nil {
		test := sql.OpenDB(pc)
		err = test.PingContext(ctx)
		test.Close()
	}
	if err != nil {
		return fmt.Errorf("rotation %d: four-step: testSecret login: %w", n, err)
	}
	gap := d.phase()
	d.event("rotation %d: four-step (AWSPENDING written as version %s, database changed, test login ok; AWSCURRENT keeps the old password for %s)",
		n, short(version), gap)
	cut := !sleepUntil(ctx, stop, time.Now().Add(gap))
	// finishSecret
	if err := d.sm.FinishRotation(demoSecret, version); err != nil {
		return fmt.Errorf("rotation %d: four-step: finishSecret: %w", n, err)
	}
	d.event("rotation %d: four-step done (AWSCURRENT moved to %s, AWSPENDING removed%s) %s", n, short(version), cutNote(cut), d.cost(s))
	return nil
}

func (d *demo) wrongOrder(ctx context.Context, stop <-chan struct{}) error {
	n := d.rotations.Add(1)
	d.wrongOrders.Add(1)
	s := d.snap()
	pw := randomPassword()
	d.remember(pw)
	if err := d.pg.SetPassword(ctx, demoRole, pw); err != nil {
		return fmt.Errorf("rotation %d: wrong-order: ALTER ROLE: %w", n, err)
	}
	gap := d.phase()
	d.event("rotation %d: wrong-order (database changed first; the secret gets the new password %s later)", n, gap)
	cut := !sleepUntil(ctx, stop, time.Now().Add(gap))
	version, err := d.sm.PutSecretValue(demoSecret, d.secretJSON(pw))
	if err != nil {
		return fmt.Errorf("rotation %d: wrong-order: PutSecretValue: %w", n, err)
	}
	d.event("rotation %d: wrong-order done (new password written to AWSCURRENT as version %s%s) %s", n, short(version), cutNote(cut), d.cost(s))
	return nil
}

func (d *demo) outage(ctx context.Context, stop <-chan struct{}) {
	n := d.outages.Add(1)
	s := d.snap()
	length := 2 * d.phase()
	remove := d.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Fail})
	d.event("outage %d: Secrets Manager fails every GetSecretValue (HTTP 500) for %s", n, length)
	end := time.Now().Add(length)
	cut := !sleepUntil(ctx, stop, end) && time.Until(end) > 50*time.Millisecond
	remove()
	d.outageTotal.Add(int64(time.Since(s.t)))
	d.event("outage %d: over, Secrets Manager answers again%s %s", n, cutNote(cut), d.cost(s))
}

func cutNote(cut bool) string {
	if cut {
		return "; cut short: the demo is over"
	}
	return ""
}

// event prints a line about a rotation or an outage.
func (d *demo) event(format string, a ...any) {
	line := fmt.Sprintf("%7s  %s", seconds(time.Since(d.start)), fmt.Sprintf(format, a...))
	d.outMu.Lock()
	defer d.outMu.Unlock()
	if d.term {
		d.lastProgress = d.progressLine()
		fmt.Fprintf(d.stdout, "\r\033[K%s\n%s", line, d.lastProgress)
		return
	}
	fmt.Fprintln(d.stdout, line)
}

func (d *demo) progressLine() string {
	if d.vs != nil {
		return d.vaultProgressLine()
	}
	return fmt.Sprintf("%7s  queries %s  failed %d  rotations %d  outages %d  store calls %d  p50 %s  p99 %s",
		seconds(time.Since(d.start)), thousands(d.ok.Load()+d.failed.Load()), d.failed.Load(),
		d.rotations.Load(), d.outages.Load(), d.sm.Calls("GetSecretValue"),
		ms(d.hist.quantile(0.50)), ms(d.hist.quantile(0.99)))
}

// progressLoop redraws the progress line every 200ms on a terminal, or
// prints it every second otherwise.
func (d *demo) progressLoop(stop <-chan struct{}) {
	every := time.Second
	if d.term {
		every = 200 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		line := d.progressLine()
		d.outMu.Lock()
		if d.term {
			d.lastProgress = line
			fmt.Fprintf(d.stdout, "\r\033[K%s", line)
		} else {
			fmt.Fprintln(d.stdout, line)
		}
		d.outMu.Unlock()
	}
}

// countingConnector counts the connections the pool opened through the
// pgsecrets connector.
type countingConnector struct {
	*pgsecrets.Connector
	n atomic.Int64
}

func (c *countingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err == nil {
		c.n.Add(1)
	}
	return conn, err
}

// logWriter sends the driver's log lines to stderr without tearing the
// progress line on a terminal.
type logWriter struct{ d *demo }

func (w *logWriter) Write(p []byte) (int, error) {
	w.d.outMu.Lock()
	defer w.d.outMu.Unlock()
	if w.d.term {
		fmt.Fprint(w.d.stdout, "\r\033[K")
		defer func() {
			w.d.lastProgress = w.d.progressLine()
			fmt.Fprint(w.d.stdout, w.d.lastProgress)
		}()
	}
	return w.d.stderr.Write(p)
}

// summary prints the table and the verdict, and returns the exit status.
func (d *demo) summary() int {
	elapsed := time.Since(d.start)
	st := d.connector.Stats()
	ok, failed := d.ok.Load(), d.failed.Load()
	rot, four, wrong, outs := d.rotations.Load(), d.fourSteps.Load(), d.wrongOrders.Load(), d.outages.Load()

	w := d.stdout
	row := func(label, format string, a ...any) {
		fmt.Fprintf(w, "  %-18s %s\n", label, fmt.Sprintf(format, a...))
	}
	fmt.Fprintln(w, "\nSummary")
	row("duration", "%s, %d workers", seconds(elapsed), d.opt.workers)
	row("queries", "ok %s  failed %s", thousands(ok), thousands(failed))
	row("rotations", "%d (four-step %d, wrong-order %d)", rot, four, wrong)
	row("store outages", "%d (%s of failing GetSecretValue)", outs, seconds(time.Duration(d.outageTotal.Load())))
	row("store calls", "%d GetSecretValue", d.sm.Calls("GetSecretValue"))
	row("DB login failures", "%d (logins as %s the database rejected, from its log)", d.pg.AuthFailures(demoRole), demoRole)
	row("connections", "%s opened, each a new login (and lived at most %s)", thousands(d.logins.n.Load()), connLifetime)
	row("driver stats", "store calls %d, cache hits %s, stale serves %d", st.StoreCalls, thousands(st.CacheHits), st.StaleServes)
	row("", "auth failures %d, recovered %d, AWSPENDING logins %d", st.AuthFailures, st.AuthRecovered, st.PendingUses)
	row("", "breaker %s (opened %d, rejected %d)", st.BreakerState, st.BreakerOpens, st.BreakerRejects)
	row("", "using version %s (%s)", short(st.VersionID), st.Stage)
	row("latency", "p50 %s  p99 %s  max %s", ms(d.hist.quantile(0.50)), ms(d.hist.quantile(0.99)), ms(d.hist.maximum()))
	fmt.Fprintln(w)

	d.errMu.Lock()
	eventErr, firstErrs := d.eventErr, append([]string(nil), d.firstErrs...)
	d.errMu.Unlock()
	through := fmt.Sprintf("%s and %s", plural(rot, "rotation"), plural(outs, "store outage"))
	switch {
	case failed > 0:
		fmt.Fprintf(w, "FAIL: %s of %s queries failed through %s. First errors:\n", thousands(failed), thousands(ok+failed), through)
		for _, e := range firstErrs {
			fmt.Fprintf(w, "  - %s\n", e)
		}
		return exitFail
	case eventErr != nil:
		fmt.Fprintf(w, "FAIL: the demo could not rotate: %v\n", eventErr)
		return exitFail
	case d.interrupted:
		fmt.Fprintf(w, "interrupted: %s queries, none failed, through %s\n", thousands(ok), through)
		return exitInterrupted
	case ok == 0:
		fmt.Fprintln(w, "FAIL: no query ran")
		return exitFail
	}
	fmt.Fprintf(w, "PASS: %s queries, none failed, through %s.\n", thousands(ok), through)
	return exitOK
}

func plural(n int64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
