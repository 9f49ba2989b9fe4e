package main

import (
	"fmt"
	"time"
)

// What the demo shows: event lines, the progress line (redrawn in place on
// a terminal) and the summary with its verdict.

// printEvent prints a line about a rotation or an outage.
func (d *demo) printEvent(format string, a ...any) {
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
	if d.iam != nil {
		return d.iamProgressLine()
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

// awsSummary prints the table and the verdict, and returns the exit status.
func (d *demo) awsSummary() int {
	elapsed := time.Since(d.start)
	st := d.connector.Stats()
	ok, failed := d.ok.Load(), d.failed.Load()
	rot, four, wrong, outs := d.rotations.Load(), d.fourSteps.Load(), d.wrongOrders.Load(), d.outages.Load()

	w := d.stdout
	row := d.summaryRow
	d.summaryHead(elapsed, ok, failed)
	row("rotations", "%d (four-step %d, wrong-order %d)", rot, four, wrong)
	row("store outages", "%d (%s of failing GetSecretValue)", outs, seconds(time.Duration(d.outageTotal.Load())))
	row("store calls", "%d GetSecretValue", d.sm.Calls("GetSecretValue"))
	row("DB login failures", "%d (logins as %s the database rejected, from its log)", d.pg.AuthFailures(demoRole), demoRole)
	row("connections", "%s opened, each a new login (and lived at most %s)", thousands(d.logins.n.Load()), connLifetime)
	row("driver stats", "store calls %d, cache hits %s, stale serves %d", st.StoreCalls, thousands(st.CacheHits), st.StaleServes)
	row("", "auth failures %d, recovered %d, AWSPENDING logins %d", st.AuthFailures, st.AuthRecovered, st.PendingUses)
	row("", "breaker %s (opened %d, rejected %d)", st.BreakerState, st.BreakerOpens, st.BreakerRejects)
	row("", "using version %s (%s)", shortVersion(st.VersionID), st.Stage)
	row("latency", "p50 %s  p99 %s  max %s", ms(d.hist.quantile(0.50)), ms(d.hist.quantile(0.99)), ms(d.hist.maximum()))
	fmt.Fprintln(w)

	d.errMu.Lock()
	eventErr := d.eventErr
	d.errMu.Unlock()
	through := fmt.Sprintf("%s and %s", plural(rot, "rotation"), plural(outs, "store outage"))
	switch {
	case failed > 0:
		d.failedQueries(ok, failed, " through "+through)
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

// summaryHead starts the summary table: its title, the run's duration and
// the queries.
// failedQueries prints the FAIL verdict for failed queries, with the first
// errors.
func (d *demo) failedQueries(ok, failed int64, through string) {
	d.errMu.Lock()
	firstErrs := append([]string(nil), d.firstErrs...)
	d.errMu.Unlock()
	fmt.Fprintf(d.stdout, "FAIL: %s of %s queries failed%s. First errors:\n", thousands(failed), thousands(ok+failed), through)
	for _, e := range firstErrs {
		fmt.Fprintf(d.stdout, "  - %s\n", e)
	}
}

func (d *demo) summaryHead(elapsed time.Duration, ok, failed int64) {
	fmt.Fprintln(d.stdout, "\nSummary")
	d.summaryRow("duration", "%s, %d workers", seconds(elapsed), d.opt.workers)
	d.summaryRow("queries", "ok %s  failed %s", thousands(ok), thousands(failed))
	d.metricsSummary()
}

// summaryRow prints a row of the summary table.
func (d *demo) summaryRow(label, format string, a ...any) {
	fmt.Fprintf(d.stdout, "  %-18s %s\n", label, fmt.Sprintf(format, a...))
}

func plural(n int64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
