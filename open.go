package pgsecrets

import (
	"database/sql"
	"time"
)

// Open is sql.OpenDB with a pgsecrets Connector and a connection lifetime
// chosen from the configuration (see ConnMaxLifetime), so the safe setting
// is the default. Change it afterwards with db.SetConnMaxLifetime if you
// must.
func Open(dsn string, opts ...Option) (*sql.DB, error) {
	c, err := NewConnector(dsn, opts...)
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(c)
	db.SetConnMaxLifetime(c.ConnMaxLifetime())
	return db, nil
}

// ConnMaxLifetime is the connection lifetime pgsecrets recommends for this
// configuration: the secret's TTL, at most an hour and at least a minute.
//
// PostgreSQL checks a password only at login, so a session outlives a
// password change. With this lifetime, every connection made with a
// credential is closed no later than one TTL after it was opened, and every
// session runs on the current password within ttl + lifetime of a rotation
// (20 minutes with the defaults), without any connection failing: the
// database/sql pool replaces connections as they expire.
func (c *Connector) ConnMaxLifetime() time.Duration {
	return min(max(c.cfg.TTL, time.Minute), time.Hour)
}
