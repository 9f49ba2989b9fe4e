package main

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lib/pq"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/smtest"
)

// The fleet view of the demo (--processes N, --store-tps R): the load runs
// in N processes of this program (the hidden command demo-worker), each
// with its own pool and connector on the same secret and its own AWS
// access key id, as N pods would; this process runs PostgreSQL, the
// Secrets Manager stand-in with its request quota, the rotations and the
// outages, and measures what the fleet asked of the store.
//
// The processes talk to this one over pipes: each reads its stdin (a "go"
// line starts the load, a "stop" line or end of file ends it, so that a
// process whose parent died stops too) and writes JSON lines to its stdout:
// "ready" once it has logged in, a "report" of its counters every 200ms,
// "version" when it first logs in with a version of the secret, and
// "recovered" when its first store call after a failing spell succeeds;
// a "final" report as it exits. Its stderr (the driver's log with
// --verbose) is copied to this process's stderr, each line prefixed.

const (
	// fleetWorkerCmd is the hidden command a process of the fleet runs.
	fleetWorkerCmd = "demo-worker"
	// fleetWorkerEnv is set (to 1) in the environment of the fleet's
	// processes, so that a test binary standing in for this program knows
	// to run it (demo_fleet_test.go).
	fleetWorkerEnv = "PGSECRETS_DEMO_WORKER"
	// fleetWorkers is --workers' default with --processes: per process.
	fleetWorkers = 2
	// maxFleet and maxFleetConns bound --processes and the connections of
	// all processes together (the throwaway server allows 300).
	maxFleet      = 100
	maxFleetConns = 250
	// fleetTTL is the secret_ttl of the fleet's processes: long enough that
	// their refreshes alone (one per process every 4s, N/4 requests a
	// second) stay under a quota of N/2, short enough that the outages
	// outlast it.
	fleetTTL = 5 * time.Second
	// fleetReportEvery is how often a process reports its counters.
	fleetReportEvery = 200 * time.Millisecond
	// fleetReadyTimeout bounds the start of the processes (each loads the
	// AWS configuration and logs in once); fleetExitGrace how long they
	// may take to stop before they are killed.
	fleetReadyTimeout = 2 * time.Minute
	fleetExitGrace    = 20 * time.Second
	// fleetStopGrace is how long a process lets its queries finish after
	// the load ends before it cancels those still waiting.
	fleetStopGrace = 5 * time.Second
	// fleetSettleMax bounds how long the load goes on after --duration for
	// the processes to catch up with the last rotation.
	fleetSettleMax = time.Minute
)

// fleetExecutable is the program the fleet's processes run: this one.
var fleetExecutable = os.Executable

// fleetTestHook, when set, sees the finished fleet.
var fleetTestHook func(*fleet)

// flagSet reports whether the flag name was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}

// fleetMsg is one line a process of the fleet writes to its parent.
type fleetMsg struct {
	Type string `json:"type"` // ready, report, final, version, recovered, error
	At   int64  `json:"at"`   // unix nanoseconds
	// report, final: the counters since the process started.
	OK             int64    `json:"ok,omitempty"`
	Failed         int64    `json:"failed,omitempty"`
	Logins         int64    `json:"logins,omitempty"`
	StoreCalls     int64    `json:"store_calls,omitempty"`
	StoreThrottled int64    `json:"store_throttled,omitempty"`
	StaleServes    int64    `json:"stale_serves,omitempty"`
	AuthFailures   int64    `json:"auth_failures,omitempty"`
	AuthRecovered  int64    `json:"auth_recovered,omitempty"`
	PendingUses    int64    `json:"pending_uses,omitempty"`
	BreakerOpens   int64    `json:"breaker_opens,omitempty"`
	P99            int64    `json:"p99,omitempty"` // nanoseconds
	Max            int64    `json:"max,omitempty"`
	Errors         []string `json:"errors,omitempty"` // final: the first distinct query errors
	// report, final: the version new connections use; version: the version
	// just used for the first time.
	Version string `json:"version,omitempty"`
	// final: queries still waiting fleetStopGrace after the stop, then
	// cancelled (not counted as failed, nor as ok).
	CutShort int64 `json:"cut_short,omitempty"`
	// ready: the first logins that failed for the store before one
	// succeeded.
	StartFailures int64 `json:"start_failures,omitempty"`
	// error: why the process could not start.
	Error string `json:"error,omitempty"`

	// report, final, with --provider vault: the driver's lease counters.
	LeaseRenewals      int64 `json:"lease_renewals,omitempty"`
	LeaseRenewFailures int64 `json:"lease_renew_failures,omitempty"`
	LeaseRevocations   int64 `json:"lease_revocations,omitempty"`
	ConnsRetired       int64 `json:"conns_retired,omitempty"`
}

func (m *fleetMsg) at() time.Time { return time.Unix(0, m.At) }

// fleet is the parent's side of a fleet run.
type fleet struct {
	d     *demo
	procs []*fleetProc
	dsn   string
	vault *fleetVault // --provider vault (demo_fleet_vault.go); nil for awssm

	launched time.Time // when the processes were started

	mu       sync.Mutex  // guards the processes' reported state and what follows
	requests []time.Time // every GetSecretValue (Vault: every) request, as it reached the store
	events   []*fleetEvent
	startup  fleetSnap     // when the load started
	stopping fleetSnap     // when the processes were told to stop
	end      fleetSnap     // when every process had stopped
	changed  chan struct{} // closed and replaced when a process reports
}

