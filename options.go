package pgsecrets

import (
	"log/slog"
	"time"
)

// Option configures a Connector.
type Option func(*options)

type options struct {
	logger      *slog.Logger
	client      SecretsManagerClient
	provider    Provider
	breakerOpen time.Duration
	observers   []Observer
}

// DefaultBreakerOpen is how long the circuit breaker stays open before it
// lets one Connect probe the secret and the database again.
const DefaultBreakerOpen = 5 * time.Second

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithSecretsManagerClient makes the connector use client instead of one
// built from the SDK's default configuration. secret_region and
// secret_endpoint are then the client's business.
func WithSecretsManagerClient(client SecretsManagerClient) Option {
	return func(o *options) { o.client = client }
}

// WithProvider replaces AWS Secrets Manager with another secret store.
// secret_id still names the secret (for logs, errors and the cache);
// secret_region, secret_endpoint and the JSON key settings are the
// provider's business.
func WithProvider(p Provider) Option {
	return func(o *options) { o.provider = p }
}

// WithBreakerOpenInterval sets how long the circuit breaker stays open
// before probing again (default DefaultBreakerOpen). The breaker is shared
// by every connector of the process with the same secret and database; the
// first connector's setting applies.
func WithBreakerOpenInterval(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.breakerOpen = d
		}
	}
}
