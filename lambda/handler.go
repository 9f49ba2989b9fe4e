// Package lambda is the pgsecrets rotation function for AWS Lambda: AWS
// Secrets Manager invokes it once per rotation step, and it runs that step
// with package rotate (single or alternating users, SCRAM verifiers,
// testSecret's privilege check and probes), enforcing the rotation
// contract, for the secrets its allowlist (PGSECRETS_ALLOWED_SECRETS)
// names and no other. The binary is in cmd/rotation; see README.md for the
// allowlist, the IAM policy, the VPC and SAM/Terraform snippets.
package lambda

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"github.com/pgsecrets/pgsecrets/rotate"
)

// Event is what Secrets Manager sends a rotation function.
type Event struct {
	SecretID           string `json:"SecretId"`
	ClientRequestToken string `json:"ClientRequestToken"`
	Step               string `json:"Step"`
}

// Environment variables of the function. EXCLUDE_CHARACTERS and
// SECRETS_MANAGER_ENDPOINT keep the names of AWS's Python templates, so a
// function replacing one keeps its configuration.
const (
	EnvStrategy       = "PGSECRETS_STRATEGY"        // single (default) or alternating
	EnvConnParams     = "PGSECRETS_CONN_PARAMS"     // connection settings: host (required with RDS-managed master secrets), sslrootcert…
	EnvProbes         = "PGSECRETS_PROBES"          // SQL probes, one per line
	EnvPasswordLength = "PGSECRETS_PASSWORD_LENGTH" // default 32
	EnvExclude        = "EXCLUDE_CHARACTERS"        // default /@"'\
	EnvEndpoint       = "SECRETS_MANAGER_ENDPOINT"  // a VPC endpoint URL, if not the default
	EnvAllowedSecrets = "PGSECRETS_ALLOWED_SECRETS" // the secrets it may rotate; required, see ParseAllowlist
	// EnvDatabaseHosts lists other names of the admin's database server
	// that the secrets may carry (rotate.Options.DatabaseHosts), separated
	// by commas or newlines.
	EnvDatabaseHosts = "PGSECRETS_DATABASE_HOSTS"
	// EnvAllowPrivileged=true lets the function change privileged roles
	// (rotate.Options.AllowPrivilegedRoles).
	EnvAllowPrivileged = "PGSECRETS_ALLOW_PRIVILEGED_ROLES"
)

// OptionsFromEnv reads the function's settings from getenv.
func OptionsFromEnv(getenv func(string) string) (rotate.Options, error) {
	st, err := rotate.ParseStrategy(getenv(EnvStrategy))
	if err != nil {
		return rotate.Options{}, err
	}
	opt := rotate.Options{Strategy: st, ConnParams: getenv(EnvConnParams), ExcludeCharacters: getenv(EnvExclude), EnforceContract: true}
	if v := getenv(EnvPasswordLength); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 8 || n > 4096 {
			return rotate.Options{}, fmt.Errorf("%s=%q: a length between 8 and 4096", EnvPasswordLength, v)
		}
		opt.PasswordLength = n
	}
	for _, l := range strings.Split(getenv(EnvProbes), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			opt.Probes = append(opt.Probes, l)
		}
	}
	for _, h := range strings.FieldsFunc(getenv(EnvDatabaseHosts), func(r rune) bool { return r == ',' || r == '\n' }) {
		if h = strings.TrimSpace(h); h != "" {
			opt.DatabaseHosts = append(opt.DatabaseHosts, h)
		}
	}
	if v := getenv(EnvAllowPrivileged); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return rotate.Options{}, fmt.Errorf("%s=%q: true or false", EnvAllowPrivileged, v)
		}
		opt.AllowPrivilegedRoles = b
	}
	return opt, nil
}

// NewHandler builds the handler of a deployed function: the allowlist
// and settings from the environment, the SDK's default configuration (the
// function's role), JSON logs to stderr (CloudWatch). Without a valid
// PGSECRETS_ALLOWED_SECRETS it returns an error naming the variable, before
// anything else is read, so the function fails at start-up instead of
// rotating whatever invokes it.
func NewHandler(ctx context.Context) (func(context.Context, Event) error, error) {
	allowed, err := ParseAllowlist(os.Getenv(EnvAllowedSecrets))
	if err != nil {
		return nil, err
	}
	opt, err := OptionsFromEnv(os.Getenv)
	if err != nil {
		return nil, err
	}
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, err
	}
	client := secretsmanager.NewFromConfig(cfg, func(o *secretsmanager.Options) {
		if ep := os.Getenv(EnvEndpoint); ep != "" {
			o.BaseEndpoint = aws.String(ep)
		}
	})
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	opt.Logger = log
	return Handler(rotate.New(client, opt), allowed, log), nil
}

// ErrNotAllowed is wrapped by the error of an event for a secret that the
// function's allowlist does not name.
var ErrNotAllowed = errors.New("secret not allowed for this rotation function")

// maxSecretID is Secrets Manager's limit on a SecretId.
const maxSecretID = 2048

// Handler runs the event's step with r, for the secrets allowed names only;
// a nil allowed refuses every secret. Events are checked (SecretId,
// ClientRequestToken, Step, then the allowlist) before any Secrets Manager
// call. A refused secret is logged once to log (default slog.Default()).
// Its error fails the invocation, which Secrets Manager reports and
// retries; every step may run again.
func Handler(r *rotate.Rotator, allowed *Allowlist, log *slog.Logger) func(context.Context, Event) error {
	if log == nil {
		log = slog.Default()
	}
	return func(ctx context.Context, ev Event) error {
		if ev.SecretID == "" || len(ev.SecretID) > maxSecretID {
			return fmt.Errorf("pgsecrets rotation: the event's SecretId must have 1 to %d characters", maxSecretID)
		}
		// The token becomes a VersionId and appears in logs; anything
		// that is not a version id did not come from Secrets Manager.
		if !validToken(ev.ClientRequestToken) {
			return fmt.Errorf("pgsecrets rotation: the event's ClientRequestToken must be 1 to 64 letters, digits or hyphens")
		}
		step := rotate.Step(ev.Step)
		known := false
		for _, s := range rotate.Steps {
			known = known || s == step
		}
		if !known {
			return fmt.Errorf("pgsecrets rotation: unknown step %q", ev.Step)
		}
		if !allowed.Allows(ev.SecretID) {
			hint := ""
			if !isARN(ev.SecretID) {
				hint = " (a SecretId that is not an ARN must be listed exactly as sent)"
			}
			log.Warn("pgsecrets rotation: secret not allowed", "secret_id", ev.SecretID, "version_id", ev.ClientRequestToken,
				"step", ev.Step, "allowlist", EnvAllowedSecrets)
			return fmt.Errorf("pgsecrets rotation: secret %q is not listed in %s%s: %w", ev.SecretID, EnvAllowedSecrets, hint, ErrNotAllowed)
		}
		_, err := r.Run(ctx, ev.SecretID, ev.ClientRequestToken, step)
		return err
	}
}

func validToken(t string) bool {
	if len(t) == 0 || len(t) > 64 {
		return false
	}
	for _, c := range []byte(t) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
