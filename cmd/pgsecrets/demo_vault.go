package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"time"

	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

// The demo with --provider vault: dynamic credentials from an in-process
// Vault (vaulttest) that creates a real PostgreSQL role per lease, and a
// pool with no SetConnMaxLifetime at all. The driver renews the current
// lease and those with open connections, takes a new one only when Vault no
// longer extends the old (its max TTL), retires connections before their
// lease ends, and revokes leases nobody uses any more; every --rotate-every × 3 Vault fails every request
// for a moment.

const (
	demoOwner     = "demo_owner" // owns the table; every lease role is a member
	demoVaultPath = "database/creds/demo"
)

// vaultTTL is the lease TTL for the demo's rotation interval: short enough
// that several leases come and go in a run, long enough that a lease
// fetched just before an outage outlives it (the point of the outage is
// that valid leases keep serving).
func (d *demo) vaultTTL() time.Duration { return max(3*time.Second, 3*d.opt.rotateEvery) }

// startVault creates the table's owner, the database and the table, and
// starts Vault (d.vs) with the dynamic role whose leases are granted the
// owner's rights: the single-process demo's and the fleet's set-up.
func (d *demo) startVault(ctx context.Context) error {
	if err := d.pg.CreateRole(ctx, demoOwner, randomPassword()); err != nil {
		return err
	}
	if err := d.pg.CreateDatabase(ctx, demoDB, demoOwner); err != nil {
		return err
	}
	admin, err := sql.Open("postgres", d.pg.DSN(testdb.AdminUser, d.pg.AdminPassword(), demoDB))
	if err != nil {
		return err
	}
	defer admin.Close()
	for _, q := range []string{
		`CREATE TABLE orders (id bigserial PRIMARY KEY, worker int NOT NULL, amount numeric(12,2) NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`,
		`CREATE INDEX orders_worker ON orders (worker) INCLUDE (amount)`,
		`ALTER TABLE orders OWNER TO ` + demoOwner,
	} {
		if _, err := admin.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	ttl := d.vaultTTL()
	d.vs = vaulttest.NewServer()
	d.vs.AddDatabaseRole("database", "demo", vaulttest.DatabaseRole{DB: d.pg.DB(), TTL: ttl, MaxTTL: 2 * ttl,
		Grants: []string{"GRANT " + demoOwner + " TO {{name}}"}})
	return nil
}

func (d *demo) setupVault(ctx context.Context) error {
	if err := d.startVault(ctx); err != nil {
		return err
	}
	d.restoreToken = setEnv("VAULT_TOKEN", d.vs.RootToken())
	d.vaultToken = d.vs.RootToken()

	dsn := fmt.Sprintf("host=%s port=%d dbname=%s sslmode=verify-full sslrootcert=%s secret_provider=vault secret_id=%s secret_endpoint=%s",
		d.pg.Host(), d.pg.Port(), demoDB, d.pg.CAFile(), demoVaultPath, d.vs.URL())
	if err := d.openPool(dsn); err != nil {
		return err
	}
	d.db.SetMaxIdleConns(d.opt.workers) // no SetConnMaxLifetime: the leases decide
	if err := d.db.PingContext(ctx); err != nil {
		return fmt.Errorf("first login through pgsecrets: %w", err)
	}
	var version string
	if err := d.pg.DB().QueryRowContext(ctx, "SHOW server_version").Scan(&version); err != nil {
		return err
	}
	fmt.Fprintf(d.stdout, "  postgres  PostgreSQL %s at %s (TLS, scram-sha-256); database %s, table orders owned by %s\n",
		firstField(version), d.pg.Addr(), demoDB, demoOwner)
	fmt.Fprintf(d.stdout, "  vault     in-process Vault at %s: %s issues a PostgreSQL role per lease (TTL %s, max TTL %s), member of %s\n",
		d.vs.URL(), demoVaultPath, d.vaultTTL(), 2*d.vaultTTL(), demoOwner)
	cfg := d.connector.Config()
	fmt.Fprintf(d.stdout, "  dsn       %s\n", cfg.FormatDSN())
	fmt.Fprintf(d.stdout, "  pool      no SetConnMaxLifetime: the driver retires each connection before its lease ends\n")
	fmt.Fprintf(d.stdout, "  load      %d workers: 4 reads to 1 INSERT; Vault fails every request for a while every %s\n\n", d.opt.workers, 3*d.opt.rotateEvery)
	return nil
}

// setEnv sets an environment variable and returns its restore.
func setEnv(k, v string) func() {
	old, had := os.LookupEnv(k)
	os.Setenv(k, v)
	return func() {
		if had {
			os.Setenv(k, old)
		} else {
			os.Unsetenv(k)
		}
	}
}

// watchLeases prints a line when a new lease serves new connections, and
// when leases are renewed or revoked and connections retired, until stop.
func (d *demo) watchLeases(stop <-chan struct{}) {
	prev := d.connector.Stats()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		st := d.connector.Stats()
		if st.VersionID != prev.VersionID {
			d.printEvent("new lease …/%s serves new connections (ends in %s); %d leases held", shortVersion(st.VersionID),
				time.Until(st.Expires).Round(100*time.Millisecond), st.LeasesHeld)
		}
		if n := st.LeaseRenewals - prev.LeaseRenewals; n > 0 {
			d.printEvent("%s renewed (their connections are still open)", plural(n, "lease"))
		}
		if n := st.LeaseRevocations - prev.LeaseRevocations; n > 0 {
			d.printEvent("%s revoked: superseded, and their last connection closed (roles dropped)", plural(n, "lease"))
		}
		if n := st.ConnsRetired - prev.ConnsRetired; n > 0 {
			d.printEvent("%s retired before their lease's end", plural(n, "connection"))
		}
		prev = st
	}
}

