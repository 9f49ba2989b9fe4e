package pgsecrets

import (
	"context"
	"database/sql/driver"

	"github.com/lib/pq"
)

// Engine logs in to PostgreSQL for a Connector: pgsecrets hands it
// credentials from the cache (and, after a rejected login, the ones
// recovery is trying) and it returns a database/sql connection. The cache,
// recovery, breaker and lease rules are the core's and the same whatever
// the engine. secret_driver picks one: "pq" (lib/pq, the default, in the
// core) or "pgx" (registered by github.com/pgsecrets/pgsecrets/pgxsecrets).
type Engine interface {
	Connect(ctx context.Context, creds *Credentials) (driver.Conn, error)
}

// EngineConfig is what an engine is built from.
type EngineConfig struct {
	// DSN is the key=value DSN for the engine: the pgsecrets DSN without its
	// secret_* keys and without any password, with sslmode=require added
	// unless the DSN or PGSSLMODE chose otherwise.
	DSN string
	// HostSet, PortSet and DBNameSet say whether the DSN (or PGHOST,
	// PGPORT, PGDATABASE) sets them; where it does not, the secret's host,
	// port and dbname apply.
	HostSet, PortSet, DBNameSet bool
}

// Apply returns the host, port and database a login with creds uses, given
// the engine's own from the DSN: the secret's fill in what the DSN leaves
// out.
func (e EngineConfig) Apply(creds *Credentials, host string, port uint16, dbname string) (string, uint16, string) {
	if !e.HostSet && creds.Host != "" {
		host = creds.Host
	}
	if !e.PortSet && creds.Port != 0 {
		port = creds.Port
	}
	if !e.DBNameSet && creds.DBName != "" {
		dbname = creds.DBName
	}
	return host, port, dbname
}

// EngineFactory builds an engine for a connector. It must not connect.
type EngineFactory func(cfg EngineConfig) (Engine, error)

// DefaultEngine is the engine used when the DSN has no secret_driver.
const DefaultEngine = "pq"

var engines = newNamedSet[EngineFactory]("engine", keyDriver, map[string]string{
	"pgx": "github.com/pgsecrets/pgsecrets/pgxsecrets",
})

// RegisterEngine makes an engine available as secret_driver=name. It is
// meant for init functions and panics on an empty or duplicate name.
func RegisterEngine(name string, f EngineFactory) {
	if name == "" || f == nil {
		panic("pgsecrets: RegisterEngine needs a name and a factory")
	}
	engines.add(name, f)
}

func lookupEngine(name string) (EngineFactory, bool) { return engines.lookup(name) }

func unknownEngineError(name string) error { return engines.unknown(name) }

func init() {
	RegisterEngine(DefaultEngine, newPQEngine)
}

// pqEngine logs in with lib/pq and returns lib/pq's own connection.
type pqEngine struct {
	base pq.Config
	cfg  EngineConfig
}

func newPQEngine(cfg EngineConfig) (Engine, error) {
	base, err := pq.NewConfig(cfg.DSN)
	if err != nil {
		return nil, &DSNError{Msg: "lib/pq rejected the DSN", Err: err}
	}
	base.Password = ""
	return &pqEngine{base: base, cfg: cfg}, nil
}

func (e *pqEngine) Connect(ctx context.Context, creds *Credentials) (driver.Conn, error) {
	cfg := e.base.Clone()
	cfg.User = creds.Username
	cfg.Password = creds.Password.Reveal()
	cfg.Host, cfg.Port, cfg.Database = e.cfg.Apply(creds, cfg.Host, cfg.Port, cfg.Database)
	pc, err := pq.NewConnectorConfig(cfg)
	if err != nil {
		return nil, err
	}
	return pc.Connect(ctx)
}
