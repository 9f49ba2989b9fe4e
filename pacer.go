package pgsecrets

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// LoginPacer is implemented by providers whose database limits the rate
// of new logins (RDS throttles IAM logins: AWS advises staying below about
// 200 new connections per second). Logins with their credentials to one
// database are spaced to LoginRate per second across the process, so that a
// reconnect storm (a failover, a deploy) is spread instead of refused. A
// login that would wait longer than maxPaceWait fails at once, saying so.
type LoginPacer interface {
	LoginRate() float64
}

// maxPaceWait bounds how long one login waits for its turn.
const maxPaceWait = 2 * time.Second

// pacer spaces logins to a rate: each login reserves the next free slot.
type pacer struct {
	every time.Duration
	mu    sync.Mutex
	next  time.Time // the first free slot
}

func newPacer(perSecond float64) *pacer {
	if perSecond <= 0 {
		return nil
	}
	return &pacer{every: time.Duration(float64(time.Second) / perSecond)}
}

// wait waits for the login's turn, within ctx and maxPaceWait.
func (p *pacer) wait(ctx context.Context, secretID string) error {
	if p == nil {
		return nil
	}
	now := time.Now()
	p.mu.Lock()
	at := later(p.next, now)
	delay := at.Sub(now)
	if delay > maxPaceWait {
		p.mu.Unlock()
		return &SecretError{Kind: ErrConnect, SecretID: secretID,
			Detail: fmt.Sprintf("too many new logins: at %.0f per second this one would wait %s (more than %s)",
				float64(time.Second)/float64(p.every), delay.Round(time.Millisecond), maxPaceWait),
			Hint: "the provider paces logins to stay under the database's limit; raise its login rate if the database allows it, or keep more connections open (SetMaxIdleConns, longer lifetimes)"}
	}
	p.next = at.Add(p.every)
	p.mu.Unlock()
	if delay <= 0 {
		return nil
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return waitError(ctx, secretID, nil, "", fmt.Sprintf("gave up waiting %s for a turn to log in (logins are paced)", delay.Round(time.Millisecond)), nil)
	}
}
