package pgsecrets

// Log events. pgsecrets logs through log/slog with these messages (stable:
// match on them) and only these attributes: secret_id, stage, version_id,
// previous_version_id, sqlstate, error_kind, user, host, dbname, lease_id,
// store, reason, durations and counts, and for lease events error (the store's
// error message, which names the store and the path, never a credential).
// No attribute ever holds a password or a token.
const (
	// Debug: one store call succeeded.
	EventFetched = "pgsecrets: secret fetched"
	// Warn (Debug for a missing AWSPENDING version and for calls during
	// an outage already reported): one store call failed.
	EventFetchFailed = "pgsecrets: secret fetch failed"
	// Warn, once per outage: the store is failing; cached credentials are
	// used while within secret_ttl + secret_max_stale.
	EventStoreUnavailable = "pgsecrets: secret store unavailable"
	// Info: the first successful call after an outage.
	EventStoreRecovered = "pgsecrets: secret store reachable again"
	// Debug: a credential past its TTL was used because the store is
	// failing.
	EventServingStale = "pgsecrets: serving cached credential past its ttl"
	// Info: a fetch returned a new version of the secret.
	EventRotationPickedUp = "pgsecrets: rotation picked up"
	// Info: the database rejected the credentials (28P01/28000); recovery
	// starts.
	EventAuthFailed = "pgsecrets: database rejected credentials, recovering"
	// Info: recovery found credentials the database accepts.
	EventRecovered = "pgsecrets: recovered after authentication failure"
	// Info: the AWSPENDING version works and is used for new connections
	// until the configured stage catches up.
	EventUsingPending = "pgsecrets: using pending version"
	// Warn: recovery ran out of its window without working credentials.
	EventRecoveryFailed = "pgsecrets: recovery failed"
	// Warn: the circuit breaker opened; Connect fails fast.
	EventBreakerOpen = "pgsecrets: circuit breaker open"
	// Info: the circuit breaker closed again.
	EventBreakerClosed = "pgsecrets: circuit breaker closed"
	// Debug: a lease was renewed.
	EventLeaseRenewed = "pgsecrets: lease renewed"
	// Info: a renewal reached the store's maximum TTL; the lease is replaced
	// ahead of its end.
	EventLeaseCapped = "pgsecrets: lease reached its max ttl"
	// Warn: a renewal failed; it is retried with backoff while the lease
	// is valid.
	EventLeaseRenewFailed = "pgsecrets: lease renewal failed"
	// Debug: a lease was revoked (reason: superseded, unused, closed).
	EventLeaseRevoked = "pgsecrets: lease revoked"
	// Warn: a revocation failed; the lease ends at its expiry instead.
	EventLeaseRevokeFailed = "pgsecrets: lease revocation failed"
	// Warn, once per connector: the DSN carries password=, which is
	// ignored in favour of the secret's.
	EventDSNPassword = "pgsecrets: dsn password ignored"
)

// Configuration warnings, each logged at most once per connector and
// without any value.
const (
	// Warn: sslmode is disable, allow or prefer while a host is neither
	// loopback nor a Unix socket: the password and the data may cross the
	// network unencrypted.
	EventWeakSSLMode = "pgsecrets: connection to a remote host is not required to be encrypted"
	// Warn: the DSN names a user other than the secret's username; the
	// secret's is used.
	EventUserMismatch = "pgsecrets: dsn user differs from the secret's username"
	// Warn: secret_ttl is longer than secret_max_stale.
	EventTTLOverMaxStale = "pgsecrets: secret_ttl exceeds secret_max_stale"
	// Warn, once per connector: PQGO_DEBUG=1 makes lib/pq print every
	// connection's settings, password included, to stderr.
	EventLibPQDebug = "pgsecrets: PQGO_DEBUG is set: lib/pq prints passwords to stderr"
	// Debug: the secret has host, port or dbname and the DSN overrides it
	// (expected for a read replica that reuses the primary's secret).
	EventSecretFieldOverridden = "pgsecrets: dsn overrides a connection field of the secret"
	// Warn, once per bad content: a secret file or directory
	// (secret_provider=file) changed into something that cannot be used
	// (half written, not JSON, a field or file missing): the previous
	// credentials are kept until it changes again.
	EventFileUnusable = "pgsecrets: secret file unusable, keeping previous credentials"
	// Warn, once per connector: a secret file (secret_provider=file), or
	// the directory holding it, can be written by its group or by every
	// user (a directory with the sticky bit, such as /tmp, is fine):
	// whoever can write it chooses the credentials, and the host, this
	// process logs in with. The attributes name the path and the mode (and
	// dir and dir_mode for a directory), never the content.
	EventFileWritable = "pgsecrets: secret file can be changed by other users"
	// Warn, once per connector: every user can read a secret file
	// (secret_provider=file), except in a Kubernetes Secret volume (see
	// newFileProvider). The attributes name the path and the mode, never
	// the content.
	EventFileReadable = "pgsecrets: secret file can be read by every user"
	// Warn, once per connector: the secret store is reached over plain
	// http:// on a host that is not loopback, or over https:// without
	// verifying the certificate: whoever is on the network path reads the
	// credentials in the answers (and a Vault token in the requests) or
	// poses as the store. Its attributes are secret_id, store, host (host
	// and port of the endpoint, never userinfo) and reason, which says what
	// to change.
	EventUnprotectedStore = "pgsecrets: secret store reached without verified TLS"
)
