// Package engine is the contract between the pgsecrets core and the
// engines that log in for it: lib/pq (in the core) and pgx (pgxsecrets).
// It is internal: an engine is part of pgsecrets, and this contract may
// change with it. What an outside program may extend is a provider (see
// pgsecrets.Provider).
//
// The core decides which credentials a login uses, recovers when the
// database rejects them, and tracks leases; an engine only turns a Login
// into a connection.
package engine

import (
	"context"
	"database/sql/driver"
	"time"

	"github.com/pgsecrets/pgsecrets/internal/registry"
)

// Login is one login as the core hands it to an engine.
type Login struct {
	User string
	// Password prints as nothing (it is a pgsecrets.Secret); Reveal it only
	// into the engine's own configuration.
	Password interface{ Reveal() string }
	// Host, Port and DBName come from the secret where the DSN (and the
	// PG* environment) leaves them out; the zero value keeps the engine
	// DSN's.
	Host   string
	Port   uint16
	DBName string
	// Stage and VersionID name the credentials in errors.
	Stage, VersionID string
	// Expiring is true for credentials that end (a lease): the engine's
	// connections must be retired before they do (see Target.Connected).
	Expiring bool
	// Core is the core's own record of the credentials; an engine hands the
	// Login back to the Target unchanged.
	Core any
}

// Engine logs in to PostgreSQL. Connect returns the engine's error as it
// is for a rejected login; the core classifies it.
type Engine interface {
	Connect(ctx context.Context, l *Login) (driver.Conn, error)
}

// Factory builds an engine from the engine DSN: the pgsecrets DSN without
// its secret_* keys and without any password, with the sslmode default
// applied. It must not connect.
type Factory func(dsn string) (Engine, error)

// Default is the engine of a DSN without secret_driver.
const Default = "pq"

// Engines holds the registered engines, by secret_driver name.
var Engines = registry.New[Factory]("engine", "secret_driver", map[string]string{
	"pgx": "github.com/pgsecrets/pgsecrets/pgxsecrets",
})

// Register makes an engine available as secret_driver=name. It is meant
// for init functions and panics on an empty or duplicate name.
func Register(name string, f Factory) {
	if f == nil {
		panic("pgsecrets: an engine needs a factory")
	}
	Engines.Add(name, f)
}

// Target is a pgsecrets connector as an engine that makes connections by
// itself sees it (pgxsecrets' pool: its logins happen inside pgxpool, in
// the BeforeConnect hook, not through Engine.Connect). Every rule of the
// policy stays in the core: the engine only runs its calls through Run and
// reports what its hooks see.
type Target interface {
	// DSN is the engine DSN (see Factory).
	DSN() string
	// Run runs call, which may make one new connection (logging in with
	// Login(ctx) in the engine's BeforeConnect), under the core's policy:
	// when the database rejects that login, Run recovers (one recovery for
	// every caller, the breaker, the retry window) and calls again. call's
	// own errors come back as they are, except a rejected login that could
	// not be recovered from, which becomes the *pgsecrets.SecretError
	// Connect would return. call must return the engine's error of a
	// rejected login unwrapped enough for errors.As to find its SQLSTATE.
	Run(ctx context.Context, call func(ctx context.Context) error) error
	// Login returns the credentials a new connection logs in with now. With
	// the ctx Run gave call it follows the whole policy (breaker, login
	// slots for credentials not yet proven, waiting for a recovery of
	// credentials known rejected); with another ctx (a connection the
	// engine makes in the background) it fails fast while the breaker is
	// open.
	Login(ctx context.Context) (*Login, error)
	// Connected records that l logged in. release must be called when the
	// connection closes (it holds l's lease until then); retireAt tells
	// when the connection must stop being used (zero if never).
	Connected(l *Login) (release func(), retireAt func() time.Time)
	// LoginError is the error for a new connection that failed other than
	// by a rejected login, under the ctx Run gave call: what Connect would
	// return (ErrConnect wrapping err, or what a caller who gives up gets).
	LoginError(ctx context.Context, err error) error
	// Rejected reports whether err is the database rejecting a login
	// (SQLSTATE 28P01 or 28000).
	Rejected(err error) bool
}

// TargetOf returns the Target of a *pgsecrets.Connector (nil for anything
// else). The core sets it when it initializes.
var TargetOf func(driver.Connector) Target
