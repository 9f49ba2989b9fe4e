package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lib/pq"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/vault/vaulttest"
)

// The fleet view of the demo with --provider vault: the processes share
// one in-process Vault (vaulttest) whose dynamic role issues a PostgreSQL
// role per lease, as the single-process Vault demo sets it up. Each process
// has a token of its own (created here, handed over in VAULT_TOKEN, never
// shown) and so leases of its own; its pool has no SetConnMaxLifetime. The
// processes reach Vault through a front on loopback that counts each
// request for the process whose token it carries (by the token's accessor,
// which is not a secret) and hands it to the vaulttest server. This process
// runs Vault outages instead of rotations: leases renew, and are replaced
// at their max TTL, by themselves.

// fleetVaultPolicy is the processes' tokens' policy: the dynamic role's
// path (vaulttest, as Vault's default policy, allows every token its own
// lookups and the sys/leases endpoints).
const fleetVaultPolicy = "demo-fleet"

// fleetVaultWrap, when set, wraps the handler behind the front (tests see
// the credentials Vault hands out, to check that none is shown).
var fleetVaultWrap func(http.Handler) http.Handler

// fleetVault is the parent's side of a fleet on Vault.
type fleetVault struct {
	url  string // the front's, which the processes use (VAULT_ADDR)
	srv  *http.Server
	next http.Handler
	done chan struct{} // closed when the front's Serve has returned

	end vaultEnd // what the processes left behind, once summarised

	mu    sync.Mutex
	keys  map[string]string // token → its accessor, the process's key
	calls map[string]int    // requests per accessor ("" for other tokens)
}

// ServeHTTP counts the request for the process whose token it carries and
// hands it to Vault.
func (v *fleetVault) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	v.mu.Lock()
	v.calls[v.keys[r.Header.Get("X-Vault-Token")]]++
	v.mu.Unlock()
	v.next.ServeHTTP(w, r)
}

// newToken creates a process's token and returns it and its accessor.
func (v *fleetVault) newToken(vs *vaulttest.Server) (token, accessor string) {
	token = vs.CreateToken(vaulttest.TokenOptions{Policies: []string{fleetVaultPolicy}})
	accessor = vs.TokenAccessor(token)
	v.mu.Lock()
	v.keys[token] = accessor
	v.calls[accessor] += 0
	v.mu.Unlock()
	return token, accessor
}

// tokens are the processes' tokens, for tests' leak checks.
func (v *fleetVault) tokens() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Collect(maps.Keys(v.keys))
}

// close stops the front (once the processes are gone).
func (v *fleetVault) close() {
	if v.srv == nil {
		return
	}
	_ = v.srv.Close()
	<-v.done
	v.srv = nil
}

// withoutVaultEnv is env without VAULT_* variables: the processes' Vault
// is the demo's, whatever this shell points at.
func withoutVaultEnv(env []string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool { return strings.HasPrefix(kv, "VAULT_") })
}

// startVaultEnv starts PostgreSQL, Vault and the front, and sets up the
// database, its table and the dynamic role. Like startEnv it returns a nil
// stop and the exit status when it cannot.
func (f *fleet) startVaultEnv(ctx context.Context) (stop func(), code int) {
	d := f.d
	pg, code := d.startPostgres(ctx)
	if pg == nil {
		return nil, code
	}
	stop = func() {
		f.vault.close()
		if d.vs != nil {
			d.vs.Close()
		}
		pg.Stop()
	}
	if err := f.setupVault(ctx); err != nil {
		stop()
		return nil, d.setupFailed(ctx, err)
	}
	return stop, exitOK
}

