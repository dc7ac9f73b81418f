package delivery

// Hooks for the external tests of history epochs.

// EpochKey is the epoch key of s's hash slot under prefix.
func EpochKey(prefix string, s Stream) string { return epochKey(prefix, s) }
