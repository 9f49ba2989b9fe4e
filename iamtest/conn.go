package iamtest

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

const (
	// handshakeTimeout bounds a client's startup and authentication and the
	// upstream login; relayed sessions have no deadline.
	handshakeTimeout = 30 * time.Second
	// maxMessageLen bounds a client message during the handshake.
	maxMessageLen = 64 << 10
)

// handle serves one client connection: SSL/GSS negotiation, the startup
// message, then login.
func (s *Server) handle(raw net.Conn) {
	_ = raw.SetDeadline(time.Now().Add(handshakeTimeout))
	var conn net.Conn = raw
	fr := &frameReader{r: raw, startup: true}
	be := pgproto3.NewBackend(fr, raw)
	be.SetMaxBodyLen(maxMessageLen)
	encrypted := false
	for {
		msg, err := be.ReceiveStartupMessage()
		if err != nil {
			s.logf("iamtest: %s: reading the startup packet: %v", raw.RemoteAddr(), err)
			return
		}
		switch m := msg.(type) {
		case *pgproto3.SSLRequest:
			if encrypted {
				s.protocolError(be, "SSL request inside an encrypted connection")
				return
			}
			if _, err := raw.Write([]byte{'S'}); err != nil {
				return
			}
			tc := tls.Server(raw, s.tls.config)
			if err := tc.HandshakeContext(s.ctx); err != nil {
				s.logf("iamtest: %s: TLS handshake: %v", raw.RemoteAddr(), err)
				return
			}
			conn, encrypted = tc, true
			// frameReader never reads past the SSLRequest, so the TLS
			// handshake saw every byte the client sent after it.
			fr = &frameReader{r: tc, startup: true}
			be = pgproto3.NewBackend(fr, tc)
			be.SetMaxBodyLen(maxMessageLen)
		case *pgproto3.GSSEncRequest:
			if encrypted {
				s.protocolError(be, "GSSAPI encryption request inside an encrypted connection")
				return
			}
			if _, err := raw.Write([]byte{'N'}); err != nil {
				return
			}
		case *pgproto3.CancelRequest:
			// Relayed sessions carry the upstream's key data; a cancel
			// request sent here is not forwarded.
			s.logf("iamtest: %s: cancel request ignored", raw.RemoteAddr())
			return
		case *pgproto3.StartupMessage:
			fr.startup = false
			s.login(raw, conn, be, m, encrypted)
			return
		default:
			s.protocolError(be, fmt.Sprintf("unexpected startup message %T", msg))
			return
		}
	}
}

// login authenticates the client of startup by IAM token and, if the token
// is good, relays its session to the upstream server.
func (s *Server) login(raw, conn net.Conn, be *pgproto3.Backend, startup *pgproto3.StartupMessage, encrypted bool) {
	user := startup.Parameters["user"]
	database := startup.Parameters["database"]
	if database == "" {
		database = user
	}
	if user == "" {
		s.sendError(be, "28000", "no PostgreSQL user name specified in startup packet")
		return
	}
	rec := Login{User: user, Database: database}
	refuse := func(reason, detail, code, message string) {
		rec.Reason, rec.Detail, rec.At = reason, detail, s.opts.Now()
		s.record(rec)
		s.logf("iamtest: %s: login of %q refused: %s (%s)", raw.RemoteAddr(), user, reason, detail)
		s.sendError(be, code, message)
	}

	if !encrypted {
		host, _, _ := net.SplitHostPort(raw.RemoteAddr().String())
		refuse(ReasonNoTLS, "startup message without SSLRequest", "28000",
			fmt.Sprintf("no pg_hba.conf entry for host %q, user %q, database %q, no encryption", host, user, database))
		return
	}
	if !s.admit(s.opts.Now()) {
		refuse(ReasonThrottled, "", CodeTooManyConnections, "rate exceeded")
		return
	}

	// The session to the upstream is protocol 3.0; say so to a client that
	// asked for more, as a 3.0 server does.
	var unknownOpts []string
	for _, k := range sortedKeys(startup.Parameters) {
		if strings.HasPrefix(k, "_pq_.") {
			unknownOpts = append(unknownOpts, k)
		}
	}
	if startup.ProtocolVersion != pgproto3.ProtocolVersion30 || len(unknownOpts) > 0 {
		be.Send(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unknownOpts})
	}
	be.Send(&pgproto3.AuthenticationCleartextPassword{})
	if err := be.Flush(); err != nil {
		return
	}
	if err := be.SetAuthType(pgproto3.AuthTypeCleartextPassword); err != nil {
		return
	}
	msg, err := be.Receive()
	if err != nil {
		s.logf("iamtest: %s: %q sent no password: %v", raw.RemoteAddr(), user, err)
		return
	}
	pm, ok := msg.(*pgproto3.PasswordMessage)
	if !ok {
		s.protocolError(be, fmt.Sprintf("expected a password message, got %T", msg))
		return
	}
	token := pm.Password

	reason, detail := s.verify(user, token, s.opts.Now())
	if reason == "" && s.injectRejection() {
		reason = ReasonInjected
	}
	if reason != "" {
		refuse(reason, detail, s.opts.AuthFailedCode, s.opts.RefusedMessage(user, reason))
		return
	}

	hj, err := s.connectUpstream(user, startup.Parameters)
	if err != nil {
		message := err.Error()
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			message = pgErr.Message
		}
		refuse(ReasonUpstream, message, CodeConnectionFailure, message)
		return
	}
	upstream := hj.Conn
	if !s.track(upstream) {
		upstream.Close()
		return
	}
	defer s.untrack(upstream)

	rec.Accepted, rec.At = true, s.opts.Now()
	s.record(rec)
	s.logf("iamtest: %s: %q logged in to %q, relaying", raw.RemoteAddr(), user, database)

	be.Send(&pgproto3.AuthenticationOk{})
	for _, k := range sortedKeys(hj.ParameterStatuses) {
		be.Send(&pgproto3.ParameterStatus{Name: k, Value: hj.ParameterStatuses[k]})
	}
	be.Send(&pgproto3.BackendKeyData{ProcessID: hj.PID, SecretKey: hj.SecretKey})
	txStatus := hj.TxStatus
	if txStatus == 0 {
		txStatus = 'I'
	}
	be.Send(&pgproto3.ReadyForQuery{TxStatus: txStatus})
	if err := be.Flush(); err != nil {
		return
	}
	// SyncConn emptied pgconn's read buffer before Hijack; should anything
	// still be buffered in the hijacked frontend, pass it on before the
	// raw relay starts so that no upstream byte is lost.
	for hj.Frontend.ReadBufferLen() > 0 {
		m, err := hj.Frontend.Receive()
		if err != nil {
			return
		}
		buf, err := m.Encode(nil)
		if err != nil {
			return
		}
		if _, err := conn.Write(buf); err != nil {
			return
		}
	}
	_ = raw.SetDeadline(time.Time{})
	_ = upstream.SetDeadline(time.Time{})
	relay(conn, upstream)
}

