package history

import "github.com/herald-push/herald/delivery"

// Hooks for the external tests of history epochs.

// EpochKey is the epoch key of s's hash slot under prefix.
func EpochKey(prefix string, s delivery.Stream) string { return epochKey(prefix, s) }
