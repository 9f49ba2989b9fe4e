package lambda

import (
	"errors"
	"fmt"
	"strings"
)

// Allowlist is the set of secrets a rotation function may rotate. A
// rotation function runs as a database admin (the masterarn secret) and
// with write access to secrets; if it rotated whatever secret invoked it,
// anyone able to attach it to a secret could have it rotate, as the admin,
// a role it was never meant for (a confused deputy).
type Allowlist struct {
	exact    map[string]bool
	prefixes []string
}

// ParseAllowlist parses the value of PGSECRETS_ALLOWED_SECRETS: entries
// separated by commas or newlines, surrounding spaces ignored, blank
// entries skipped. An entry is
//
//   - a secret ARN, matched exactly: arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/db-AbCdEf
//     (the full ARN, with the 6-character suffix Secrets Manager adds);
//   - a secret ARN prefix ending in *, which matches every SecretId that
//     starts with what precedes the *: arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/*.
//     The * must follow at least the start of a secret name, and is the
//     only wildcard (no ?, no * elsewhere);
//   - a secret name, matched exactly, for events whose SecretId is a name
//     (Secrets Manager sends ARNs; names come from hand-made invocations).
//
// No list (an empty value) and an entry of * alone are errors: a function
// that may rotate any secret is what the list exists to prevent.
func ParseAllowlist(v string) (*Allowlist, error) {
	a := &Allowlist{exact: map[string]bool{}}
	for _, e := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == '\n' }) {
		if e = strings.TrimSpace(e); e == "" {
			continue
		}
		if err := checkEntry(e); err != nil {
			return nil, fmt.Errorf("%s: entry %q: %w", EnvAllowedSecrets, e, err)
		}
		if p, ok := strings.CutSuffix(e, "*"); ok {
			a.prefixes = append(a.prefixes, p)
		} else {
			a.exact[e] = true
		}
	}
	if len(a.exact) == 0 && len(a.prefixes) == 0 {
		return nil, fmt.Errorf("%s is not set: list the ARNs of the secrets this function may rotate "+
			"(comma-separated; a prefix ending in * for several); it does not start without them", EnvAllowedSecrets)
	}
	return a, nil
}

// Allows reports whether the secret of an event's SecretId may be rotated.
// Prefix entries are ARNs, so a SecretId that is a name matches only an
// entry equal to it: a name is resolved in the function's own account and
// region, which an ARN prefix does not pin.
func (a *Allowlist) Allows(secretID string) bool {
	if a == nil || secretID == "" {
		return false
	}
	if a.exact[secretID] {
		return true
	}
	if !isARN(secretID) {
		return false
	}
	for _, p := range a.prefixes {
		if strings.HasPrefix(secretID, p) {
			return true
		}
	}
	return false
}

func isARN(s string) bool { return strings.HasPrefix(s, "arn:") }

func checkEntry(e string) error {
	if e == "*" {
		return errors.New("* alone would allow every secret; list ARNs or ARN prefixes")
	}
	body, prefix := strings.CutSuffix(e, "*")
	if strings.ContainsAny(body, "*?") {
		return errors.New("the only wildcard is a final *")
	}
	if !isARN(e) {
		if prefix {
			return errors.New("a prefix (ending in *) must be a secret ARN; names are matched exactly")
		}
		if !validName(e) {
			return errors.New("neither a secret ARN nor a secret name")
		}
		return nil
	}
	f := strings.SplitN(body, ":", 7)
	if len(f) != 7 || !lowerDash(f[1]) || f[2] != "secretsmanager" || !lowerDash(f[3]) || !digits12(f[4]) || f[5] != "secret" {
		return errors.New("not a secret ARN (arn:<partition>:secretsmanager:<region>:<account>:secret:<name>)")
	}
	if f[6] == "" {
		// …:secret:* is every secret of the account and region: the
		// confused deputy again, one level down.
		return errors.New("an ARN entry must name a secret, or the start of secret names before the *")
	}
	if !validName(f[6]) {
		return errors.New("the secret name has characters a secret name cannot have")
	}
	return nil
}

// validName: the characters Secrets Manager allows in a secret name.
func validName(s string) bool {
	if s == "" || len(s) > 512 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("/_+=.@-", c) >= 0) {
			return false
		}
	}
	return true
}

func lowerDash(s string) bool {
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return s != ""
}

func digits12(s string) bool {
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(s) == 12
}
