package pgsecrets

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/smithy-go"
)

// SecretsManagerClient is the one method of *secretsmanager.Client that
// pgsecrets uses. Pass your own client (with its own credentials,
// endpoint or middleware) with WithSecretsManagerClient.
type SecretsManagerClient interface {
	GetSecretValue(ctx context.Context, in *secretsmanager.GetSecretValueInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error)
}

// awsProvider reads an RDS-format secret from AWS Secrets Manager.
type awsProvider struct {
	client      SecretsManagerClient
	secretID    string
	usernameKey string
	passwordKey string
	cacheKey    string
	endpoint    string // the custom endpoint in use; "" for AWS's own
}

func init() {
	RegisterProvider(DefaultProvider, newAWSProvider)
}

// newAWSProvider is the awssm factory: a client from the SDK's default
// chain, shared cache with every connector that reaches the same store.
func newAWSProvider(ctx context.Context, cfg *Config) (Provider, error) {
	client, err := NewSecretsManagerClient(ctx, cfg)
	if err != nil {
		return nil, err
	}
	p := &awsProvider{client: client, secretID: cfg.SecretID, usernameKey: cfg.UsernameKey, passwordKey: cfg.PasswordKey,
		endpoint: customEndpoint(client)}
	// Connectors share a cache only if they reach the same store.
	p.cacheKey = "sdk:" + client.Options().Region + "|" + cfg.Endpoint + "|" +
		os.Getenv("AWS_ENDPOINT_URL_SECRETS_MANAGER") + "|" + os.Getenv("AWS_ENDPOINT_URL")
	return p, nil
}

// CacheKey implements CacheKeyer for providers built from the DSN; one
// built around a caller's client has none (that client is its identity).
func (p *awsProvider) CacheKey() string { return p.cacheKey }

// loadAWSConfig loads the SDK's default configuration with cfg's region,
// and says how to set one (howRegion) when none is found.
func loadAWSConfig(ctx context.Context, cfg *Config, howRegion string, opts ...func(*config.LoadOptions) error) (aws.Config, error) {
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return aws.Config{}, &DSNError{Msg: "cannot load the AWS configuration (environment, shared config files)", Err: err}
	}
	if awsCfg.Region == "" {
		return aws.Config{}, &DSNError{Key: keyRegion, Msg: "no AWS region: " + howRegion}
	}
	return awsCfg, nil
}

// NewSecretsManagerClient builds the Secrets Manager client a connector
// uses for cfg: the SDK's default configuration chain (environment, shared
// files, web identity, ECS, EC2), cfg.Region and cfg.Endpoint applied.
// Connectors build one each, once. Its requests are not retried by the SDK:
// the cache retries with its own backoff, so a failing store sees a bounded
// request rate.
func NewSecretsManagerClient(ctx context.Context, cfg *Config) (*secretsmanager.Client, error) {
	// Store calls are rare (one per TTL), so no keep-alive: a connection per
	// call costs nothing noticeable, and no idle connection (with its
	// goroutines) outlives the connector.
	httpClient := awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.DisableKeepAlives = true
	})
	awsCfg, err := loadAWSConfig(ctx, cfg, "set secret_region, use the secret's full ARN as secret_id, or set AWS_REGION",
		config.WithHTTPClient(httpClient))
	if err != nil {
		return nil, err
	}
	return secretsmanager.NewFromConfig(awsCfg, func(o *secretsmanager.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.RetryMaxAttempts = 1
	}), nil
}

// NewSecretsManagerProvider returns the Provider pgsecrets uses for AWS
// Secrets Manager: it reads cfg.SecretID at a stage with client and parses
// it with cfg.UsernameKey and cfg.PasswordKey. Its errors are *SecretError
// values of the kinds documented in errors.go, with hints.
func NewSecretsManagerProvider(client SecretsManagerClient, cfg *Config) Provider {
	return &awsProvider{client: client, secretID: cfg.SecretID, usernameKey: cfg.UsernameKey, passwordKey: cfg.PasswordKey,
		endpoint: customEndpoint(client)}
}

