// Command rotation is the pgsecrets rotation function for AWS Lambda
// (runtime provided.al2023, handler "bootstrap"): build it with
//
//	GOOS=linux GOARCH=arm64 go build -tags lambda.norpc -o bootstrap ./cmd/rotation
//
// It does not start without PGSECRETS_ALLOWED_SECRETS (see README.md).
package main

import (
	"context"
	"log"

	awslambda "github.com/aws/aws-lambda-go/lambda"

	"github.com/pgsecrets/pgsecrets/lambda"
)

func main() {
	h, err := lambda.NewHandler(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	awslambda.Start(h)
}
