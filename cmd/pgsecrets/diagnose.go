package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"strings"
	"time"

	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/lib/pq"

	"github.com/pgsecrets/pgsecrets"
)

// diagContext is what diagnose knows about the check when a step fails.
type diagContext struct {
	step        string // what was being done: "fetching the secret"
	parent      context.Context
	timeout     time.Duration
	secretID    string
	stage       string
	region      string
	endpoint    string
	username    string
	sslMode     string
	sslRootCert string
	usernameKey string
	passwordKey string
}

// credentialsError marks a failure to resolve AWS credentials.
type credentialsError struct{ err error }

func (e *credentialsError) Error() string { return "resolving AWS credentials: " + e.err.Error() }
func (e *credentialsError) Unwrap() error { return e.err }

// AWS error codes that mean the request's credentials or signature were
// refused (the driver reports them as ErrAccessDenied).
var awsCredentialCodes = map[string]bool{
	"UnrecognizedClientException": true,
	"InvalidClientTokenId":        true,
	"InvalidSignatureException":   true,
	"SignatureDoesNotMatch":       true,
	"ExpiredTokenException":       true,
	"ExpiredToken":                true,
	"IncompleteSignature":         true,
	"MissingAuthenticationToken":  true,
}

// diagnose maps an error of the driver, the SDK, lib/pq or the network to
// a stable failure code and a one-line reason that says what to fix. It
// looks at error values and types (errors.Is/As, SQLSTATE codes, AWS error
// codes), never at message text.
func diagnose(err error, d diagContext) (kind, reason string) {
	var (
		api      smithy.APIError
		secErr   *pgsecrets.SecretError
		dsnErr   *pgsecrets.DSNError
		credsErr *credentialsError
		pqErr    *pq.Error
	)
	errors.As(err, &api)
	errors.As(err, &secErr)
	apiCode := ""
	if api != nil {
		apiCode = api.ErrorCode()
	}

	switch {
	case d.parent != nil && d.parent.Err() != nil:
		return "interrupted", "interrupted while " + d.step
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout", fmt.Sprintf("timed out after %s while %s: raise --timeout, or check that this machine can reach it", d.timeout, d.step)
	case errors.As(err, &credsErr):
		return "aws_credentials", fmt.Sprintf("no usable AWS credentials: %v: configure them for this environment (AWS_PROFILE, environment variables, an instance or task role)", credsErr.err)

	case errors.As(err, &dsnErr):
		if d.step == "loading the AWS configuration" {
			if dsnErr.Key == "secret_region" {
				return "no_region", "no AWS region: set secret_region=<region> in the DSN, use the secret's full ARN as secret_id, or set AWS_REGION"
			}
			return "aws_config", joinNonEmpty(": ", "cannot load the AWS configuration", dsnErr.Msg, errString(dsnErr.Err))
		}
		return "invalid_dsn", joinNonEmpty(": ", "invalid DSN", keyPart(dsnErr.Key), dsnErr.Msg, errString(dsnErr.Err))

	case errors.Is(err, pgsecrets.ErrSecretNotFound):
		if apiCode == "InvalidRequestException" {
			return "secret_not_readable", fmt.Sprintf("secret %q cannot be read (InvalidRequestException): it is probably scheduled for deletion; restore it or use another secret", d.secretID)
		}
		if d.stage != "" && d.stage != pgsecrets.DefaultVersionStage {
			return "secret_not_found", fmt.Sprintf("secret not found: check secret_id (%q), the region (%s) and that a version has stage %s", d.secretID, d.region, d.stage)
		}
		return "secret_not_found", fmt.Sprintf("secret not found: check secret_id (%q) and the region (%s)", d.secretID, d.region)
	case errors.Is(err, pgsecrets.ErrAccessDenied):
		if awsCredentialCodes[apiCode] {
			return "aws_credentials", fmt.Sprintf("the AWS credentials were refused (%s): they are invalid or expired; check the credential chain (AWS_PROFILE, environment variables, an instance or task role)", apiCode)
		}
		if apiCode == "DecryptionFailure" {
			return "access_denied", fmt.Sprintf("access denied: KMS would not decrypt the secret: the role needs kms:Decrypt on the KMS key of %s", d.secretID)
		}
		return "access_denied", fmt.Sprintf("access denied: the role needs secretsmanager:GetSecretValue on %s", d.secretID)
	case errors.Is(err, pgsecrets.ErrMalformedSecret):
		r := "malformed secret"
		if secErr != nil {
			if secErr.Field != "" {
				r += fmt.Sprintf(": field %q", secErr.Field)
				if secErr.Detail != "" {
					r += " " + secErr.Detail
				}
			} else if secErr.Detail != "" {
				r += ": " + secErr.Detail
			}
		}
		return "malformed_secret", fmt.Sprintf("%s; it must be a JSON SecretString with string fields %q and %q (the RDS format)",
			r, orDefault(d.usernameKey, "username"), orDefault(d.passwordKey, "password"))
	case errors.Is(err, pgsecrets.ErrStoreUnavailable):
		return storeUnavailable(err, apiCode, d)
	case errors.Is(err, pgsecrets.ErrAuthFailed):
		state := ""
		if secErr != nil {
			state = secErr.SQLState
		}
		return "auth_failed", authReason(state, d)
	case errors.Is(err, pgsecrets.ErrCircuitOpen):
		return "circuit_open", "the driver's circuit breaker is open after repeated rejected logins: fix the secret's password, then retry"

	case errors.Is(err, pq.ErrSSLNotSupported):
		return "tls", fmt.Sprintf("the server does not accept TLS connections, and sslmode=%s requires TLS: enable ssl on the server", d.sslMode)
	}

	var (
		unknownCA   x509.UnknownAuthorityError
		hostErr     x509.HostnameError
		invalidCert x509.CertificateInvalidError
		verifyErr   *tls.CertificateVerificationError
		recordErr   tls.RecordHeaderError
		pathErr     *fs.PathError
		dnsErr      *net.DNSError
		opErr       *net.OpError
		netErr      net.Error
	)
	switch {
	case errors.As(err, &pqErr):
		return "database_error", pqReason(pqErr, d)
	case errors.As(err, &unknownCA):
		return "tls", fmt.Sprintf("TLS verification failed: the server's certificate is not signed by a CA in sslrootcert (%s): point sslrootcert at the CA bundle that signed it", orNone(d.sslRootCert))
	case errors.As(err, &hostErr):
		return "tls", fmt.Sprintf("TLS verification failed: the server's certificate is not valid for host %q: connect with a name the certificate lists, or use sslmode=verify-ca", hostErr.Host)
	case errors.As(err, &invalidCert):
		return "tls", fmt.Sprintf("TLS verification failed: %v", invalidCert)
	case errors.As(err, &verifyErr):
		return "tls", fmt.Sprintf("TLS verification failed: %v", verifyErr.Err)
	case errors.As(err, &recordErr):
		return "tls", "TLS handshake failed: the server did not answer in TLS; check host and port"
	case errors.As(err, &pathErr):
		return "tls", fmt.Sprintf("cannot read %s: check sslrootcert, sslcert and sslkey", pathErr.Path)
	case errors.As(err, &dnsErr):
		return "database_unreachable", fmt.Sprintf("cannot reach the database: host %q not found (DNS): check host in the DSN or the secret", dnsErr.Name)
	case errors.As(err, &opErr) && opErr.Op == "dial":
		addr := ""
		if opErr.Addr != nil {
			addr = " at " + opErr.Addr.String()
		}
		return "database_unreachable", fmt.Sprintf("cannot reach the database%s: %v: check host and port, that the server is running, and that firewalls or security groups let this machine in", addr, opErr.Err)
	case errors.As(err, &netErr) && netErr.Timeout():
		return "database_unreachable", fmt.Sprintf("cannot reach the database: %v: check host, port and network rules (connect_timeout bounds the login)", err)
	}
	return "error", fmt.Sprintf("%s failed: %v", d.step, err)
}

