package pgsecrets

import (
	"context"
	"database/sql"
	"database/sql/driver"
)

// DriverName is the name pgsecrets registers with database/sql.
const DriverName = "pgsecrets"

func init() {
	sql.Register(DriverName, &Driver{})
}

// Driver is the database/sql driver. sql.Open("pgsecrets", dsn) uses its
// OpenConnector, so one Connector, and one credential cache, serves the
// whole *sql.DB.
type Driver struct{}

// Open opens one connection with a connector of its own. database/sql
// does not call it (Driver implements driver.DriverContext, so sql.Open
// uses OpenConnector); it exists for code that uses the driver directly,
// and fetches the secret on every call. A connection made with expiring
// credentials (a lease) keeps its connector, and so its lease, until the
// connection is closed; any other connection needs nothing of its
// connector once made, which is then closed at once.
func (d *Driver) Open(dsn string) (driver.Conn, error) {
	c, err := NewConnector(dsn)
	if err != nil {
		return nil, err
	}
	conn, err := c.Connect(context.Background())
	if lc, ok := conn.(*leaseConn); ok {
		lc.owner = c
		return lc, nil
	}
	_ = c.Close()
	return conn, err
}

// OpenConnector parses dsn and returns a Connector.
func (d *Driver) OpenConnector(dsn string) (driver.Connector, error) {
	return NewConnector(dsn)
}

var (
	_ driver.Driver        = (*Driver)(nil)
	_ driver.DriverContext = (*Driver)(nil)
)