// customEndpoint is the endpoint override the SDK resolved (secret_endpoint,
// AWS_ENDPOINT_URL_SECRETS_MANAGER, AWS_ENDPOINT_URL, shared config), read
// back from the client so that every source is covered; "" for AWS's own
// endpoint, or a client that is not the SDK's.
func customEndpoint(client SecretsManagerClient) string {
	if c, ok := client.(*secretsmanager.Client); ok {
		return aws.ToString(c.Options().BaseEndpoint)
	}
	return ""
}

// PendingStage implements Staged: AWS's rotation writes AWSPENDING before
// it changes the database.
func (p *awsProvider) PendingStage() string { return "AWSPENDING" }

// StoreEndpoint implements Endpointer.
func (p *awsProvider) StoreEndpoint() StoreEndpoint {
	return StoreEndpoint{Store: "AWS Secrets Manager", URL: p.endpoint}
}

// Fetch reads the secret at stage.
func (p *awsProvider) Fetch(ctx context.Context, stage string) (*Credentials, error) {
	out, err := p.client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{
		SecretId:     aws.String(p.secretID),
		VersionStage: aws.String(stage),
	}, func(o *secretsmanager.Options) { o.RetryMaxAttempts = 1 })
	if err != nil {
		return nil, p.classify(stage, err)
	}
	version := aws.ToString(out.VersionId)
	if out.SecretString == nil {
		return nil, &SecretError{Kind: ErrMalformedSecret, SecretID: p.secretID, Stage: stage, VersionID: version,
			Detail: "the secret has no SecretString (binary secrets are not supported)",
			Hint:   "store the credentials as a JSON SecretString in the RDS secret format"}
	}
	creds, err := ParseSecret(p.secretID, *out.SecretString, p.usernameKey, p.passwordKey)
	if err != nil {
		var se *SecretError
		if errors.As(err, &se) {
			se.Stage, se.VersionID = stage, version
		}
		return nil, err
	}
	creds.VersionID, creds.Stage = version, stage
	if out.CreatedDate != nil {
		creds.CreatedAt = *out.CreatedDate
	}
	return creds, nil
}

// classify turns an SDK error into a *SecretError of the right kind.
func (p *awsProvider) classify(stage string, err error) error {
	se := &SecretError{SecretID: p.secretID, Stage: stage, Err: err}
	var api smithy.APIError
	code := ""
	if errors.As(err, &api) {
		code = api.ErrorCode()
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		se.RequestID = re.ServiceRequestID()
	}
	switch code {
	case "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded":
		se.Kind = ErrThrottled
		se.Hint = "the account's Secrets Manager request quota is exhausted (GetSecretValue is limited per account and region, shared with everything else there): raise secret_ttl, spread deployments, or ask AWS for a higher quota; cached credentials are used meanwhile"
	case "ResourceNotFoundException":
		se.Kind = ErrSecretNotFound
		se.Hint = "check secret_id and the region (" + "secret_region" + "); the secret must exist there and have a version at this stage"
	case "InvalidRequestException":
		se.Kind = ErrSecretNotFound
		se.Hint = "the store refused the request; a secret scheduled for deletion cannot be read"
	case "AccessDeniedException":
		se.Kind = ErrAccessDenied
		se.Hint = fmt.Sprintf("the AWS identity in use needs secretsmanager:GetSecretValue on %s", p.secretID)
	case "UnrecognizedClientException", "InvalidClientTokenId", "ExpiredTokenException", "ExpiredToken", "MissingAuthenticationTokenException",
		"InvalidSignatureException", "SignatureDoesNotMatch", "IncompleteSignature", "IncompleteSignatureException":
		se.Kind = ErrAccessDenied
		se.Hint = "the AWS credentials in use are invalid or expired: check the SDK's credential chain (environment, profile, role)"
	case "DecryptionFailure":
		se.Kind = ErrAccessDenied
		se.Hint = "the AWS identity in use needs kms:Decrypt on the secret's KMS key"
	default:
		se.Kind = ErrStoreUnavailable
		se.Hint = "check network access to the Secrets Manager endpoint and the AWS credentials; cached credentials are used meanwhile where available"
	}
	return se
}