// fleetProc is one process of the fleet.
type fleetProc struct {
	id    int
	key   string // its AWS access key id
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{} // closed when it has exited and its output is read
	err   error         // how it exited (nil: status 0), once done

	// Guarded by fleet.mu.
	ready         bool
	startFailures int       // first logins that failed for the store (throttled)
	readyAt       time.Time // when its first login succeeded
	last          fleetMsg  // its latest report
	final         *fleetMsg
	startErr      string
	firstUse      map[string]time.Time // version id → its first login with it
	recovered     []time.Time          // its first good store call after each failing spell
}

// fleetEvent is one rotation or outage and what the fleet did from its
// start to the next one's (or the end of the run).
type fleetEvent struct {
	Kind    string // four-step, wrong-order, outage
	N       int    // rotation or outage number, as the event lines say
	Start   time.Time
	Done    time.Time // when it was over (a rotation's last step; an outage's end)
	Version string    // the version a rotation made current
	Refused int       // a Vault outage: the requests it failed
	Before  fleetSnap // at Start
	After   fleetSnap // at the next event's start, or the end of the run
}

// fleetSnap is the fleet's counters at one moment: the store's (exact) and
// the processes' latest reports (at most fleetReportEvery old).
type fleetSnap struct {
	At          time.Time
	Calls       map[string]int // GetSecretValue requests per access key id
	ThrottledBy map[string]int // of those, the ones the quota refused
	Throttled   int            // requests the quota refused
	Procs       []fleetMsg     // per process, in order
	// Ops, with --provider vault: the requests Vault received per
	// operation (vaulttest's Op constants; vaulttest.OpAny for all).
	Ops map[string]int
}

// fleetCost is what one event (or the whole run) cost.
type fleetCost struct {
	Requests, Throttled          int
	PerProcMin, PerProcMax       int
	PerProcMedian                int
	Peak                         int // most requests in any one second
	Rejected, Recovered, Failed  int64
	StaleServes, PendingUses, Ok int64
}

func (f *fleet) n() int { return len(f.procs) }

// runFleet is the demo with --processes: it returns the exit status.
func (d *demo) runFleet(ctx context.Context) int {
	d.term = false // event lines are plain lines: the progress is the fleet's
	f := &fleet{d: d, changed: make(chan struct{})}
	if d.opt.provider == "vault" {
		f.vault = &fleetVault{calls: map[string]int{}, keys: map[string]string{}}
		fmt.Fprintf(d.stdout, "pgsecrets demo --provider vault: %d processes × %d workers for %s, leases of %s (max TTL %s), a Vault outage every %s\n",
			d.opt.processes, d.opt.workers, d.opt.duration, d.vaultTTL(), 2*d.vaultTTL(), 3*d.opt.rotateEvery)
	} else {
		restoreEnv, err := setDemoAWSEnv()
		if err != nil {
			fmt.Fprintf(d.stderr, "pgsecrets demo: %v\n", err)
			return exitFail
		}
		defer restoreEnv()
		quota := "no request quota"
		if d.opt.storeTPS > 0 {
			quota = fmt.Sprintf("a store quota of %s GetSecretValue requests/s", tps(d.opt.storeTPS))
		}
		fmt.Fprintf(d.stdout, "pgsecrets demo: %d processes × %d workers for %s, a rotation every %s, %s\n",
			d.opt.processes, d.opt.workers, d.opt.duration, d.opt.rotateEvery, quota)
	}

	stopEnv, code := f.startEnv(ctx)
	if stopEnv == nil {
		return code
	}
	defer stopEnv()
	defer f.stopProcs() // on every path: no process outlives the demo

	if code := f.startProcs(ctx); code != exitOK {
		return code
	}
	f.runLoad(ctx)
	if f.vault != nil {
		code = f.vaultSummary()
	} else {
		code = f.summary()
	}
	if fleetTestHook != nil {
		fleetTestHook(f)
	}
	return code
}

func processes(n int) string {
	if n == 1 {
		return "1 process"
	}
	return fmt.Sprintf("%d processes", n)
}

func tps(r float64) string { return strconv.FormatFloat(r, 'f', -1, 64) }

// startEnv starts PostgreSQL and the store with its quota, and sets up the
// role, its database, its table and its secret. Like demo.startEnv it
// returns a nil stop and the exit status when it cannot.
func (f *fleet) startEnv(ctx context.Context) (stop func(), code int) {
	d := f.d
	if f.vault != nil {
		return f.startVaultEnv(ctx)
	}
	pg, code := d.startPostgres(ctx)
	if pg == nil {
		return nil, code
	}
	d.sm = smtest.NewServer()
	d.sm.SetQuota(d.opt.storeTPS)
	d.sm.OnRequest(func(op, _ string) {
		if op == "GetSecretValue" {
			now := time.Now()
			f.mu.Lock()
			f.requests = append(f.requests, now)
			f.mu.Unlock()
		}
	})
	stop = func() {
		d.sm.Close()
		pg.Stop()
	}
	if err := f.setup(ctx); err != nil {
		stop()
		return nil, d.setupFailed(ctx, err)
	}
	return stop, exitOK
}

// setupFailed says why the fleet's set-up failed and returns the exit
// status.
func (d *demo) setupFailed(ctx context.Context, err error) int {
	if ctx.Err() != nil {
		fmt.Fprintln(d.stderr, "pgsecrets demo: interrupted")
		return exitInterrupted
	}
	fmt.Fprintf(d.stderr, "pgsecrets demo: setting up: %v\n", err)
	return exitFail
}

