package smtest_test

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/aws/smithy-go"

	"github.com/pgsecrets/pgsecrets/smtest"
)

// A secret created on the server is read back with the real SDK client.
// In a test, use smtest.Start(t) instead of NewServer and Close.
func Example() {
	sm := smtest.NewServer()
	defer sm.Close()
	sm.CreateSecret("prod/app/db", `{"username":"app","password":"s3cret"}`)

	client := sm.Client()
	out, err := client.GetSecretValue(context.Background(), &secretsmanager.GetSecretValueInput{
		SecretId: aws.String("prod/app/db"),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(aws.ToString(out.SecretString))
	fmt.Println(out.VersionStages)
	fmt.Println(sm.Calls("GetSecretValue"))
	// Output:
	// {"username":"app","password":"s3cret"}
	// [AWSCURRENT]
	// 1
}

// A rotation as AWS's rotation function performs it: the new value is put
// under AWSPENDING, then AWSCURRENT moves to it and the old version becomes
// AWSPREVIOUS.
func ExampleServer_PutSecretValue() {
	sm := smtest.NewServer()
	defer sm.Close()
	sm.CreateSecret("db", `{"username":"app","password":"old"}`)
	oldID, _, _ := sm.Version("db", smtest.StageCurrent)

	newID, err := sm.PutSecretValue("db", `{"username":"app","password":"new"}`, smtest.StagePending)
	if err != nil {
		fmt.Println(err)
		return
	}
	_, current, _ := sm.Version("db", smtest.StageCurrent)
	fmt.Println("during rotation:", current)

	// What the rotation function's finishSecret step sends.
	ctx := context.Background()
	_, err = sm.Client().UpdateSecretVersionStage(ctx, &secretsmanager.UpdateSecretVersionStageInput{
		SecretId:            aws.String("db"),
		VersionStage:        aws.String(smtest.StageCurrent),
		MoveToVersionId:     aws.String(newID),
		RemoveFromVersionId: aws.String(oldID),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	_, current, _ = sm.Version("db", smtest.StageCurrent)
	fmt.Println("after rotation:", current)
	stages := sm.Stages("db")
	fmt.Println("new version:", stages[newID])
	fmt.Println("old version:", stages[oldID])
	// Output:
	// during rotation: {"username":"app","password":"old"}
	// after rotation: {"username":"app","password":"new"}
	// new version: [AWSCURRENT AWSPENDING]
	// old version: [AWSPREVIOUS]
}

// Faults make the server fail the way AWS does; the SDK sees the same
// errors and retries the same ones.
func ExampleServer_Inject() {
	sm := smtest.NewServer()
	defer sm.Close()
	sm.CreateSecret("db", "value")
	ctx := context.Background()
	in := &secretsmanager.GetSecretValueInput{SecretId: aws.String("db")}

	// The SDK retries throttling: two throttled attempts, then success.
	sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Throttle, Times: 2})
	out, err := sm.Client(smtest.FastRetries(3)).GetSecretValue(ctx, in)
	fmt.Println(aws.ToString(out.SecretString), err, sm.Calls("GetSecretValue"))

	// Access denied is not retried.
	sm.ResetCalls()
	remove := sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.Deny, SecretID: "db"})
	_, err = sm.Client().GetSecretValue(ctx, in)
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		fmt.Println(apiErr.ErrorCode(), sm.Calls("GetSecretValue"))
	}
	remove()

	// Modelled errors arrive as the SDK's typed errors.
	sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.DecryptionFailure, Times: 1})
	_, err = sm.Client().GetSecretValue(ctx, in)
	var decErr *types.DecryptionFailure
	fmt.Println(errors.As(err, &decErr))
	// Output:
	// value <nil> 3
	// AccessDeniedException 1
	// true
}

// WaitCalls tells a test that a request has reached the server, here one
// that the server holds until the client gives up.
func ExampleServer_WaitCalls() {
	sm := smtest.NewServer()
	defer sm.Close()
	sm.CreateSecret("db", "value")
	sm.Inject("GetSecretValue", smtest.Fault{Kind: smtest.HangUntilCancel, Times: 1})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := sm.Client(smtest.NoRetries).GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{
			SecretId: aws.String("db"),
		})
		done <- err
	}()

	if err := sm.WaitCalls(context.Background(), "GetSecretValue", 1); err != nil {
		fmt.Println(err)
		return
	}
	cancel() // the request is hanging; give up on it
	fmt.Println(errors.Is(<-done, context.Canceled))
	// Output:
	// true
}

// Environ gives a child process the settings that make the SDK's default
// configuration reach the server.
func ExampleServer_Environ() {
	sm := smtest.NewServer(smtest.WithRegion("eu-central-1"))
	defer sm.Close()
	for _, kv := range sm.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "AWS_REGION", "AWS_EC2_METADATA_DISABLED":
			fmt.Println(kv)
		case "AWS_ENDPOINT_URL_SECRETS_MANAGER":
			fmt.Println(k, v == sm.URL())
		}
	}
	// Output:
	// AWS_EC2_METADATA_DISABLED=true
	// AWS_ENDPOINT_URL_SECRETS_MANAGER true
	// AWS_REGION=eu-central-1
}
