// Package integration holds tests, and nothing else, proving that ORMs and
// query helpers built on database/sql (GORM with gorm.io/driver/postgres,
// and sqlx) work through the pgsecrets driver against a real PostgreSQL.
//
// It is a module of its own so that GORM, sqlx and their dependencies never
// become dependencies of github.com/pgsecrets/pgsecrets.
package integration