// setupVault creates the table's owner, the database and the table (as
// the single-process Vault demo does), starts Vault with the dynamic role
// and the front, and builds the processes' DSN.
func (f *fleet) setupVault(ctx context.Context) error {
	d := f.d
	if err := d.startVault(ctx); err != nil {
		return err
	}
	d.vs.SetPolicy(fleetVaultPolicy, demoVaultPath)
	d.vs.OnRequest(func(string, string) {
		now := time.Now()
		f.mu.Lock()
		f.requests = append(f.requests, now)
		f.mu.Unlock()
	})

	v := f.vault
	v.next = d.vs
	if fleetVaultWrap != nil {
		v.next = fleetVaultWrap(d.vs)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	v.url = "http://" + ln.Addr().String()
	v.srv = &http.Server{Handler: v, ReadHeaderTimeout: 10 * time.Second}
	v.done = make(chan struct{})
	go func() {
		defer close(v.done)
		if err := v.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.outMu.Lock()
			fmt.Fprintf(d.stderr, "pgsecrets demo: the Vault front stopped: %v\n", err)
			d.outMu.Unlock()
		}
	}()

	var version string
	if err := d.pg.DB().QueryRowContext(ctx, "SHOW server_version").Scan(&version); err != nil {
		return err
	}
	// No secret_endpoint: the processes find Vault in VAULT_ADDR, as an
	// application would.
	f.dsn = fmt.Sprintf("host=%s port=%d dbname=%s sslmode=verify-full sslrootcert=%s secret_provider=vault secret_id=%s",
		d.pg.Host(), d.pg.Port(), demoDB, d.pg.CAFile(), demoVaultPath)
	fmt.Fprintf(d.stdout, "  postgres  PostgreSQL %s at %s (TLS, scram-sha-256); database %s, table orders owned by %s\n",
		firstField(version), d.pg.Addr(), demoDB, demoOwner)
	fmt.Fprintf(d.stdout, "  vault     in-process Vault at %s: %s issues a PostgreSQL role per lease (TTL %s, max TTL %s), member of %s; no request quota\n",
		v.url, demoVaultPath, d.vaultTTL(), 2*d.vaultTTL(), demoOwner)
	if cfg, err := pgsecrets.ParseDSN(f.dsn); err == nil {
		fmt.Fprintf(d.stdout, "  dsn       %s\n", cfg.FormatDSN())
	}
	fmt.Fprintf(d.stdout, "  fleet     %d processes of this program, each its own pool (no SetConnMaxLifetime: the driver retires connections before their lease ends) and Vault token (VAULT_ADDR, VAULT_TOKEN; policy: %s)\n",
		d.opt.processes, demoVaultPath)
	fmt.Fprintf(d.stdout, "  load      %d workers per process: 4 reads to 1 INSERT; Vault fails every request for %s every %s\n",
		d.opt.workers, seconds(d.phase()), 3*d.opt.rotateEvery)
	return nil
}

// vaultOps are the Vault operations the summary breaks requests down by.
var vaultOps = []string{vaulttest.OpAny, vaulttest.OpCreds, vaulttest.OpRenew, vaulttest.OpRevoke, vaulttest.OpTokenLookup}

// vaultSnap is the requests so far, per process and per operation (snap
// adds the processes' reports).
func (f *fleet) vaultSnap() fleetSnap {
	s := fleetSnap{At: time.Now(), Calls: map[string]int{}, ThrottledBy: map[string]int{}, Ops: map[string]int{}}
	for _, op := range vaultOps {
		s.Ops[op] = f.d.vs.Calls(op)
	}
	f.vault.mu.Lock()
	maps.Copy(s.Calls, f.vault.calls)
	f.vault.mu.Unlock()
	return s
}

// addEvent records ev, which ends the event before it.
func (f *fleet) addEvent(ev *fleetEvent) {
	f.mu.Lock()
	if k := len(f.events); k > 0 {
		f.events[k-1].After = ev.Before
	}
	f.events = append(f.events, ev)
	f.mu.Unlock()
}

// vaultOutages makes Vault fail every request for a while every three
// rotation intervals, on the single-process Vault demo's schedule,
// recording each outage as a fleetEvent.
func (f *fleet) vaultOutages(ctx context.Context, stop <-chan struct{}) {
	d := f.d
	every := 3 * d.opt.rotateEvery
	deadline := d.start.Add(d.opt.duration)
	for next := d.start.Add(every); deadline.Sub(next) >= every/4; next = next.Add(every) {
		if !sleepUntil(ctx, stop, next) {
			return
		}
		ev := &fleetEvent{Kind: "outage", N: int(d.outages.Load()) + 1, Start: time.Now(), Before: f.snap()}
		f.addEvent(ev)
		d.vaultOutage(ctx, stop)
		ev.Done = time.Now()
		// Requests are counted as they arrive, before the fault answers.
		ev.Refused = d.vs.TotalCalls() - ev.Before.Ops[vaulttest.OpAny]
	}
}

