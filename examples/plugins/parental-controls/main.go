// Command parental-controls is an example dimplugd plugin that keeps
// restricted users — children, and anyone not logged in — away from media
// rated above their limit.
//
// It learns each media item's content rating from Dim's own answers (library
// listings and media pages) and then, before Dim answers, refuses media pages
// and stream manifests above the user's limit with 403. It also hides such
// items from the library listings and dashboard rows restricted users see.
// Media whose rating it does not know, or whose rating is not on its scale
// ("NR"), count as too high for restricted users: when in doubt, it denies.
//
// Limits are the plugin's settings. The server owner sets each restricted
// user's limit and the limit of requests without a login (global settings:
// dimplugctl config set parental-controls ...); each user may set a
// stricter limit for themselves (user settings, in Dim's Preferences tab).
// A change applies from the next request, without a restart.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
)

// levels orders the ratings the plugin understands: MPA film ratings and
// US TV parental guidelines. Anything else is unknown.
var levels = map[string]int{
	"G": 1, "TV-Y": 1, "TV-G": 1,
	"PG": 2, "TV-Y7": 2, "TV-PG": 2,
	"PG-13": 3, "TV-14": 3,
	"R": 4, "TV-MA": 4,
	"NC-17": 5,
}

type parental struct {
	host   *plugin.Host
	limits *limits

	mu      sync.Mutex
	ratings map[string]string // media id → rating, as Dim reported it
}

func (p *parental) Init(ctx context.Context, h *plugin.Host) error {
	if h.Settings == nil {
		return errors.New("no settings granted: this plugin needs a dimplugd that serves plugin settings (manifest [settings])")
	}
	p.host = h
	p.ratings = map[string]string{}
	p.limits = &limits{s: h.Settings, users: map[int64]string{}}
	if err := h.Settings.OnChange(ctx, func(scope string, user int64) {
		p.limits.changed(scope, user)
		h.Log.Info("settings changed", "scope", scope, "user", user)
	}); err != nil {
		return err
	}
	owner, err := p.limits.owner(ctx)
	if err != nil {
		return err
	}
	if err := load(ctx, h.KV, "rating/", p.ratings); err != nil {
		return err
	}
	if err := warnOldLimits(ctx, h); err != nil {
		return err
	}
	h.Log.Info("parental-controls ready", "limits", len(owner.Limits), "anonymous", owner.Anonymous, "known_ratings", len(p.ratings))
	return nil
}

// warnOldLimits tells the operator about limits that version 1 kept in the
// key-value store ("limit/<user>"), which are no longer read.
func warnOldLimits(ctx context.Context, h *plugin.Host) error {
	old := map[string]string{}
	if err := load(ctx, h.KV, "limit/", old); err != nil || len(old) == 0 {
		return err
	}
	users := map[string]string{}
	for u, l := range old {
		if u != "anonymous" {
			users[u] = l
		}
	}
	b, _ := json.Marshal(users)
	cmd := fmt.Sprintf("dimplugctl config set parental-controls 'limits=%s'", b)
	if l, ok := old["anonymous"]; ok {
		cmd += " anonymous=" + l
	}
	h.Log.Warn("limits kept in the key-value store by version 1 are not used: limits are settings now",
		"old_limits", fmt.Sprint(old), "set_with", cmd)
	return nil
}

// load reads every key under prefix into m, keyed without the prefix.
func load(ctx context.Context, kv *plugin.KV, prefix string, m map[string]string) error {
	keys, err := kv.List(ctx, prefix, 0)
	if err != nil {
		return err
	}
	for _, k := range keys {
		v, ok, err := kv.Get(ctx, k)
		if err != nil {
			return err
		}
		if ok {
			m[strings.TrimPrefix(k, prefix)] = string(v)
		}
	}
	return nil
}

func userKey(req *plugin.Request) string {
	if !req.Authenticated || req.UserID <= 0 {
		return "anonymous"
	}
	return strconv.FormatInt(req.UserID, 10)
}

// limitOf returns the maximum rating of the request's user, the stricter
// of the owner's limit and the user's own; "" means unrestricted. Requests
// without a user get the owner's limit for anonymous requests.
func (p *parental) limitOf(ctx context.Context, req *plugin.Request) (string, error) {
	owner, err := p.limits.owner(ctx)
	if err != nil {
		return "", err
	}
	who := userKey(req)
	if who == "anonymous" {
		return owner.Anonymous, nil
	}
	own, err := p.limits.own(ctx, req.UserID)
	if err != nil {
		return "", err
	}
	return stricter(owner.Limits[who], own), nil
}

