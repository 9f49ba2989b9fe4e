package testkit_test

import (
	"bufio"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/lib/pq"

	"github.com/pgsecrets/pgsecrets/internal/testdb"
	"github.com/pgsecrets/pgsecrets/internal/testkit"
)

func TestMain(m *testing.M) {
	// The cluster is here for its CA: the certificate a verifying client
	// trusts, which the impostor's is not signed by.
	os.Exit(testdb.RunMain(m, testdb.Options{}))
}

// pqLogin tries one lib/pq login at the impostor and returns its error.
func pqLogin(t *testing.T, im *testkit.Impostor, user, password, extra string) error {
	t.Helper()
	dsn := fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=postgres connect_timeout=30 %s",
		im.Host(), im.Port(), user, password, extra)
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Ping()
	if err == nil {
		t.Fatal("logged in to the impostor")
	}
	im.Settle(t)
	return err
}

func TestImpostorRecordsPlaintextPassword(t *testing.T) {
	im := testkit.StartImpostor(t, testkit.ImpostorOptions{})
	pw := testkit.RandomPassword()
	err := pqLogin(t, im, "alice", pw, "sslmode=disable")
	var pqErr *pq.Error
	if !errors.As(err, &pqErr) || pqErr.Code != "28P01" {
		t.Errorf("error %v, want the impostor's 28P01", err)
	}
	if got := im.Passwords(); !slices.Contains(got, pw) {
		t.Errorf("passwords recorded: %d, none is the one sent", len(got))
	}
	if got := im.Users(); !slices.Contains(got, "alice") {
		t.Errorf("users %q", got)
	}
	if im.PlaintextStartups() == 0 || im.Startups() != im.PlaintextStartups() {
		t.Errorf("%v: want only plaintext startups", im)
	}
	if !im.Saw(pw) || im.Saw("never sent") {
		t.Error("Saw does not reflect what arrived")
	}
}

func TestImpostorDeclinesTLS(t *testing.T) {
	im := testkit.StartImpostor(t, testkit.ImpostorOptions{})
	pw := testkit.RandomPassword()
	err := pqLogin(t, im, "alice", pw, "sslmode=require")
	if !errors.Is(err, pq.ErrSSLNotSupported) {
		t.Errorf("error %v, want lib/pq's SSL not supported", err)
	}
	if im.Conns() == 0 || im.Startups() != 0 || im.Saw(pw) {
		t.Errorf("%v: want a connection and nothing after the SSLRequest", im)
	}
}

func TestImpostorTLSRequire(t *testing.T) {
	im := testkit.StartImpostor(t, testkit.ImpostorOptions{TLS: true})
	pw := testkit.RandomPassword()
	if err := pqLogin(t, im, "alice", pw, "sslmode=require"); !strings.Contains(err.Error(), "28P01") && !strings.Contains(err.Error(), "password authentication failed") {
		t.Errorf("error %v, want the impostor's 28P01", err)
	}
	if im.Startups() == 0 || im.PlaintextStartups() != 0 {
		t.Errorf("%v: want startups inside TLS only", im)
	}
	if !slices.Contains(im.Passwords(), pw) || !im.Saw(pw) {
		t.Error("the password sent inside TLS was not recorded")
	}
}

func TestImpostorVerifyFullRefused(t *testing.T) {
	pg := testdb.Shared(t)
	im := testkit.StartImpostor(t, testkit.ImpostorOptions{TLS: true})
	pw := testkit.RandomPassword()
	err := pqLogin(t, im, "alice", pw, "sslmode=verify-full sslrootcert="+pg.CAFile())
	if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("error %v, want a certificate verification error", err)
	}
	if im.Conns() == 0 || im.Startups() != 0 || len(im.Passwords()) != 0 || im.Saw(pw) {
		t.Errorf("%v: a client that refused the certificate sent more than a handshake", im)
	}
}

// The wire protocol at the byte level: GSSENCRequest and SSLRequest are
// declined, a plaintext StartupMessage is answered with a cleartext
// password request.
func TestImpostorProtocol(t *testing.T) {
	im := testkit.StartImpostor(t, testkit.ImpostorOptions{})
	c, err := net.Dial("tcp", im.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	request := func(code uint32) {
		t.Helper()
		msg := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), code)
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if b, err := r.ReadByte(); err != nil || b != 'N' {
			t.Fatalf("request %d: answer %q, %v; want N", code, b, err)
		}
	}
	request(80877104) // GSSENCRequest
	request(80877103) // SSLRequest
	params := "user\x00bob\x00database\x00postgres\x00\x00"
	startup := binary.BigEndian.AppendUint32(nil, uint32(8+len(params)))
	startup = binary.BigEndian.AppendUint32(startup, 3<<16)
	if _, err := c.Write(append(startup, params...)); err != nil {
		t.Fatal(err)
	}
	auth := make([]byte, 9)
	if _, err := io.ReadFull(r, auth); err != nil || auth[0] != 'R' || binary.BigEndian.Uint32(auth[5:]) != 3 {
		t.Fatalf("auth request %v, %v; want AuthenticationCleartextPassword", auth, err)
	}
	pw := "p\x00"
	msg := append([]byte{'p'}, binary.BigEndian.AppendUint32(nil, uint32(4+len(pw)))...)
	if _, err := c.Write(append(msg, pw...)); err != nil {
		t.Fatal(err)
	}
	if b, err := r.ReadByte(); err != nil || b != 'E' {
		t.Fatalf("after the password: %q, %v; want an ErrorResponse", b, err)
	}
	rest, _ := io.ReadAll(r)
	if !strings.Contains(string(rest), "28P01") {
		t.Errorf("error response %q lacks 28P01", rest)
	}
	c.Close()
	im.Settle(t)
	if im.Conns() != 1 || im.Startups() != 1 || im.PlaintextStartups() != 1 ||
		!slices.Equal(im.Users(), []string{"bob"}) || !slices.Equal(im.Passwords(), []string{"p"}) {
		t.Errorf("%v users %q", im, im.Users())
	}
}
