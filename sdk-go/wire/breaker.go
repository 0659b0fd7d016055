package wire

import (
	"fmt"
	"sync"
	"time"
)

// Breaker is the circuit breaker of one plugin hook. After a run of
// consecutive failures (timeouts, errors, rejected results) it opens: calls
// fail at once, without IPC, for a cool-down that doubles on every failed
// probe. When the cool-down ends, one call goes through as a probe; its
// success closes the circuit. Unavailability (the plugin not running) is not
// counted: the supervisor deals with that.
//
// It also keeps the hook's call and failure counts for `dimplugctl inspect`.
type Breaker struct {
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

// NewBreaker returns a closed breaker that opens after threshold
// consecutive failures, for cooldown (doubling per failed probe, up to 32
// times). It is safe for concurrent use.
func NewBreaker(threshold int, cooldown time.Duration) *Breaker {
	return &Breaker{threshold: threshold, minCooldown: cooldown, maxCooldown: 32 * cooldown}
}

// Allow reports whether a call may go through now, and if not, why.
func (b *Breaker) Allow(now time.Time) (bool, string) {
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

// Record counts the outcome of a call that allow let through.
func (b *Breaker) Record(ok bool, now time.Time) {
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

// Release undoes Allow for a call that never reached the plugin.
func (b *Breaker) Release() {
	b.mu.Lock()
	b.probing = false
	b.mu.Unlock()
}

// Add counts calls made elsewhere (a host's direct lane) without changing
// the circuit's state.
func (b *Breaker) Add(calls, failures uint64) {
	b.mu.Lock()
	b.calls += calls
	b.failures += failures
	b.mu.Unlock()
}

// Stats returns the counts and the circuit's state in words.
func (b *Breaker) Stats(now time.Time) (calls, failures uint64, circuit string) {
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
