// Command rotation is the pgsecrets rotation function for AWS Lambda
// (runtime provided.al2023, handler "bootstrap"): build it with
//
//	GOOS=linux GOARCH=arm64 go build -tags lambda.norpc -o bootstrap ./cmd/rotation
package main

import (
	"context"
	"log"

	awslambda "github.com/aws/aws-lambda-go/lambda"

	"github.com/pgsecrets/pgsecrets/lambda"
)

func main() {
	r, err := lambda.NewRotator(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	awslambda.Start(lambda.Handler(r))
}
