package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/pgsecrets/pgsecrets/rotate"
)

const rotateHelp = `Usage: pgsecrets rotate --secret-id ID [flags]

Rotates a PostgreSQL secret of AWS Secrets Manager here and now, with the
same four steps as a rotation Lambda (createSecret, setSecret, testSecret,
finishSecret), printing each step with what it changed and how long it took;
never a password. It works whether or not rotation is enabled on the secret.

The database comes from the secret's host, port and dbname (--dsn, in either
DSN form, and the PG* variables override them and set sslmode, sslrootcert);
the store from the AWS SDK's default chain (AWS_REGION, AWS_PROFILE,
AWS_ENDPOINT_URL_SECRETS_MANAGER…). Every login verifies the server
(sslmode=verify-full against the system's roots, or the bundle sslrootcert
names) unless --dsn or PGSSLMODE chooses otherwise, which is reported.
With --strategy alternating the secret's masterarn field names the admin
secret that may create and change the users. The admin logs in only where
its own secret or --dsn's host says (RDS-managed master secrets name no host:
pin it with --dsn "host=…"), after AWSCURRENT has logged in, and never
changes a privileged role (SUPERUSER, CREATEROLE, REPLICATION, BYPASSRLS,
members of such roles, the admin itself) without --allow-privileged-role.

Flags:
  --secret-id ID         the secret (name or ARN); required
  --strategy S           single (default) or alternating
  --dsn PARAMS           connection settings, e.g. "host=db.internal sslrootcert=/etc/rds-global-bundle.pem"
  --database-host H      another name of the admin's database that the secret may carry
                         (a read replica, an instance endpoint, a proxy; repeatable)
  --allow-privileged-role  let the rotation change a privileged role
  --set-password         with --rollback: let the admin set AWSPREVIOUS's password back
                         when nothing logs in (check the secret's history first)
  --probe SQL            a statement the new credentials must be able to run (repeatable)
  --password-length N    default 32
  --exclude-chars S      characters left out of passwords (default /@"'\; "-" for none)
  --dry-run              show the state and what would be done; change nothing
  --resume               finish a rotation left half done (AWSPENDING ≠ AWSCURRENT)
  --rollback             make AWSCURRENT a credential the database accepts again
  --json                 one JSON object instead of text

Exit status: 0 on success, 1 when a step failed or rollback refused, 2 for usage errors.
`

