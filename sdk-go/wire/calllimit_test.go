package wire

import (
	"sync/atomic"
	"testing"
	"time"
)

// TestCallLimit: acquire waits while the count or the bytes are at their
// bounds, and a call larger than the byte bound runs alone.
func TestCallLimit(t *testing.T) {
	l := newCallLimit(2, 100)
	l.acquire(10)
	l.acquire(10)
	var third atomic.Bool
	done := make(chan struct{})
	go func() { l.acquire(10); third.Store(true); close(done) }()
	time.Sleep(50 * time.Millisecond) // give it the chance to get through wrongly
	if third.Load() {
		t.Fatal("a third call got in with two in flight and a bound of 2")
	}
	l.release(10)
	<-done
	l.release(10)
	l.release(10)

	l.acquire(60)
	big := make(chan struct{})
	go func() { l.acquire(500); close(big) }() // over the byte bound: waits until alone
	select {
	case <-big:
		t.Fatal("a 500-byte call got in beside a 60-byte one with a bound of 100")
	case <-time.After(50 * time.Millisecond):
	}
	l.release(60)
	<-big
	l.release(500)
	if l.n != 0 || l.bytes != 0 {
		t.Fatalf("after all releases: %d calls, %d bytes", l.n, l.bytes)
	}
}
