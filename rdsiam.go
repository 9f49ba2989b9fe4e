package pgsecrets

import (
	"context"
	"math"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/rds/auth"
)

// RDS and Aurora IAM database authentication (secret_provider=rds-iam):
// the password is a token the application signs itself with its AWS
// credentials, for one user, host and port, valid for 15 minutes. RDS Proxy
// takes the same tokens. A token is not a lease: it must be valid only at
// login (see Credentials.LoginUntil).

// rdsTokenLife is how long RDS accepts a token after it was signed.
const rdsTokenLife = 15 * time.Minute

// DefaultRDSLoginRate is how many new IAM logins per second a process
// makes to one database at most (secret_login_rate changes it): AWS
// advises staying below about 200 per second per instance, and a fleet
// shares that.
const DefaultRDSLoginRate = 100

const keyLoginRate = "secret_login_rate"

func init() {
	RegisterTokenProvider("rds-iam", newRDSIAMProvider, keyLoginRate)
}

type rdsIAMProvider struct {
	creds    aws.CredentialsProvider
	region   string
	endpoint string // host:port, as the token names it
	user     string
	rate     float64 // logins per second; see LoginPacer
}

func newRDSIAMProvider(ctx context.Context, cfg *Config) (Provider, error) {
	t, err := cfg.TokenTarget()
	if err != nil {
		return nil, err
	}
	rate := float64(DefaultRDSLoginRate)
	if v, ok := cfg.ProviderParam(keyLoginRate); ok {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || r < 0 || math.IsInf(r, 0) || math.IsNaN(r) {
			return nil, &DSNError{Key: keyLoginRate, Msg: "must be a number of logins per second (0: not paced)"}
		}
		rate = r
	}
	awsCfg, err := loadAWSConfig(ctx, cfg, "set secret_region (the database's region) or AWS_REGION")
	if err != nil {
		return nil, err
	}
	return &rdsIAMProvider{creds: awsCfg.Credentials, region: awsCfg.Region, endpoint: t.Endpoint(), user: t.User,
		rate: rate}, nil
}

// Fetch signs a token. It is valid until the earlier of its 15 minutes and
// the end of the AWS credentials that signed it: RDS checks the signature
// against those credentials, so a token signed with credentials that
// expire first dies with them.
func (p *rdsIAMProvider) Fetch(ctx context.Context, _ string) (*Credentials, error) {
	if p.creds == nil {
		return nil, p.errorf(ErrAccessDenied, nil, "no AWS credentials found (environment, shared files, web identity, ECS, EC2)")
	}
	signing, err := p.creds.Retrieve(ctx)
	if err != nil {
		// Retried with backoff, like a store that does not answer; the
		// token already cached keeps serving until its end.
		return nil, p.errorf(ErrStoreUnavailable, err, "retrieving the AWS credentials that sign the token failed")
	}
	now := time.Now()
	token, err := auth.BuildAuthToken(ctx, p.endpoint, p.region, p.user, staticCredentials{signing})
	if err != nil {
		return nil, p.errorf(ErrStoreUnavailable, err, "signing the token failed")
	}
	until := now.Add(rdsTokenLife)
	if signing.CanExpire && signing.Expires.Before(until) {
		until = signing.Expires
	}
	return &Credentials{Username: p.user, Password: NewSecret(token), VersionID: "token-" + now.UTC().Format("20060102T150405.000Z"),
		LoginUntil: until}, nil
}

func (p *rdsIAMProvider) errorf(kind error, err error, detail string) error {
	return &SecretError{Kind: kind, SecretID: "rds-iam:" + p.user + "@" + p.endpoint, Err: err, Detail: detail,
		Hint: "the process's AWS identity needs rds-db:connect on " + p.connectARN()}
}

// AuthHint implements AuthHinter: RDS answers every refused token with
// 28000 ("PAM authentication failed"), whatever the cause.
func (p *rdsIAMProvider) AuthHint(string) string {
	return "RDS refused the IAM token: check that IAM database authentication is enabled on the instance or cluster, that user " +
		p.user + " exists and is granted rds_iam, that the process's AWS identity may rds-db:connect as it (" + p.connectARN() +
		"), and that secret_region is the database's region"
}

// connectARN is the resource rds-db:connect must allow, with the parts
// only the account knows left as placeholders.
func (p *rdsIAMProvider) connectARN() string {
	return "arn:aws:rds-db:" + p.region + ":ACCOUNT:dbuser:RESOURCE_ID/" + p.user
}

// callInterval: signing a token makes no request (the SDK caches the
// credentials), so a rejected token is replaced at once.
func (p *rdsIAMProvider) callInterval() time.Duration { return 50 * time.Millisecond }

// LoginRate implements LoginPacer.
func (p *rdsIAMProvider) LoginRate() float64 { return p.rate }

// CacheKey implements CacheKeyer: connectors of the process on the same
// region, endpoint and user share one token.
func (p *rdsIAMProvider) CacheKey() string { return p.region + "|" + p.endpoint + "|" + p.user }

// Describe implements Describer.
func (p *rdsIAMProvider) Describe(ctx context.Context) ([]Fact, error) {
	facts := []Fact{{"token for", p.user + "@" + p.endpoint}, {"region", p.region}}
	if c, err := p.creds.Retrieve(ctx); err == nil {
		facts = append(facts, Fact{"signed by", c.Source})
		if c.CanExpire {
			facts = append(facts, Fact{"signing credentials end", c.Expires.UTC().Format(time.RFC3339)})
		}
	}
	return facts, nil
}

// staticCredentials hands the SDK's signer the credentials Fetch
// retrieved, so that the token's validity is known.
type staticCredentials struct{ c aws.Credentials }

func (s staticCredentials) Retrieve(context.Context) (aws.Credentials, error) { return s.c, nil }
