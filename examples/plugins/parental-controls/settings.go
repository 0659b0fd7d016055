package main

import (
	"context"
	"sync"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
)

// ownerSettings are the global settings (settings/global.json): the
// server owner's.
type ownerSettings struct {
	Limits    map[string]string `json:"limits"`    // user id → maximum rating
	Anonymous string            `json:"anonymous"` // requests without a user
}

// userSettings are each user's own (settings/user.json).
type userSettings struct {
	MaxRating string `json:"max_rating"` // "" for no limit of their own
}

// limits caches the settings: the owner's, and each user's own, each read
// when first needed and forgotten when the daemon says it changed (so a
// change applies from the next request). Safe for concurrent use.
type limits struct {
	s *plugin.Settings

	mu     sync.Mutex
	gen    uint64           // counts changes: a read that raced one is not cached
	global *ownerSettings   // nil: read again
	users  map[int64]string // user → their own max_rating
}

// changed forgets what a change made stale; it is the OnChange handler.
func (l *limits) changed(scope string, user int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.gen++
	switch scope {
	case "global":
		l.global = nil
	case "user":
		delete(l.users, user)
	default: // a scope this version does not know: forget everything
		l.global, l.users = nil, map[int64]string{}
	}
}

// owner returns the owner's settings.
func (l *limits) owner(ctx context.Context) (ownerSettings, error) {
	l.mu.Lock()
	cached, gen := l.global, l.gen
	l.mu.Unlock()
	if cached != nil {
		return *cached, nil
	}
	var o ownerSettings
	if err := l.s.Global(ctx, &o); err != nil {
		return ownerSettings{}, err
	}
	l.mu.Lock()
	if l.gen == gen {
		l.global = &o
	}
	l.mu.Unlock()
	return o, nil
}

// own returns the limit user set for themselves, "" for none.
func (l *limits) own(ctx context.Context, user int64) (string, error) {
	l.mu.Lock()
	limit, ok := l.users[user]
	gen := l.gen
	l.mu.Unlock()
	if ok {
		return limit, nil
	}
	var u userSettings
	if err := l.s.User(ctx, user, &u); err != nil {
		return "", err
	}
	l.mu.Lock()
	if l.gen == gen {
		l.users[user] = u.MaxRating
	}
	l.mu.Unlock()
	return u.MaxRating, nil
}