// setup creates the role, its database and secret, and the table (logged
// in as the role directly, so that every store request is the fleet's).
func (f *fleet) setup(ctx context.Context) error {
	d := f.d
	pw := randomPassword()
	d.rememberPassword(pw)
	if err := d.pg.CreateRole(ctx, demoRole, pw); err != nil {
		return err
	}
	if err := d.pg.CreateDatabase(ctx, demoDB, demoRole); err != nil {
		return err
	}
	d.sm.CreateSecret(demoSecret, d.secretJSON(pw))
	pc, err := pq.NewConnectorConfig(d.pg.Config(demoRole, pw, demoDB))
	if err != nil {
		return err
	}
	d.db = sql.OpenDB(pc)
	err = d.createOrders(ctx)
	d.db.Close()
	d.db = nil
	if err != nil {
		return err
	}
	var version string
	if err := d.pg.DB().QueryRowContext(ctx, "SHOW server_version").Scan(&version); err != nil {
		return err
	}
	f.dsn = fmt.Sprintf("host=%s port=%d dbname=%s sslmode=verify-full sslrootcert=%s secret_id=%s secret_endpoint=%s secret_ttl=%s",
		d.pg.Host(), d.pg.Port(), demoDB, d.pg.CAFile(), demoSecret, d.sm.URL(), fleetTTL)
	quota := "no request quota"
	if d.opt.storeTPS > 0 {
		quota = fmt.Sprintf("a quota of %s GetSecretValue requests/s over all processes (token bucket, %s in a burst); ThrottlingException beyond",
			tps(d.opt.storeTPS), tps(max(1, d.opt.storeTPS)))
	}
	fmt.Fprintf(d.stdout, "  postgres  PostgreSQL %s at %s (TLS, scram-sha-256); role %s owns database %s, table orders\n",
		firstField(version), d.pg.Addr(), demoRole, demoDB)
	fmt.Fprintf(d.stdout, "  secrets   %s in an in-process Secrets Manager at %s, %s\n", demoSecret, d.sm.URL(), quota)
	if cfg, err := pgsecrets.ParseDSN(f.dsn); err == nil {
		fmt.Fprintf(d.stdout, "  dsn       %s\n", cfg.FormatDSN())
	}
	fmt.Fprintf(d.stdout, "  fleet     %d processes of this program, each its own pool (connections live %s) and AWS access key id\n",
		d.opt.processes, connLifetime)
	fmt.Fprintf(d.stdout, "  load      %d workers per process: 4 reads to 1 INSERT; secret_ttl=%s\n", d.opt.workers, fleetTTL)
	return nil
}

// startProcs starts the fleet's processes and waits until each has logged
// in once.
func (f *fleet) startProcs(ctx context.Context) int {
	d := f.d
	exe, err := fleetExecutable()
	if err != nil {
		fmt.Fprintf(d.stderr, "pgsecrets demo: cannot find this program to start the fleet: %v\n", err)
		return exitFail
	}
	fmt.Fprintf(d.stdout, "starting %d processes…\n", d.opt.processes)
	f.launched = time.Now()
	for i := 1; i <= d.opt.processes; i++ {
		p := &fleetProc{id: i, key: fmt.Sprintf("AKIDPGSECRETSFLEET%03d", i), done: make(chan struct{}),
			firstUse: map[string]time.Time{}}
		args := []string{fleetWorkerCmd, "--dsn", f.dsn, "--workers", strconv.Itoa(d.opt.workers),
			"--id", strconv.Itoa(i), "--max-run", (d.opt.duration + 2*fleetReadyTimeout).String()}
		if d.opt.verbose {
			args = append(args, "--verbose")
		}
		env := append(os.Environ(), "AWS_ACCESS_KEY_ID="+p.key, fleetWorkerEnv+"=1")
		if f.vault != nil {
			// Its own token, whose accessor names it; no pool lifetime:
			// the driver retires connections before their lease ends.
			var token string
			token, p.key = f.vault.newToken(d.vs)
			args = append(args, "--conn-lifetime", "0")
			env = append(withoutVaultEnv(os.Environ()), "VAULT_ADDR="+f.vault.url, "VAULT_TOKEN="+token, fleetWorkerEnv+"=1")
		}
		p.cmd = exec.Command(exe, args...)
		p.cmd.Env = env
		if err := f.start(p); err != nil {
			fmt.Fprintf(d.stderr, "pgsecrets demo: starting process %d: %v\n", i, err)
			return exitFail
		}
		f.procs = append(f.procs, p)
	}
	timeout := time.NewTimer(fleetReadyTimeout)
	defer timeout.Stop()
	for {
		f.mu.Lock()
		ready, failed := 0, ""
		for _, p := range f.procs {
			if p.ready {
				ready++
			}
			if failed == "" && p.startErr != "" {
				failed = fmt.Sprintf("process %d: %s", p.id, p.startErr)
			}
			select {
			case <-p.done:
				if failed == "" && !p.ready {
					failed = fmt.Sprintf("process %d exited before it was ready (%v)", p.id, p.err)
				}
			default:
			}
		}
		ch := f.changed
		f.mu.Unlock()
		switch {
		case failed != "":
			fmt.Fprintf(d.stderr, "pgsecrets demo: %s\n", failed)
			return exitFail
		case ready == len(f.procs):
			return exitOK
		}
		select {
		case <-ch:
		case <-ctx.Done():
			fmt.Fprintln(d.stderr, "pgsecrets demo: interrupted")
			return exitInterrupted
		case <-timeout.C:
			fmt.Fprintf(d.stderr, "pgsecrets demo: only %d of %d processes were ready after %s\n", ready, len(f.procs), fleetReadyTimeout)
			return exitFail
		}
	}
}

