package rotate_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/pgsecrets/pgsecrets/internal/testkit"
	"github.com/pgsecrets/pgsecrets/rotate"
)

// After a finished rotation the database got the old password back (a
// restore from backup, a hand edit): AWSPREVIOUS works, AWSCURRENT does
// not; rollback makes AWSPREVIOUS current again.
func TestRollbackRestoresPrevious(t *testing.T) {
	w := newWorld(t, nil)
	ctx := context.Background()
	_, old := w.stage(rotate.StageCurrent)
	r := w.rotator(rotate.Options{})
	if _, _, err := r.Rotate(ctx, w.secretID); err != nil {
		t.Fatal(err)
	}
	if err := w.pg.SetPassword(ctx, w.user, old["password"].(string)); err != nil {
		t.Fatal(err)
	}
	prevID, _ := w.stage(rotate.StagePrevious)
	dry, err := r.Rollback(ctx, w.secretID, true)
	if err != nil || !strings.Contains(dry.Action, "AWSPREVIOUS") {
		t.Fatalf("dry run: %+v, %v", dry, err)
	}
	if id, _ := w.stage(rotate.StageCurrent); id == prevID {
		t.Fatal("the dry run moved AWSCURRENT")
	}
	res, err := r.Rollback(ctx, w.secretID, false)
	if err != nil {
		t.Fatal(err)
	}
	if id, v := w.stage(rotate.StageCurrent); id != prevID || w.login(v) != nil {
		t.Errorf("after rollback AWSCURRENT is %s (%s)", id, res.Action)
	}
}

// Nothing logs in, but the admin (masterarn) can set AWSPREVIOUS's
// password back.
func TestRollbackSetsPreviousBack(t *testing.T) {
	w := newWorld(t, nil)
	ctx := context.Background()
	w.changeCurrent(map[string]any{"masterarn": w.admin()})
	r := w.rotator(rotate.Options{})
	if _, _, err := r.Rotate(ctx, w.secretID); err != nil {
		t.Fatal(err)
	}
	if err := w.pg.SetPassword(ctx, w.user, testkit.RandomPassword()); err != nil { // neither version works now
		t.Fatal(err)
	}
	prevID, _ := w.stage(rotate.StagePrevious)
	curID, _ := w.stage(rotate.StageCurrent)
	// Without the operator's opt-in, a password taken from the secret is
	// not set: nothing proves a rotation wrote AWSPREVIOUS.
	res, err := r.Rollback(ctx, w.secretID, false)
	if !errors.Is(err, rotate.ErrRollbackRefused) || res.Action != "" || !strings.Contains(err.Error(), "RollbackMaySetPassword") {
		t.Fatalf("rollback without the opt-in: %+v, %v", res, err)
	}
	if id, _ := w.stage(rotate.StageCurrent); id != curID {
		t.Fatalf("a refused rollback moved AWSCURRENT to %s", id)
	}
	r = w.rotator(rotate.Options{RollbackMaySetPassword: true})
	res, err = r.Rollback(ctx, w.secretID, false)
	if err != nil || !strings.Contains(res.Action, "set the password") {
		t.Fatalf("rollback: %+v, %v", res, err)
	}
	if id, v := w.stage(rotate.StageCurrent); id != prevID || w.login(v) != nil {
		t.Errorf("after rollback AWSCURRENT is %s", id)
	}
}

// Nothing logs in and nothing can set a password back: refuse, saying why,
// and change nothing.
func TestRollbackRefuses(t *testing.T) {
	w := newWorld(t, nil)
	ctx := context.Background()
	r := w.rotator(rotate.Options{})
	if _, _, err := r.Rotate(ctx, w.secretID); err != nil {
		t.Fatal(err)
	}
	if err := w.pg.SetPassword(ctx, w.user, testkit.RandomPassword()); err != nil {
		t.Fatal(err)
	}
	before := w.sm.Stages(w.secretID)
	res, err := r.Rollback(ctx, w.secretID, false)
	if !errors.Is(err, rotate.ErrRollbackRefused) || res.Action != "" || !strings.Contains(err.Error(), "masterarn") {
		t.Fatalf("rollback: %+v, %v", res, err)
	}
	for _, l := range res.Logins {
		if l.Present && (l.OK || !strings.Contains(l.Error, "28P01")) {
			t.Errorf("login %+v", l)
		}
	}
	if after := w.sm.Stages(w.secretID); len(after) != len(before) {
		t.Errorf("stages changed: %v -> %v", before, after)
	}
}