// vaultProgressLine is the fleet's progress on Vault.
func (f *fleet) vaultProgressLine() string {
	d := f.d
	return fmt.Sprintf("%7s  queries %s  failed %d  outages %d  vault requests %d  leases issued %d, active %d",
		seconds(time.Since(d.start)), thousands(d.ok.Load()+d.failed.Load()), d.failed.Load(),
		d.outages.Load(), d.vs.TotalCalls(), len(d.vs.Leases()), d.vs.ActiveLeases())
}

// vaultCost is what the fleet asked of Vault between two snapshots.
type vaultCost struct {
	fleetCost
	ops           map[string]int // requests per operation
	issued        int            // leases issued
	revoked       int            // leases revoked
	renewFailures int64          // renewals that failed (the processes' reports)
}

func (f *fleet) vaultCost(a, b fleetSnap, leases []vaulttest.Lease) vaultCost {
	c := vaultCost{fleetCost: f.cost(a, b), ops: map[string]int{}}
	for _, op := range vaultOps {
		c.ops[op] = b.Ops[op] - a.Ops[op]
	}
	in := func(t time.Time) bool { return !t.IsZero() && !t.Before(a.At) && t.Before(b.At) }
	for _, l := range leases {
		if in(l.IssuedAt) {
			c.issued++
		}
		if l.Revoked && in(l.RevokedAt) {
			c.revoked++
		}
	}
	for i := range b.Procs {
		var x fleetMsg
		if i < len(a.Procs) {
			x = a.Procs[i]
		}
		c.renewFailures += b.Procs[i].LeaseRenewFailures - x.LeaseRenewFailures
	}
	return c
}

// other is the requests of operations the summary does not name.
func (c vaultCost) other() int {
	return c.ops[vaulttest.OpAny] - c.ops[vaulttest.OpCreds] - c.ops[vaulttest.OpRenew] - c.ops[vaulttest.OpRevoke] - c.ops[vaulttest.OpTokenLookup]
}

// byOp is the requests by operation, for the summary.
func (c vaultCost) byOp() string {
	s := fmt.Sprintf("creds %d, renew %d, revoke %d, token lookups %d",
		c.ops[vaulttest.OpCreds], c.ops[vaulttest.OpRenew], c.ops[vaulttest.OpRevoke], c.ops[vaulttest.OpTokenLookup])
	if n := c.other(); n > 0 {
		s += fmt.Sprintf(", other %d", n)
	}
	return s
}

// vaultEnd is the state of Vault and PostgreSQL once every process has
// closed its pool.
type vaultEnd struct {
	leases  []vaulttest.Lease
	active  int   // leases not revoked
	left    int   // lease roles still in pg_roles; -1 if unknown
	leftErr error // why left is unknown
	// Leases issued under each process's token: min, median, max.
	perProcMin, perProcMedian, perProcMax int

	servingRevoked   int // revoked by the processes before the stop (superseded)
	closeRevoked     int // revoked by the processes after the stop (db.Close)
	expired, byToken int // revoked by Vault: expired, or with their token
	renewals         int // renewals Vault granted
}

