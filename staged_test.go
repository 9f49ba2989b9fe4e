package pgsecrets_test

import (
	"context"
	"sync"
	"testing"

	"github.com/pgsecrets/pgsecrets"
)

// stageProvider returns a wrong password for its configured stage and the
// right one for its pending stage, and records the stages asked for.
type stageProvider struct {
	user, password string
	mu             sync.Mutex
	asked          []string
}

func (p *stageProvider) Fetch(_ context.Context, stage string) (*pgsecrets.Credentials, error) {
	p.mu.Lock()
	p.asked = append(p.asked, stage)
	p.mu.Unlock()
	pw := "not-the-password"
	if stage == "NEXT" {
		pw = p.password
	}
	return &pgsecrets.Credentials{Username: p.user, Password: pgsecrets.NewSecret(pw), VersionID: stage, Stage: stage}, nil
}

func (p *stageProvider) stages() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.asked...)
}

// stagedProvider is a stageProvider whose store has a pending stage.
type stagedProvider struct{ *stageProvider }

func (stagedProvider) PendingStage() string { return "NEXT" }

// Stages are a provider's capability: recovery asks for a pending stage
// only from a provider that names one (Staged), and then logs in with it;
// a provider without one is never asked for AWSPENDING or anything else.
func TestPendingStageIsACapability(t *testing.T) {
	r := newRig(t)
	plain := &stageProvider{user: r.role, password: r.password}
	db, _ := r.openC(r.kv(""), pgsecrets.WithProvider(plain))
	if err := db.Ping(); err == nil {
		t.Fatal("a wrong password logged in")
	}
	db.Close() // the next connector gets an entry, and a provider, of its own
	// Before stages were a capability, every provider that did not opt
	// out was asked for AWSPENDING here.
	asked := plain.stages()
	for _, s := range asked {
		if s != "AWSCURRENT" {
			t.Errorf("a provider without Staged was asked for stage %q", s)
		}
	}
	staged := stagedProvider{&stageProvider{user: r.role, password: r.password}}
	db, _ = r.openC(r.kv(""), pgsecrets.WithProvider(staged))
	if err := db.Ping(); err != nil {
		t.Fatalf("the pending stage was not used (asked %v): %v", staged.stages(), err)
	}
	asked = staged.stages()
	if len(asked) == 0 || asked[len(asked)-1] != "NEXT" {
		t.Errorf("stages asked: %v, want the pending stage NEXT last", asked)
	}
}
