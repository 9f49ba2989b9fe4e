package smtest

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// RotateFunc stands in for a rotation Lambda function; see [Server.OnRotate].
// secretID is the secret's full ARN and token the ClientRequestToken of the
// RotateSecret request, as in the Lambda event's SecretId and
// ClientRequestToken.
type RotateFunc func(ctx context.Context, secretID, token string) error

// OnRotate sets the function that RotateSecret runs in place of the rotation
// Lambda function, when the request asks to rotate immediately (the
// default). It is expected to do what a Lambda's four steps do —
// createSecret, setSecret, testSecret, finishSecret — against this server
// through the SDK: put the new value under token with AWSPENDING, then move
// AWSCURRENT to it.
//
// Unlike AWS, which starts the Lambda asynchronously, the server calls fn
// before it answers, so a test knows the rotation has finished (or failed)
// when RotateSecret returns. fn runs on the request's goroutine without any
// lock held, so it may call the server; its context ends when the
// RotateSecret caller gives up or the server closes. If fn returns an
// [*Error], RotateSecret answers with it; any other error becomes an
// InvalidRequestException carrying its text, which the SDK does not retry.
// The rotation configuration is stored either way, as AWS stores it before
// invoking the Lambda.
//
// Without a function, RotateSecret only records the configuration and
// answers with the token as VersionId, as if a Lambda had been started. A
// nil fn removes the function.
func (s *Server) OnRotate(fn RotateFunc) {
	s.mu.Lock()
	s.onRotate = fn
	s.mu.Unlock()
}

type rotationRulesIn struct {
	AutomaticallyAfterDays *int64
	Duration               *string
	ScheduleExpression     *string
}

func (s *Server) httpRotateSecret(ctx context.Context, body []byte) (any, *Error) {
	var in struct {
		SecretId           string
		ClientRequestToken string
		RotationLambdaARN  string
		RotationRules      *rotationRulesIn
		RotateImmediately  *bool
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	if e := requireToken(in.ClientRequestToken); e != nil {
		return nil, e
	}
	if e := checkTokenLength(in.ClientRequestToken); e != nil {
		return nil, e
	}
	if len(in.RotationLambdaARN) > 2048 {
		return nil, errValidation("Value at 'rotationLambdaARN' failed to satisfy constraint: Member must have length less than or equal to 2048")
	}
	if e := validRules(in.RotationRules); e != nil {
		return nil, e
	}
	immediately := in.RotateImmediately == nil || *in.RotateImmediately
	token := in.ClientRequestToken

	s.mu.Lock()
	sec, e := s.findLiveLocked(in.SecretId)
	if e != nil {
		s.mu.Unlock()
		return nil, e
	}
	pending := sec.labels[StagePending]
	if pending != "" && pending != sec.labels[StageCurrent] && pending != token {
		s.mu.Unlock()
		return nil, newError(400, "InvalidRequestException",
			"A previous rotation isn't complete. That rotation will be reattempted.")
	}
	if in.RotationLambdaARN == "" && sec.rotLambda == "" {
		s.mu.Unlock()
		return nil, newError(400, "InvalidRequestException",
			"You tried to enable rotation on a secret that doesn't already have a Lambda function ARN configured and you didn't include such an ARN as a parameter in this call.")
	}
	if in.RotationLambdaARN != "" {
		sec.rotLambda = in.RotationLambdaARN
	}
	if r := in.RotationRules; r != nil {
		sec.rotDays = 0
		if r.AutomaticallyAfterDays != nil {
			sec.rotDays = int(*r.AutomaticallyAfterDays)
		}
		sec.rotSchedule = deref(r.ScheduleExpression)
		sec.rotDuration = deref(r.Duration)
	}
	sec.rotConfigured = true
	sec.rotEnabled = true
	sec.changed = s.timestamp()
	// A version that already exists under the token and is not the pending
	// one is a finished rotation being asked for again (a retried request):
	// there is nothing left to run.
	_, exists := sec.versions[token]
	done := exists && pending != token
	if immediately && !exists {
		// As AWS does before it invokes the function: the new version
		// exists, labelled AWSPENDING, with no value yet, so the function's
		// contract check ("the token is a version of the secret") holds.
		now := s.timestamp()
		sec.addVersion(&version{id: token, created: now, placeholder: true})
		sec.move(StagePending, token, now)
	}
	arn, name := sec.arn, sec.name
	hook := s.onRotate
	s.mu.Unlock()

	out := struct {
		ARN       string
		Name      string
		VersionId string `json:",omitempty"`
	}{ARN: arn, Name: name}
	if !immediately {
		// AWS only tests the configuration then; no version is created.
		return out, nil
	}
	out.VersionId = token
	if hook == nil || done {
		return out, nil
	}
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-hctx.Done():
		}
	}()
	if err := hook(hctx, arn, token); err != nil {
		var se *Error
		if errors.As(err, &se) {
			return nil, se
		}
		return nil, newError(400, "InvalidRequestException", "smtest: the rotation function failed: %v", err)
	}
	return out, nil
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// validRules checks RotationRules as AWS does: a day count or a schedule,
// not both; rates no more often than every four hours; a window (Duration)
// of 1 to 24 hours.
func validRules(r *rotationRulesIn) *Error {
	if r == nil {
		return nil
	}
	if d := r.AutomaticallyAfterDays; d != nil && (*d < 1 || *d > 1000) {
		return errValidation("Value '%d' at 'rotationRules.automaticallyAfterDays' failed to satisfy constraint: Member must have value between 1 and 1000", *d)
	}
	if r.AutomaticallyAfterDays != nil && r.ScheduleExpression != nil {
		return errInvalidParam("You can't specify both AutomaticallyAfterDays and ScheduleExpression in RotationRules.")
	}
	if r.AutomaticallyAfterDays == nil && r.ScheduleExpression == nil && r.Duration != nil {
		return errInvalidParam("A Duration requires a ScheduleExpression or AutomaticallyAfterDays.")
	}
	if x := r.ScheduleExpression; x != nil {
		if e := validSchedule(*x); e != nil {
			return e
		}
	}
	if d := r.Duration; d != nil {
		var h int
		if n, err := fmt.Sscanf(*d, "%dh", &h); err != nil || n != 1 || fmt.Sprintf("%dh", h) != *d || h < 1 || h > 24 {
			return errInvalidParam("The rotation window Duration %q is invalid: use 1h to 24h.", *d)
		}
	}
	return nil
}

