package testkit

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"io"
	"math/big"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// ImpostorOptions configure StartImpostor.
type ImpostorOptions struct {
	// TLS makes the impostor accept TLS (answer 'S' to an SSLRequest, or a
	// direct TLS hello) with a certificate for 127.0.0.1, ::1 and localhost
	// that its own throwaway CA issued: sslmode=require proceeds,
	// verify-ca and verify-full against any other CA fail. Without TLS it
	// declines (answers 'N') and goes on in plaintext if the client does.
	TLS bool
}

// Impostor plays a PostgreSQL server that wants the client's password: it
// asks for it in cleartext after the StartupMessage, records what arrives,
// and rejects the login with SQLSTATE 28P01. Tests point a client at it to
// prove what the client sends to a server it should not trust (one that
// declines TLS, or one whose certificate does not verify). It listens on
// 127.0.0.1 on a port of its own; its methods are safe for concurrent use.
type Impostor struct {
	opt  ImpostorOptions
	ln   net.Listener
	tls  *tls.Config
	done chan struct{}
	wg   sync.WaitGroup // the accept loop and every connection's handler

	mu        sync.Mutex
	idle      *sync.Cond // broadcast when active drops to 0
	active    int
	open      map[net.Conn]struct{}
	conns     int
	startups  int
	plaintext int
	passwords []string
	users     []string
	received  [][]byte // per connection: every byte read, after TLS
}

// StartImpostor starts an impostor, closed when the test ends.
func StartImpostor(tb testing.TB, opt ImpostorOptions) *Impostor {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("impostor: %v", err)
	}
	im := &Impostor{opt: opt, ln: ln, done: make(chan struct{}), open: map[net.Conn]struct{}{}}
	im.idle = sync.NewCond(&im.mu)
	if opt.TLS {
		cert, err := impostorCertificate()
		if err != nil {
			ln.Close()
			tb.Fatalf("impostor: %v", err)
		}
		im.tls = &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"postgresql"}}
	}
	im.wg.Add(1)
	go im.accept()
	tb.Cleanup(im.close)
	return im
}

// Addr is "127.0.0.1:<port>".
func (im *Impostor) Addr() string { return im.ln.Addr().String() }

// Host is "127.0.0.1".
func (im *Impostor) Host() string { return im.ln.Addr().(*net.TCPAddr).IP.String() }

// Port is the port it listens on.
func (im *Impostor) Port() int { return im.ln.Addr().(*net.TCPAddr).Port }

// Conns is the number of TCP connections accepted.
func (im *Impostor) Conns() int {
	im.mu.Lock()
	defer im.mu.Unlock()
	return im.conns
}

// Startups is the number of StartupMessages received, in plaintext or
// inside TLS.
func (im *Impostor) Startups() int {
	im.mu.Lock()
	defer im.mu.Unlock()
	return im.startups
}

// PlaintextStartups is the number of StartupMessages received without
// TLS: each is a client that went on after the server declined TLS (or
// never asked for it).
func (im *Impostor) PlaintextStartups() int {
	im.mu.Lock()
	defer im.mu.Unlock()
	return im.plaintext
}

// Passwords are the contents of the password messages received, in order.
func (im *Impostor) Passwords() []string {
	im.mu.Lock()
	defer im.mu.Unlock()
	return append([]string(nil), im.passwords...)
}

// Users are the user parameters of the StartupMessages received, in order.
func (im *Impostor) Users() []string {
	im.mu.Lock()
	defer im.mu.Unlock()
	return append([]string(nil), im.users...)
}

// Saw reports whether s occurs in what any connection sent (after TLS
// decryption): the way to assert that a password never arrived, in
// whatever message.
func (im *Impostor) Saw(s string) bool {
	im.mu.Lock()
	defer im.mu.Unlock()
	for _, b := range im.received {
		if bytes.Contains(b, []byte(s)) {
			return true
		}
	}
	return false
}

// Settle waits until every connection accepted so far has ended, so that
// the counters hold everything those clients sent. A client that has
// returned from a failed connect has closed its side, which ends the
// connection here. It fails the test after a minute.
func (im *Impostor) Settle(tb testing.TB) {
	tb.Helper()
	settled := make(chan struct{})
	go func() {
		im.mu.Lock()
		for im.active > 0 {
			im.idle.Wait()
		}
		im.mu.Unlock()
		close(settled)
	}()
	select {
	case <-settled:
	case <-time.After(time.Minute):
		tb.Fatalf("impostor: connections still open after a minute")
	}
}

func (im *Impostor) close() {
	close(im.done)
	im.ln.Close()
	im.mu.Lock()
	for c := range im.open {
		c.Close()
	}
	im.mu.Unlock()
	im.wg.Wait()
}

func (im *Impostor) accept() {
	defer im.wg.Done()
	for {
		c, err := im.ln.Accept()
		if err != nil {
			return // closed
		}
		im.mu.Lock()
		select {
		case <-im.done:
			im.mu.Unlock()
			c.Close()
			return
		default:
		}
		im.conns++
		im.active++
		im.open[c] = struct{}{}
		idx := len(im.received)
		im.received = append(im.received, nil)
		im.mu.Unlock()
		im.wg.Add(1)
		go func() {
			defer im.wg.Done()
			im.serve(c, idx)
			c.Close()
			im.mu.Lock()
			delete(im.open, c)
			im.active--
			if im.active == 0 {
				im.idle.Broadcast()
			}
			im.mu.Unlock()
		}()
	}
}

