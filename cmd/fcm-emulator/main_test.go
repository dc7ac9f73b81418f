package main

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/herald-push/herald/fcm/fcmtest"
)

// TestDocsShowDevAddr: docs/fcm-emulator.md gives -addr's default as
// fcmtest.DevAddr, and every loopback address it shows is that one.
func TestDocsShowDevAddr(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../../docs/fcm-emulator.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	if row := "| `-addr` | `" + fcmtest.DevAddr + "` |"; !strings.Contains(doc, row) {
		t.Errorf("docs/fcm-emulator.md has no flag row %q", row)
	}
	for _, addr := range regexp.MustCompile(`127\.0\.0\.1:\d+`).FindAllString(doc, -1) {
		if addr != fcmtest.DevAddr {
			t.Errorf("docs/fcm-emulator.md shows %s, want the default %s", addr, fcmtest.DevAddr)
		}
	}
}
