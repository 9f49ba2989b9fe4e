package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/pgsecrets/pgsecrets/iamtest"
	"github.com/pgsecrets/pgsecrets/smtest"
)

// The demo with --provider rds-iam, entra or gcp-iam: cloud IAM logins
// against an in-process front end (iamtest) that checks each token as the
// cloud does and relays the session to the throwaway PostgreSQL. No
// password is configured anywhere: pgsecrets signs an RDS token with the
// demo's AWS key, or gets an Entra or Google token from an in-process
// token endpoint the cloud's SDK is pointed at.
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

// tokenCloud is what the token demo needs to know of one cloud's IAM
// logins.
type tokenCloud struct {
	title string // "RDS IAM"
	// tooOld is the age past which the front end refuses tokens in the
	// early-expiry windows: a moment for RDS (signing is local), more where
	// each token is a request to a token endpoint.
	tooOld time.Duration
	// minted says how the driver gets a token, for the summary.
	minted string
	// start starts the cloud's token issuer, points the SDK at it and
	// configures the front end; user is the database role tokens log in
	// as. stop undoes it.
	start func(d *demo, opts *iamtest.Options) (user, dsnExtra, where string, stop func(), err error)
}

var tokenClouds = map[string]tokenCloud{
	"rds-iam": {title: "RDS IAM", tooOld: 200 * time.Millisecond, minted: "signed", start: startRDSIAM},
	"entra":   {title: "Entra ID", tooOld: time.Second, minted: "got from the managed identity endpoint", start: startEntra},
	"gcp-iam": {title: "Cloud SQL IAM", tooOld: time.Second, minted: "got from the OAuth2 token endpoint", start: startGCPIAM},
}

func startRDSIAM(_ *demo, opts *iamtest.Options) (user, dsnExtra, where string, stop func(), err error) {
	opts.Credentials = map[string]iamtest.Credential{demoAWSKey: {SecretKey: demoAWSSecret}}
	opts.Region = smtest.DefaultRegion
	return demoRole, "secret_region=" + smtest.DefaultRegion,
		"checks each token's SigV4 signature, user, host:port and age as RDS does", func() {}, nil
}

func startEntra(_ *demo, opts *iamtest.Options) (user, dsnExtra, where string, stop func(), err error) {
	const clientID = "0d1e2f30-4a5b-4c6d-8e9f-a0b1c2d3e4f5"
	issuer, err := iamtest.NewEntraIssuer(iamtest.EntraOptions{
		UserAssigned: []iamtest.EntraIdentity{{ClientID: clientID, Principal: demoRole}}})
	if err != nil {
		return "", "", "", nil, err
	}
	set := issuer.Env()
	set["AZURE_CLIENT_ID"] = clientID
	restore := swapEnv(set, iamtest.EntraClearEnv)
	issuer.Configure(opts)
	return demoRole, "", "checks each Entra token's RS256 signature (managed identity endpoint at " + issuer.Endpoint() +
			"), audience, expiry and principal as Azure does", func() {
			restore()
			issuer.Close()
		}, nil
}

func startGCPIAM(d *demo, opts *iamtest.Options) (user, dsnExtra, where string, stop func(), err error) {
	issuer, err := iamtest.NewGoogleIssuer(iamtest.GoogleOptions{})
	if err != nil {
		return "", "", "", nil, err
	}
	email := "demo-app@" + issuer.ProjectID() + ".iam.gserviceaccount.com"
	key, err := issuer.ServiceAccountKey(email)
	if err == nil {
		var f *os.File
		if f, err = os.CreateTemp("", "pgsecrets-demo-gcp-*.json"); err == nil {
			_, err = f.Write(key)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				path := f.Name()
				restore := swapEnv(map[string]string{"GOOGLE_APPLICATION_CREDENTIALS": path}, []string{"GCE_METADATA_HOST"})
				opts.Verifier, opts.RefusedMessage = issuer.Verifier(), issuer.RefusedMessage
				return iamtest.DatabaseUser(email), "", "checks each access token (from the token endpoint at " + issuer.TokenURL() +
						"), its login scope, expiry and service account as Cloud SQL does", func() {
						restore()
						os.Remove(path)
						issuer.Close()
					}, nil
			}
			os.Remove(f.Name())
		}
	}
	issuer.Close()
	return "", "", "", nil, err
}

func (d *demo) setupIAM(ctx context.Context) error {
	cloud := tokenClouds[d.opt.provider]
	d.iamCloud = cloud
	var opts iamtest.Options
	user, extra, where, stop, err := cloud.start(d, &opts)
	if err != nil {
		return err
	}
	d.iamClose = stop
	pw := randomPassword()
	d.rememberPassword(pw)
	if err := d.pg.CreateRole(ctx, user, pw); err != nil {
		return err
	}
	if err := d.pg.CreateDatabase(ctx, demoDB, user); err != nil {
		return err
	}
	opts.Upstream = func(u string) (string, error) {
		if u != user {
			return "", fmt.Errorf("no role %q in the demo", u)
		}
		return fmt.Sprintf("host=%s port=%d user='%s' password='%s' dbname=%s sslmode=verify-full sslrootcert='%s'",
			d.pg.Host(), d.pg.Port(), user, pw, demoDB, d.pg.CAFile()), nil
	}
	srv, err := iamtest.New(opts)
	if err != nil {
		return err
	}
	d.iam = srv
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user='%s' dbname=%s sslmode=verify-full sslrootcert=%s secret_provider=%s %s",
		srv.Port(), user, demoDB, srv.CAFile(), d.opt.provider, extra)
	if err := d.openRolePool(ctx, dsn, user); err != nil {
		return err
	}
	fmt.Fprintf(d.stdout, "  %-9s in-process %s front end at %s: %s\n", d.opt.provider, cloud.title, srv.Addr(), where)
	cfg := d.connector.Config()
	fmt.Fprintf(d.stdout, "  dsn       %s\n", cfg.FormatDSN())
	fmt.Fprintf(d.stdout, "  pool      connections live %s, at most %d idle: a token login all the time\n", connLifetime, max(1, d.opt.workers/2))
	fmt.Fprintf(d.stdout, "  load      %d workers: 4 reads to 1 INSERT; every %s the server refuses logins or early-expired tokens for a while\n\n",
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
			d.printEvent("the server refuses the next 3 logins")
			continue
		}
		took := d.phase()
		d.outages.Add(1)
		d.iam.MaxTokenAge(d.iamCloud.tooOld)
		d.printEvent("tokens die early: tokens older than %s are refused for %s", d.iamCloud.tooOld, seconds(took))
		start := time.Now()
		cut := !sleepUntil(ctx, stop, start.Add(took))
		d.iam.MaxTokenAge(0)
		d.outageTotal.Add(int64(time.Since(start)))
		d.printEvent("tokens accepted until their end again%s", cutShortNote(cut))
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
	return fmt.Sprintf("%7s  queries %s  failed %d  tokens %d  logins %d accepted, %d refused  recovered %d  p50 %s  p99 %s",
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
	row("tokens", "%d %s (one per token life, and one after each refusal)", st.StoreCalls, d.iamCloud.minted)
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
	fmt.Fprintf(w, "PASS: %s queries, none failed, on %d %s tokens through %d refused logins.\n",
		thousands(ok), st.StoreCalls, d.iamCloud.title, refused[iamtest.ReasonInjected]+refused[iamtest.ReasonTooOld])
	return exitOK
}
