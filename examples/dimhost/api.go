package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// API is the Dim-like REST API, without any plugin. Its routes, paths and
// JSON shapes follow Dim's (dim-web/src/routes), trimmed to what the example
// plugins need, with these differences:
//
//   - Media carry a content certification in "rating" ("PG-13"). Dim's own
//     "rating" is a TMDB score and Dim stores no certification; a parental
//     controls deployment needs one, so this host pretends Dim has it. Library
//     listings carry it too.
//   - Every media item has one file whose id is the media id, so
//     GET /api/v1/stream/:id/manifest takes a media id here.
//   - Stream sessions are deterministic (gid and track ids derive from the
//     file id) instead of random UUIDs, so that `dimhost get`, one process
//     per request, can fetch a session it did not create. Every file is a
//     short test clip whose fMP4 segments are tiny fixture files on disk.
//   - Tokens are "demo-token-<user id>": trivially forgeable, fine for a demo.
type API struct {
	mux      *http.ServeMux
	segments string // fixture directory: <track id>/init.mp4, <track id>/<n>.m4s

	mu       sync.Mutex
	progress map[[2]int64]int64 // (user, media) → offset in seconds
}

type user struct {
	ID       int64
	Name     string
	Password string
	Roles    []string
}

// users are Dim's accounts: the first one is the owner.
var users = []user{
	{ID: 1, Name: "admin", Password: "admin", Roles: []string{"owner"}},
	{ID: 2, Name: "kid", Password: "kid", Roles: []string{"user"}},
}

type library struct {
	ID        int64  `json:"id"`
	Name      string `json:"name"`
	MediaType string `json:"media_type"`
}

var libraries = []library{
	{ID: 1, Name: "Movies", MediaType: "movie"},
	{ID: 2, Name: "Animation", MediaType: "movie"},
}

type media struct {
	ID          int64    `json:"id"`
	LibraryID   int64    `json:"library_id"`
	Name        string   `json:"name"`
	Description string   `json:"description"`
	Rating      string   `json:"rating"` // content certification, see API
	Year        int      `json:"year"`
	Added       string   `json:"added"`
	PosterPath  string   `json:"poster_path"`
	MediaType   string   `json:"media_type"`
	Genres      []string `json:"genres"`
	Duration    int      `json:"duration"` // seconds, of the media's file
}

// catalog is the media in the libraries, by id.
var catalog = map[int64]media{
	42: {ID: 42, LibraryID: 1, Name: "The Hitchhiker's Guide to the Galaxy", Rating: "PG", Year: 2005, Added: "2024-03-01",
		Description: "Mere seconds before the Earth is demolished, Arthur Dent is swept off the planet.", Genres: []string{"Comedy", "Science Fiction"}, Duration: 42},
	7: {ID: 7, LibraryID: 1, Name: "Seven Samurai", Rating: "NR", Year: 1954, Added: "2024-02-11",
		Description: "A village hires seven masterless samurai to defend it from bandits.", Genres: []string{"Action", "Drama"}, Duration: 50},
	13: {ID: 13, LibraryID: 1, Name: "Alien", Rating: "R", Year: 1979, Added: "2024-03-09",
		Description: "The crew of the Nostromo answers a distress call.", Genres: []string{"Horror", "Science Fiction"}, Duration: 35},
	1: {ID: 1, LibraryID: 2, Name: "Spirited Away", Rating: "PG", Year: 2001, Added: "2024-01-20",
		Description: "Chihiro wanders into a world of spirits.", Genres: []string{"Animation", "Fantasy"}, Duration: 38},
	99: {ID: 99, LibraryID: 2, Name: "Toy Story", Rating: "G", Year: 1995, Added: "2024-03-05",
		Description: "A cowboy doll feels threatened by a new spaceman action figure.", Genres: []string{"Animation", "Comedy"}, Duration: 27},
}

func init() {
	for id, m := range catalog {
		m.PosterPath = fmt.Sprintf("images/posters/%d.jpg", id)
		m.MediaType = "movie"
		catalog[id] = m
	}
}

