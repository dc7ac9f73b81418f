package router_test

import (
	"encoding/json"
	"fmt"

	"github.com/herald-push/herald/router"
)

// A callers file holds the hash of each caller's API key, never the key
// itself: HashKey computes it (heraldctl hash-key prints the same).
func ExampleHashKey() {
	hash := router.HashKey("abc")
	fmt.Println(hash)

	entry, _ := json.Marshal(router.CallerConfig{Name: "orders-service", KeySHA256: hash, Topics: []string{"orders.*"}})
	fmt.Println(string(entry))
	// Output:
	// ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
	// {"name":"orders-service","key_sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","topics":["orders.*"]}
}
