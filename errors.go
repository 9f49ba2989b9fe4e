package pgsecrets

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/lib/pq"
)

// Sentinel errors.
//
// The contract: every error Connector.Connect returns (what database/sql
// reports when it cannot open a connection, with either engine) and every
// error of Connector.Refresh is a *SecretError whose Kind is one of these
// sentinels, or context.Canceled or context.DeadlineExceeded when the
// caller's context ended while pgsecrets waited (see SecretError.Kind).
// errors.Is tells them apart; errors.As with *SecretError gives the secret
// id, stage, version, field and SQLSTATE, and the engine's own error stays
// reachable through it (errors.As with *pq.Error, *pgconn.PgError,
// *net.OpError…). The same holds for a call of a pgxsecrets.Pool that
// failed while making a new connection. NewConnector and sql.Open return a
// *DSNError (ErrInvalidDSN) for a bad DSN, or the error of the provider's
// factory (an AWS configuration that cannot be loaded, say).
var (
	// ErrSecretNotFound: the secret, or the requested version or stage of
	// it, does not exist in the store (ResourceNotFoundException).
	ErrSecretNotFound = errors.New("secret not found")
	// ErrAccessDenied: the store refused the request (AccessDeniedException,
	// or a KMS decryption failure).
	ErrAccessDenied = errors.New("access denied")
	// ErrMalformedSecret: the secret exists but its content cannot be used:
	// binary, not JSON, a required field missing or of the wrong type, or
	// too large.
	ErrMalformedSecret = errors.New("malformed secret")
	// ErrStoreUnavailable: the store could not be reached or answered with
	// a server error, throttling or a timeout. It is the only store error
	// worth retrying.
	ErrStoreUnavailable = errors.New("secret store unavailable")
	// ErrThrottled: the store refused the request for its request quota
	// (Secrets Manager's ThrottlingException, Vault's HTTP 429). It is a kind of ErrStoreUnavailable (errors.Is holds
	// for both: retried with a longer backoff while cached credentials
	// keep serving), told apart so that an operator can see "raise the
	// quota or secret_ttl" rather than "the store is broken". RequestID
	// names the refused request where the store gave one.
	ErrThrottled error = throttledError{}
	// ErrAuthFailed: the database rejected the secret's credentials, and
	// fetching the secret again (current and pending versions) within the
	// retry window did not produce credentials it accepts.
	ErrAuthFailed = errors.New("database rejected the secret's credentials")
	// ErrCircuitOpen: recent credentials from this secret kept being
	// rejected, so Connect fails fast without calling the store or the
	// database until the breaker's open interval has passed.
	ErrCircuitOpen = errors.New("circuit breaker open")
	// ErrConnect: the engine could not log in for a reason other than the
	// credentials: the server could not be reached, the TLS handshake or
	// the server's certificate failed, or the server refused the session
	// (an unknown database, SQLSTATE 3D000; too many connections, 53300).
	// The secret is not fetched again for it. Temporary() is true for a
	// network error and for the SQLSTATEs of a server that is starting,
	// stopping or full (classes 08 and 53, 57P01–57P03).
	ErrConnect = errors.New("could not connect to the database")
	// ErrClosed: the connector was closed (DB.Close, Pool.Close); it makes
	// no more connections.
	ErrClosed = errors.New("connector closed")
	// ErrInvalidDSN: the DSN cannot be parsed or names an unknown or
	// malformed secret_* key.
	ErrInvalidDSN = errors.New("invalid DSN")
)

// SecretError is the error type pgsecrets returns for everything that
// concerns a secret. Its message names the secret id (and the field or
// SQLSTATE where relevant) and says what to check; it never contains a
// secret value.
type SecretError struct {
	// Kind is one of the sentinel errors above, or context.Canceled or
	// context.DeadlineExceeded when the caller's context ended while
	// pgsecrets waited (for a store call, a recovery, a login slot or a
	// login). Detail then says what it was waiting for and Err holds the
	// last cause known by then (a store error, the engine's error), so a
	// caller that gives up still learns why it had to wait.
	Kind error
	// SecretID is the secret's name or ARN as configured.
	SecretID string
	// Stage and VersionID identify the version involved, where known.
	Stage     string
	VersionID string
	// Field is the JSON field at fault, for ErrMalformedSecret.
	Field string
	// SQLState is the last SQLSTATE the database answered with, for
	// ErrAuthFailed, ErrCircuitOpen and ErrConnect.
	SQLState string
	// RequestID is the store's id of the failed request, where it gave
	// one (AWS's x-amzn-RequestId), for a support case.
	RequestID string
	// Detail says what happened; Hint says what to check.
	Detail string
	Hint   string
	// Err is the underlying error (the store SDK's or the engine's), if
	// any.
	Err error
}

// throttledError is ErrThrottled: a kind of ErrStoreUnavailable.
type throttledError struct{}

func (throttledError) Error() string { return "secret store throttled the request" }

func (throttledError) Is(target error) bool { return target == ErrStoreUnavailable }

