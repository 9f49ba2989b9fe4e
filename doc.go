// Package pgsecrets is a database/sql driver for PostgreSQL whose DSN names
// a secret instead of a password:
//
//	db, err := sql.Open("pgsecrets", "host=db.internal dbname=app sslmode=verify-full secret_id=prod/app/db")
//
// Every new connection takes its username and password from a secret store
// (AWS Secrets Manager by default; Vault, a file or the environment through
// secret_provider), cached and shared, so the password can be rotated
// without restarting anything and without a failed query. The README
// explains the DSN keys, the stores, the errors and the figures; this
// comment is for whoever reads the code.
//
// # One Connect, and where each part lives
//
// NewConnector (connector.go) parses the DSN once (dsn.go), builds the
// provider from the registry (provider.go; awssm.go, file.go, env.go and
// the vault module) and the engine that logs in (engine.go: lib/pq; the
// pgxsecrets module registers pgx), and joins the process-wide cache entry
// of that store and secret (cache.go: acquireEntry). database/sql then calls
// Connect for each new connection:
//
//  1. Credentials: entry.get (cache.go) answers from memory while they are
//     fresh; near the TTL, or at 0.6–0.7 of a lease's life, one background
//     refresh; expired, one store call shared by every caller (singleflight,
//     paced, hedged when the store is slow); store down, stale credentials
//     within secret_max_stale, else ErrStoreUnavailable at once.
//  2. Login: connector.go's firstLogin takes a login slot when the
//     credentials have not proved themselves on this database (loginSlot:
//     a wrong secret costs a handful of logins, not one per caller), then
//     dial hands them to the engine.
//  3. Rejected (28P01/28000): recovery.go's recover runs one recovery per
//     database for all callers: the configured stage fetched again and,
//     for a provider that is Staged (AWS's AWSPENDING), the pending stage;
//     rounds with backoff within secret_retry_window only when these
//     credentials had logged in before (a rotation in progress), one round
//     otherwise; the circuit breaker (sony/gobreaker) then answers at once.
//  4. The connection: the engine's own, unwrapped, unless the credentials
//     expire (a lease): then lease.go wraps it so that it retires before the
//     lease ends, renews the lease while connections use it and revokes it
//     when the last one closes.
//
// pgxsecrets drives the same steps for a pgx pool through the adapter
// methods in adapter.go (Credentials, Gate, Rejected, Recover, LoggedIn,
// Hold, LoginError): the policy is the core's, the pool only calls it.
//
// Errors live in errors.go (every Connect error is a *SecretError whose
// Kind is a sentinel), log events in events.go, configuration warnings in
// warnings.go, counters in stats.go, the redacted Secret in redact.go.
//
// # Locks
//
// The cache entry's mutex (entry.mu) guards the cached credentials, the
// store-call pacing and the in-flight count; it is never held across I/O.
// The order is entry.mu, then the lease book's (leaseBook.mu) or a
// breaker's (gobreaker's own): entry.get and the fetch that adopts a lease
// ask the lease book with entry.mu held, and the lease keeper lets go of
// leaseBook.mu before it takes entry.mu to start a refresh.
package pgsecrets
