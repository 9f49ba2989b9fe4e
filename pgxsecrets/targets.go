package pgxsecrets

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsecrets/pgsecrets/internal/engine"
)

// targets fits a pgx configuration to the server a login dials. pgx
// decides TLS when it parses a DSN, for the host it names: without a host
// it parses for its default, a Unix socket, and builds no TLS at all.
// When the secret supplies the host or port, the login must get what pgx
// would have built had the DSN named them (the TLS configuration with
// that server name, and the fallbacks of the sslmode), so the engine DSN
// is parsed again for that host and port; the few targets a secret names
// over time are kept, so that a warm connect does not parse.
type targets struct {
	dsn string   // the engine DSN
	env []string // the PG* variables that decide TLS, when the engine was built

	mu     sync.Mutex
	parsed map[target]*pgconn.Config
	order  []target // oldest first, for eviction

	tcpOnce sync.Once
	tcpTLS  bool // pgx insists on TLS for a TCP host
	tcpErr  error
}

// target is what a login overrides: a host or port from the secret; the
// zero value keeps the DSN's.
type target struct {
	host string
	port uint16
}

// maxTargets bounds the parsed configurations kept: a secret names one
// server, and a few more cover a move between servers.
const maxTargets = 8

// tlsEnv are the PG* variables pgx reads that decide TLS, or the host list
// when the secret supplies only the port.
var tlsEnv = []string{
	"PGHOST", "PGPORT", "PGSERVICE", "PGSERVICEFILE",
	"PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY", "PGSSLCERTMODE",
	"PGSSLSNI", "PGSSLNEGOTIATION",
}

func readTLSEnv() []string {
	v := make([]string, len(tlsEnv))
	for i, k := range tlsEnv {
		v[i] = os.Getenv(k)
	}
	return v
}

func newTargets(dsn string) *targets {
	return &targets{dsn: dsn, env: readTLSEnv(), parsed: map[target]*pgconn.Config{}}
}

// errEnvChanged: pgx reads the environment again when it parses, and the
// DSN the engine was built from (which says sslmode only when neither the
// DSN nor PGSSLMODE did) means what it meant then.
var errEnvChanged = errors.New("pgxsecrets: the PG* environment that decides TLS (PGSSLMODE, PGSSLROOTCERT, PGHOST…) changed since the connection pool or sql.DB was opened; open it again")

// setLogin puts l into a pgx connection configuration parsed from the
// engine DSN: the user, the password, and the host, port and database the
// login dials, with the TLS and fallbacks pgx builds for them.
func (t *targets) setLogin(cc *pgx.ConnConfig, l *engine.Login) error {
	cc.User = l.User
	cc.Password = l.Password.Reveal()
	if l.DBName != "" {
		cc.Database = l.DBName
	}
	var to target
	if l.Host != "" {
		port := cc.Port
		if l.Port != 0 {
			port = l.Port
		}
		if err := t.checkHost(l.Host, port); err != nil {
			return err
		}
		to.host = l.Host
	}
	to.port = l.Port
	if (to.host == "" || to.host == cc.Host) && (to.port == 0 || to.port == cc.Port) {
		return nil // what pgx parsed is what is dialled
	}
	p, err := t.parse(to)
	if err != nil {
		return err
	}
	cc.Host, cc.Port = p.Host, p.Port
	cc.TLSConfig = p.TLSConfig.Clone() // hooks may change what they are given
	cc.Fallbacks = make([]*pgconn.FallbackConfig, len(p.Fallbacks))
	for i, f := range p.Fallbacks {
		cc.Fallbacks[i] = &pgconn.FallbackConfig{Host: f.Host, Port: f.Port, TLSConfig: f.TLSConfig.Clone()}
	}
	return nil
}

// A secret's host that would change more than which server is dialled.
// The errors do not name it: it came from the secret.
var (
	errSecretHostList   = errors.New("pgxsecrets: the secret's host field holds a list of hosts (a comma); it must name one server: put a host list in the DSN instead")
	errSecretHostSocket = errors.New("pgxsecrets: the secret's host field names a Unix socket directory, where pgx does not use TLS, but the DSN's sslmode requires TLS: put the socket in the DSN, or set sslmode to allow plaintext")
)

// checkHost refuses a secret's host that pgx would not treat as one TCP
// server: a comma makes a host list, and a path a Unix socket, which pgx
// dials without TLS whatever the sslmode (lib/pq would still ask for TLS
// there, and fail).
func (t *targets) checkHost(host string, port uint16) error {
	if strings.Contains(host, ",") {
		return errSecretHostList
	}
	if network, _ := pgconn.NetworkAddress(host, port); network != "unix" {
		return nil
	}
	t.tcpOnce.Do(func() {
		// What the sslmode means for a TCP server: no plaintext attempt at
		// all, or one.
		p, err := t.parse(target{host: "localhost"})
		if err != nil {
			t.tcpErr = err
			return
		}
		t.tcpTLS = p.TLSConfig != nil
		for _, f := range p.Fallbacks {
			t.tcpTLS = t.tcpTLS && f.TLSConfig != nil
		}
	})
	if t.tcpErr != nil {
		return t.tcpErr
	}
	if t.tcpTLS {
		return errSecretHostSocket
	}
	return nil
}

// parse returns the configuration pgx parses from the engine DSN with to's
// host and port.
func (t *targets) parse(to target) (*pgconn.Config, error) {
	t.mu.Lock()
	p, ok := t.parsed[to]
	t.mu.Unlock()
	if ok {
		return p, nil
	}
	if !slices.Equal(readTLSEnv(), t.env) {
		return nil, errEnvChanged
	}
	dsn := t.dsn
	if to.host != "" {
		dsn += " host=" + engine.Quote(to.host)
	}
	if to.port != 0 {
		dsn += " port=" + strconv.Itoa(int(to.port))
	}
	p, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("pgxsecrets: pgx rejected the DSN with the secret's host and port: %w", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.parsed[to]; !ok {
		if len(t.order) == maxTargets {
			delete(t.parsed, t.order[0])
			t.order = t.order[1:]
		}
		t.parsed[to] = p
		t.order = append(t.order, to)
	}
	return t.parsed[to], nil
}
