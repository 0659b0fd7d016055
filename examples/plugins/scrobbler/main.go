// Command scrobbler is an example dimplugd plugin that keeps each user's
// watch history: an observe hook records the playback position Dim's player
// posts every 15 seconds (POST /api/v1/media/:id/progress?offset=N), and a
// route of its own, GET /api/v1/plugins/scrobbler/history, returns the
// calling user's history, most recent first.
//
// It is the local half of a Trakt or AniList scrobbler: the history is what
// such a plugin would sync (which would also need an outbound_hosts
// permission). Entries live in the plugin's key-value store under
// "progress/<user id>/<media id>".
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
)

// entry is one user's progress on one media item.
type entry struct {
	MediaID int64     `json:"media_id"`
	Offset  int64     `json:"offset"`  // seconds into the media
	Updated time.Time `json:"updated"` // when the last position was posted
	Posts   int       `json:"posts"`   // positions posted so far
}

type scrobbler struct {
	host *plugin.Host
	now  func() time.Time
	mu   sync.Mutex // serializes read-modify-write of entries: observers run concurrently
}

func (s *scrobbler) Init(ctx context.Context, h *plugin.Host) error {
	s.host = h
	if s.now == nil {
		s.now = time.Now
	}
	return nil
}

func key(user, media int64) string { return fmt.Sprintf("progress/%d/%d", user, media) }

// Observe records a progress post Dim accepted from a logged-in user.
func (s *scrobbler) Observe(ctx context.Context, hook string, req *plugin.Request, resp *plugin.Response) {
	if !req.Authenticated || resp.Status/100 != 2 {
		return
	}
	media, err := strconv.ParseInt(req.Param("id"), 10, 64)
	if err != nil {
		return
	}
	offset, err := strconv.ParseInt(req.Query().Get("offset"), 10, 64)
	if err != nil || offset < 0 {
		return
	}
	k := key(req.UserID, media)
	s.mu.Lock()
	defer s.mu.Unlock()
	var e entry
	if v, ok, err := s.host.KV.Get(ctx, k); err != nil {
		s.host.Log.Warn("could not read progress", "key", k, "err", err)
		return
	} else if ok {
		json.Unmarshal(v, &e)
	}
	e.MediaID, e.Offset, e.Updated = media, offset, s.now().UTC()
	e.Posts++
	b, _ := json.Marshal(e)
	if err := s.host.KV.Set(ctx, k, b); err != nil {
		s.host.Log.Warn("could not store progress", "key", k, "err", err)
	}
}

// ServeRoute answers GET /api/v1/plugins/scrobbler/history.
func (s *scrobbler) ServeRoute(ctx context.Context, hook string, req *plugin.Request) (*plugin.Response, error) {
	if !req.Authenticated {
		return jsonResponse(http.StatusUnauthorized, map[string]string{"error": "log in to see your history"}), nil
	}
	prefix := fmt.Sprintf("progress/%d/", req.UserID)
	keys, err := s.host.KV.List(ctx, prefix, 0)
	if err != nil {
		return nil, err
	}
	history := []entry{}
	for _, k := range keys {
		v, ok, err := s.host.KV.Get(ctx, k)
		if err != nil {
			return nil, err
		}
		var e entry
		if ok && json.Unmarshal(v, &e) == nil {
			history = append(history, e)
		}
	}
	sort.SliceStable(history, func(i, j int) bool { return history[i].Updated.After(history[j].Updated) })
	return jsonResponse(http.StatusOK, map[string]any{"user_id": req.UserID, "history": history}), nil
}

func jsonResponse(status int, v any) *plugin.Response {
	b, _ := json.Marshal(v)
	return &plugin.Response{Status: status, Header: http.Header{"Content-Type": {"application/json"}}, Body: b}
}

func main() {
	if err := plugin.Serve(&scrobbler{}, plugin.WithVersion("1.0.0")); err != nil {
		fmt.Fprintln(os.Stderr, "scrobbler:", err)
		os.Exit(1)
	}
}
