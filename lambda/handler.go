// Package lambda is the pgsecrets rotation function for AWS Lambda: AWS
// Secrets Manager invokes it once per rotation step, and it runs that step
// with package rotate (single or alternating users, SCRAM verifiers,
// testSecret's privilege check and probes), enforcing the rotation
// contract. The binary is in cmd/rotation; see README.md for the IAM
// policy, the VPC and SAM/Terraform snippets.
package lambda

import (
	"context"
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
	EnvConnParams     = "PGSECRETS_CONN_PARAMS"     // lib/pq settings: sslmode, sslrootcert, host…
	EnvProbes         = "PGSECRETS_PROBES"          // SQL probes, one per line
	EnvPasswordLength = "PGSECRETS_PASSWORD_LENGTH" // default 32
	EnvExclude        = "EXCLUDE_CHARACTERS"        // default /@"'\
	EnvEndpoint       = "SECRETS_MANAGER_ENDPOINT"  // a VPC endpoint URL, if not the default
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
	return opt, nil
}

// NewRotator builds the Rotator of a deployed function: the SDK's default
// configuration (the function's role), the environment's settings, JSON
// logs to stderr (CloudWatch).
func NewRotator(ctx context.Context) (*rotate.Rotator, error) {
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
	opt.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	return rotate.New(client, opt), nil
}

// Handler runs the event's step with r. Its error fails the invocation,
// which Secrets Manager reports and retries; every step may run again.
func Handler(r *rotate.Rotator) func(context.Context, Event) error {
	return func(ctx context.Context, ev Event) error {
		if ev.SecretID == "" || ev.ClientRequestToken == "" {
			return fmt.Errorf("pgsecrets rotation: the event needs SecretId and ClientRequestToken")
		}
		step := rotate.Step(ev.Step)
		known := false
		for _, s := range rotate.Steps {
			known = known || s == step
		}
		if !known {
			return fmt.Errorf("pgsecrets rotation: unknown step %q", ev.Step)
		}
		_, err := r.Run(ctx, ev.SecretID, ev.ClientRequestToken, step)
		return err
	}
}
