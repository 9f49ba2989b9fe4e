package rotate

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/lib/pq"
)

// ErrRollbackRefused is wrapped when Rollback cannot be sure which
// credentials to make current.
var ErrRollbackRefused = errors.New("rollback refused")

// Login is what a login with one stage's credentials gave.
type Login struct {
	Stage     string
	VersionID string
	User      string
	// Present is false when no version holds the stage.
	Present bool
	// OK is true when the database accepted the credentials.
	OK bool
	// Error is why it did not, never with a password.
	Error string
}

// RollbackResult says what the database accepts and what Rollback did.
type RollbackResult struct {
	Logins []Login
	// Action is what Rollback changed ("" when nothing needed changing).
	Action string
	// Why explains the decision.
	Why string
}

// Rollback makes AWSCURRENT a credential the database accepts, after a
// rotation went wrong. It logs in with AWSCURRENT, AWSPENDING and
// AWSPREVIOUS, then:
//
//   - AWSCURRENT works: nothing to do;
//   - AWSPENDING works (setSecret ran, finishSecret did not): it is
//     promoted to AWSCURRENT;
//   - AWSPREVIOUS works: it is made AWSCURRENT again;
//   - AWSPREVIOUS's password can be set back (an admin secret in
//     masterarn): it is, and AWSPREVIOUS is made AWSCURRENT;
//   - otherwise it refuses, saying why (ErrRollbackRefused).
//
// dryRun reports the decision without changing anything.
func (r *Rotator) Rollback(ctx context.Context, secretID string, dryRun bool) (RollbackResult, error) {
	if r.connErr != nil {
		return RollbackResult{}, r.connErr
	}
	vs, err := r.versions(ctx, secretID)
	if err != nil {
		return RollbackResult{}, err
	}
	var res RollbackResult
	secrets := map[string]*secret{}
	for _, st := range []struct{ stage, id string }{{StageCurrent, vs.current}, {StagePending, vs.pending}, {StagePrevious, vs.previous}} {
		l := Login{Stage: st.stage, VersionID: st.id, Present: st.id != ""}
		if st.id != "" {
			s, err := r.get(ctx, secretID, st.id, "")
			if err != nil {
				l.Error = err.Error()
			} else {
				secrets[st.stage] = s
				l.User = s.user()
				db, err := r.open(ctx, s)
				if err == nil {
					db.Close()
					l.OK = true
				} else {
					l.Error = err.Error()
				}
			}
		}
		res.Logins = append(res.Logins, l)
	}
	cur, pend, prev := res.Logins[0], res.Logins[1], res.Logins[2]
	move := func(to string) error {
		if dryRun {
			return nil
		}
		in := &secretsmanager.UpdateSecretVersionStageInput{SecretId: aws.String(secretID), VersionStage: aws.String(StageCurrent),
			MoveToVersionId: aws.String(to)}
		if vs.current != "" {
			in.RemoveFromVersionId = aws.String(vs.current)
		}
		if _, err := r.sm.UpdateSecretVersionStage(ctx, in); err != nil {
			return fmt.Errorf("rotate: moving AWSCURRENT to %s: %w", to, err)
		}
		if vs.pending != "" {
			_, err := r.sm.UpdateSecretVersionStage(ctx, &secretsmanager.UpdateSecretVersionStageInput{SecretId: aws.String(secretID),
				VersionStage: aws.String(StagePending), RemoveFromVersionId: aws.String(vs.pending)})
			if err != nil {
				return fmt.Errorf("rotate: removing AWSPENDING: %w", err)
			}
		}
		return nil
	}
	switch {
	case cur.OK:
		res.Why = "AWSCURRENT logs in: nothing to roll back"
		if pend.Present && pend.VersionID != cur.VersionID {
			res.Why += fmt.Sprintf(" (AWSPENDING on version %s is a rotation left unfinished: resume or start a new one)", pend.VersionID)
		}
		return res, nil
	case pend.OK && pend.VersionID != cur.VersionID:
		res.Action = fmt.Sprintf("promoted AWSPENDING (version %s, user %s) to AWSCURRENT", pend.VersionID, pend.User)
		res.Why = "AWSCURRENT is rejected and AWSPENDING logs in: setSecret ran and finishSecret did not"
		return res, move(pend.VersionID)
	case prev.OK:
		res.Action = fmt.Sprintf("made AWSPREVIOUS (version %s, user %s) AWSCURRENT again", prev.VersionID, prev.User)
		res.Why = "AWSCURRENT is rejected, AWSPREVIOUS still logs in"
		return res, move(prev.VersionID)
	case prev.Present && secrets[StageCurrent] != nil && secrets[StageCurrent].str("masterarn") != "" && secrets[StagePrevious] != nil:
		res.Action = fmt.Sprintf("set the password of %s back to AWSPREVIOUS's (version %s) as the admin, and made it AWSCURRENT", prev.User, prev.VersionID)
		res.Why = "nothing logs in; the admin secret in masterarn can set the previous password back"
		cs, ps := secrets[StageCurrent], secrets[StagePrevious]
		// AWSPREVIOUS must be a rotation's: the same user or its
		// alternate, the same database and admin.
		if err := r.relatedEitherWay(cs, ps); err != nil {
			return res, err
		}
		if !r.opt.RollbackMaySetPassword {
			res.Action = ""
			res.Why = fmt.Sprintf("nothing logs in; the admin could set the password of %s back to AWSPREVIOUS's (version %s), but that makes the database accept "+
				"a password taken from the secret with nothing to prove a rotation wrote it: allow it explicitly (RollbackMaySetPassword, --set-password) "+
				"after checking the secret's history, or fix the password by hand", prev.User, prev.VersionID)
			return res, fmt.Errorf("%w for %s: %s", ErrRollbackRefused, secretID, res.Why)
		}
		if dryRun {
			return res, nil
		}
		// Nothing logs in, so there is no AWSCURRENT login to prove the
		// writer; the operator's opt-in stands for it. The admin's location
		// and the target's privileges are checked as in setSecret.
		plan, err := r.planAdmin(ctx, cs)
		if err != nil {
			return res, err
		}
		db, as, err := r.admin(ctx, plan, cs, false, prev.User)
		if err != nil {
			return res, err
		}
		defer db.Close()
		v, err := verifier(secrets[StagePrevious].password())
		if err != nil {
			return res, err
		}
		if _, err := db.ExecContext(ctx, "ALTER ROLE "+pq.QuoteIdentifier(prev.User)+" WITH PASSWORD "+pq.QuoteLiteral(v)); err != nil {
			return res, fmt.Errorf("rotate: setting the previous password of %s back (as %s): %w", prev.User, as, err)
		}
		return res, move(prev.VersionID)
	}
	res.Why = "no stage's credentials log in and no admin secret (masterarn) can set a password back; fix the database password by hand, or check that the database is reachable (the logins' errors say which)"
	return res, fmt.Errorf("%w for %s: %s", ErrRollbackRefused, secretID, res.Why)
}