// vaultOutage makes Vault fail every request for the phase.
func (d *demo) vaultOutage(ctx context.Context, stop <-chan struct{}) {
	took := d.phase()
	d.outages.Add(1)
	remove := d.vs.Inject(vaulttest.OpAny, vaulttest.Fault{Kind: vaulttest.FaultError, Status: 503})
	d.printEvent("Vault outage: every request fails (503) for %s; valid leases keep serving", seconds(took))
	start := time.Now()
	cut := !sleepUntil(ctx, stop, start.Add(took))
	remove()
	d.outageTotal.Add(int64(time.Since(start)))
	d.printEvent("Vault is back%s", cutShortNote(cut))
}

func (d *demo) vaultProgressLine() string {
	st := d.connector.Stats()
	return fmt.Sprintf("%7s  queries %s  failed %d  leases %d (held %d)  renewed %d  revoked %d  retired %d  vault calls %d  p50 %s  p99 %s",
		seconds(time.Since(d.start)), thousands(d.ok.Load()+d.failed.Load()), d.failed.Load(),
		len(d.vs.Leases()), st.LeasesHeld, st.LeaseRenewals, st.LeaseRevocations, st.ConnsRetired, d.vs.TotalCalls(),
		ms(d.hist.quantile(0.50)), ms(d.hist.quantile(0.99)))
}

// vaultSummary closes the pool (which revokes the connector's leases) and
// checks that no lease and no lease role is left.
func (d *demo) vaultSummary() int {
	elapsed := time.Since(d.start)
	st := d.connector.Stats()
	ok, failed := d.ok.Load(), d.failed.Load()
	issued := len(d.vs.Leases())
	d.db.Close()
	active := d.vs.ActiveLeases()
	left := 0
	for _, l := range d.vs.Leases() {
		var exists bool
		if err := d.pg.DB().QueryRow("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", l.Username).Scan(&exists); err == nil && exists {
			left++
		}
	}
	w := d.stdout
	row := d.summaryRow
	d.summaryHead(elapsed, ok, failed)
	row("leases", "%d issued, %d renewals, %d revoked while serving", issued, st.LeaseRenewals, st.LeaseRevocations)
	row("connections", "%s opened, %d retired before their lease ended (no SetConnMaxLifetime)", thousands(d.logins.n.Load()), st.ConnsRetired)
	row("vault outages", "%d (%s of failing requests)", d.outages.Load(), seconds(time.Duration(d.outageTotal.Load())))
	row("vault calls", "%d", d.vs.TotalCalls())
	row("driver stats", "auth failures %d, recovered %d, renew failures %d", st.AuthFailures, st.AuthRecovered, st.LeaseRenewFailures)
	row("after db.Close", "%d leases active, %d lease roles left in pg_roles", active, left)
	row("latency", "p50 %s  p99 %s  max %s", ms(d.hist.quantile(0.50)), ms(d.hist.quantile(0.99)), ms(d.hist.maximum()))
	fmt.Fprintln(w)
	switch {
	case failed > 0:
		d.failedQueries(ok, failed, "")
		return exitFail
	case active > 0 || left > 0:
		fmt.Fprintf(w, "FAIL: db.Close left %d leases active and %d roles behind\n", active, left)
		return exitFail
	case d.interrupted:
		fmt.Fprintf(w, "interrupted: %s queries, none failed, through %d leases\n", thousands(ok), issued)
		return exitInterrupted
	case ok == 0:
		fmt.Fprintln(w, "FAIL: no query ran")
		return exitFail
	}
	fmt.Fprintf(w, "PASS: %s queries, none failed, through %d leases and %s; every lease revoked at Close.\n",
		thousands(ok), issued, plural(d.outages.Load(), "Vault outage"))
	return exitOK
}

// vaultEvents watches the leases and makes Vault fail for a while every
// three rotation intervals, until stop.
func (d *demo) vaultEvents(ctx context.Context, stop <-chan struct{}) {
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		d.watchLeases(stop)
	}()
	defer func() { <-watched }()
	every := 3 * d.opt.rotateEvery
	deadline := d.start.Add(d.opt.duration)
	for next := d.start.Add(every); deadline.Sub(next) >= every/4; next = next.Add(every) {
		if !sleepUntil(ctx, stop, next) {
			return
		}
		d.vaultOutage(ctx, stop)
	}
}
