package pgsecrets

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// Logins are spaced to the rate: the first goes at once, the next ones
// reserve later slots, and one whose slot is more than maxPaceWait away
// fails at once instead of waiting, saying why.
func TestPacerSpacesLogins(t *testing.T) {
	if err := (*pacer)(nil).wait(context.Background(), "s"); err != nil {
		t.Fatalf("no pacer: %v", err)
	}
	p := newPacer(10) // 100 ms apart: 21 slots within maxPaceWait (2 s)
	gone, cancel := context.WithCancel(context.Background())
	cancel() // callers that give up at once still take their slot
	if err := p.wait(gone, "s"); err != nil {
		t.Fatalf("first login waited: %v", err)
	}
	for i := 1; i <= 20; i++ {
		if err := p.wait(gone, "s"); !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "paced") {
			t.Fatalf("login %d: %v, want a wait for its turn (cut short by its ctx)", i, err)
		}
	}
	err := p.wait(context.Background(), "rds-iam:app@db:5432")
	var se *SecretError
	if !errors.As(err, &se) || !errors.Is(err, ErrConnect) || !strings.Contains(err.Error(), "too many new logins") ||
		!strings.Contains(err.Error(), "rds-iam:app@db:5432") {
		t.Errorf("the 22nd login in a burst at 10/s: %v", err)
	}
}
