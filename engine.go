package pgsecrets

import (
	"context"
	"database/sql/driver"

	"github.com/lib/pq"

	"github.com/pgsecrets/pgsecrets/internal/engine"
)

// Engines log in for a Connector: lib/pq (secret_driver=pq, the default,
// here) or pgx (secret_driver=pgx, registered by
// github.com/pgsecrets/pgsecrets/pgxsecrets). Their contract is internal
// (internal/engine): the cache, recovery, breaker and lease rules are the
// core's and the same whatever the engine.

func init() {
	engine.Register(engine.Default, newPQEngine)
}

// where says which of host, port and dbname the DSN (or PGHOST, PGPORT,
// PGDATABASE) sets; the secret's fill in the others.
type where struct{ hostSet, portSet, dbSet bool }

// login is creds as an engine gets them.
func (w where) login(creds *Credentials) *engine.Login {
	l := &engine.Login{User: creds.Username, Password: creds.Password, Stage: creds.Stage, VersionID: creds.VersionID,
		Expiring: creds.expiring(), Core: creds}
	if !w.hostSet {
		l.Host = creds.Host
	}
	if !w.portSet {
		l.Port = creds.Port
	}
	if !w.dbSet {
		l.DBName = creds.DBName
	}
	return l
}

// pqEngine logs in with lib/pq and returns lib/pq's own connection.
type pqEngine struct{ base pq.Config }

func newPQEngine(dsn string) (engine.Engine, error) {
	base, err := pq.NewConfig(dsn)
	if err != nil {
		return nil, &DSNError{Msg: "lib/pq rejected the DSN", Err: err}
	}
	// PGPASSWORD may have filled this; the secret's password is set per
	// connection, and a non-empty password also keeps lib/pq from reading
	// a passfile.
	base.Password = ""
	return &pqEngine{base: base}, nil
}

func (e *pqEngine) Connect(ctx context.Context, l *engine.Login) (driver.Conn, error) {
	cfg := e.base.Clone()
	cfg.User = l.User
	cfg.Password = l.Password.Reveal()
	if l.Host != "" {
		cfg.Host = l.Host
	}
	if l.Port != 0 {
		cfg.Port = l.Port
	}
	if l.DBName != "" {
		cfg.Database = l.DBName
	}
	pc, err := pq.NewConnectorConfig(cfg)
	if err != nil {
		return nil, err
	}
	return pc.Connect(ctx)
}
