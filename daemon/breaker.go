package daemon

import (
	"fmt"
	"sync"
	"time"
)

// breaker is the circuit breaker of one plugin hook. After a run of
// consecutive failures (timeouts, errors, rejected results) it opens: calls
// fail at once, without IPC, for a cool-down that doubles on every failed
// probe. When the cool-down ends, one call goes through as a probe; its
// success closes the circuit. Unavailability (the plugin not running) is not
// counted: the supervisor deals with that.
//
// It also keeps the hook's call and failure counts for `dimplugctl inspect`.
type breaker struct {
	threshold   int
	minCooldown time.Duration
	maxCooldown time.Duration

	mu          sync.Mutex
	calls       uint64
	failures    uint64
	consecutive int
	cooldown    time.Duration
	openUntil   time.Time // zero: closed
	probing     bool
}

func newBreaker(threshold int, cooldown time.Duration) *breaker {
	return &breaker{threshold: threshold, minCooldown: cooldown, maxCooldown: 32 * cooldown}
}

// allow reports whether a call may go through now, and if not, why.
func (b *breaker) allow(now time.Time) (bool, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.openUntil.IsZero() {
		return true, ""
	}
	if now.Before(b.openUntil) {
		return false, fmt.Sprintf("is not being called: its circuit breaker opened after %d consecutive failures (next probe in %s)",
			b.consecutive, b.openUntil.Sub(now).Round(time.Millisecond))
	}
	if b.probing {
		return false, "is not being called: its circuit breaker is probing it with another request"
	}
	b.probing = true
	return true, ""
}

// record counts the outcome of a call that allow let through.
func (b *breaker) record(ok bool, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls++
	b.probing = false
	if ok {
		b.consecutive, b.cooldown, b.openUntil = 0, 0, time.Time{}
		return
	}
	b.failures++
	b.consecutive++
	if b.consecutive >= b.threshold {
		switch {
		case b.cooldown == 0:
			b.cooldown = b.minCooldown
		case b.cooldown < b.maxCooldown:
			b.cooldown *= 2
		}
		b.openUntil = now.Add(b.cooldown)
	}
}

// release undoes allow for a call that never reached the plugin.
func (b *breaker) release() {
	b.mu.Lock()
	b.probing = false
	b.mu.Unlock()
}

// stats returns the counts and the circuit's state in words.
func (b *breaker) stats(now time.Time) (calls, failures uint64, circuit string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.openUntil.IsZero():
		circuit = "closed"
	case now.Before(b.openUntil):
		circuit = "open"
	default:
		circuit = "half-open"
	}
	return b.calls, b.failures, circuit
}
