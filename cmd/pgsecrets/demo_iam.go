package main

import (
	"context"
	"fmt"
	"time"

	"github.com/pgsecrets/pgsecrets/iamtest"
	"github.com/pgsecrets/pgsecrets/smtest"
)

// The demo with --provider rds-iam: RDS IAM authentication against an
// in-process front end (iamtest) that checks each token's signature as RDS
// does and relays the session to the throwaway PostgreSQL. No password is
// configured anywhere: pgsecrets signs a token with the demo's AWS key.
// Every --rotate-every the front end either refuses the next logins, as RDS
// does when a token's permissions are in flux, or refuses tokens older
// than a moment, as RDS does with a token signed by credentials that
// expired early.

// demoAWSKey and demoAWSSecret are the static key setDemoAWSEnv gives the
// SDK's default chain; the front end accepts tokens signed with it.
const (
	demoAWSKey    = "AKIDPGSECRETSDEMO"
	demoAWSSecret = "pgsecrets-demo-dummy-key"
)

func (d *demo) setupIAM(ctx context.Context) error {
	pw := randomPassword()
	d.rememberPassword(pw)
	if err := d.pg.CreateRole(ctx, demoRole, pw); err != nil {
		return err
	}
	if err := d.pg.CreateDatabase(ctx, demoDB, demoRole); err != nil {
		return err
	}
	srv, err := iamtest.New(iamtest.Options{
		Credentials: map[string]iamtest.Credential{demoAWSKey: {SecretKey: demoAWSSecret}},
		Region:      smtest.DefaultRegion,
		Upstream: func(user string) (string, error) {
			if user != demoRole {
				return "", fmt.Errorf("no role %q in the demo", user)
			}
			return fmt.Sprintf("host=%s port=%d user=%s password='%s' dbname=%s sslmode=verify-full sslrootcert='%s'",
				d.pg.Host(), d.pg.Port(), demoRole, pw, demoDB, d.pg.CAFile()), nil
		},
	})
	if err != nil {
		return err
	}
	d.iam = srv
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=verify-full sslrootcert=%s secret_provider=rds-iam secret_region=%s",
		srv.Port(), demoRole, demoDB, srv.CAFile(), smtest.DefaultRegion)
	if err := d.openRolePool(ctx, dsn); err != nil {
		return err
	}
	fmt.Fprintf(d.stdout, "  rds       in-process RDS IAM front end at %s: checks each token's SigV4 signature, user, host:port and age\n", srv.Addr())
	cfg := d.connector.Config()
	fmt.Fprintf(d.stdout, "  dsn       %s\n", cfg.FormatDSN())
	fmt.Fprintf(d.stdout, "  pool      connections live %s, at most %d idle: a token login all the time\n", connLifetime, max(1, d.opt.workers/2))
	fmt.Fprintf(d.stdout, "  load      %d workers: 4 reads to 1 INSERT; every %s RDS refuses logins or early-expired tokens for a while\n\n",
		d.opt.workers, d.opt.rotateEvery)
	return nil
}

// iamEvents alternates the two refusals every rotation interval, until
// stop.
func (d *demo) iamEvents(ctx context.Context, stop <-chan struct{}) {
	deadline := d.start.Add(d.opt.duration)
	every := d.opt.rotateEvery
	for i, next := 0, d.start.Add(every); deadline.Sub(next) >= every/4; i, next = i+1, next.Add(every) {
		if !sleepUntil(ctx, stop, next) {
			return
		}
		if i%2 == 0 {
			d.iam.RejectNext(3)
			d.printEvent("RDS refuses the next 3 logins (28000 PAM authentication failed)")
			continue
		}
		took := d.phase()
		d.outages.Add(1)
		d.iam.MaxTokenAge(200 * time.Millisecond)
		d.printEvent("the signing credentials expired early: tokens older than 200ms are refused for %s", seconds(took))
		start := time.Now()
		cut := !sleepUntil(ctx, stop, start.Add(took))
		d.iam.MaxTokenAge(0)
		d.outageTotal.Add(int64(time.Since(start)))
		d.printEvent("tokens accepted until their 15 minutes again%s", cutShortNote(cut))
	}
}

// iamLogins counts the front end's logins: accepted, and refused by reason.
func (d *demo) iamLogins() (accepted int, refused map[string]int) {
	refused = map[string]int{}
	for _, l := range d.iam.Logins() {
		if l.Accepted {
			accepted++
		} else {
			refused[l.Reason]++
		}
	}
	return accepted, refused
}

func (d *demo) iamProgressLine() string {
	st := d.connector.Stats()
	accepted, refused := d.iamLogins()
	n := 0
	for _, c := range refused {
		n += c
	}
	return fmt.Sprintf("%7s  queries %s  failed %d  tokens signed %d  logins %d accepted, %d refused  recovered %d  p50 %s  p99 %s",
		seconds(time.Since(d.start)), thousands(d.ok.Load()+d.failed.Load()), d.failed.Load(), st.StoreCalls,
		accepted, n, st.AuthRecovered, ms(d.hist.quantile(0.50)), ms(d.hist.quantile(0.99)))
}

func (d *demo) iamSummary() int {
	elapsed := time.Since(d.start)
	st := d.connector.Stats()
	ok, failed := d.ok.Load(), d.failed.Load()
	accepted, refused := d.iamLogins()
	d.db.Close()
	w := d.stdout
	row := d.summaryRow
	d.summaryHead(elapsed, ok, failed)
	row("tokens", "%d signed (one per token life, and one after each refusal)", st.StoreCalls)
	row("logins", "%d accepted; refused: %d injected, %d too old", accepted, refused[iamtest.ReasonInjected], refused[iamtest.ReasonTooOld])
	row("early expiry", "%d windows (%s)", d.outages.Load(), seconds(time.Duration(d.outageTotal.Load())))
	row("driver stats", "auth failures %d, recovered %d, breaker opens %d", st.AuthFailures, st.AuthRecovered, st.BreakerOpens)
	row("latency", "p50 %s  p99 %s  max %s", ms(d.hist.quantile(0.50)), ms(d.hist.quantile(0.99)), ms(d.hist.maximum()))
	fmt.Fprintln(w)
	switch {
	case failed > 0:
		d.failedQueries(ok, failed, "")
		return exitFail
	case d.interrupted:
		fmt.Fprintf(w, "interrupted: %s queries, none failed\n", thousands(ok))
		return exitInterrupted
	case ok == 0:
		fmt.Fprintln(w, "FAIL: no query ran")
		return exitFail
	}
	fmt.Fprintf(w, "PASS: %s queries, none failed, on %d IAM tokens through %d refused logins.\n",
		thousands(ok), st.StoreCalls, refused[iamtest.ReasonInjected]+refused[iamtest.ReasonTooOld])
	return exitOK
}