func storeUnavailable(err error, apiCode string, d diagContext) (string, string) {
	var sendErr *smithyhttp.RequestSendError
	endpoint := d.endpoint
	if endpoint == "" {
		endpoint = "secretsmanager." + d.region + ".amazonaws.com"
	}
	switch {
	case awsCredentialCodes[apiCode]:
		return "aws_credentials", fmt.Sprintf("AWS refused the request's credentials (%s): check which AWS identity this environment uses, and that its keys are valid and not expired", apiCode)
	case apiCode == "ThrottlingException":
		return "store_unavailable", "Secrets Manager throttled the request (ThrottlingException): retry later; the driver's cache keeps the request rate low in normal use"
	case errors.As(err, &sendErr):
		return "store_unavailable", fmt.Sprintf("cannot reach Secrets Manager at %s: %v: check network access (proxy, VPC endpoint, firewall) and secret_endpoint", endpoint, sendErr.Err)
	case apiCode != "":
		return "store_unavailable", fmt.Sprintf("secret store unavailable: Secrets Manager answered %s: retry later", apiCode)
	}
	return "store_unavailable", fmt.Sprintf("secret store unavailable: %v", err)
}

func authReason(state string, d diagContext) string {
	role := ""
	if d.username != "" {
		role = fmt.Sprintf(" (role %q)", d.username)
	}
	switch state {
	case "28P01":
		return "database rejected the credentials (SQLSTATE 28P01): the secret's password does not match the role's" + role +
			"; update the secret or ALTER ROLE … PASSWORD so they agree"
	case "28000":
		if d.sslMode == "disable" {
			return "database refused the login (SQLSTATE 28000): the session is unencrypted (sslmode=disable) and pg_hba.conf admits this role only over TLS (hostssl): use sslmode=verify-full with sslrootcert"
		}
		return fmt.Sprintf("database refused the login (SQLSTATE 28000): no pg_hba.conf entry admits the role%s from this address with sslmode=%s (some managed services also answer 28000 for a wrong password)", role, d.sslMode)
	}
	return "database rejected the secret's credentials" + role + sqlStatePart(state)
}

func pqReason(e *pq.Error, d diagContext) string {
	code := string(e.Code)
	hint := ""
	switch code {
	case "3D000":
		hint = "check dbname in the DSN or the secret"
	case "42501":
		hint = "the role needs the CONNECT privilege on the database"
	case "53300":
		hint = "the server is at max_connections: close idle sessions or raise the limit"
	case "57P03":
		hint = "the server is starting up, shutting down or in recovery: try again shortly"
	case "28P01", "28000":
		return authReason(code, d)
	}
	r := fmt.Sprintf("database error (SQLSTATE %s): %s", code, e.Message)
	if hint != "" {
		r += ": " + hint
	}
	return r
}

func sqlStatePart(state string) string {
	if state == "" {
		return ""
	}
	return " (SQLSTATE " + state + ")"
}

func keyPart(k string) string {
	if k == "" {
		return ""
	}
	return "key " + k
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func orNone(s string) string {
	if s == "" {
		return "none set"
	}
	return s
}

func joinNonEmpty(sep string, parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, sep)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
