// Package smtest runs an in-process fake of AWS Secrets Manager for tests.
//
// The server speaks the real Secrets Manager wire protocol (AWS JSON 1.1 over
// HTTP on 127.0.0.1), so the unmodified AWS SDK for Go v2 — and anything built
// on it, such as the pgsecrets driver — talks to it exactly as it would talk to
// AWS. It implements CreateSecret, GetSecretValue, PutSecretValue,
// UpdateSecretVersionStage, DescribeSecret, ListSecrets (filters and
// pagination), ListSecretVersionIds, GetRandomPassword, RotateSecret,
// CancelRotateSecret, DeleteSecret and RestoreSecret, with AWS's
// staging-label rules (AWSCURRENT, AWSPENDING, AWSPREVIOUS), lookup by name,
// full ARN or partial ARN, and AWS's error codes. It also counts requests and
// can inject faults (errors, throttling, denial, delays, hanging requests),
// which makes rotation, outages and retries easy to reproduce.
//
// RotateSecret runs a Go function set with [Server.OnRotate] in place of the
// rotation Lambda, before it answers, so a rotation library can be tested end
// to end through the SDK. The command github.com/pgsecrets/pgsecrets/cmd/smtest
// serves the same fake to other languages and the AWS CLI.
//
// Where the protocol leaves a choice, the server follows AWS rather than
// other fakes: requests without an Authorization header get 403
// MissingAuthenticationTokenException; parameters that break the API model's
// limits (a ClientRequestToken outside 32–64 characters, PasswordLength
// outside 1–4096, MaxResults outside 1–100) get ValidationException, which
// the SDK has no type for; raw HTTP writes without a ClientRequestToken are
// refused. The Go methods accept any version id. conformance_test.go lists
// where moto, run side by side when installed, behaves otherwise.
//
// Testing an application that uses pgsecrets takes three steps: start a
// server, create the secret, and point the SDK at the server:
//
//	func TestApp(t *testing.T) {
//		sm := smtest.Start(t) // closed automatically when the test ends
//		sm.CreateSecret("prod/app/db", `{"username":"app","password":"s3cret"}`)
//		sm.SetEnv(t) // config.LoadDefaultConfig now resolves to sm
//
//		db, err := sql.Open("pgsecrets",
//			"postgres://localhost:5432/app?secret_id=prod/app/db")
//		// ...
//	}
//
// Instead of SetEnv, which changes the process environment and so cannot be
// used in parallel tests, the DSN can name the endpoint itself with the key
// secret_endpoint=<URL> (use [Server.URL]); credentials and region must then
// still be resolvable by the SDK. [Server.Client] returns a ready SDK client
// (and [Server.AWSConfig] an aws.Config) for code that accepts one or for
// tests that call Secrets Manager directly, and [Server.Environ] gives the
// same settings as environment entries for a child process.
//
// Rotation can be simulated from the test, without any HTTP round trip:
//
//	v, _ := sm.PutSecretValue("prod/app/db", newJSON, "AWSPENDING")
//	// ... change the password in the database ...
//	sm.UpdateStage("prod/app/db", "AWSCURRENT", v, "")
//
// Faults are injected per operation and optionally per secret:
//
//	remove := sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Throttle, Times: 2})
//	defer remove()
//
// [Server.Calls] and [Server.WaitCalls] count requests per operation, so a
// test can assert how often the application asked, or wait until a request
// has arrived instead of sleeping.
//
// [Server.SetQuota] enforces a request quota over all clients, as AWS does
// per account and region (requests beyond it get ThrottlingException), and
// [Server.ClientCounts] tells clients apart by the access key id they sign
// with, so a test can run a fleet of processes against one server and see
// who asked how often.
//
// All methods of [Server] are safe for concurrent use.
package smtest