func (f *fleet) vaultEnd() vaultEnd {
	d := f.d
	e := vaultEnd{leases: d.vs.Leases(), active: d.vs.ActiveLeases()}
	byKey := map[string]int{}
	var names []string
	for _, l := range e.leases {
		byKey[l.TokenAccessor]++
		names = append(names, l.Username)
		e.renewals += l.Renewals
		if !l.Revoked {
			continue
		}
		switch l.RevokedBy {
		case vaulttest.RevokedByRequest:
			if l.RevokedAt.Before(f.stopping.At) {
				e.servingRevoked++
			} else {
				e.closeRevoked++
			}
		case vaulttest.RevokedByExpiry:
			e.expired++
		case vaulttest.RevokedByToken:
			e.byToken++
		}
	}
	var per []int
	for _, p := range f.procs {
		per = append(per, byKey[p.key])
	}
	slices.Sort(per)
	if len(per) > 0 {
		e.perProcMin, e.perProcMedian, e.perProcMax = per[0], per[len(per)/2], per[len(per)-1]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.pg.DB().QueryRowContext(ctx, "SELECT count(*) FROM pg_roles WHERE rolname = ANY($1)", pq.Array(names)).Scan(&e.left); err != nil {
		e.left, e.leftErr = -1, err
	}
	return e
}

// vaultSummary prints the fleet's figures on Vault, per event and for the
// run, checks that the processes' pools left no lease and no role behind,
// and returns the exit status.
func (f *fleet) vaultSummary() int {
	d := f.d
	w := d.stdout
	row := d.summaryRow
	e := f.vaultEnd()
	f.vault.end = e
	elapsed := f.end.At.Sub(d.start)
	zero := fleetSnap{Calls: map[string]int{}}
	total := f.vaultCost(zero, f.end, e.leases)
	startup := f.vaultCost(zero, f.startup, e.leases)
	load := f.vaultCost(f.startup, f.stopping, e.leases)
	closing := f.vaultCost(f.stopping, f.end, e.leases)

	var sum fleetMsg
	var worstP99, worstMax int64
	for _, p := range f.end.Procs {
		sum.CutShort += p.CutShort
		sum.Logins += p.Logins
		sum.AuthFailures += p.AuthFailures
		sum.AuthRecovered += p.AuthRecovered
		sum.BreakerOpens += p.BreakerOpens
		sum.LeaseRenewals += p.LeaseRenewals
		sum.LeaseRenewFailures += p.LeaseRenewFailures
		sum.LeaseRevocations += p.LeaseRevocations
		sum.ConnsRetired += p.ConnsRetired
		worstP99, worstMax = max(worstP99, p.P99), max(worstMax, p.Max)
	}
	var lastReady time.Time
	f.mu.Lock()
	for _, p := range f.procs {
		if p.readyAt.After(lastReady) {
			lastReady = p.readyAt
		}
	}
	f.mu.Unlock()
	outs := d.outages.Load()

	fmt.Fprintln(w, "\nSummary")
	row("duration", "%s, %d processes × %d workers", seconds(elapsed), f.n(), d.opt.workers)
	row("queries", "ok %s  failed %s", thousands(total.Ok), thousands(total.Failed))
	if sum.CutShort > 0 {
		row("", "%d still waiting %s after the load ended, then cancelled (neither ok nor failed)", sum.CutShort, fleetStopGrace)
	}
	row("vault outages", "%d (%s of failing requests)", outs, seconds(time.Duration(d.outageTotal.Load())))
	row("start-up", "every process logged in within %s of the start: %d Vault requests (%s)",
		seconds(lastReady.Sub(f.launched)), startup.ops[vaulttest.OpAny], startup.byOp())
	row("vault requests", "%d: %s", total.ops[vaulttest.OpAny], total.byOp())
	row("", "%d at start-up, %d during the load, %d at the stop and db.Close",
		startup.ops[vaulttest.OpAny], load.ops[vaulttest.OpAny], closing.ops[vaulttest.OpAny])
	row("", "per process, start-up to Close: min %d, median %d, max %d", total.PerProcMin, total.PerProcMedian, total.PerProcMax)
	row("", "at most %d in one second (no request quota)", total.Peak)
	row("leases", "%d issued fleet-wide, per process min %d, median %d, max %d; %d renewals granted",
		len(e.leases), e.perProcMin, e.perProcMedian, e.perProcMax, e.renewals)
	revoked := e.servingRevoked + e.closeRevoked + e.expired + e.byToken
	line := fmt.Sprintf("%d revoked: %d by the processes while serving (superseded, last connection closed), %d at db.Close",
		revoked, e.servingRevoked, e.closeRevoked)
	if e.expired > 0 || e.byToken > 0 {
		line += fmt.Sprintf(", %d expired, %d with their token", e.expired, e.byToken)
	}
	row("", "%s", line)
	row("connections", "%s opened, %d retired before their lease ended (no SetConnMaxLifetime)", thousands(sum.Logins), sum.ConnsRetired)
	row("driver stats", "renewals %d, renew failures %d, revocations %d, auth failures %d, recovered %d, breaker opened %d (all processes, before Close)",
		sum.LeaseRenewals, sum.LeaseRenewFailures, sum.LeaseRevocations, sum.AuthFailures, sum.AuthRecovered, sum.BreakerOpens)
	if e.left >= 0 {
		row("after db.Close", "%d leases active, %d lease roles left in pg_roles (every process closed its pool)", e.active, e.left)
	} else {
		row("after db.Close", "%d leases active; lease roles left unknown (%v)", e.active, e.leftErr)
	}
	row("latency", "the worst process's p99 %s, max %s", ms(time.Duration(worstP99)), ms(time.Duration(worstMax)))

	if len(f.events) > 0 {
		fmt.Fprintf(w, "\n  %-20s %8s %13s %6s %6s %6s %6s %7s %7s %7s %7s %9s %6s\n",
			"event", "requests", "per process", "peak/s", "creds", "renew", "revoke", "lookups", "refused", "issued", "revoked", "renew-err", "failed")
		printRow := func(name string, c vaultCost, refused int) {
			fmt.Fprintf(w, "  %-20s %8d %13s %6d %6d %6d %6d %7d %7d %7d %7d %9d %6d\n", name, c.ops[vaulttest.OpAny],
				fmt.Sprintf("%d/%d/%d", c.PerProcMin, c.PerProcMedian, c.PerProcMax), c.Peak,
				c.ops[vaulttest.OpCreds], c.ops[vaulttest.OpRenew], c.ops[vaulttest.OpRevoke], c.ops[vaulttest.OpTokenLookup],
				refused, c.issued, c.revoked, c.renewFailures, c.Failed)
		}
		printRow("start-up", startup, 0)
		for i, ev := range f.events {
			after := ev.After
			if i == len(f.events)-1 {
				after = f.stopping
			}
			name := "load"
			if ev.Kind == "outage" {
				name = fmt.Sprintf("outage %d (%s)", ev.N, seconds(ev.Done.Sub(ev.Start)))
			}
			printRow(name, f.vaultCost(ev.Before, after, e.leases), ev.Refused)
		}
		printRow("stop and db.Close", closing, 0)
		fmt.Fprintln(w, "  (Vault requests from the event's start to the next one's, per process min/median/max; refused: by the outage (503);")
		fmt.Fprintln(w, "   issued, revoked: leases; renew-err: renewals that failed and were tried again; failed: queries)")
	}
	fmt.Fprintln(w)

	var broken []string
	for _, p := range f.procs {
		switch {
		case p.final == nil:
			broken = append(broken, fmt.Sprintf("process %d ended without its final report (%v)", p.id, p.err))
		case p.err != nil:
			broken = append(broken, fmt.Sprintf("process %d exited with %v", p.id, p.err))
		}
	}
	through := fmt.Sprintf("%d leases over %d processes and %s", len(e.leases), f.n(), plural(outs, "Vault outage"))
	switch {
	case total.Failed > 0:
		fmt.Fprintf(w, "FAIL: %s of %s queries failed through %s. First errors:\n", thousands(total.Failed), thousands(total.Ok+total.Failed), through)
		for _, msg := range f.firstErrors() {
			fmt.Fprintf(w, "  - %s\n", msg)
		}
		return exitFail
	case len(broken) > 0 && !d.interrupted:
		fmt.Fprintf(w, "FAIL: %s\n", strings.Join(broken, "; "))
		return exitFail
	case e.active > 0 || e.left != 0:
		fmt.Fprintf(w, "FAIL: once every process had closed its pool, %d leases were still active and %d lease roles left\n", e.active, e.left)
		return exitFail
	case d.interrupted:
		fmt.Fprintf(w, "interrupted: %s queries, none failed, through %s\n", thousands(total.Ok), through)
		return exitInterrupted
	case total.Ok == 0:
		fmt.Fprintln(w, "FAIL: no query ran")
		return exitFail
	}
	fmt.Fprintf(w, "PASS: %s queries, none failed, through %s; every lease revoked, no lease role left.\n", thousands(total.Ok), through)
	return exitOK
}
