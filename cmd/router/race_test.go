//go:build race

package main

// raceEnabled: the tests run under the race detector, which multiplies
// what each goroutine costs in memory.
const raceEnabled = true