// stricter returns the lower of two limits; "" is no limit.
func stricter(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	case levels[b] < levels[a]:
		return b
	}
	return a
}

func (p *parental) ratingOf(id string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ratings[id]
}

// allowed reports whether a user with limit ("" for none) may see media
// rated rating ("" when unknown).
func allowed(limit, rating string) bool {
	if limit == "" {
		return true
	}
	r, ok := levels[normalize(rating)]
	return ok && r <= levels[limit]
}

func normalize(rating string) string { return strings.ToUpper(strings.TrimSpace(rating)) }

// learn records the rating Dim reported for a media item.
func (p *parental) learn(ctx context.Context, id, rating string) error {
	if id == "" || rating == "" {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock() // held across the write: hooks run concurrently
	if p.ratings[id] == rating {
		return nil
	}
	p.ratings[id] = rating
	return p.host.KV.Set(ctx, "rating/"+id, []byte(rating))
}

// HookRequest guards GET /api/v1/media/:id and GET /api/v1/stream/:id/manifest.
func (p *parental) HookRequest(ctx context.Context, hook string, req *plugin.Request) (*plugin.Response, error) {
	limit, err := p.limitOf(ctx, req)
	if err != nil {
		return nil, err
	}
	id := req.Param("id")
	rating := p.ratingOf(id)
	if allowed(limit, rating) {
		return nil, nil
	}
	shown := rating
	if shown == "" {
		shown = "unknown"
	}
	p.host.Log.Info("denied", "hook", hook, "user", userKey(req), "media", id, "rating", shown, "limit", limit)
	var mediaID any = id
	if n, err := strconv.ParseInt(id, 10, 64); err == nil {
		mediaID = n // Dim's ids are numbers
	}
	return jsonResponse(http.StatusForbidden, map[string]any{
		"error":    "blocked by parental controls",
		"media_id": mediaID,
		"rating":   shown,
		"limit":    limit,
	}), nil
}

// Observe learns ratings from the media pages Dim serves.
func (p *parental) Observe(ctx context.Context, hook string, req *plugin.Request, resp *plugin.Response) {
	if resp.Status != http.StatusOK {
		return
	}
	var m struct {
		ID     json.Number `json:"id"`
		Rating string      `json:"rating"`
	}
	if json.Unmarshal(resp.Body, &m) != nil {
		return
	}
	if err := p.learn(ctx, m.ID.String(), m.Rating); err != nil {
		p.host.Log.Warn("could not store rating", "media", m.ID, "err", err)
	}
}

// cardRows is the shape of Dim's library listings and dashboard: a map of
// title → cards.
type cardRows map[string][]map[string]any

// HookResponse learns ratings from library listings and hides what
// restricted users may not see from listings and dashboard rows.
func (p *parental) HookResponse(ctx context.Context, hook string, req *plugin.Request, resp *plugin.Response) error {
	if resp.Status != http.StatusOK {
		return nil
	}
	var rows cardRows
	dec := json.NewDecoder(bytes.NewReader(resp.Body))
	dec.UseNumber() // keep ids exactly as Dim wrote them
	if dec.Decode(&rows) != nil {
		return nil
	}
	for _, cards := range rows {
		for _, c := range cards {
			if r, ok := c["rating"].(string); ok {
				if err := p.learn(ctx, fmt.Sprint(c["id"]), r); err != nil {
					return err
				}
			}
		}
	}
	limit, err := p.limitOf(ctx, req)
	if err != nil || limit == "" {
		return err
	}
	hidden := 0
	for title, cards := range rows {
		kept := cards[:0]
		for _, c := range cards {
			if allowed(limit, p.ratingOf(fmt.Sprint(c["id"]))) {
				kept = append(kept, c)
			} else {
				hidden++
			}
		}
		if len(kept) == 0 && hook == "filter-dashboard" {
			delete(rows, title) // an empty dashboard row is noise; an empty library is not
		} else {
			rows[title] = kept
		}
	}
	if hidden == 0 {
		return nil
	}
	body, err := json.Marshal(rows)
	if err != nil {
		return err
	}
	resp.Body = body
	resp.Header.Set("X-Parental-Controls", fmt.Sprintf("hid %d item(s) above %s", hidden, limit))
	return nil
}

func jsonResponse(status int, v any) *plugin.Response {
	b, _ := json.Marshal(v)
	return &plugin.Response{Status: status, Header: http.Header{"Content-Type": {"application/json"}}, Body: b}
}

func main() {
	if err := plugin.Serve(&parental{}, plugin.WithVersion("2.0.0")); err != nil {
		fmt.Fprintln(os.Stderr, "parental-controls:", err)
		os.Exit(1)
	}
}
