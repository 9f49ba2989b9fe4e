package iamtest

import (
	"context"
	"crypto/subtle"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// Reasons a login is refused, as recorded in Login.Reason.
const (
	// ReasonMalformed: the password is not a presigned URL with exactly the
	// parameters an RDS IAM token has.
	ReasonMalformed = "malformed token"
	// ReasonAction: Action is not "connect".
	ReasonAction = "action is not connect"
	// ReasonUser: DBUser is not the user of the startup message.
	ReasonUser = "token is for another user"
	// ReasonEndpoint: the token's host:port is not the server's endpoint.
	ReasonEndpoint = "token is for another endpoint"
	// ReasonScope: the credential scope's region or service is wrong (or
	// its date is not X-Amz-Date's).
	ReasonScope = "wrong credential scope"
	// ReasonUnknownKey: the access key id is not in Options.Credentials.
	ReasonUnknownKey = "unknown access key id"
	// ReasonSessionToken: X-Amz-Security-Token is not the session token
	// configured for the access key id (or is missing or superfluous).
	ReasonSessionToken = "session token mismatch"
	// ReasonFuture: X-Amz-Date is more than five minutes ahead of the
	// server's clock.
	ReasonFuture = "token signed in the future"
	// ReasonExpired: X-Amz-Date + X-Amz-Expires has passed.
	ReasonExpired = "token expired"
	// ReasonTooOld: the token is older than MaxTokenAge allows.
	ReasonTooOld = "token older than MaxTokenAge"
	// ReasonSignature: X-Amz-Signature is not the signature of the token
	// under the access key's secret.
	ReasonSignature = "signature mismatch"
	// ReasonInjected: the token was valid, but RejectNext refused it.
	ReasonInjected = "rejected by RejectNext"
	// ReasonThrottled: the login exceeded the Throttle rate.
	ReasonThrottled = "throttled"
	// ReasonNoTLS: the startup message came without TLS.
	ReasonNoTLS = "no TLS"
	// ReasonUpstream: the token was valid but the login to the real
	// PostgreSQL server failed.
	ReasonUpstream = "upstream login failed"
)

const (
	amzDateFormat = "20060102T150405Z"
	// maxSkew is how far in the future X-Amz-Date may be.
	maxSkew = 5 * time.Minute
	// maxExpires is the longest X-Amz-Expires RDS accepts (15 minutes).
	maxExpires = 900
	// emptySHA256 is the hex SHA-256 of the empty payload of a GET.
	emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	serviceName = "rds-db"
)

// rdsVerifier checks RDS IAM tokens: what they are checked against.
type rdsVerifier struct {
	endpoint string
	region   string
	creds    map[string]Credential
}

// tokenParams are the query parameters of an RDS IAM token; each must occur
// exactly once and nothing else may.
var tokenParams = []string{
	"Action", "DBUser", "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date",
	"X-Amz-Expires", "X-Amz-SignedHeaders", "X-Amz-Signature",
}

// Verify implements Verifier for RDS IAM tokens. Neither the token nor
// any part of its signature ever appears in what it returns.
func (v *rdsVerifier) Verify(ctx context.Context, user, token string, now time.Time) (signedAt time.Time, reason, detail string) {
	if token == "" || strings.Contains(token, "://") || strings.ContainsAny(token, " \t\r\n#") {
		return signedAt, ReasonMalformed, "not a scheme-less presigned URL"
	}
	u, err := url.Parse("https://" + token)
	if err != nil || u.User != nil || u.Fragment != "" || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return signedAt, ReasonMalformed, "not a scheme-less presigned URL"
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return signedAt, ReasonMalformed, "bad query string"
	}
	for k, vals := range q {
		if k == "X-Amz-Security-Token" {
			if len(vals) != 1 {
				return signedAt, ReasonMalformed, "repeated X-Amz-Security-Token"
			}
			continue
		}
		known := false
		for _, p := range tokenParams {
			known = known || k == p
		}
		if !known {
			return signedAt, ReasonMalformed, fmt.Sprintf("unexpected parameter %q", k)
		}
		if len(vals) != 1 {
			return signedAt, ReasonMalformed, fmt.Sprintf("repeated parameter %q", k)
		}
	}
	for _, p := range tokenParams {
		if !q.Has(p) {
			return signedAt, ReasonMalformed, fmt.Sprintf("missing parameter %q", p)
		}
	}

	if q.Get("Action") != "connect" {
		return signedAt, ReasonAction, fmt.Sprintf("Action=%q", q.Get("Action"))
	}
	if q.Get("DBUser") != user {
		return signedAt, ReasonUser, fmt.Sprintf("DBUser=%q, login user %q", q.Get("DBUser"), user)
	}
	if u.Host != v.endpoint {
		return signedAt, ReasonEndpoint, fmt.Sprintf("token for %q, endpoint %q", u.Host, v.endpoint)
	}
	if q.Get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256" {
		return signedAt, ReasonMalformed, fmt.Sprintf("X-Amz-Algorithm=%q", q.Get("X-Amz-Algorithm"))
	}
	if q.Get("X-Amz-SignedHeaders") != "host" {
		return signedAt, ReasonMalformed, fmt.Sprintf("X-Amz-SignedHeaders=%q", q.Get("X-Amz-SignedHeaders"))
	}

	signedAt, err = time.Parse(amzDateFormat, q.Get("X-Amz-Date"))
	if err != nil {
		return signedAt, ReasonMalformed, "bad X-Amz-Date"
	}
	expires, err := strconv.Atoi(q.Get("X-Amz-Expires"))
	if err != nil || expires <= 0 || expires > maxExpires || q.Get("X-Amz-Expires") != strconv.Itoa(expires) {
		return signedAt, ReasonMalformed, fmt.Sprintf("X-Amz-Expires=%q (1..%d)", q.Get("X-Amz-Expires"), maxExpires)
	}

	// AKID/DATE/REGION/SERVICE/aws4_request
	scope := strings.Split(q.Get("X-Amz-Credential"), "/")
	if len(scope) != 5 || scope[0] == "" || scope[4] != "aws4_request" {
		return signedAt, ReasonMalformed, "bad X-Amz-Credential"
	}
	akid := scope[0]
	if scope[1] != signedAt.Format("20060102") || scope[2] != v.region || scope[3] != serviceName {
		return signedAt, ReasonScope, fmt.Sprintf("scope %s/%s/%s, want %s/%s/%s",
			scope[1], scope[2], scope[3], signedAt.Format("20060102"), v.region, serviceName)
	}
	cred, ok := v.creds[akid]
	if !ok {
		return signedAt, ReasonUnknownKey, fmt.Sprintf("access key id %q", akid)
	}
	if q.Has("X-Amz-Security-Token") != (cred.SessionToken != "") ||
		subtle.ConstantTimeCompare([]byte(q.Get("X-Amz-Security-Token")), []byte(cred.SessionToken)) != 1 {
		return signedAt, ReasonSessionToken, fmt.Sprintf("access key id %q", akid)
	}

	if signedAt.After(now.Add(maxSkew)) {
		return signedAt, ReasonFuture, fmt.Sprintf("signed at %s, now %s", signedAt.Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if !now.Before(signedAt.Add(time.Duration(expires) * time.Second)) {
		return signedAt, ReasonExpired, fmt.Sprintf("signed at %s for %ds, now %s", signedAt.Format(time.RFC3339), expires, now.UTC().Format(time.RFC3339))
	}

	want, err := presignSignature(ctx, v.endpoint, user, v.region, expires, signedAt, aws.Credentials{
		AccessKeyID:     akid,
		SecretAccessKey: cred.SecretKey,
		SessionToken:    cred.SessionToken,
	})
	if err != nil {
		return signedAt, ReasonMalformed, "cannot recompute the signature: " + err.Error()
	}
	if subtle.ConstantTimeCompare([]byte(q.Get("X-Amz-Signature")), []byte(want)) != 1 {
		return signedAt, ReasonSignature, fmt.Sprintf("access key id %q", akid)
	}
	return signedAt, "", ""
}

// presignSignature signs GET https://endpoint/?Action=connect&DBUser=user
// the way an RDS IAM token is signed and returns its X-Amz-Signature.
func presignSignature(ctx context.Context, endpoint, user, region string, expires int, at time.Time, creds aws.Credentials) (string, error) {
	q := url.Values{}
	q.Set("Action", "connect")
	q.Set("DBUser", user)
	q.Set("X-Amz-Expires", strconv.Itoa(expires))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+endpoint+"/?"+q.Encode(), nil)
	if err != nil {
		return "", err
	}
	signed, _, err := v4.NewSigner().PresignHTTP(ctx, creds, req, emptySHA256, serviceName, region, at)
	if err != nil {
		return "", err
	}
	su, err := url.Parse(signed)
	if err != nil {
		return "", err
	}
	sig := su.Query().Get("X-Amz-Signature")
	if sig == "" {
		return "", fmt.Errorf("the signer produced no X-Amz-Signature")
	}
	return sig, nil
}