// start starts p with its pipes and the goroutines that read them.
func (f *fleet) start(p *fleetProc) error {
	stdin, err := p.cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		return err
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := p.cmd.Start(); err != nil {
		return err
	}
	p.stdin = stdin
	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var m fleetMsg
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				f.receive(p, m)
			}
		}
		_, _ = io.Copy(io.Discard, stdout) // a line too long: keep the process going
	}()
	go func() {
		defer readers.Done()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			f.d.outMu.Lock()
			fmt.Fprintf(f.d.stderr, "[process %d] %s\n", p.id, sc.Text())
			f.d.outMu.Unlock()
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	go func() {
		readers.Wait()
		err := p.cmd.Wait()
		f.mu.Lock()
		p.err = err
		f.mu.Unlock()
		close(p.done)
		f.notify()
	}()
	return nil
}

// notify wakes whoever waits for a process's news.
func (f *fleet) notify() {
	f.mu.Lock()
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// receive takes one message of p.
func (f *fleet) receive(p *fleetProc, m fleetMsg) {
	f.mu.Lock()
	switch m.Type {
	case "ready":
		p.ready = true
		p.startFailures, p.readyAt = int(m.StartFailures), m.at()
	case "error":
		p.startErr = m.Error
	case "report":
		p.last = m
	case "final":
		p.last = m
		p.final = &m
	case "version":
		if _, ok := p.firstUse[m.Version]; !ok {
			p.firstUse[m.Version] = m.at()
		}
	case "recovered":
		p.recovered = append(p.recovered, m.at())
	}
	var ok, failed int64
	for _, q := range f.procs {
		ok += q.last.OK
		failed += q.last.Failed
	}
	f.mu.Unlock()
	// The demo's own counters are the fleet's: the event lines show them.
	f.d.ok.Store(ok)
	f.d.failed.Store(failed)
	f.notify()
}

// send writes a line to every process that still runs.
func (f *fleet) send(line string) {
	for _, p := range f.procs {
		_, _ = io.WriteString(p.stdin, line+"\n")
	}
}

// stopProcs ends the fleet: it closes every process's stdin (which stops
// it), waits fleetExitGrace for them to exit, and kills those left.
func (f *fleet) stopProcs() {
	for _, p := range f.procs {
		_ = p.stdin.Close()
	}
	deadline := time.NewTimer(fleetExitGrace)
	defer deadline.Stop()
	for _, p := range f.procs {
		select {
		case <-p.done:
			continue
		case <-deadline.C:
		}
		// Past the grace: kill this one and every other one still running.
		for _, q := range f.procs {
			select {
			case <-q.done:
			default:
				_ = q.cmd.Process.Kill()
				fmt.Fprintf(f.d.stderr, "pgsecrets demo: process %d did not stop within %s: killed\n", q.id, fleetExitGrace)
			}
		}
		break
	}
	for _, p := range f.procs {
		<-p.done
	}
}

// snap takes the fleet's counters now.
func (f *fleet) snap() fleetSnap {
	var s fleetSnap
	if f.vault != nil {
		s = f.vaultSnap()
	} else {
		s = fleetSnap{At: time.Now(), Calls: map[string]int{}, ThrottledBy: map[string]int{}, Throttled: f.d.sm.Throttled()}
		for key, c := range f.d.sm.ClientCounts() {
			s.Calls[key] = c.Calls["GetSecretValue"]
			s.ThrottledBy[key] = c.Throttled
		}
	}
	f.mu.Lock()
	for _, p := range f.procs {
		s.Procs = append(s.Procs, p.last)
	}
	f.mu.Unlock()
	return s
}

// runLoad starts the processes' load, runs the rotations and outages
// beside it with the progress lines, and stops the processes when the
// duration has passed or ctx ends.
func (f *fleet) runLoad(ctx context.Context) {
	d := f.d
	stop := make(chan struct{})
	d.start = time.Now()
	f.startup = f.snap()
	f.send("go")
	fmt.Fprintln(d.stdout)

	if f.vault != nil {
		// The load before the first outage is an event of its own: leases
		// are renewed and replaced all along, not only around outages.
		f.addEvent(&fleetEvent{Kind: "load", Start: d.start, Before: f.startup})
	}
	rotDone := make(chan struct{})
	go func() {
		defer close(rotDone)
		if f.vault != nil {
			f.vaultOutages(ctx, stop)
			return
		}
		f.rotations(ctx, stop)
	}()
	progDone := make(chan struct{})
	progStop := make(chan struct{})
	go func() {
		defer close(progDone)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-progStop:
				return
			case <-t.C:
			}
			line := f.progressLine()
			d.outMu.Lock()
			fmt.Fprintln(d.stdout, line)
			d.outMu.Unlock()
		}
	}()

	timer := time.NewTimer(d.opt.duration)
	select {
	case <-timer.C:
	case <-ctx.Done():
		timer.Stop()
		d.interrupted = true
	}
	close(stop)
	<-rotDone
	if !d.interrupted && f.vault == nil {
		f.settle(ctx)
	}
	close(progStop)
	<-progDone
	f.stopping = f.snap()
	f.send("stop")
	f.stopProcs()
	f.end = f.snap()
	f.mu.Lock()
	if k := len(f.events); k > 0 {
		f.events[k-1].After = f.end
	}
	f.mu.Unlock()
	d.outMu.Lock()
	fmt.Fprintln(d.stdout, f.progressLine())
	d.outMu.Unlock()
}