func runRotate(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rotate", flag.ContinueOnError)
	var (
		secretID, strategy, dsn, exclude string
		length                           int
		dryRun, resume, rollback, asJSON bool
		probes, dbHosts                  multiFlag
		allowPrivileged, setPassword     bool
	)
	fs.StringVar(&secretID, "secret-id", "", "")
	fs.StringVar(&strategy, "strategy", "single", "")
	fs.StringVar(&dsn, "dsn", "", "")
	fs.Var(&probes, "probe", "")
	fs.IntVar(&length, "password-length", 32, "")
	fs.StringVar(&exclude, "exclude-chars", "", "")
	fs.BoolVar(&dryRun, "dry-run", false, "")
	fs.BoolVar(&resume, "resume", false, "")
	fs.BoolVar(&rollback, "rollback", false, "")
	fs.BoolVar(&asJSON, "json", false, "")
	fs.Var(&dbHosts, "database-host", "")
	fs.BoolVar(&allowPrivileged, "allow-privileged-role", false, "")
	fs.BoolVar(&setPassword, "set-password", false, "")
	pos, code, ok := parseFlags(fs, args, stdout, stderr, rotateHelp)
	if !ok {
		return code
	}
	st, err := rotate.ParseStrategy(strategy)
	switch {
	case len(pos) > 0:
		return usageError(stderr, "rotate", "takes no arguments, got %d", len(pos))
	case secretID == "":
		return usageError(stderr, "rotate", "--secret-id is required")
	case err != nil:
		return usageError(stderr, "rotate", "%v", err)
	case resume && rollback:
		return usageError(stderr, "rotate", "--resume and --rollback exclude each other")
	case setPassword && !rollback:
		return usageError(stderr, "rotate", "--set-password goes with --rollback")
	case length < 8 || length > 4096:
		return usageError(stderr, "rotate", "--password-length must be between 8 and 4096")
	}
	client, err := smClient(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "pgsecrets rotate: %v\n", err)
		return exitFail
	}
	// Warnings (a weaker sslmode) reach the operator on stderr; the steps
	// are printed below.
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	r := rotate.New(client, rotate.Options{Strategy: st, ConnParams: dsn, PasswordLength: length, ExcludeCharacters: exclude,
		Probes: probes, DatabaseHosts: dbHosts, AllowPrivilegedRoles: allowPrivileged, RollbackMaySetPassword: setPassword, Logger: logger})
	out := &printer{w: stdout, json: asJSON, rep: map[string]any{"secret_id": secretID}}
	switch {
	case rollback:
		res, err := r.Rollback(ctx, secretID, dryRun)
		for _, l := range res.Logins {
			state := "absent"
			switch {
			case l.OK:
				state = "logs in"
			case l.Present:
				state = "rejected: " + l.Error
			}
			out.line("%-12s %-38s %-20s %s", l.Stage, l.VersionID, l.User, state)
		}
		out.rep["logins"], out.rep["action"], out.rep["why"] = res.Logins, res.Action, res.Why
		return out.done(err, func() string {
			if res.Action == "" {
				return "OK: " + res.Why
			}
			if dryRun {
				return "would have " + res.Action + " (" + res.Why + ")"
			}
			return "OK: " + res.Action + " (" + res.Why + ")"
		})
	case dryRun:
		s := r.Check(ctx, secretID, time.Now())
		out.line("secret       %s", s.ARN)
		out.line("rotation     enabled %v, last %s, next %s", s.RotationEnabled, dateOr(s.LastRotated, "never"), dateOr(s.NextRotation, "not scheduled"))
		out.line("AWSCURRENT   user %s, logs in %v", s.CurrentUser, s.CurrentLogsIn)
		if s.StuckPending != "" {
			out.line("AWSPENDING   version %s (a rotation left half done: --resume or --rollback)", s.StuckPending)
		}
		plan := "would run createSecret, setSecret, testSecret, finishSecret with strategy " + st.String()
		if st == rotate.AlternatingUsers {
			plan += " (the other user is created or updated from the current one)"
		}
		out.line("plan         %s", plan)
		for _, p := range s.Problems {
			out.line("problem      %s", p)
		}
		out.rep["status"], out.rep["plan"] = s, plan
		var err error
		if !s.CurrentLogsIn {
			err = fmt.Errorf("AWSCURRENT does not log in; fix that (or --rollback) before rotating")
		}
		return out.done(err, func() string { return "dry run: nothing changed" })
	}
	var token string
	var results []rotate.Result
	if resume {
		token, results, err = r.Resume(ctx, secretID)
	} else {
		token, results, err = r.Rotate(ctx, secretID)
	}
	for _, res := range results {
		mark := "changed"
		if !res.Changed {
			mark = "no change"
		}
		out.line("%-13s %8s  %-9s  %s", res.Step, ms(res.Took), mark, res.What)
	}
	out.rep["version_id"], out.rep["steps"] = token, results
	return out.done(err, func() string { return "OK: AWSCURRENT is version " + token })
}

// printer writes text lines, or collects a JSON report.
type printer struct {
	w    io.Writer
	json bool
	rep  map[string]any
}

func (p *printer) line(format string, a ...any) {
	if !p.json {
		fmt.Fprintf(p.w, format+"\n", a...)
	}
}

// done prints the verdict and returns the exit status.
func (p *printer) done(err error, ok func() string) int {
	code := exitOK
	verdict := ""
	if err != nil {
		code, verdict = exitFail, "FAIL: "+err.Error()
	} else {
		verdict = ok()
	}
	if p.json {
		p.rep["ok"] = err == nil
		if err != nil {
			p.rep["error"] = err.Error()
		}
		b, _ := json.MarshalIndent(p.rep, "", "  ")
		fmt.Fprintln(p.w, string(b))
		return code
	}
	fmt.Fprintln(p.w, verdict)
	return code
}