// card is one entry of a dashboard row or a library listing, as in Dim.
type card struct {
	ID         int64  `json:"id"`
	Name       string `json:"name"`
	PosterPath string `json:"poster_path"`
	Rating     string `json:"rating,omitempty"`
}

func cardOf(m media, withRating bool) card {
	c := card{ID: m.ID, Name: m.Name, PosterPath: m.PosterPath}
	if withRating {
		c.Rating = m.Rating
	}
	return c
}

// NewAPI returns the API, serving stream segments from the fixture
// directory segments (see writeFixtures).
func NewAPI(segments string) *API {
	a := &API{mux: http.NewServeMux(), segments: segments, progress: map[[2]int64]int64{}}
	a.mux.HandleFunc("POST /api/v1/auth/login", a.login)
	a.mux.HandleFunc("GET /api/v1/auth/whoami", a.whoami)
	a.mux.HandleFunc("GET /api/v1/library", a.libraries)
	a.mux.HandleFunc("GET /api/v1/library/{id}/media", a.libraryMedia)
	a.mux.HandleFunc("GET /api/v1/dashboard", a.dashboard)
	a.mux.HandleFunc("GET /api/v1/media/{id}", a.media)
	a.mux.HandleFunc("POST /api/v1/media/{id}/progress", a.postProgress)
	a.mux.HandleFunc("GET /api/v1/stream/{id}/manifest", a.virtualManifest)
	a.mux.HandleFunc("GET /api/v1/stream/{gid}/manifest.mpd", a.mpd)
	a.mux.HandleFunc("GET /api/v1/stream/{id}/data/{chunk...}", a.segment)
	return a
}

func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// RouteTemplate returns the axum-style template ("/api/v1/media/:id") of the
// route r matches, or "" when none does. The middleware passes it to hooks.
func (a *API) RouteTemplate(r *http.Request) string {
	_, pattern := a.mux.Handler(r)
	return axumTemplate(pattern)
}

var wildcard = regexp.MustCompile(`\{([^}.]+)(\.\.\.)?\}`)

// axumTemplate turns a ServeMux pattern ("GET /a/{id}/{rest...}") into an
// axum route template ("/a/:id/*rest").
func axumTemplate(pattern string) string {
	if i := strings.IndexByte(pattern, ' '); i >= 0 {
		pattern = pattern[i+1:]
	}
	return wildcard.ReplaceAllStringFunc(pattern, func(m string) string {
		s := wildcard.FindStringSubmatch(m)
		if s[2] != "" {
			return "*" + s[1]
		}
		return ":" + s[1]
	})
}

// userFromToken mimics Dim's auth middleware: the Authorization header (or
// Dim's "token" cookie) carries a token naming the user.
func userFromToken(r *http.Request) (int64, bool) {
	tok := r.Header.Get("Authorization")
	if c, err := r.Cookie("token"); tok == "" && err == nil {
		tok = c.Value
	}
	tok = strings.TrimPrefix(tok, "Bearer ")
	id, err := strconv.ParseInt(strings.TrimPrefix(tok, "demo-token-"), 10, 64)
	if err != nil || !strings.HasPrefix(tok, "demo-token-") {
		return 0, false
	}
	for _, u := range users {
		if u.ID == id {
			return id, true
		}
	}
	return 0, false
}

func (a *API) login(w http.ResponseWriter, r *http.Request) {
	var in struct{ Username, Password string }
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&in); err != nil {
		writeError(w, http.StatusBadRequest, "expected {\"username\": ..., \"password\": ...}")
		return
	}
	for _, u := range users {
		if u.Name == in.Username && u.Password == in.Password {
			writeJSON(w, http.StatusOK, map[string]string{"token": fmt.Sprintf("demo-token-%d", u.ID)})
			return
		}
	}
	writeError(w, http.StatusUnauthorized, "InvalidCredentials")
}

func (a *API) whoami(w http.ResponseWriter, r *http.Request) {
	id, ok := userFromToken(r)
	if !ok {
		writeError(w, http.StatusUnauthorized, "Unauthenticated")
		return
	}
	for _, u := range users {
		if u.ID == id {
			writeJSON(w, http.StatusOK, map[string]any{"id": u.ID, "username": u.Name, "roles": u.Roles})
			return
		}
	}
}