func validSchedule(x string) *Error {
	if inner, ok := strings.CutPrefix(x, "rate("); ok && strings.HasSuffix(inner, ")") {
		var n int
		var unit string
		if c, err := fmt.Sscanf(strings.TrimSuffix(inner, ")"), "%d %s", &n, &unit); err == nil && c == 2 {
			switch unit {
			case "hour", "hours":
				if n >= 4 && n <= 24*1000 {
					return nil
				}
				return errInvalidParam("The schedule expression %s is invalid: you can rotate a secret at most every 4 hours.", x)
			case "day", "days":
				if n >= 1 && n <= 1000 {
					return nil
				}
			}
		}
		return errInvalidParam("The schedule expression %s is invalid.", x)
	}
	if inner, ok := strings.CutPrefix(x, "cron("); ok && strings.HasSuffix(inner, ")") &&
		len(strings.Fields(strings.TrimSuffix(inner, ")"))) == 6 {
		return nil
	}
	return errInvalidParam("The schedule expression %s is invalid: use rate() or cron().", x)
}

func (s *Server) httpCancelRotateSecret(body []byte) (any, *Error) {
	var in struct{ SecretId string }
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, e := s.findLiveLocked(in.SecretId)
	if e != nil {
		return nil, e
	}
	if sec.rotLambda == "" {
		// AWS's wording, although nothing is being enabled.
		return nil, newError(400, "InvalidRequestException",
			"You tried to enable rotation on a secret that doesn't already have a Lambda function ARN configured and you didn't include such an ARN as a parameter in this call.")
	}
	sec.rotEnabled = false
	sec.changed = s.timestamp()
	out := struct {
		ARN       string
		Name      string
		VersionId string `json:",omitempty"`
	}{ARN: sec.arn, Name: sec.name}
	// AWS leaves AWSPENDING where it is and names the interrupted version,
	// so the caller can clean it up before the next rotation.
	if p := sec.labels[StagePending]; p != "" && p != sec.labels[StageCurrent] {
		out.VersionId = p
	}
	return out, nil
}
