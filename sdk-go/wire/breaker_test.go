package wire

import (
	"testing"
	"time"
)

func TestBreaker(t *testing.T) {
	b := NewBreaker(3, time.Second)
	now := time.Unix(1000, 0)
	for i := 0; i < 2; i++ {
		if ok, _ := b.Allow(now); !ok {
			t.Fatal("closed breaker refused")
		}
		b.Record(false, now)
	}
	if _, _, c := b.Stats(now); c != "closed" {
		t.Fatalf("after 2 failures: %s", c)
	}
	b.Allow(now)
	b.Record(false, now) // third consecutive failure opens it
	if ok, why := b.Allow(now.Add(500 * time.Millisecond)); ok || why == "" {
		t.Fatal("open breaker let a call through")
	}
	// Half-open: exactly one probe.
	later := now.Add(1100 * time.Millisecond)
	if ok, _ := b.Allow(later); !ok {
		t.Fatal("no probe after the cool-down")
	}
	if ok, _ := b.Allow(later); ok {
		t.Fatal("two probes at once")
	}
	b.Record(false, later) // failed probe: cool-down doubles
	if ok, _ := b.Allow(later.Add(1500 * time.Millisecond)); ok {
		t.Fatal("cool-down did not double")
	}
	probe := later.Add(2100 * time.Millisecond)
	if ok, _ := b.Allow(probe); !ok {
		t.Fatal("no probe after the doubled cool-down")
	}
	b.Record(true, probe)
	if ok, _ := b.Allow(probe); !ok {
		t.Fatal("a successful probe did not close the circuit")
	}
	calls, failures, c := b.Stats(probe)
	if calls != 5 || failures != 4 || c != "closed" {
		t.Fatalf("stats = %d calls, %d failures, %s", calls, failures, c)
	}
}
