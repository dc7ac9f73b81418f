package delivery_test

import (
	"strings"
	"testing"

	"github.com/herald-push/herald/delivery"
)

func TestTopicAllowed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		topic    string
		patterns []string
		want     bool
	}{
		{"orders", nil, false},
		{"orders", []string{}, false},
		{"orders", []string{"orders"}, true},
		{"orders", []string{"order"}, false},
		{"orders.eu", []string{"orders"}, false},
		{"orders", []string{"*"}, true},
		{"anything.at.all", []string{"*"}, true},
		{"orders.eu", []string{"orders.*"}, true},
		{"orders.eu.paid", []string{"orders.*"}, true},
		{"orders", []string{"orders.*"}, false},
		{"ordersx", []string{"orders.*"}, false},
		{"ordersx.eu", []string{"orders.*"}, false},
		{"orders.eu", []string{"orders*"}, false}, // "*" suffix without the dot is not a prefix pattern
		{"orders.*", []string{"orders.*"}, true},  // the pattern as a name matches itself
		{"billing", []string{"orders.*", "billing"}, true},
		{"billing.x", []string{"orders.*", "billing"}, false},
		{"a.b.c", []string{"a.b.*"}, true},
		{"a.bc", []string{"a.b.*"}, false},
	} {
		t.Run(tc.topic+"/"+strings.Join(tc.patterns, ","), func(t *testing.T) {
			if got := delivery.TopicAllowed(tc.topic, tc.patterns); got != tc.want {
				t.Errorf("TopicAllowed(%q, %q) = %v, want %v", tc.topic, tc.patterns, got, tc.want)
			}
		})
	}
}
