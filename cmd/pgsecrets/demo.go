package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/iamtest"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/smtest"
	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

const demoHelp = `Usage: pgsecrets demo [--duration 20s] [--rotate-every 3s] [--workers 8] [--verbose]
       pgsecrets demo --processes N [--store-tps R] [flags]
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

With --provider rds-iam there is no password at all: pgsecrets signs RDS IAM
tokens with a dummy AWS key, and an in-process front end (iamtest) checks
each token's SigV4 signature, user, host:port and age as RDS does before
relaying the session to PostgreSQL. Every --rotate-every it either refuses
the next logins or, for a while, tokens older than 200ms (credentials that
expired early); the driver signs a new token and retries inside the call.

With --provider entra or gcp-iam the same front end checks Microsoft Entra
ID tokens (RS256 JWTs from an in-process App Service managed identity
endpoint that azidentity's DefaultAzureCredential uses) or Google access
tokens (from an in-process OAuth2 token endpoint that a service account key
file points Application Default Credentials at), and refuses tokens older
than 1s in its early-expiry windows: each token costs a request there.

With --processes N (awssm or vault) the load runs in N separate processes
of this program, each with its own database/sql pool on the same secret and
its own AWS access key id, as N pods of one service would, against one
Secrets Manager stand-in that allows --store-tps GetSecretValue requests
per second over all of them and answers ThrottlingException beyond, as
AWS does. Each process runs --workers query loops (default 2 there) and
reports to this one, which runs the same rotations and outages and prints,
per rotation and for the whole run: store requests (in all, per process,
the most in any one second), throttled requests, logins rejected and
recovered, failed queries, and how long until every process used the new
version. The processes read the secret with secret_ttl=5s. --store-tps
alone runs that fleet view with one process.

With --provider vault --processes N the processes share one in-process
Vault instead, each with a token of its own (VAULT_ADDR and VAULT_TOKEN in
its environment, never shown) and its own leases of the dynamic role, in a
pool with no SetConnMaxLifetime. This process runs the Vault outages of
the single-process Vault demo (leases renew, and are replaced at their max
TTL, by themselves) and prints per outage and for the whole run: Vault
requests (in all, per process, the most in any one second, and by
operation: creds, renew, revoke, token lookups), leases issued (in all and
per process) and revoked, failed queries, and checks that once every
process has closed its pool no lease is active and no lease role is left.
--store-tps works with awssm only: the Vault stand-in has no request quota.

Flags:
  --provider P        awssm (default), vault, rds-iam, entra or gcp-iam
  --duration DUR      how long the load runs (default 20s)
  --rotate-every DUR  time between rotations and outages (default 3s)
  --workers N         concurrent query loops (default 8; per process, 2, with
                      --processes)
  --processes N       run the load in N processes (default 1: this one)
  --store-tps R       the store's request quota, per second (default 0: none;
                      awssm only)
  --metrics ADDR      serve the driver's telemetry (the telemetry module) in
                      the Prometheus format at http://ADDR/metrics while the
                      demo runs, and print its counters in the summary
  --verbose           log the driver's events (log/slog text) to stderr
`

type demoOpts struct {
	provider    string
	duration    time.Duration
	rotateEvery time.Duration
	workers     int
	verbose     bool
	metrics     string  // --metrics: the address to serve Prometheus metrics on
	processes   int     // --processes: > 1 runs the fleet (demo_fleet.go)
	storeTPS    float64 // --store-tps: the store's request quota; 0 for none
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
	fs.StringVar(&o.metrics, "metrics", "", "")
	fs.IntVar(&o.processes, "processes", 1, "")
	fs.Float64Var(&o.storeTPS, "store-tps", 0, "")
	pos, code, ok := parseFlags(fs, args, stdout, stderr, demoHelp)
	if !ok {
		return code
	}
	fleet := o.processes > 1 || o.storeTPS > 0
	if fleet && !flagSet(fs, "workers") {
		o.workers = fleetWorkers
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
	case !slices.Contains([]string{"awssm", "vault", "rds-iam", "entra", "gcp-iam"}, o.provider):
		return usageError(stderr, "demo", "--provider must be awssm, vault, rds-iam, entra or gcp-iam")
	case o.processes < 1 || o.processes > maxFleet:
		return usageError(stderr, "demo", "--processes must be between 1 and %d", maxFleet)
	case o.storeTPS < 0:
		return usageError(stderr, "demo", "--store-tps must not be negative")
	case fleet && o.metrics != "":
		return usageError(stderr, "demo", "--metrics serves one process's telemetry: not with --processes or --store-tps")
	case o.storeTPS > 0 && o.provider != "awssm":
		return usageError(stderr, "demo", "--store-tps works with --provider awssm only: it is the Secrets Manager stand-in's request quota")
	case fleet && o.provider != "awssm" && o.provider != "vault":
		return usageError(stderr, "demo", "--processes works with --provider awssm or vault only")
	case fleet && o.processes*o.workers > maxFleetConns:
		return usageError(stderr, "demo", "--processes × --workers must be at most %d (the throwaway server's connections)", maxFleetConns)
	}
	d := &demo{opt: o, stdout: stdout, stderr: stderr, term: isTerminal(stdout), errSeen: map[string]bool{}}
	if fleet {
		code = d.runFleet(ctx)
	} else {
		code = d.run(ctx)
	}
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

	pg      *testdb.Cluster
	sm      *smtest.Server
	vs      *vaulttest.Server // --provider vault
	iam     *iamtest.Server   // --provider rds-iam, entra, gcp-iam
	metrics *metricsServer    // --metrics
	// iamClose stops the token issuer and restores the environment
	// (entra, gcp-iam); iamCloud describes the provider's cloud.
	iamClose func()
	iamCloud tokenCloud
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
		if c, ok := tokenClouds[d.opt.provider]; ok {
			fmt.Fprintf(d.stdout, "pgsecrets demo --provider %s: %d workers for %s, %s token refusals every %s\n", d.opt.provider, d.opt.workers, d.opt.duration, c.title, d.opt.rotateEvery)
		} else {
			fmt.Fprintf(d.stdout, "pgsecrets demo: %d workers for %s, a rotation every %s\n", d.opt.workers, d.opt.duration, d.opt.rotateEvery)
		}
	} else {
		fmt.Fprintf(d.stdout, "pgsecrets demo --provider vault: %d workers for %s, leases of %s\n", d.opt.workers, d.opt.duration, d.vaultTTL())
	}
	if d.opt.metrics != "" {
		m, err := startMetrics(d.opt.metrics)
		if err != nil {
			fmt.Fprintf(d.stderr, "pgsecrets demo: --metrics: %v\n", err)
			return exitFail
		}
		defer m.close()
		d.metrics = m
		fmt.Fprintf(d.stdout, "  metrics   %s (Prometheus format)\n", m.URL())
	}
	stopEnv, code := d.startEnv(ctx)
	if stopEnv == nil {
		return code
	}
	defer stopEnv()

	d.runLoad(ctx)
	if vault {
		return d.vaultSummary()
	}
	if d.iam != nil {
		return d.iamSummary()
	}
	return d.awsSummary()
}
