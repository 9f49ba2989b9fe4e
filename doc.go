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
// NewConnector (connector.go) parses the DSN once (dsn.go: the Config, the
// engine DSN and where it points), builds the provider from the registry
// (provider.go; awssm.go, file.go, env.go and the vault module) and the
// engine that logs in (engine.go: lib/pq; the pgxsecrets module registers
// pgx), and joins the process-wide entry of that store and secret
// (entry.go) and its target for the database (target.go). database/sql
// then calls Connect, which is one call of target.run:
//
//  1. Credentials: target.credentials asks the breaker once per call, then
//     entry.get (cache.go), which answers from memory while they are fresh;
//     near the TTL, or when a lease can no longer be renewed, one background
//     refresh; expired, one store call (store.go: shared by every caller,
//     paced, hedged when the store is slow); store down, stale credentials
//     within secret_max_stale, else ErrStoreUnavailable at once.
//     Credentials not yet proven on this database take one of a few login
//     slots (a wrong secret costs a handful of logins, not one per caller).
//  2. Login: Connector.dial hands them to the engine.
//  3. Rejected (28P01/28000): run joins or starts the one recovery of the
//     target (recovery.go): the configured stage fetched again and, for a
//     provider that is Staged (AWS's AWSPENDING), the pending stage; rounds
//     with backoff within secret_retry_window only when these credentials
//     had logged in before (a rotation in progress), one round otherwise;
//     the breaker (sony/gobreaker) then answers at once. The caller that
//     ran the recovery keeps its login; the others log in again.
//  4. The connection: the engine's own, unwrapped, unless the credentials
//     expire (a lease): then lease.go wraps it so that it retires before the
//     lease ends, renews the lease while connections use it and revokes it
//     when the last one closes.
//
// pgxsecrets' pool logs in inside pgxpool; it runs each call through the
// same target.run and takes its credentials in BeforeConnect from the same
// target.credentials (adapter.go, behind internal/engine): the policy is
// written once, here.
//
// Errors live in errors.go (every Connect error is a *SecretError whose
// Kind is a sentinel), log events in events.go, configuration warnings in
// warnings.go, counters in stats.go, the redacted Secret in redact.go.
//
// # State and locks
//
// Each part owns its state and its lock, and no code outside a part takes
// its lock: the store (store.mu: pacing, backoff, in-flight
// requests), the cache (cache.mu: current, pending, generation), the lease
// book (leaseBook.mu), the entry's lifetime (lifetime.mu: closed, and the
// goroutines' wait group), the registry of entries (entries). None of them
// calls another part while it holds its lock, so no lock order exists. A
// target keeps its state in atomics and the breaker's own lock.
package pgsecrets