// settle keeps the load running after the last event until every process
// has used the store's current version (a process the throttled store
// keeps waiting gets there late), for at most fleetSettleMax, so that the
// last rotation's "every process on the new version" is measured too.
func (f *fleet) settle(ctx context.Context) {
	d := f.d
	current, _, _ := d.sm.Version(demoSecret, smtest.StageCurrent)
	timeout := time.NewTimer(fleetSettleMax)
	defer timeout.Stop()
	announced := false
	for {
		f.mu.Lock()
		behind := 0
		for _, p := range f.procs {
			if _, ok := p.firstUse[current]; !ok {
				behind++
			}
		}
		ch := f.changed
		f.mu.Unlock()
		if behind == 0 {
			if announced {
				d.printEvent("every process has used version %s", shortVersion(current))
			}
			return
		}
		if !announced {
			announced = true
			d.printEvent("the load ran its %s; it goes on until %s used version %s (at most %s more)",
				d.opt.duration, processes(behind), shortVersion(current), fleetSettleMax)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			d.interrupted = true
			return
		case <-timeout.C:
			d.printEvent("%s still not on version %s after %s", processes(behind), shortVersion(current), fleetSettleMax)
			return
		}
	}
}

// rotations runs demo_scenarios.go's rotations and outages on the
// single-process demo's schedule, recording each as a fleetEvent.
func (f *fleet) rotations(ctx context.Context, stop <-chan struct{}) {
	d := f.d
	every := d.opt.rotateEvery
	deadline := d.start.Add(d.opt.duration)
	next := d.start.Add(every)
	for i := 0; ; i++ {
		if deadline.Sub(next) < every/4 || !sleepUntil(ctx, stop, next) {
			return
		}
		ev := &fleetEvent{Start: time.Now(), Before: f.snap()}
		f.mu.Lock()
		if k := len(f.events); k > 0 {
			f.events[k-1].After = ev.Before
		}
		f.events = append(f.events, ev)
		f.mu.Unlock()
		var err error
		switch i % 3 {
		case 0:
			ev.Kind, ev.N = "four-step", int(d.rotations.Load())+1
			err = d.fourStep(ctx, stop)
		case 1:
			ev.Kind, ev.N = "wrong-order", int(d.rotations.Load())+1
			err = d.wrongOrder(ctx, stop)
		case 2:
			ev.Kind, ev.N = "outage", int(d.outages.Load())+1
			d.outage(ctx, stop)
		}
		ev.Done = time.Now()
		if ev.Kind != "outage" && err == nil {
			ev.Version, _, _ = d.sm.Version(demoSecret, smtest.StageCurrent)
		}
		if d.stopRotating(ctx, err) {
			return
		}
		next = nextTick(next, every)
	}
}

// progressLine is the fleet's progress: queries, failures, store requests
// and how many processes use the current version.
func (f *fleet) progressLine() string {
	d := f.d
	if f.vault != nil {
		return f.vaultProgressLine()
	}
	current, _, _ := d.sm.Version(demoSecret, smtest.StageCurrent)
	f.mu.Lock()
	on := 0
	for _, p := range f.procs {
		if p.last.Version == current {
			on++
		}
	}
	f.mu.Unlock()
	return fmt.Sprintf("%7s  queries %s  failed %d  rotations %d  outages %d  store requests %d (throttled %d)  on the current version %d/%d",
		seconds(time.Since(d.start)), thousands(d.ok.Load()+d.failed.Load()), d.failed.Load(),
		d.rotations.Load(), d.outages.Load(), d.sm.Calls("GetSecretValue"), d.sm.Throttled(), on, f.n())
}

// cost is what the fleet did between two snapshots.
func (f *fleet) cost(a, b fleetSnap) fleetCost {
	var c fleetCost
	per := make([]int, 0, f.n())
	for _, p := range f.procs {
		n := b.Calls[p.key] - a.Calls[p.key]
		per = append(per, n)
		c.Requests += n
	}
	slices.Sort(per)
	if len(per) > 0 {
		c.PerProcMin, c.PerProcMax, c.PerProcMedian = per[0], per[len(per)-1], per[len(per)/2]
	}
	c.Throttled = b.Throttled - a.Throttled
	for i := range b.Procs {
		var x fleetMsg
		if i < len(a.Procs) {
			x = a.Procs[i]
		}
		y := b.Procs[i]
		c.Ok += y.OK - x.OK
		c.Failed += y.Failed - x.Failed
		c.Rejected += y.AuthFailures - x.AuthFailures
		c.Recovered += y.AuthRecovered - x.AuthRecovered
		c.StaleServes += y.StaleServes - x.StaleServes
		c.PendingUses += y.PendingUses - x.PendingUses
	}
	c.Peak = f.peak(a.At, b.At)
	return c
}

// peak is the most GetSecretValue requests that reached the store within
// any one second between from and to.
func (f *fleet) peak(from, to time.Time) int {
	f.mu.Lock()
	var ts []time.Time
	for _, t := range f.requests {
		if !t.Before(from) && t.Before(to) {
			ts = append(ts, t)
		}
	}
	f.mu.Unlock()
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	best, i := 0, 0
	for j := range ts {
		for ts[j].Sub(ts[i]) >= time.Second {
			i++
		}
		best = max(best, j-i+1)
	}
	return best
}