// Protocol codes of the messages a client may send first.
const (
	sslRequestCode    = 80877103
	gssencRequestCode = 80877104
	cancelRequestCode = 80877102
	// maxMessage bounds what a client can make the impostor buffer.
	maxMessage = 1 << 20
)

// recorder appends everything read through it to the connection's record.
type recorder struct {
	im  *Impostor
	idx int
	r   io.Reader
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.im.mu.Lock()
		r.im.received[r.idx] = append(r.im.received[r.idx], p[:n]...)
		r.im.mu.Unlock()
	}
	return n, err
}

// bufferedConn is a net.Conn whose reads come through a bufio.Reader that
// may already hold bytes of the stream (a peeked TLS hello).
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (im *Impostor) serve(c net.Conn, idx int) {
	// A client that stalls must not keep a test waiting in Settle forever.
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	raw := bufio.NewReader(c)
	var conn net.Conn = bufferedConn{Conn: c, r: raw}
	encrypted := false
	startTLS := func() bool {
		tc := tls.Server(conn, im.tls)
		if err := tc.Handshake(); err != nil {
			return false
		}
		conn, encrypted = tc, true
		return true
	}
	// sslnegotiation=direct: a TLS hello instead of an SSLRequest.
	if first, err := raw.Peek(1); err != nil {
		return
	} else if first[0] == 0x16 {
		if !im.opt.TLS || !startTLS() {
			return
		}
	}
	r := bufio.NewReader(&recorder{im: im, idx: idx, r: conn})
	for {
		body, err := readStartup(r)
		if err != nil {
			return
		}
		if len(body) < 4 {
			return
		}
		switch code := binary.BigEndian.Uint32(body); code {
		case sslRequestCode:
			if encrypted || !im.opt.TLS || r.Buffered() > 0 {
				// Bytes already sent after the request would be read as
				// plaintext: only a client that waits for 'S' gets TLS.
				if _, err := conn.Write([]byte{'N'}); err != nil {
					return
				}
				continue
			}
			if _, err := conn.Write([]byte{'S'}); err != nil || !startTLS() {
				return
			}
			r = bufio.NewReader(&recorder{im: im, idx: idx, r: conn})
		case gssencRequestCode:
			if _, err := conn.Write([]byte{'N'}); err != nil {
				return
			}
		case cancelRequestCode:
			return
		default:
			if code>>16 != 3 {
				return // not protocol 3.x
			}
			im.startup(body[4:], encrypted)
			im.askPassword(conn, r)
			return
		}
	}
}

// readStartup reads an untyped message (SSLRequest, StartupMessage…):
// int32 length including itself, then the body.
func readStartup(r *bufio.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	if n < 8 || n > maxMessage {
		return nil, errors.New("bad length")
	}
	body := make([]byte, n-4)
	_, err := io.ReadFull(r, body)
	return body, err
}

// startup records a StartupMessage's parameters.
func (im *Impostor) startup(params []byte, encrypted bool) {
	user := ""
	fields := strings.Split(string(params), "\x00")
	for i := 0; i+1 < len(fields); i += 2 {
		if fields[i] == "user" {
			user = fields[i+1]
		}
	}
	im.mu.Lock()
	defer im.mu.Unlock()
	im.startups++
	if !encrypted {
		im.plaintext++
	}
	im.users = append(im.users, user)
}

// askPassword requests a cleartext password, records the answer, and
// rejects the login.
func (im *Impostor) askPassword(w io.Writer, r *bufio.Reader) {
	if _, err := w.Write([]byte{'R', 0, 0, 0, 8, 0, 0, 0, 3}); err != nil {
		return
	}
	typ, err := r.ReadByte()
	if err != nil {
		return
	}
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	if n < 4 || n > maxMessage {
		return
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return
	}
	if typ != 'p' {
		return
	}
	im.mu.Lock()
	im.passwords = append(im.passwords, strings.TrimSuffix(string(body), "\x00"))
	im.mu.Unlock()
	_, _ = w.Write(errorResponse("28P01", "password authentication failed"))
}

// errorResponse is a FATAL ErrorResponse message.
func errorResponse(code, msg string) []byte {
	var fields []byte
	for _, f := range [][2]string{{"S", "FATAL"}, {"V", "FATAL"}, {"C", code}, {"M", msg}} {
		fields = append(fields, f[0][0])
		fields = append(fields, f[1]...)
		fields = append(fields, 0)
	}
	fields = append(fields, 0)
	out := []byte{'E', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(out[1:], uint32(4+len(fields)))
	return append(out, fields...)
}

// impostorCertificate makes a CA of the impostor's own and a leaf it
// issued for the loopback names, so that only a client that skips
// verification completes the handshake.
func impostorCertificate() (tls.Certificate, error) {
	now := time.Now()
	serial := func() (*big.Int, error) { return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62)) }
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	sn, err := serial()
	if err != nil {
		return tls.Certificate{}, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: sn, Subject: pkix.Name{CommonName: "pgsecrets impostor CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	if sn, err = serial(); err != nil {
		return tls.Certificate{}, err
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: sn, Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{leafDER, caDER}, PrivateKey: key}, nil
}

// String describes what the impostor saw, for failure messages; it never
// shows a password.
func (im *Impostor) String() string {
	im.mu.Lock()
	defer im.mu.Unlock()
	return "impostor " + im.ln.Addr().String() + ": conns=" + strconv.Itoa(im.conns) +
		" startups=" + strconv.Itoa(im.startups) + " plaintext=" + strconv.Itoa(im.plaintext) +
		" passwords=" + strconv.Itoa(len(im.passwords))
}
