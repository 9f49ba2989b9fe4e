package main

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"time"
)

// The demo's load: query loops that count and time every query, run
// beside the rotations and the progress display.

// runLoad runs the workers, the rotations and the progress display until
// the duration has passed or ctx ends.
func (d *demo) runLoad(ctx context.Context) {
	stop := make(chan struct{})
	d.start = time.Now()

	var workers sync.WaitGroup
	for i := range d.opt.workers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			d.worker(ctx, i+1, stop)
		}()
	}
	rotDone := make(chan struct{})
	go func() {
		defer close(rotDone)
		if d.vs != nil {
			d.vaultEvents(ctx, stop)
			return
		}
		if d.iam != nil {
			d.iamEvents(ctx, stop)
			return
		}
		d.runRotations(ctx, stop)
	}()
	progDone := make(chan struct{})
	progStop := make(chan struct{})
	go func() {
		defer close(progDone)
		d.progressLoop(progStop)
	}()

	timer := time.NewTimer(d.opt.duration)
	select {
	case <-timer.C:
	case <-ctx.Done():
		timer.Stop()
		d.interrupted = true
	}
	close(stop)
	<-rotDone // finishes a rotation in progress, so waiting queries can complete
	workers.Wait()
	close(progStop)
	<-progDone
	d.outMu.Lock()
	if d.term {
		fmt.Fprint(d.stdout, "\r\033[K")
	}
	fmt.Fprintln(d.stdout, d.progressLine())
	d.outMu.Unlock()
}

func (d *demo) worker(ctx context.Context, id int, stop <-chan struct{}) {
	rng := mrand.New(mrand.NewPCG(uint64(id), uint64(time.Now().UnixNano())))
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		var err error
		t := time.Now()
		if rng.IntN(5) == 0 {
			amount := fmt.Sprintf("%d.%02d", rng.IntN(500), rng.IntN(100))
			_, err = d.db.ExecContext(ctx, insertQuery, id, amount)
		} else {
			var n int64
			var sum string
			err = d.db.QueryRowContext(ctx, readQuery, id).Scan(&n, &sum)
		}
		took := time.Since(t)
		if err != nil && ctx.Err() != nil {
			return // interrupted: the query was cancelled, not failed
		}
		d.hist.record(took)
		if err == nil {
			d.ok.Add(1)
			continue
		}
		d.failed.Add(1)
		d.noteFailure(err.Error())
	}
}

// noteFailure keeps the first few distinct errors for the summary: a
// failure usually repeats, and the first ones say why.
func (d *demo) noteFailure(msg string) {
	d.errMu.Lock()
	defer d.errMu.Unlock()
	if len(d.firstErrs) < 5 && !d.errSeen[msg] {
		d.errSeen[msg] = true
		d.firstErrs = append(d.firstErrs, msg)
	}
}