// allOn is how long after the event's start the last process first
// logged in with the event's version, and how many processes did.
func (f *fleet) allOn(ev *fleetEvent) (took time.Duration, on int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.procs {
		if t, ok := p.firstUse[ev.Version]; ok {
			on++
			took = max(took, t.Sub(ev.Start))
		}
	}
	return took, on
}

// resumed is, for an outage, the spread of the processes' first good store
// call after it ended: how far apart the fleet came back.
func (f *fleet) resumed(ev *fleetEvent) (first, last time.Duration, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	first = -1
	for _, p := range f.procs {
		for _, t := range p.recovered {
			if t.Before(ev.Done) || !t.Before(ev.After.At) {
				continue
			}
			d := t.Sub(ev.Done)
			if first < 0 || d < first {
				first = d
			}
			last = max(last, d)
			n++
			break
		}
	}
	return max(first, 0), last, n
}

// summary prints the fleet's figures, per event and for the run, and the
// verdict, and returns the exit status.
func (f *fleet) summary() int {
	d := f.d
	w := d.stdout
	row := d.summaryRow
	elapsed := f.end.At.Sub(d.start)
	total := f.cost(fleetSnap{At: time.Time{}, Calls: map[string]int{}}, f.end)
	startup := f.cost(fleetSnap{Calls: map[string]int{}}, f.startup)
	run := f.cost(f.startup, f.end)
	rot, four, wrong, outs := d.rotations.Load(), d.fourSteps.Load(), d.wrongOrders.Load(), d.outages.Load()

	var sum fleetMsg
	var worstP99, worstMax int64
	for _, p := range f.end.Procs {
		sum.CutShort += p.CutShort
		sum.Logins += p.Logins
		sum.StoreCalls += p.StoreCalls
		sum.StoreThrottled += p.StoreThrottled
		sum.StaleServes += p.StaleServes
		sum.PendingUses += p.PendingUses
		sum.BreakerOpens += p.BreakerOpens
		worstP99, worstMax = max(worstP99, p.P99), max(worstMax, p.Max)
	}
	current, _, _ := d.sm.Version(demoSecret, smtest.StageCurrent)
	onLast := 0
	for _, p := range f.end.Procs {
		if p.Version == current {
			onLast++
		}
	}

	fmt.Fprintln(w, "\nSummary")
	row("duration", "%s, %d processes × %d workers", seconds(elapsed), f.n(), d.opt.workers)
	row("queries", "ok %s  failed %s", thousands(total.Ok), thousands(total.Failed))
	if sum.CutShort > 0 {
		row("", "%d still waiting %s after the load ended, then cancelled (neither ok nor failed)", sum.CutShort, fleetStopGrace)
	}
	row("rotations", "%d (four-step %d, wrong-order %d)", rot, four, wrong)
	row("store outages", "%d (%s of failing GetSecretValue)", outs, seconds(time.Duration(d.outageTotal.Load())))
	if d.opt.storeTPS > 0 {
		row("store quota", "%s requests/s over the fleet (token bucket, %s in a burst)", tps(d.opt.storeTPS), tps(max(1, d.opt.storeTPS)))
	} else {
		row("store quota", "none")
	}
	row("start-up", "%s", f.startupLine(startup))
	row("store requests", "%d GetSecretValue: %d at start-up, %d during the load", total.Requests, startup.Requests, run.Requests)
	row("", "per process during the load: min %d, median %d, max %d", run.PerProcMin, run.PerProcMedian, run.PerProcMax)
	row("", "at most %d in one second; %d throttled (%s)", total.Peak, total.Throttled, pct(total.Throttled, total.Requests))
	row("DB logins", "%s made, %d rejected by the database, %d recovered in the call", thousands(sum.Logins), total.Rejected, total.Recovered)
	row("driver stats", "store calls %d, throttled %d, stale serves %d, AWSPENDING logins %d, breaker opened %d (all processes)",
		sum.StoreCalls, sum.StoreThrottled, sum.StaleServes, sum.PendingUses, sum.BreakerOpens)
	row("versions", "%d of %d processes on %s, the store's AWSCURRENT, at the end", onLast, f.n(), shortVersion(current))
	row("latency", "the worst process's p99 %s, max %s", ms(time.Duration(worstP99)), ms(time.Duration(worstMax)))

	maxPerRotation := map[string]int{}
	if len(f.events) > 0 {
		fmt.Fprintf(w, "\n  %-24s %8s %14s %6s %9s %8s %9s %6s  %s\n",
			"event", "requests", "per process", "peak/s", "throttled", "rejected", "recovered", "failed", "every process on the new version")
		for i, ev := range f.events {
			c := f.cost(ev.Before, ev.After)
			superseded := slices.ContainsFunc(f.events[i+1:], func(e *fleetEvent) bool { return e.Version != "" })
			name := fmt.Sprintf("rotation %d %s", ev.N, ev.Kind)
			var note string
			if ev.Kind == "outage" {
				name = fmt.Sprintf("outage %d", ev.N)
				if first, last, n := f.resumed(ev); n > 0 {
					note = fmt.Sprintf("(%d processes' first good call %s–%s after it)", n, seconds(first), seconds(last))
				}
			} else {
				maxPerRotation[ev.Kind] = max(maxPerRotation[ev.Kind], c.PerProcMax)
				took, on := f.allOn(ev)
				switch {
				case ev.Version == "":
					note = "-"
				case on == f.n():
					note = fmt.Sprintf("after %s", seconds(took))
				case superseded:
					note = fmt.Sprintf("%d of %d; the others went straight to the next version", on, f.n())
				default:
					note = fmt.Sprintf("only %d of %d by the end", on, f.n())
				}
			}
			fmt.Fprintf(w, "  %-24s %8d %14s %6d %9d %8d %9d %6d  %s\n", name, c.Requests,
				fmt.Sprintf("%d/%d/%d", c.PerProcMin, c.PerProcMedian, c.PerProcMax), c.Peak, c.Throttled,
				c.Rejected, c.Recovered, c.Failed, note)
		}
		fmt.Fprintf(w, "  (per process: min/median/max GetSecretValue requests from the event's start to the next one's, refreshes of secret_ttl=%s included)\n", fleetTTL)
	}
	fmt.Fprintln(w)
	if len(maxPerRotation) > 0 {
		var parts []string
		for _, k := range []string{"four-step", "wrong-order"} {
			if n, ok := maxPerRotation[k]; ok {
				parts = append(parts, fmt.Sprintf("%s at most %d", k, n))
			}
		}
		fmt.Fprintf(w, "Store requests per process per rotation, refreshes included: %s.\n", strings.Join(parts, ", "))
	}

	d.errMu.Lock()
	eventErr := d.eventErr
	d.errMu.Unlock()
	var broken []string
	for _, p := range f.procs {
		switch {
		case p.final == nil:
			broken = append(broken, fmt.Sprintf("process %d ended without its final report (%v)", p.id, p.err))
		case p.err != nil:
			broken = append(broken, fmt.Sprintf("process %d exited with %v", p.id, p.err))
		}
	}
	through := fmt.Sprintf("%s and %s, %d processes, %d store requests throttled", plural(rot, "rotation"), plural(outs, "store outage"), f.n(), total.Throttled)
	switch {
	case total.Failed > 0:
		fmt.Fprintf(w, "FAIL: %s of %s queries failed through %s. First errors:\n", thousands(total.Failed), thousands(total.Ok+total.Failed), through)
		for _, e := range f.firstErrors() {
			fmt.Fprintf(w, "  - %s\n", e)
		}
		return exitFail
	case eventErr != nil:
		fmt.Fprintf(w, "FAIL: the demo could not rotate: %v\n", eventErr)
		return exitFail
	case len(broken) > 0 && !d.interrupted:
		fmt.Fprintf(w, "FAIL: %s\n", strings.Join(broken, "; "))
		return exitFail
	case d.interrupted:
		fmt.Fprintf(w, "interrupted: %s queries, none failed, through %s\n", thousands(total.Ok), through)
		return exitInterrupted
	case total.Ok == 0:
		fmt.Fprintln(w, "FAIL: no query ran")
		return exitFail
	}
	fmt.Fprintf(w, "PASS: %s queries, none failed, through %s.\n", thousands(total.Ok), through)
	return exitOK
}