// Error says which secret, what went wrong and what to check.
func (e *SecretError) Error() string {
	var b strings.Builder
	b.WriteString("pgsecrets: secret ")
	b.WriteString(fmt.Sprintf("%q", e.SecretID))
	if e.Stage != "" {
		b.WriteString(" (" + e.Stage)
		if e.VersionID != "" {
			b.WriteString(", version " + e.VersionID)
		}
		b.WriteString(")")
	}
	b.WriteString(": ")
	b.WriteString(e.Kind.Error())
	if e.Field != "" {
		b.WriteString(fmt.Sprintf(": field %q", e.Field))
	}
	if e.SQLState != "" {
		b.WriteString(" (SQLSTATE " + e.SQLState + ")")
	}
	if e.Detail != "" {
		b.WriteString(": " + e.Detail)
	}
	if e.Err != nil {
		b.WriteString(": " + e.Err.Error())
	}
	if e.RequestID != "" && (e.Err == nil || !strings.Contains(e.Err.Error(), e.RequestID)) {
		b.WriteString(" (request id " + e.RequestID + ")")
	}
	if e.Hint != "" {
		b.WriteString("; " + e.Hint)
	}
	return b.String()
}

// Unwrap returns the sentinel kind and the underlying error, so errors.Is
// matches both ErrAuthFailed and, say, a *pq.Error or *pgconn.PgError
// through errors.As.
func (e *SecretError) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// Temporary reports whether retrying later can succeed without anyone
// changing the configuration: true for an unavailable or throttled store, an open
// circuit breaker, a wait cut short by the caller's deadline, and an
// ErrConnect caused by the network or by a server that is starting,
// stopping or full; false for everything else, a closed connector
// included.
func (e *SecretError) Temporary() bool {
	switch e.Kind {
	case ErrStoreUnavailable, ErrThrottled, ErrCircuitOpen, context.DeadlineExceeded:
		return true
	case ErrConnect:
		return transientConnectError(e.Err)
	}
	return false
}

// transientConnectError reports whether a failed login is worth trying
// again unchanged: the network failed (refused, reset, timed out; not an
// unknown host name), or the
// server answered with a SQLSTATE of connection trouble (class 08), of
// exhausted resources (class 53: too many connections, out of memory or
// disk) or of a shutdown or start-up (57P01–57P03).
func transientConnectError(err error) bool {
	var dns *net.DNSError
	if errors.As(err, &dns) && dns.IsNotFound {
		return false // a host name that does not exist stays so
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	code := sqlState(err)
	switch {
	case strings.HasPrefix(code, "08"), strings.HasPrefix(code, "53"):
		return true
	}
	switch code {
	case "57P01", "57P02", "57P03":
		return true
	}
	return false
}

// waitError is what a caller whose ctx ended gets instead of a bare
// context error: what it was waiting for (detail) and the last thing that
// went wrong (cause, may be nil), naming the secret and, where known, the
// version and SQLSTATE.
func waitError(ctx context.Context, secretID string, creds *Credentials, sqlstate, detail string, cause error) *SecretError {
	kind := ctx.Err()
	if kind == nil {
		kind = context.Canceled
	}
	se := &SecretError{Kind: kind, SecretID: secretID, SQLState: sqlstate, Detail: detail, Err: cause}
	if creds != nil {
		se.Stage, se.VersionID = creds.Stage, creds.VersionID
	}
	return se
}

// DSNError reports a problem with the DSN given to sql.Open or
// NewConnector. It never contains the DSN's password.
type DSNError struct {
	// Key is the offending key, if the problem is with one key.
	Key string
	// Msg says what is wrong.
	Msg string
	// Err is the underlying parse error, if any.
	Err error
}

// Error names the key at fault and what is wrong with it.
func (e *DSNError) Error() string {
	var b strings.Builder
	b.WriteString("pgsecrets: invalid DSN")
	if e.Key != "" {
		b.WriteString(": key " + e.Key)
	}
	if e.Msg != "" {
		b.WriteString(": " + e.Msg)
	}
	if e.Err != nil {
		b.WriteString(": " + e.Err.Error())
	}
	return b.String()
}

// Is makes errors.Is(err, ErrInvalidDSN) true.
func (e *DSNError) Is(target error) bool { return target == ErrInvalidDSN }

// Unwrap returns the underlying parse error.
func (e *DSNError) Unwrap() error { return e.Err }

// Authentication failures, by SQLSTATE: invalid_password and
// invalid_authorization_specification (no pg_hba entry, or what some
// managed services send for a bad password).
const (
	sqlStateInvalidPassword = "28P01"
	sqlStateInvalidAuthSpec = "28000"
)

// authFailure returns the SQLSTATE if err is a database authentication
// failure. It looks through wrapping and errors.Join (lib/pq joins per-host
// errors for multi-host DSNs) and never at message text.
func authFailure(err error) (string, bool) {
	if err == nil {
		return "", false
	}
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		switch code := string(pqErr.Code); code {
		case sqlStateInvalidPassword, sqlStateInvalidAuthSpec:
			return code, true
		}
	}
	// Anything else that reports a SQLSTATE (a wrapper of another driver's
	// error, for instance).
	var st interface{ SQLState() string }
	if errors.As(err, &st) {
		switch code := st.SQLState(); code {
		case sqlStateInvalidPassword, sqlStateInvalidAuthSpec:
			return code, true
		}
	}
	// errors.As stops at the first match in a join; look at each branch so
	// that a second host's auth failure is not hidden behind the first
	// host's connection error.
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			if code, ok := authFailure(e); ok {
				return code, true
			}
		}
	}
	return "", false
}

// sqlState is the SQLSTATE err carries (lib/pq's, pgx's, or any error
// that reports one), or "".
func sqlState(err error) string {
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		return string(pqErr.Code)
	}
	var st interface{ SQLState() string }
	if errors.As(err, &st) {
		return st.SQLState()
	}
	return ""
}

// isContextErr reports whether err comes from a cancelled or expired
// context.
func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