// connectUpstream logs in to the real server as user, with the database
// and run-time parameters of the client's startup message, and hijacks the
// connection.
func (s *Server) connectUpstream(user string, params map[string]string) (*pgconn.HijackedConn, error) {
	connString, err := s.opts.Upstream(user)
	if err != nil {
		return nil, fmt.Errorf("no upstream for %q: %w", user, err)
	}
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("upstream connection string: %w", err)
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	for k, v := range params {
		switch {
		case k == "user", k == "replication", strings.HasPrefix(k, "_pq_."):
		case k == "database":
			if v != "" {
				cfg.Database = v
			}
		default:
			cfg.RuntimeParams[k] = v
		}
	}
	cfg.MinProtocolVersion, cfg.MaxProtocolVersion = "3.0", "3.0"

	ctx, cancel := context.WithTimeout(s.ctx, handshakeTimeout)
	defer cancel()
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := pc.SyncConn(ctx); err != nil {
		pc.Close(ctx)
		return nil, err
	}
	hj, err := pc.Hijack()
	if err != nil {
		pc.Close(ctx)
		return nil, err
	}
	return hj, nil
}

// relay copies bytes both ways until either side ends, then closes both.
func relay(client, upstream net.Conn) {
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			client.Close()
			upstream.Close()
		})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(upstream, client)
		closeBoth()
	}()
	_, _ = io.Copy(client, upstream)
	closeBoth()
	<-done
}

// sendError sends a FATAL ErrorResponse.
func (s *Server) sendError(be *pgproto3.Backend, code, message string) {
	be.Send(&pgproto3.ErrorResponse{
		Severity:            "FATAL",
		SeverityUnlocalized: "FATAL",
		Code:                code,
		Message:             message,
	})
	_ = be.Flush()
}

// protocolError sends a FATAL protocol_violation.
func (s *Server) protocolError(be *pgproto3.Backend, message string) {
	s.sendError(be, "08P01", message)
}

// frameReader hands the pgproto3.Backend exactly one message at a time:
// it never reads from the connection past the end of the current message.
// The Backend's buffer is therefore empty after each message, so the TLS
// handshake after an SSLRequest, and the relay after the password message,
// see every byte the client sent next.
type frameReader struct {
	r       io.Reader
	startup bool   // the next message is a startup packet (no type byte)
	hdr     []byte // header bytes read but not yet returned
	left    int    // body bytes of the current message not yet read
}

func (f *frameReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(f.hdr) == 0 && f.left == 0 {
		n := 5
		if f.startup {
			n = 4
		}
		hdr := make([]byte, n)
		if _, err := io.ReadFull(f.r, hdr); err != nil {
			return 0, err
		}
		size := int32(binary.BigEndian.Uint32(hdr[n-4:]))
		if size < 4 {
			return 0, fmt.Errorf("invalid message length %d", size)
		}
		f.hdr, f.left = hdr, int(size)-4
	}
	if len(f.hdr) > 0 {
		n := copy(p, f.hdr)
		f.hdr = f.hdr[n:]
		return n, nil
	}
	if len(p) > f.left {
		p = p[:f.left]
	}
	n, err := f.r.Read(p)
	f.left -= n
	return n, err
}