// startupLine says how the processes' first logins went: a fleet that
// starts together meets the quota with nothing cached.
func (f *fleet) startupLine(c fleetCost) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var last time.Time
	failures, throttledProcs := 0, 0
	for _, p := range f.procs {
		if p.readyAt.After(last) {
			last = p.readyAt
		}
		failures += p.startFailures
		if p.startFailures > 0 {
			throttledProcs++
		}
	}
	line := fmt.Sprintf("every process logged in within %s of the start, %d store requests (%d throttled)",
		seconds(last.Sub(f.launched)), c.Requests, c.Throttled)
	if failures > 0 {
		line += fmt.Sprintf("; %d processes found the store throttled with nothing cached and tried again (%d failed first logins)",
			throttledProcs, failures)
	}
	return line
}

// firstErrors are the first distinct query errors of the processes.
func (f *fleet) firstErrors() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, p := range f.procs {
		if p.final == nil {
			continue
		}
		for _, e := range p.final.Errors {
			if len(out) < 5 && !slices.Contains(out, e) {
				out = append(out, fmt.Sprintf("process %d: %s", p.id, e))
			}
		}
	}
	return out
}

func pct(n, of int) string {
	if of == 0 {
		return "0%"
	}
	return fmt.Sprintf("%.0f%% of the requests", 100*float64(n)/float64(of))
}

