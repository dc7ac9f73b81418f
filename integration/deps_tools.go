//go:build tools

package integration

import (
	_ "firebase.google.com/go/v4/messaging"
	_ "github.com/segmentio/kafka-go"
	_ "github.com/twmb/franz-go/pkg/kfake"
	_ "google.golang.org/api/option"
)
