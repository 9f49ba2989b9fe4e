package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/smtest"
)

// The demo's environment: a throwaway PostgreSQL server, the role and
// database the load runs as, the secret in an in-process Secrets Manager,
// and the pool opened through pgsecrets (demo_vault.go: the same on Vault).

// startPostgres starts the throwaway PostgreSQL server (d.pg), or says
// why it cannot and returns nil and the exit status.
func (d *demo) startPostgres(ctx context.Context) (*testdb.Cluster, int) {
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
			return nil, exitInterrupted
		default:
			fmt.Fprintf(d.stderr, "pgsecrets demo: cannot start PostgreSQL: %v\n", err)
		}
		return nil, exitFail
	}
	d.pg = pg
	return pg, exitOK
}

// startEnv starts what the load runs against: PostgreSQL, the store's
// stand-in and the pool through pgsecrets. When it cannot, it says why and
// returns a nil stop and the exit status; stop takes everything down again,
// in the reverse order.
func (d *demo) startEnv(ctx context.Context) (stop func(), code int) {
	pg, code := d.startPostgres(ctx)
	if pg == nil {
		return nil, code
	}
	undo := []func(){func() { pg.Stop() }}
	stop = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	setup := d.setupAWS
	switch d.opt.provider {
	case "rds-iam", "entra", "gcp-iam":
		setup = d.setupIAM
		undo = append(undo, func() {
			if d.iam != nil {
				d.iam.Close()
			}
			if d.iamClose != nil {
				d.iamClose()
			}
		})
	case "vault":
		setup = d.setupVault
		undo = append(undo, func() {
			if d.vs != nil {
				d.vs.Close()
			}
			if d.restoreToken != nil {
				d.restoreToken()
			}
		})
	default:
		d.sm = smtest.NewServer()
		undo = append(undo, d.sm.Close)
	}

	if err := setup(ctx); err != nil {
		code = exitFail
		if ctx.Err() != nil {
			fmt.Fprintln(d.stderr, "pgsecrets demo: interrupted")
			code = exitInterrupted
		} else {
			fmt.Fprintf(d.stderr, "pgsecrets demo: setting up: %v\n", err)
		}
		stop()
		return nil, code
	}
	undo = append(undo, func() { d.db.Close() })
	return stop, exitOK
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
	undo := swapEnv(set, unset)
	return func() {
		undo()
		os.RemoveAll(dir)
	}, nil
}

// swapEnv sets and unsets environment variables for the demo's SDKs and
// returns what puts them back.
func swapEnv(set map[string]string, unset []string) (restore func()) {
	type saved struct {
		val string
		ok  bool
	}
	old := map[string]saved{}
	for _, k := range unset {
		val, ok := os.LookupEnv(k)
		old[k] = saved{val, ok}
		os.Unsetenv(k)
	}
	for k, v := range set {
		val, ok := os.LookupEnv(k)
		if _, seen := old[k]; !seen {
			old[k] = saved{val, ok}
		}
		os.Setenv(k, v)
	}
	return func() {
		for k, s := range old {
			if s.ok {
				os.Setenv(k, s.val)
			} else {
				os.Unsetenv(k)
			}
		}
	}
}

func randomPassword() string {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	return "pw-" + hex.EncodeToString(b)
}

func (d *demo) rememberPassword(pw string) {
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

func (d *demo) setupAWS(ctx context.Context) error {
	pw := randomPassword()
	d.rememberPassword(pw)
	if err := d.pg.CreateRole(ctx, demoRole, pw); err != nil {
		return err
	}
	if err := d.pg.CreateDatabase(ctx, demoDB, demoRole); err != nil {
		return err
	}
	d.sm.CreateSecret(demoSecret, d.secretJSON(pw))

	dsn := fmt.Sprintf("host=%s port=%d dbname=%s sslmode=verify-full sslrootcert=%s secret_id=%s secret_endpoint=%s secret_ttl=2s",
		d.pg.Host(), d.pg.Port(), demoDB, d.pg.CAFile(), demoSecret, d.sm.URL())
	if err := d.openRolePool(ctx, dsn, demoRole); err != nil {
		return err
	}
	cfg := d.connector.Config()
	fmt.Fprintf(d.stdout, "  secrets   %s in an in-process Secrets Manager at %s (RDS JSON format)\n", demoSecret, d.sm.URL())
	fmt.Fprintf(d.stdout, "  dsn       %s\n", cfg.FormatDSN())
	fmt.Fprintf(d.stdout, "  pool      connections live %s, at most %d idle: new logins all the time\n", connLifetime, max(1, d.opt.workers/2))
	fmt.Fprintf(d.stdout, "  load      %d workers: 4 reads to 1 INSERT; secret_ttl=2s, so the outage outlasts the cache\n\n", d.opt.workers)
	return nil
}

// openRolePool opens the pool of the demo role (awssm, rds-iam): short
// connection lifetimes, so that logins happen all the time; creates the
// table through it and says which server it runs on.
func (d *demo) openRolePool(ctx context.Context, dsn, role string) error {
	if err := d.openPool(dsn); err != nil {
		return err
	}
	d.db.SetConnMaxLifetime(connLifetime)
	d.db.SetMaxIdleConns(max(1, d.opt.workers/2))
	if err := d.createOrders(ctx); err != nil {
		return err
	}
	var version string
	if err := d.pg.DB().QueryRowContext(ctx, "SHOW server_version").Scan(&version); err != nil {
		return err
	}
	fmt.Fprintf(d.stdout, "  postgres  PostgreSQL %s at %s (TLS, scram-sha-256); role %s owns database %s, table orders\n",
		firstField(version), d.pg.Addr(), role, demoDB)
	return nil
}

// createOrders creates the load's table with the first statement through
// the driver, so that the role owns it.
func (d *demo) createOrders(ctx context.Context) error {
	if _, err := d.db.ExecContext(ctx, `CREATE TABLE orders (
		id         bigserial PRIMARY KEY,
		worker     int NOT NULL,
		amount     numeric(12,2) NOT NULL,
		created_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("creating the table through pgsecrets: %w", err)
	}
	_, err := d.db.ExecContext(ctx, `CREATE INDEX orders_worker ON orders (worker) INCLUDE (amount)`)
	return err
}

// openPool builds the demo's connector for dsn (its log on stderr with
// --verbose, else none) and the pool over it that counts its logins.
func (d *demo) openPool(dsn string) error {
	logger := slog.New(slog.DiscardHandler)
	if d.opt.verbose {
		logger = slog.New(slog.NewTextHandler(&logWriter{d}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	opts := []pgsecrets.Option{pgsecrets.WithLogger(logger)}
	if d.metrics != nil {
		opts = append(opts, d.metrics.opt)
	}
	c, err := pgsecrets.NewConnector(dsn, opts...)
	if err != nil {
		return err
	}
	d.connector = c
	d.logins = &countingConnector{Connector: c}
	d.db = sql.OpenDB(d.logins)
	return nil
}

func firstField(s string) string {
	if f := strings.Fields(s); len(f) > 0 {
		return f[0]
	}
	return s
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