// runDemoWorker is one process of the fleet (the hidden command
// demo-worker): the demo's load on its own pool, reported to the parent
// as JSON lines on stdout, until its stdin says stop or ends.
func runDemoWorker(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(fleetWorkerCmd, flag.ContinueOnError)
	var dsn string
	var workers, id int
	var verbose bool
	var maxRun, lifetime time.Duration
	fs.StringVar(&dsn, "dsn", "", "")
	fs.IntVar(&workers, "workers", fleetWorkers, "")
	fs.IntVar(&id, "id", 1, "")
	fs.BoolVar(&verbose, "verbose", false, "")
	fs.DurationVar(&maxRun, "max-run", 10*time.Minute, "")
	// 0: no SetConnMaxLifetime, all connections may idle (Vault leases:
	// the driver retires connections before their lease ends).
	fs.DurationVar(&lifetime, "conn-lifetime", connLifetime, "")
	if _, code, ok := parseFlags(fs, args, stdout, stderr, "pgsecrets demo-worker is run by pgsecrets demo --processes\n"); !ok {
		return code
	}
	out := &fleetWriter{enc: json.NewEncoder(stdout)}
	d := &demo{opt: demoOpts{workers: workers}, stdout: io.Discard, stderr: stderr, errSeen: map[string]bool{}}

	logger := slog.New(slog.DiscardHandler)
	if verbose {
		logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	var seenMu sync.Mutex
	seen := map[string]bool{}
	obs := pgsecrets.ObserverFunc(func(ctx context.Context, e pgsecrets.Event) context.Context {
		switch {
		case e.Kind == pgsecrets.KindLoginEnd && e.Outcome == pgsecrets.OutcomeOK && e.VersionID != "":
			seenMu.Lock()
			first := !seen[e.VersionID]
			seen[e.VersionID] = true
			seenMu.Unlock()
			if first {
				out.send(fleetMsg{Type: "version", Version: e.VersionID})
			}
		case e.Kind == pgsecrets.KindStoreRecovered:
			out.send(fleetMsg{Type: "recovered"})
		}
		return ctx
	})
	c, err := pgsecrets.NewConnector(dsn, pgsecrets.WithLogger(logger), pgsecrets.WithObserver(obs))
	if err != nil {
		out.send(fleetMsg{Type: "error", Error: err.Error()})
		return exitFail
	}
	d.connector = c
	d.logins = &countingConnector{Connector: c}
	d.db = sql.OpenDB(d.logins)
	defer d.db.Close()
	if lifetime > 0 {
		d.db.SetConnMaxLifetime(lifetime)
		d.db.SetMaxIdleConns(max(1, workers/2))
	} else {
		d.db.SetMaxIdleConns(workers)
	}

	// The first login needs the store: a fleet starting together may find
	// it throttled (nothing is cached yet, so that fails fast). Try again,
	// as a pod's readiness probe would: the driver paces its store calls
	// (after throttling 2s, doubling, spread), so trying costs no request.
	pctx, cancel := context.WithTimeout(ctx, fleetReadyTimeout)
	startFailures := int64(0)
	for {
		err = d.db.PingContext(pctx)
		if err == nil || !errors.Is(err, pgsecrets.ErrStoreUnavailable) || pctx.Err() != nil {
			break
		}
		startFailures++
		if !sleepUntil(pctx, nil, time.Now().Add(250*time.Millisecond)) {
			break
		}
	}
	cancel()
	if err != nil {
		out.send(fleetMsg{Type: "error", Error: err.Error()})
		return exitFail
	}

	// The parent's word: "go", then "stop" or the end of stdin (it
	// stopped, or died).
	goCh, stopCh := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopCh)
		sc := bufio.NewScanner(fleetStdin)
		started := false
		for sc.Scan() {
			switch strings.TrimSpace(sc.Text()) {
			case "go":
				if !started {
					started = true
					close(goCh)
				}
			case "stop":
				return
			}
		}
	}()
	out.send(fleetMsg{Type: "ready", StartFailures: startFailures})
	select {
	case <-goCh:
	case <-stopCh:
		return exitOK
	case <-ctx.Done():
		return exitInterrupted
	}

	// Queries run with a context of their own: one that still waits (for
	// a recovery, say) fleetStopGrace after the stop is cancelled, so that
	// the process ends in time, and counted as cut short.
	qctx, cancelQueries := context.WithCancel(ctx)
	defer cancelQueries()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var running atomic.Int64
	for i := range workers {
		running.Add(1)
		wg.Go(func() {
			defer running.Add(-1)
			d.worker(qctx, id*1000+i+1, stop)
		})
	}
	report := func(kind string) fleetMsg {
		st := c.Stats()
		m := fleetMsg{Type: kind, OK: d.ok.Load(), Failed: d.failed.Load(), Logins: d.logins.n.Load(),
			StoreCalls: st.StoreCalls, StoreThrottled: st.StoreThrottled, StaleServes: st.StaleServes,
			AuthFailures: st.AuthFailures, AuthRecovered: st.AuthRecovered, PendingUses: st.PendingUses,
			BreakerOpens: st.BreakerOpens, Version: st.VersionID,
			LeaseRenewals: st.LeaseRenewals, LeaseRenewFailures: st.LeaseRenewFailures,
			LeaseRevocations: st.LeaseRevocations, ConnsRetired: st.ConnsRetired,
			P99: int64(d.hist.quantile(0.99)), Max: int64(d.hist.maximum())}
		return m
	}
	tick := time.NewTicker(fleetReportEvery)
	defer tick.Stop()
	limit := time.NewTimer(maxRun)
	defer limit.Stop()
	interrupted := false
loop:
	for {
		select {
		case <-tick.C:
			out.send(report("report"))
		case <-stopCh:
			break loop
		case <-limit.C:
			break loop
		case <-ctx.Done():
			interrupted = true
			break loop
		}
	}
	close(stop)
	stuck := int64(0)
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	grace := time.NewTimer(fleetStopGrace)
	select {
	case <-finished:
	case <-grace.C:
		stuck = running.Load()
		cancelQueries()
		<-finished
	}
	grace.Stop()
	m := report("final")
	m.CutShort = stuck
	d.errMu.Lock()
	m.Errors = append([]string(nil), d.firstErrs...)
	d.errMu.Unlock()
	out.send(m)
	if interrupted {
		return exitInterrupted
	}
	return exitOK
}

// fleetStdin is where a process of the fleet reads its parent's word.
var fleetStdin io.Reader = os.Stdin

// fleetWriter writes a process's messages, one JSON line each, from any
// goroutine.
type fleetWriter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (w *fleetWriter) send(m fleetMsg) {
	if m.At == 0 {
		m.At = time.Now().UnixNano()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	_ = w.enc.Encode(m)
}
