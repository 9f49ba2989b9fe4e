package main

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/lib/pq"

	"github.com/pgsecrets/pgsecrets/smtest"
)

// What the demo does to the store and the database while the load runs:
// the four-step rotation, the wrong-order rotation and the store outage.

// runRotations runs one rotation or outage every rotateEvery, one at a time,
// cycling four-step, wrong-order, outage. When stop closes it finishes the
// one in progress at once.
func (d *demo) runRotations(ctx context.Context, stop <-chan struct{}) {
	every := d.opt.rotateEvery
	deadline := d.start.Add(d.opt.duration)
	next := d.start.Add(every)
	for i := 0; ; i++ {
		// An event that could not even get going before the end would
		// show nothing.
		if deadline.Sub(next) < every/4 || !sleepUntil(ctx, stop, next) {
			return
		}
		var err error
		switch i % 3 {
		case 0:
			err = d.fourStep(ctx, stop)
		case 1:
			err = d.wrongOrder(ctx, stop)
		case 2:
			d.outage(ctx, stop)
		}
		if d.stopRotating(ctx, err) {
			return
		}
		next = nextTick(next, every)
	}
}

// sleepUntil waits until t; false if stop closed or ctx ended first.
func sleepUntil(ctx context.Context, stop <-chan struct{}, t time.Time) bool {
	select { // stop wins over a timer that is already due
	case <-stop:
		return false
	case <-ctx.Done():
		return false
	default:
	}
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-stop:
		return false
	case <-ctx.Done():
		return false
	}
}

// phase is how long the middle of a rotation lasts (1.5s by default); an
// outage lasts twice that. Both shrink with short rotation intervals.
func (d *demo) phase() time.Duration { return min(1500*time.Millisecond, d.opt.rotateEvery/2) }

// eventStart is the state at the start of an event, to report its cost.
type eventStart struct {
	failed int64
	calls  int
	t      time.Time
}

func (d *demo) startEvent() eventStart {
	return eventStart{d.failed.Load(), d.sm.Calls("GetSecretValue"), time.Now()}
}

func (d *demo) costSince(s eventStart) string {
	return fmt.Sprintf("[%s; %d failed queries, %d store calls]", seconds(time.Since(s.t)),
		d.failed.Load()-s.failed, d.sm.Calls("GetSecretValue")-s.calls)
}

// shortVersion is enough of a version id to tell versions apart on one
// line.
func shortVersion(version string) string {
	if len(version) > 8 {
		return version[:8]
	}
	return version
}

func (d *demo) fourStep(ctx context.Context, stop <-chan struct{}) error {
	n := d.rotations.Add(1)
	d.fourSteps.Add(1)
	s := d.startEvent()
	pw := randomPassword()
	d.rememberPassword(pw)
	// createSecret
	version, err := d.sm.PutSecretValue(demoSecret, d.secretJSON(pw), smtest.StagePending)
	if err != nil {
		return fmt.Errorf("rotation %d: four-step: writing AWSPENDING: %w", n, err)
	}
	// setSecret
	if err := d.pg.SetPassword(ctx, demoRole, pw); err != nil {
		return fmt.Errorf("rotation %d: four-step: ALTER ROLE: %w", n, err)
	}
	// testSecret: the pending password logs in.
	pc, err := pq.NewConnectorConfig(d.pg.Config(demoRole, pw, demoDB))
	if err == nil {
		test := sql.OpenDB(pc)
		err = test.PingContext(ctx)
		test.Close()
	}
	if err != nil {
		return fmt.Errorf("rotation %d: four-step: testSecret login: %w", n, err)
	}
	gap := d.phase()
	d.printEvent("rotation %d: four-step (AWSPENDING written as version %s, database changed, test login ok; AWSCURRENT keeps the old password for %s)",
		n, shortVersion(version), gap)
	cut := !sleepUntil(ctx, stop, time.Now().Add(gap))
	// finishSecret
	if err := d.sm.FinishRotation(demoSecret, version); err != nil {
		return fmt.Errorf("rotation %d: four-step: finishSecret: %w", n, err)
	}
	d.printEvent("rotation %d: four-step done (AWSCURRENT moved to %s, AWSPENDING removed%s) %s", n, shortVersion(version), cutShortNote(cut), d.costSince(s))
	return nil
}

func (d *demo) wrongOrder(ctx context.Context, stop <-chan struct{}) error {
	n := d.rotations.Add(1)
	d.wrongOrders.Add(1)
	s := d.startEvent()
	pw := randomPassword()
	d.rememberPassword(pw)
	if err := d.pg.SetPassword(ctx, demoRole, pw); err != nil {
		return fmt.Errorf("rotation %d: wrong-order: ALTER ROLE: %w", n, err)
	}
	gap := d.phase()
	d.printEvent("rotation %d: wrong-order (database changed first; the secret gets the new password %s later)", n, gap)
	cut := !sleepUntil(ctx, stop, time.Now().Add(gap))
	version, err := d.sm.PutSecretValue(demoSecret, d.secretJSON(pw))
	if err != nil {
		return fmt.Errorf("rotation %d: wrong-order: PutSecretValue: %w", n, err)
	}
	d.printEvent("rotation %d: wrong-order done (new password written to AWSCURRENT as version %s%s) %s", n, shortVersion(version), cutShortNote(cut), d.costSince(s))
	return nil
}

func (d *demo) outage(ctx context.Context, stop <-chan struct{}) {
	n := d.outages.Add(1)
	s := d.startEvent()
	length := 2 * d.phase()
	remove := d.sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Fail})
	d.printEvent("outage %d: Secrets Manager fails every GetSecretValue (HTTP 500) for %s", n, length)
	end := time.Now().Add(length)
	cut := !sleepUntil(ctx, stop, end) && time.Until(end) > 50*time.Millisecond
	remove()
	d.outageTotal.Add(int64(time.Since(s.t)))
	d.printEvent("outage %d: over, Secrets Manager answers again%s %s", n, cutShortNote(cut), d.costSince(s))
}

func cutShortNote(cut bool) string {
	if cut {
		return "; cut short: the demo is over"
	}
	return ""
}

// stopRotating reports a rotation step that failed (unless the demo is
// ending anyway) and says whether to stop rotating.
func (d *demo) stopRotating(ctx context.Context, err error) bool {
	if err == nil {
		return false
	}
	if ctx.Err() == nil {
		d.errMu.Lock()
		d.eventErr = err
		d.errMu.Unlock()
		d.printEvent("%v; no more rotations", err)
	}
	return true
}

// nextTick is when the next event is due: every after the last one, or
// now if that has passed.
func nextTick(next time.Time, every time.Duration) time.Time {
	next = next.Add(every)
	if now := time.Now(); next.Before(now) {
		return now
	}
	return next
}
