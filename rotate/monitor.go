package rotate

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
)

// Status is what Check found about one secret's rotation.
type Status struct {
	SecretID        string     `json:"secret_id"`
	ARN             string     `json:"arn,omitempty"`
	RotationEnabled bool       `json:"rotation_enabled"`
	LastRotated     *time.Time `json:"last_rotated,omitempty"`
	NextRotation    *time.Time `json:"next_rotation,omitempty"`
	// OverdueBy is how long past NextRotation the secret is (0 if not).
	OverdueBy time.Duration `json:"overdue_by_ns,omitempty"`
	// StuckPending is the version AWSPENDING is on when that is not
	// AWSCURRENT: a rotation that failed or never finished.
	StuckPending string `json:"stuck_pending,omitempty"`
	CurrentUser  string `json:"current_user,omitempty"`
	// CurrentLogsIn says whether AWSCURRENT's credentials log in now.
	CurrentLogsIn bool `json:"current_logs_in"`
	// Problems lists, in words, everything that needs a person; empty
	// when the secret is healthy.
	Problems []string `json:"problems,omitempty"`
}

// Healthy reports whether nothing needs a person.
func (s Status) Healthy() bool { return len(s.Problems) == 0 }

// Check looks at one secret: rotation enabled, last and next rotation,
// overdue, an AWSPENDING left on another version than AWSCURRENT, whether
// AWSCURRENT logs in, and the probes of testSecret with it. now is the
// time to judge against (time.Now() in production).
func (r *Rotator) Check(ctx context.Context, secretID string, now time.Time) Status {
	st := Status{SecretID: secretID}
	if r.connErr != nil {
		st.Problems = append(st.Problems, r.connErr.Error())
		return st
	}
	vs, err := r.versions(ctx, secretID)
	if err != nil {
		st.Problems = append(st.Problems, "cannot describe the secret: "+err.Error())
		return st
	}
	d := vs.desc
	st.ARN, st.RotationEnabled = aws.ToString(d.ARN), vs.enabled
	st.LastRotated, st.NextRotation = d.LastRotatedDate, d.NextRotationDate
	if !st.RotationEnabled {
		st.Problems = append(st.Problems, "rotation is not enabled")
	}
	if st.NextRotation != nil && now.After(*st.NextRotation) {
		st.OverdueBy = now.Sub(*st.NextRotation)
		st.Problems = append(st.Problems, fmt.Sprintf("rotation overdue by %s (due %s)", st.OverdueBy.Round(time.Minute), st.NextRotation.UTC().Format(time.RFC3339)))
	}
	if vs.pending != "" && vs.pending != vs.current {
		st.StuckPending = vs.pending
		st.Problems = append(st.Problems, fmt.Sprintf("AWSPENDING is on version %s, not AWSCURRENT (%s): a rotation failed or never finished; `pgsecrets rotate --resume` or `--rollback`", vs.pending, vs.current))
	}
	cur, err := r.get(ctx, secretID, "", StageCurrent)
	if err != nil {
		st.Problems = append(st.Problems, "cannot read AWSCURRENT: "+err.Error())
		return st
	}
	st.CurrentUser = cur.user()
	db, err := r.open(ctx, cur)
	if err != nil {
		st.Problems = append(st.Problems, fmt.Sprintf("AWSCURRENT (user %s) does not log in: %v", cur.user(), err))
		return st
	}
	defer db.Close()
	st.CurrentLogsIn = true
	// The grant check of testSecret, against the previous user when the
	// strategy alternates, and whether the pair is set up so that both
	// users work: AWSPREVIOUS's credentials stay valid until the next
	// rotation, and processes that cached them still use them.
	if vs.previous != "" {
		if prev, err := r.get(ctx, secretID, vs.previous, ""); err == nil && prev.user() != cur.user() {
			st.Problems = append(st.Problems, checkPair(ctx, db, prev.user(), cur.user())...)
		}
	}
	for _, p := range r.opt.Probes {
		if err := probe(ctx, db, p); err != nil {
			st.Problems = append(st.Problems, fmt.Sprintf("probe %q fails as %s: %v", p, cur.user(), err))
		}
	}
	return st
}

// Lister is the part of *secretsmanager.Client that CheckPrefix uses.
type Lister interface {
	ListSecrets(ctx context.Context, in *secretsmanager.ListSecretsInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.ListSecretsOutput, error)
}

// CheckPrefix runs Check on every secret whose name starts with prefix.
func (r *Rotator) CheckPrefix(ctx context.Context, l Lister, prefix string, now time.Time) ([]Status, error) {
	var out []Status
	in := &secretsmanager.ListSecretsInput{Filters: []types.Filter{{Key: types.FilterNameStringTypeName, Values: []string{prefix}}}}
	for {
		page, err := l.ListSecrets(ctx, in)
		if err != nil {
			return out, fmt.Errorf("rotate: listing secrets named %s…: %w", prefix, err)
		}
		for _, s := range page.SecretList {
			out = append(out, r.Check(ctx, aws.ToString(s.ARN), now))
		}
		if page.NextToken == nil {
			return out, nil
		}
		in.NextToken = page.NextToken
	}
}

// checkPair compares, in cur's session db, what cur's logins may do with
// what prev's may (for a pair: what their logins act as), and reports a
// pair whose users would not both work; see pair.problems. With the owner
// current, what the clone holds by itself is reported too: the owner's
// sessions lack it.
func checkPair(ctx context.Context, db *sql.DB, prev, cur string) []string {
	var out []string
	p, isPair := pairOf(prev, cur)
	against := prev
	if isPair {
		if acting, ok, err := loginRole(ctx, db, prev); err == nil && ok {
			against = acting
		}
	}
	missing, _, err := missingPrivileges(ctx, db, against)
	switch {
	case err != nil:
		out = append(out, "cannot compare privileges: "+err.Error())
	case len(missing) > 0:
		out = append(out, fmt.Sprintf("%s lacks privileges %s has: %s", cur, against, strings.Join(missing, ", ")))
	}
	if !isPair {
		return out
	}
	probs, err := p.problems(ctx, db, true)
	if err != nil {
		out = append(out, "cannot check the alternating pair "+p.String()+": "+err.Error())
	}
	if cur == p.owner {
		own, err := p.cloneOnly(ctx, db)
		if err != nil {
			out = append(out, "cannot check the alternating pair "+p.String()+": "+err.Error())
		}
		if len(own) > 0 {
			probs = append(probs, fmt.Sprintf("%s lacks privileges granted to %s itself: %s: grant them to %s, or revoke them from %s",
				cur, p.clone, listSome(own), p.owner, p.clone))
		}
	}
	for _, s := range probs {
		out = append(out, "alternating pair "+p.String()+": "+s)
	}
	return out
}
