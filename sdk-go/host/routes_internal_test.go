package host

import "testing"

// TestSetRoutesOrder: within one connection only a higher version replaces
// the table (a push may beat watchRoutes' own answer); a newer connection's
// table replaces any older one (a new daemon numbers from 1 again), and a
// late push on an old connection changes nothing.
func TestSetRoutesOrder(t *testing.T) {
	s := &Session{}
	steps := []struct {
		link, version uint64
		want          uint64 // version kept after the step
		wantLink      uint64
	}{
		{0, 40, 40, 0}, // the cache
		{1, 5, 5, 1},   // the first connection: replaces the cache
		{1, 4, 5, 1},   // watchRoutes' answer, after a newer push: ignored
		{1, 6, 6, 1},
		{2, 1, 1, 2}, // a new daemon
		{1, 9, 1, 2}, // a late push on the old connection: ignored
		{2, 2, 2, 2},
	}
	for i, st := range steps {
		s.setRoutes(&RouteTable{Version: st.version, link: st.link})
		got := s.routes.Load()
		if got.Version != st.want || got.link != st.wantLink {
			t.Fatalf("step %d (link %d v%d): table v%d on link %d, want v%d on link %d", i, st.link, st.version, got.Version, got.link, st.want, st.wantLink)
		}
	}
}
