package main

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/pgsecrets/pgsecrets"
)

// store runs step 2 (and then 4 and 5) for a provider other than Secrets
// Manager: the connector fetches the secret through the provider, and the
// provider says what it knows (lease, expiry, token TTL, file and mtime).
func (c *checker) store(ctx context.Context, cfg *pgsecrets.Config, sslMode string, began time.Time) {
	c.diag.step = "fetching the secret (" + cfg.Provider + ")"
	t := time.Now()
	connector := c.connector(cfg)
	if connector == nil {
		return
	}
	db := sql.OpenDB(connector)
	defer db.Close()
	facts, err := connector.Describe(ctx)
	took := c.timed("fetch", t)
	if err != nil {
		c.step(2, "secret", "FAILED: "+cfg.Provider+" "+ms(took))
		c.fail("fetch", err)
		return
	}
	c.step(2, "secret", cfg.Provider+" "+ms(took))
	sec := c.rep.Secret
	sec.Fetched, sec.Password = true, "present"
	for _, f := range facts {
		c.kv(f.Name, "%s", f.Value)
		switch f.Name {
		case "user":
			sec.Username, c.diag.username = f.Value, f.Value
		case "version":
			sec.VersionID = f.Value
		}
		c.rep.Facts = append(c.rep.Facts, fact{f.Name, f.Value})
	}
	c.kv("password", "present")

	life := connector.ConnMaxLifetime()
	why := fmt.Sprintf("PostgreSQL checks a password only at login, so this bounds how long a session opened with an old password keeps running after a change (within ttl + lifetime = %s); pgsecrets.Open sets it for you",
		cfg.TTL+life)
	if !connector.Stats().Expires.IsZero() {
		why = "these credentials expire: the driver retires every connection before its lease ends whatever the lifetime, so this only bounds how long a session lasts otherwise"
	}
	rec := recommend(life, why)
	c.rep.Recommendation = rec
	c.database(ctx, db, connector, sslMode, began)
}

// fact is one line of what the provider said, in the JSON report.
type fact struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}
