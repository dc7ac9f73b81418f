package fcmtest

import (
	"context"
	"fmt"

	firebase "firebase.google.com/go/v4"
	"firebase.google.com/go/v4/messaging"
	"google.golang.org/api/option"
)

// NewClient returns the real firebase-admin-go messaging client, sending to
// endpoint (an emulator's Endpoint) without credentials, as project. The
// project must be given: without it firebase.NewApp would look for one in
// credentials and the environment. opts are added to the client's options,
// for example option.WithHTTPClient.
func NewClient(ctx context.Context, endpoint, project string, opts ...option.ClientOption) (*messaging.Client, error) {
	if project == "" {
		return nil, fmt.Errorf("fcmtest: a project is required")
	}
	opts = append([]option.ClientOption{option.WithEndpoint(endpoint), option.WithoutAuthentication()}, opts...)
	app, err := firebase.NewApp(ctx, &firebase.Config{ProjectID: project}, opts...)
	if err != nil {
		return nil, fmt.Errorf("fcmtest: %w", err)
	}
	c, err := app.Messaging(ctx)
	if err != nil {
		return nil, fmt.Errorf("fcmtest: %w", err)
	}
	return c, nil
}
