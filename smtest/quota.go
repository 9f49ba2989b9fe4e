package smtest

import (
	"maps"
	"net/http"
	"strings"
	"sync"
	"time"
)

// A request quota, as AWS enforces one per account and region: requests
// beyond it are refused with ThrottlingException, and every request is
// attributed to the client that signed it, so that a test or a demo with
// many processes can tell who asked how often.

// quotaOps are the operations the quota governs. AWS meters GetSecretValue
// and DescribeSecret together ("combined rate of DescribeSecret and
// GetSecretValue API requests", 10,000 per second per account and region);
// the other operations have quotas of their own that the server does not
// enforce.
var quotaOps = map[string]bool{"GetSecretValue": true, "DescribeSecret": true}

// quota is the server's token bucket and its per-client counters. Its
// mutex is its own: admit runs on every request and never takes the
// server's.
type quota struct {
	mu        sync.Mutex
	rate      float64   // tokens per second; 0: no quota
	burst     float64   // the bucket's size
	tokens    float64   // what the bucket holds at last
	last      time.Time // when tokens was last brought up to date
	throttled int
	clients   map[string]*ClientCount
}

// ClientCount is what one client asked of the server: its requests per
// operation and how many of them the quota refused. See
// [Server.ClientCounts].
type ClientCount struct {
	// Calls counts requests per operation ("GetSecretValue"), throttled
	// ones included; each retry attempt of the SDK is a request.
	Calls map[string]int
	// Throttled counts the requests refused with ThrottlingException for
	// the quota set with [Server.SetQuota] (not those a Throttle fault
	// answered).
	Throttled int
}

// SetQuota makes the server enforce a request quota of perSecond requests
// per second over all clients together, as AWS does per account and
// region. It governs GetSecretValue and DescribeSecret, which AWS meters
// together; other operations are never throttled by it.
//
// The quota is a token bucket: it holds up to one second's worth of
// requests (perSecond, at least 1), starts full, and refills at perSecond
// by the server's clock (see [WithClock]; a clock that stands still never
// refills it). A request that finds a token takes it and is served,
// whatever it then answers (faults included); one that finds none is
// answered HTTP 400 ThrottlingException "Rate exceeded", exactly as a
// [Throttle] fault answers, and takes nothing, so a client that keeps
// retrying is served again once the rate allows. Throttled requests are
// counted by [Server.Calls] like every request, and by [Server.Throttled]
// and [Server.ClientCounts]. The quota comes before injected faults: a
// throttled request uses up none of a fault's Times.
//
// Note that the AWS SDK retries ThrottlingException itself (its standard
// retryer makes up to 3 attempts, with backoff), so one SDK call can be
// several throttled requests; the counters count requests.
//
// SetQuota replaces any earlier quota and refills the bucket; perSecond
// <= 0 removes the quota. It is safe to call while requests are served.
func (s *Server) SetQuota(perSecond float64) {
	q := &s.quota
	q.mu.Lock()
	defer q.mu.Unlock()
	if perSecond <= 0 {
		q.rate, q.burst, q.tokens = 0, 0, 0
		return
	}
	q.rate = perSecond
	q.burst = max(1, perSecond)
	q.tokens = q.burst
	q.last = s.now()
}

// Quota returns the request quota set with [Server.SetQuota], in requests
// per second; 0 if there is none.
func (s *Server) Quota() float64 {
	s.quota.mu.Lock()
	defer s.quota.mu.Unlock()
	return s.quota.rate
}

// Throttled returns how many requests the quota set with [Server.SetQuota]
// refused since the server started or since the last [Server.ResetCalls].
// Requests answered by an injected [Throttle] fault are not included.
func (s *Server) Throttled() int {
	s.quota.mu.Lock()
	defer s.quota.mu.Unlock()
	return s.quota.throttled
}

// ClientCounts returns, per client, the requests it made and how many of
// them the quota refused, since the server started or since the last
// [Server.ResetCalls]. A client is the access key id of the request's
// SigV4 signature (the Credential= part of its Authorization header): give
// each process of a fleet its own AWS_ACCESS_KEY_ID to tell them apart
// (without [WithAccessKeyID] the server accepts any). Only signed requests
// of known operations are counted here; [Server.Calls] counts every
// request. The result is a copy.
func (s *Server) ClientCounts() map[string]ClientCount {
	q := &s.quota
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make(map[string]ClientCount, len(q.clients))
	for id, c := range q.clients {
		out[id] = ClientCount{Calls: maps.Clone(c.Calls), Throttled: c.Throttled}
	}
	return out
}

// admit counts one request of op from client and reports whether the
// quota lets it through.
func (s *Server) admit(op, client string) bool {
	q := &s.quota
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.clients == nil {
		q.clients = map[string]*ClientCount{}
	}
	c := q.clients[client]
	if c == nil {
		c = &ClientCount{Calls: map[string]int{}}
		q.clients[client] = c
	}
	c.Calls[op]++
	if q.rate == 0 || !quotaOps[op] {
		return true
	}
	now := s.now()
	if elapsed := now.Sub(q.last); elapsed > 0 {
		q.tokens = min(q.burst, q.tokens+elapsed.Seconds()*q.rate)
		q.last = now
	}
	if q.tokens >= 1 {
		q.tokens--
		return true
	}
	q.throttled++
	c.Throttled++
	return false
}

// resetCounts zeroes the counters (not the bucket).
func (q *quota) resetCounts() {
	q.mu.Lock()
	q.throttled = 0
	q.clients = nil
	q.mu.Unlock()
}

// accessKeyID returns the access key id a SigV4-signed request names
// ("AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/secretsmanager/
// aws4_request, ..."); "" if there is none.
func accessKeyID(r *http.Request) string {
	_, cred, ok := strings.Cut(r.Header.Get("Authorization"), "Credential=")
	if !ok {
		return ""
	}
	akid, _, _ := strings.Cut(cred, "/")
	return akid
}
