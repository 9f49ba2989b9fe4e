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

const monitorHelp = `Usage: pgsecrets monitor [--json] [--probe SQL]... [--dsn PARAMS] [--prefix P] [ID...]

Looks at the rotation of each secret (names or ARNs, and every secret whose
name starts with --prefix): rotation enabled, last
rotated, next due, overdue by, an AWSPENDING left on a version other than
AWSCURRENT (a failed or stuck rotation), whether AWSCURRENT logs in, and
testSecret's privilege check and probes with it. For alerting: exit status 0
when every secret is healthy, 1 when any needs a person, 2 for usage errors.
`

func runMonitor(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("monitor", flag.ContinueOnError)
	var (
		dsn    string
		asJSON bool
		probes multiFlag
	)
	fs.StringVar(&dsn, "dsn", "", "")
	fs.BoolVar(&asJSON, "json", false, "")
	fs.Var(&probes, "probe", "")
	var prefix string
	fs.StringVar(&prefix, "prefix", "", "")
	ids, code, ok := parseFlags(fs, args, stdout, stderr, monitorHelp)
	if !ok {
		return code
	}
	if len(ids) == 0 && prefix == "" {
		return usageError(stderr, "monitor", "name at least one secret, or --prefix")
	}
	client, err := smClient(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "pgsecrets monitor: %v\n", err)
		return exitFail
	}
	r := rotate.New(client, rotate.Options{ConnParams: dsn, Probes: probes, Logger: slog.New(slog.DiscardHandler)})
	var all []rotate.Status
	for _, id := range ids {
		all = append(all, r.Check(ctx, id, time.Now()))
	}
	if prefix != "" {
		more, err := r.CheckPrefix(ctx, client, prefix, time.Now())
		if err != nil {
			fmt.Fprintf(stderr, "pgsecrets monitor: %v\n", err)
			return exitFail
		}
		all = append(all, more...)
	}
	unhealthy := 0
	for _, s := range all {
		id := s.SecretID
		if !s.Healthy() {
			unhealthy++
		}
		if asJSON {
			continue
		}
		verdict := "OK"
		if !s.Healthy() {
			verdict = "NEEDS ATTENTION"
		}
		fmt.Fprintf(stdout, "%s: %s (rotation enabled %v, last %s, next %s, AWSCURRENT user %s logs in %v)\n", id, verdict,
			s.RotationEnabled, dateOr(s.LastRotated, "never"), dateOr(s.NextRotation, "not scheduled"), s.CurrentUser, s.CurrentLogsIn)
		for _, p := range s.Problems {
			fmt.Fprintf(stdout, "  - %s\n", p)
		}
	}
	if asJSON {
		b, _ := json.MarshalIndent(map[string]any{"ok": unhealthy == 0, "secrets": all}, "", "  ")
		fmt.Fprintln(stdout, string(b))
	}
	if unhealthy > 0 {
		return exitFail
	}
	return exitOK
}
