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
// Limits live in the plugin's key-value store ("limit/<user id>",
// "limit/anonymous"), seeded on first start with user 2 at PG and anonymous
// requests at PG-13, and are managed through the plugin's own routes under
// /api/v1/plugins/parental-controls/limits/.
package main

import (
	"bytes"
	"context"
	"encoding/json"
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

// defaultLimits are written to the store on first start.
var defaultLimits = map[string]string{
	"2":         "PG",    // the demo's kid account
	"anonymous": "PG-13", // requests without a token: no adult content
}

// ownerID is the user allowed to change limits. Hooks see a user id but no
// roles; in Dim the first registered user is the owner.
const ownerID = 1

type parental struct {
	host *plugin.Host

	mu      sync.Mutex
	limits  map[string]string // user key → maximum rating
	ratings map[string]string // media id → rating, as Dim reported it
}

func (p *parental) Init(ctx context.Context, h *plugin.Host) error {
	p.host = h
	p.limits, p.ratings = map[string]string{}, map[string]string{}
	if _, seeded, err := h.KV.Get(ctx, "seeded"); err != nil {
		return err
	} else if !seeded {
		for u, l := range defaultLimits {
			if err := h.KV.Set(ctx, "limit/"+u, []byte(l)); err != nil {
				return err
			}
		}
		if err := h.KV.Set(ctx, "seeded", []byte("1")); err != nil {
			return err
		}
	}
	if err := load(ctx, h.KV, "limit/", p.limits); err != nil {
		return err
	}
	if err := load(ctx, h.KV, "rating/", p.ratings); err != nil {
		return err
	}
	h.Log.Info("parental-controls ready", "limits", len(p.limits), "known_ratings", len(p.ratings))
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
	if !req.Authenticated {
		return "anonymous"
	}
	return strconv.FormatInt(req.UserID, 10)
}

// limitOf returns the maximum rating of the request's user; "" means
// unrestricted.
func (p *parental) limitOf(req *plugin.Request) string { return p.limitFor(userKey(req)) }

func (p *parental) limitFor(user string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.limits[user]
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
	limit := p.limitOf(req)
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
	limit := p.limitOf(req)
	if limit == "" {
		return nil
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

// ServeRoute is the limits API:
//
//	GET /api/v1/plugins/parental-controls/limits/:user   the owner, or the user ("me") themself
//	PUT /api/v1/plugins/parental-controls/limits/:user   the owner; body {"limit": "PG"} or {"limit": "none"}
//
// :user is a user id, "me" or "anonymous".
func (p *parental) ServeRoute(ctx context.Context, hook string, req *plugin.Request) (*plugin.Response, error) {
	who := req.Param("user")
	if who == "me" {
		who = userKey(req)
	}
	if _, err := strconv.ParseInt(who, 10, 64); err != nil && who != "anonymous" {
		return jsonError(http.StatusBadRequest, "user must be a user id, \"me\" or \"anonymous\""), nil
	}
	isOwner := req.Authenticated && req.UserID == ownerID
	switch req.Method {
	case http.MethodGet:
		if !isOwner && who != userKey(req) {
			return jsonError(http.StatusForbidden, "only the owner can see other users' limits"), nil
		}
	case http.MethodPut:
		if !isOwner {
			return jsonError(http.StatusForbidden, "only the owner can change limits"), nil
		}
		var in struct{ Limit string }
		if err := json.Unmarshal(req.Body, &in); err != nil {
			return jsonError(http.StatusBadRequest, `want {"limit": "<rating>"} or {"limit": "none"}`), nil
		}
		limit := normalize(in.Limit)
		if _, ok := levels[limit]; !ok && limit != "NONE" {
			return jsonError(http.StatusBadRequest, fmt.Sprintf("unknown rating %q", in.Limit)), nil
		}
		if err := p.setLimit(ctx, who, limit); err != nil {
			return nil, err
		}
		p.host.Log.Info("limit changed", "user", who, "limit", limit)
	default:
		return jsonError(http.StatusMethodNotAllowed, "GET or PUT"), nil
	}
	limit := p.limitFor(who)
	if limit == "" {
		limit = "none"
	}
	return jsonResponse(http.StatusOK, map[string]string{"user": who, "limit": limit}), nil
}

func (p *parental) setLimit(ctx context.Context, who, limit string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if limit == "NONE" {
		delete(p.limits, who)
		return p.host.KV.Delete(ctx, "limit/"+who)
	}
	p.limits[who] = limit
	return p.host.KV.Set(ctx, "limit/"+who, []byte(limit))
}

func jsonResponse(status int, v any) *plugin.Response {
	b, _ := json.Marshal(v)
	return &plugin.Response{Status: status, Header: http.Header{"Content-Type": {"application/json"}}, Body: b}
}

func jsonError(status int, msg string) *plugin.Response {
	return jsonResponse(status, map[string]string{"error": msg})
}

func main() {
	if err := plugin.Serve(&parental{}, plugin.WithVersion("1.0.0")); err != nil {
		fmt.Fprintln(os.Stderr, "parental-controls:", err)
		os.Exit(1)
	}
}
