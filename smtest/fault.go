package smtest

import (
	"fmt"
	"time"
)

// FaultKind says what an injected [Fault] does to a request.
type FaultKind int

// Fault kinds. The error kinds answer the way AWS does, so the SDK returns
// the same error types, and retries the same ones, as against AWS.
const (
	// Fail answers 500 InternalServiceError (the SDK retries it).
	Fail FaultKind = iota + 1
	// Throttle answers 400 ThrottlingException (the SDK retries it, with a
	// longer backoff). The SDK has no type for it: check smithy.APIError's
	// ErrorCode().
	Throttle
	// Deny answers 400 AccessDeniedException, as IAM does when a policy does
	// not allow the action. The SDK has no type for it: check
	// smithy.APIError's ErrorCode().
	Deny
	// NotFound answers 400 ResourceNotFoundException
	// (*types.ResourceNotFoundException in the SDK).
	NotFound
	// DecryptionFailure answers 400 DecryptionFailure, as when KMS refuses to
	// decrypt the secret (*types.DecryptionFailure in the SDK).
	DecryptionFailure
	// Delay waits Fault.Delay, then lets the request proceed: later faults
	// may still apply, otherwise it is served normally. If the client goes
	// away while waiting, the connection is dropped; if the server is closed,
	// the answer is 500 InternalServiceError.
	Delay
	// HangUntilCancel holds the request until the client gives up (its
	// context ends and it closes the connection), then drops the connection;
	// if the server is closed first, it answers 500 InternalServiceError.
	HangUntilCancel
	// CustomError answers with Fault.Code and Fault.Status (400 if zero),
	// for any other error, for example "InvalidRequestException".
	CustomError
)

var faultKindNames = map[FaultKind]string{
	Fail:              "Fail",
	Throttle:          "Throttle",
	Deny:              "Deny",
	NotFound:          "NotFound",
	DecryptionFailure: "DecryptionFailure",
	Delay:             "Delay",
	HangUntilCancel:   "HangUntilCancel",
	CustomError:       "CustomError",
}

// String returns the kind's name, such as "Throttle".
func (k FaultKind) String() string {
	if n, ok := faultKindNames[k]; ok {
		return n
	}
	return fmt.Sprintf("FaultKind(%d)", int(k))
}

// Fault describes a failure to inject with [Server.Inject].
type Fault struct {
	// Kind is what happens to a matching request. Required.
	Kind FaultKind
	// Delay is how long a Delay fault waits. On other kinds, except
	// HangUntilCancel, it is waited before the fault takes effect.
	Delay time.Duration
	// Times limits the fault to the next Times matching requests; 0 means
	// until it is removed.
	Times int
	// SecretID limits the fault to requests for one secret. It may be the
	// secret's name, full ARN or partial ARN, and matches a request that
	// names the same secret in any of these forms (or, for CreateSecret, its
	// Name). Empty matches every request.
	SecretID string
	// Message replaces the error message of error kinds.
	Message string
	// Code and Status are the error code and HTTP status of a CustomError
	// fault.
	Code   string
	Status int
}

type faultEntry struct {
	id        uint64
	op        string
	f         Fault
	remaining int // 0: unlimited
}

// Inject adds a fault for the operation op (such as "GetSecretValue"; "" or
// "*" for every operation) and returns a function that removes it (calling
// it more than once is harmless). Faults are considered in the order they
// were injected: each matching Delay fault is applied in turn, and the first
// matching fault of any other kind decides the response. Requests are
// counted by [Server.Calls] whether or not a fault applies. Inject panics if
// f.Kind is not a known kind.
func (s *Server) Inject(op string, f Fault) (remove func()) {
	if _, ok := faultKindNames[f.Kind]; !ok {
		panic(fmt.Sprintf("smtest: Inject: invalid fault kind %v", f.Kind))
	}
	if op == "*" {
		op = ""
	}
	s.mu.Lock()
	s.faultSeq++
	e := &faultEntry{id: s.faultSeq, op: op, f: f}
	if f.Times > 0 {
		e.remaining = f.Times
	}
	s.faults = append(s.faults, e)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		s.removeFaultLocked(e.id)
		s.mu.Unlock()
	}
}

// ClearFaults removes every injected fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	s.faults = nil
	s.mu.Unlock()
}

func (s *Server) removeFaultLocked(id uint64) {
	for i, e := range s.faults {
		if e.id == id {
			s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
			return
		}
	}
}

// sameSecretLocked reports whether the fault's secret id and the request's
// name the same secret.
func (s *Server) sameSecretLocked(faultID, reqID string) bool {
	if faultID == reqID {
		return true
	}
	a := s.lookupLocked(faultID)
	return a != nil && a == s.lookupLocked(reqID)
}

// takeFaults returns the faults that apply to one request: the matching
// Delay faults and then at most one other, using up their Times.
func (s *Server) takeFaults(op, secretID string) []Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Fault
	for i := 0; i < len(s.faults); i++ {
		e := s.faults[i]
		if e.op != "" && e.op != op {
			continue
		}
		if e.f.SecretID != "" && !s.sameSecretLocked(e.f.SecretID, secretID) {
			continue
		}
		out = append(out, e.f)
		if e.remaining > 0 {
			e.remaining--
			if e.remaining == 0 {
				s.removeFaultLocked(e.id)
				i--
			}
		}
		if e.f.Kind != Delay {
			break
		}
	}
	return out
}

// faultError returns the error an error-kind fault answers with.
func (s *Server) faultError(op, secretID string, f Fault) *Error {
	var e *Error
	switch f.Kind {
	case Fail:
		e = newError(500, "InternalServiceError", "An error occurred on the server side.")
	case Throttle:
		e = newError(400, "ThrottlingException", "Rate exceeded")
	case Deny:
		resource := secretID
		if arn := s.ARN(secretID); arn != "" {
			resource = arn
		}
		if resource == "" {
			resource = "*"
		}
		e = newError(400, "AccessDeniedException",
			"User: arn:%s:iam::%s:user/smtest is not authorized to perform: secretsmanager:%s on resource: %s because no identity-based policy allows the secretsmanager:%s action",
			s.partition, s.account, op, resource, op)
	case NotFound:
		e = errNoSecret()
	case DecryptionFailure:
		e = newError(400, "DecryptionFailure",
			"Secrets Manager can't decrypt the protected secret text using the provided KMS key.")
	case CustomError:
		status := f.Status
		if status == 0 {
			status = 400
		}
		code := f.Code
		if code == "" {
			code = "InternalServiceError"
		}
		e = newError(status, code, "Injected fault.")
	default:
		return nil
	}
	if f.Message != "" {
		e.Message = f.Message
	}
	return e
}
