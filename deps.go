package pgsecrets

import (
	_ "github.com/aws/aws-sdk-go-v2/aws"
	_ "github.com/aws/aws-sdk-go-v2/config"
	_ "github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	_ "github.com/aws/smithy-go"
	_ "github.com/lib/pq"
	_ "github.com/sony/gobreaker/v2"
	_ "golang.org/x/sync/singleflight"
)
