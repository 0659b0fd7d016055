// Package testwait is the SDK tests' one way to wait for a condition:
// polling with a deadline instead of sleeping and hoping.
package testwait

import (
	"testing"
	"time"
)

// Until polls cond every millisecond until it holds, failing the test
// after 5 s with what it waited for.
func Until(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
