package pgsecrets

import (
	"context"
	"errors"
	"testing"

	"github.com/pgsecrets/pgsecrets/internal/engine"
)

type fixedProvider struct{}

func (fixedProvider) Fetch(context.Context, string) (*Credentials, error) {
	return &Credentials{Username: "app", Password: NewSecret("unproven"), VersionID: "v1"}, nil
}

// pgxpool logs in from a goroutine of its own, which goes on when the
// caller's ctx ends first: a login that asks for credentials after its
// call returned must not keep a login slot nobody will give back, nor a
// breaker request nobody will report (a half-open breaker would then let
// no probe through ever again).
func TestLoginAfterItsCallReturned(t *testing.T) {
	c, err := NewConnector("host=127.0.0.1 secret_id=late", WithProvider(fixedProvider{}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tg := engine.TargetOf(c)
	returned := make(chan struct{})
	late := make(chan error, 1)
	err = tg.Run(context.Background(), func(ctx context.Context) error {
		go func() {
			<-returned
			_, err := tg.Login(ctx)
			late <- err
		}()
		return errors.New("the caller gave up")
	})
	close(returned)
	if err == nil || err.Error() != "the caller gave up" {
		t.Fatalf("Run = %v", err)
	}
	if err := <-late; err != nil {
		t.Fatalf("late Login: %v", err)
	}
	if n := len(c.target.unverified); n != 0 {
		t.Errorf("%d login slots held after every login ended", n)
	}
	if n := c.target.cb.Counts().Requests; n != 0 {
		t.Errorf("the breaker counts %d requests nobody will report", n)
	}
}

// A pool may log in twice for one call (it discarded the connection the
// first login made: its lease was about to end, say): the first login's
// slot is given back, or a few such calls would leave every later login
// of unverified credentials waiting for a slot forever (a pgxsecrets pool
// hung so in CI).
func TestTwoLoginsOfOneCallGiveBackTheirSlots(t *testing.T) {
	c, err := NewConnector("host=127.0.0.1 secret_id=twice", WithProvider(fixedProvider{}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tg := engine.TargetOf(c)
	for i := 0; i < maxUnverifiedLogins+1; i++ {
		err = tg.Run(context.Background(), func(ctx context.Context) error {
			for range 2 {
				if _, err := tg.Login(ctx); err != nil {
					return err
				}
			}
			return errors.New("no connection after all") // the credentials stay unproven
		})
		if err == nil || err.Error() != "no connection after all" {
			t.Fatalf("Run %d = %v", i, err)
		}
		if n := len(c.target.unverified); n != 0 {
			t.Fatalf("after call %d, %d login slots held by calls that returned", i, n)
		}
	}
}