func (a *API) libraries(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, libraries)
}

// libraryMedia is GET /api/v1/library/:id/media: {"<library name>": [cards]},
// sorted by name, as Dim answers.
func (a *API) libraryMedia(w http.ResponseWriter, r *http.Request) {
	id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
	for _, l := range libraries {
		if l.ID != id {
			continue
		}
		cards := []card{}
		for _, m := range sortedMedia(func(a, b media) bool { return a.Name < b.Name }) {
			if m.LibraryID == id {
				cards = append(cards, cardOf(m, true))
			}
		}
		writeJSON(w, http.StatusOK, map[string][]card{l.Name: cards})
		return
	}
	writeError(w, http.StatusNotFound, "No such library")
}

// dashboard is GET /api/v1/dashboard: a map of row title → cards.
func (a *API) dashboard(w http.ResponseWriter, r *http.Request) {
	row := func(less func(a, b media) bool, n int) []card {
		var cards []card
		for _, m := range sortedMedia(less)[:n] {
			cards = append(cards, cardOf(m, false))
		}
		return cards
	}
	writeJSON(w, http.StatusOK, map[string][]card{
		"Recently added": row(func(a, b media) bool { return a.Added > b.Added }, 3),
		"Top picks":      row(func(a, b media) bool { return a.Year < b.Year }, 2),
	})
}

func sortedMedia(less func(a, b media) bool) []media {
	ms := make([]media, 0, len(catalog))
	for _, m := range catalog {
		ms = append(ms, m)
	}
	sort.Slice(ms, func(i, j int) bool { return less(ms[i], ms[j]) })
	return ms
}

func lookupMedia(w http.ResponseWriter, r *http.Request, param string) (media, bool) {
	id, err := strconv.ParseInt(r.PathValue(param), 10, 64)
	m, ok := catalog[id]
	if err != nil || !ok {
		writeError(w, http.StatusNotFound, "NotFoundError")
		return media{}, false
	}
	return m, true
}

// media is GET /api/v1/media/:id, with the user's watch position as
// "progress" when there is one.
func (a *API) media(w http.ResponseWriter, r *http.Request) {
	m, ok := lookupMedia(w, r, "id")
	if !ok {
		return
	}
	out := map[string]any{}
	b, _ := json.Marshal(m)
	json.Unmarshal(b, &out)
	if uid, ok := userFromToken(r); ok {
		a.mu.Lock()
		if p, ok := a.progress[[2]int64{uid, m.ID}]; ok {
			out["progress"] = p
		}
		a.mu.Unlock()
	}
	writeJSON(w, http.StatusOK, out)
}

// postProgress is POST /api/v1/media/:id/progress?offset=N: Dim's player
// posts the watch position (seconds) every 15 s.
func (a *API) postProgress(w http.ResponseWriter, r *http.Request) {
	uid, ok := userFromToken(r)
	if !ok {
		writeError(w, http.StatusUnauthorized, "Unauthenticated")
		return
	}
	m, ok := lookupMedia(w, r, "id")
	if !ok {
		return
	}
	off, err := strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64)
	if err != nil || off < 0 {
		writeError(w, http.StatusBadRequest, "offset must be a number of seconds")
		return
	}
	a.mu.Lock()
	a.progress[[2]int64{uid, m.ID}] = off
	a.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// Streams. Each file has one video and one audio track, cut into 5 s fMP4
// segments numbered from 0.

const segmentSeconds = 5

type track struct {
	ID             string            `json:"id"`
	ContentType    string            `json:"content_type"`
	Mime           string            `json:"mime"`
	Codecs         string            `json:"codecs"`
	Bandwidth      int               `json:"bandwidth"`
	Duration       int               `json:"duration"`
	TargetDuration int               `json:"target_duration"`
	IsDefault      bool              `json:"is_default"`
	Label          string            `json:"label"`
	Lang           *string           `json:"lang"`
	ChunkPath      string            `json:"chunk_path"`
	InitSeg        string            `json:"init_seg"`
	Args           map[string]string `json:"args"`
}

