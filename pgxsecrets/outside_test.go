package pgxsecrets_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgsecrets/pgsecrets"
	"github.com/pgsecrets/pgsecrets/internal/engine"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/pgxsecrets"
)

// A pool connection made outside the retrying wrapper (the underlying
// pgxpool) proves the credentials it logged in with, and no others: when
// the store changed while it logged in (the secret now holds a password
// the database does not know yet), the new credentials stay unproven, so
// their logins still share the few slots of unproven credentials.
func TestPoolConnOutsideWrapperProvesOnlyItsCredentials(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	cfg, err := pgxsecrets.ParseConfig(r.dsn(""), pgsecrets.WithLogger(r.logger))
	if err != nil {
		t.Fatal(err)
	}
	c := pgxsecrets.Connector(cfg)
	unknown := testkit.RandomPassword()
	r.seen = append(r.seen, unknown)
	var once sync.Once
	// Runs after pgsecrets has put the cached credentials into cc: the
	// store changes between this login's credentials and its end.
	cfg.BeforeConnect = func(ctx context.Context, cc *pgx.ConnConfig) error {
		var err error
		once.Do(func() {
			if _, err = r.sm.PutSecretValue(r.secretID, secretJSON(r.role, unknown)); err != nil {
				return
			}
			_, err = c.Refresh(ctx)
		})
		return err
	}
	p, err := pgxsecrets.NewPoolWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	conn, err := p.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conn.Release()

	tg := engine.TargetOf(c)
	fresh, err := tg.Login(ctx) // outside Run: the cache's credentials, no slot
	if err != nil {
		t.Fatal(err)
	}
	if fresh.Password.Reveal() != unknown {
		t.Fatal("the cache does not hold the store's new credentials")
	}
	// Every slot (maxUnverifiedLogins) taken by logins in progress.
	hold := make(chan struct{})
	got := make(chan error, 4)
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = tg.Run(ctx, func(ctx context.Context) error {
				_, err := tg.Login(ctx)
				got <- err
				<-hold
				return errors.New("no login made")
			})
		}()
	}
	for i := 0; i < 4; i++ {
		if err := <-got; err != nil {
			t.Fatal(err)
		}
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	err = tg.Run(done, func(ctx context.Context) error { _, err := tg.Login(ctx); return err })
	close(hold)
	wg.Wait()
	if !errors.Is(err, context.Canceled) {
		t.Errorf("a fifth login with credentials no login has proven did not wait for a slot (%v): "+
			"the connection made before the store changed was taken for a login with them", err)
	}
}