// gidOf is the (deterministic, see API) session id of a file.
func gidOf(fileID int64) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", fileID) }

func tracksOf(m media) []track {
	eng := "eng"
	mk := func(kind, mime, codecs, label string, bw int, lang *string, args map[string]string) track {
		id := fmt.Sprintf("%d-%s", m.ID, kind)
		return track{ID: id, ContentType: kind, Mime: mime, Codecs: codecs, Bandwidth: bw, Duration: m.Duration,
			TargetDuration: segmentSeconds, IsDefault: true, Label: label, Lang: lang,
			ChunkPath: id + "/data/$Number$.m4s", InitSeg: id + "/data/init.mp4", Args: args}
	}
	return []track{
		mk("video", "video/mp4", "avc1.64001f", "720p@5MB", 5_000_000, nil, map[string]string{"width": "1280", "height": "720"}),
		mk("audio", "audio/mp4", "mp4a.40.2", "English (AAC 2.0)", 128_000, &eng, nil),
	}
}

// virtualManifest is GET /api/v1/stream/:id/manifest: Dim's virtual
// manifest {gid, tracks}.
func (a *API) virtualManifest(w http.ResponseWriter, r *http.Request) {
	m, ok := lookupMedia(w, r, "id")
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"gid": gidOf(m.ID), "tracks": tracksOf(m)})
}

func mediaOfGID(gid string) (media, bool) {
	for id, m := range catalog {
		if gidOf(id) == gid {
			return m, true
		}
	}
	return media{}, false
}

// mpd is GET /api/v1/stream/:gid/manifest.mpd: a static MPEG-DASH manifest
// whose segment URLs are relative to it ("<track>/data/$Number$.m4s"
// resolves to /api/v1/stream/<track>/data/<n>.m4s).
func (a *API) mpd(w http.ResponseWriter, r *http.Request) {
	m, ok := mediaOfGID(r.PathValue("gid"))
	if !ok {
		writeError(w, http.StatusNotFound, "GidParseError")
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" profiles="urn:mpeg:dash:profile:isoff-live:2011" type="static" mediaPresentationDuration="PT%dS" minBufferTime="PT%dS">
  <Period id="0" start="PT0S">
`, m.Duration, segmentSeconds)
	for _, t := range tracksOf(m) {
		fmt.Fprintf(&b, `    <AdaptationSet contentType=%q mimeType=%q segmentAlignment="true">
      <Representation id=%q codecs=%q bandwidth="%d">
        <SegmentTemplate timescale="1000" duration="%d" startNumber="0" initialization=%q media=%q/>
      </Representation>
    </AdaptationSet>
`, t.ContentType, t.Mime, t.ID, t.Codecs, t.Bandwidth, segmentSeconds*1000, t.InitSeg, t.ChunkPath)
	}
	b.WriteString("  </Period>\n</MPD>\n")
	w.Header().Set("Content-Type", "application/dash+xml")
	io.WriteString(w, b.String())
}

var chunkName = regexp.MustCompile(`^(init\.mp4|[0-9]{1,9}\.m4s)$`)

// segment is GET /api/v1/stream/:id/data/*chunk: a track's init segment or
// media segment, read whole from disk as Dim does.
func (a *API) segment(w http.ResponseWriter, r *http.Request) {
	id, chunk := r.PathValue("id"), r.PathValue("chunk")
	if !chunkName.MatchString(chunk) {
		writeError(w, http.StatusBadRequest, "InvalidRequest")
		return
	}
	if !knownTrack(id) {
		writeError(w, http.StatusNotFound, "no such stream")
		return
	}
	b, err := os.ReadFile(filepath.Join(a.segments, id, chunk))
	if err != nil {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "video/mp4")
	w.Write(b)
}

func knownTrack(id string) bool {
	for _, m := range catalog {
		for _, t := range tracksOf(m) {
			if t.ID == id {
				return true
			}
		}
	}
	return false
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
